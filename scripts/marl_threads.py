"""Whether the multi-agent driver's results depend on its threads, and what a second thread buys: each
config trains with ``trainer.threads`` 1 and then 2 (the main job over its full 1,500 updates by default),
the environment steps per second of each (the training loop, evaluation left out), their ratio, the
evaluation results, and whether every parameter tensor of the two runs is equal to the last bit. Also
whether MKL runs in its strict mode here (dni_agents/runtime/blas.py). JSON to OUT.

    python scripts/marl_threads.py [--out OUT] [--main-updates N] [--sl-updates N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from dni_agents.config import load_config
from dni_agents.drivers import marl
from dni_agents.runtime.blas import reproducible_products

KEEP = ("mean_return", "ablated_return", "silenced_return", "env_steps_per_s", "sender->receiver/mi_bits",
        "sender->receiver/grad_cosine", "speaker_0->listener_0/mi_bits", "speaker_0->listener_0/grad_cosine")


def one(name: str, updates: int, threads: int) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(name, [f"log.dir={tmp}", f"trainer.steps={updates}", f"trainer.threads={threads}",
                                 "marl.threads=null"])
        result = marl.train(cfg, Path(tmp) / "run", progress=False)
        state = torch.load(Path(tmp) / "run" / marl.CHECKPOINT, weights_only=True)["system"]
    return {k: result[k] for k in KEEP if k in result}, state


def compare(name: str, updates: int) -> dict:
    (a, sa), (b, sb) = one(name, updates, 1), one(name, updates, 2)
    differ = [f"{agent}.{key}" for agent, state in sa["agents"].items()
              for key, tensor in state["module"].items()
              if not torch.equal(tensor, sb["agents"][agent]["module"][key])]
    same = {k: a[k] == b[k] for k in a if k != "env_steps_per_s"}
    return {"config": name, "updates": updates, "one_thread": a, "two_threads": b,
            "speedup": b["env_steps_per_s"] / a["env_steps_per_s"], "tensors_that_differ": differ,
            "identical_results": not differ and all(same.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--main-updates", type=int, default=1500)
    parser.add_argument("--sl-updates", type=int, default=100)
    args = parser.parse_args()
    report = {"script": "scripts/marl_threads.py", "mkl_strict_mode": reproducible_products(), "runs": [
        compare("digits_referential", args.main_updates), compare("speaker_listener", args.sl_updates)]}
    for r in report["runs"]:
        print(f"{r['config']} ({r['updates']} updates): 1 thread {r['one_thread']['env_steps_per_s']:,.0f}, "
              f"2 threads {r['two_threads']['env_steps_per_s']:,.0f} env steps/s ({r['speedup']:.2f}x); "
              f"return {r['one_thread']['mean_return']:.3f} / {r['two_threads']['mean_return']:.3f}; "
              f"identical: {r['identical_results']} ({len(r['tensors_that_differ'])} tensors differ)")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
