"""What the multi-agent driver on two processes (``--procs 2``: one network per rank) costs against one
process, on this machine: environment steps per second of each config's first ``--updates`` updates, in one
process and on two (rounds alternating), that the two give the same networks bit for bit, and the
transport's latency per item (24 messages forward and 24 targets back per round, as one minibatch of the
speaker-listener job sends). Writes JSON.

    OMP_NUM_THREADS=1 python scripts/marl_procs.py --out docs/results/marl_procs.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PROG = [sys.executable, "-m", "dni_agents.cli"]

LATENCY = """
import time, torch
from dni_agents.core import Message
from dni_agents.core.distributed import Route, TorchDistributed, init_process_group
rank, _ = init_process_group(backend="gloo", timeout=30)
t = TorchDistributed({"a": 0, "b": 1}, [Route("a->b", "a", "b", block=26)], timeout=30)
x, rounds = torch.randn(64, 3), 100
t0 = time.perf_counter()
for k in range(rounds):
    steps = range(k * 26, k * 26 + 24)
    if rank == 0:
        for s in steps:
            t.put_message(Message("a->b", s, x))
        for s in steps:
            t.wait_target("a->b", s)
            t.take_target("a->b", s)
    else:
        for s in steps:
            t.wait_message("a->b", s)
            t.take_message("a->b", s)
        for s in steps:
            t.put_target("a->b", s, x)
if rank == 0:
    print((time.perf_counter() - t0) / (rounds * 48))
t.close()
"""


def latency() -> float:
    """Seconds per item (a message or a target) over ``TorchDistributed`` between two idle processes."""
    from dni_agents.core.distributed import free_port
    from dni_agents.launch import child_env

    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", LATENCY], env=child_env(r, 2, "127.0.0.1", port),
                              stdout=subprocess.PIPE, text=True, cwd=ROOT) for r in (0, 1)]
    out = [p.communicate(timeout=120)[0] for p in procs]
    return float(out[0].strip())


def two_process_rate(config: str, updates: int, folder: Path) -> dict:
    """On two processes: the slower rank's rate (each plays every update) and the ranks' networks."""
    from dni_agents.runtime.ranks import merge_rank_checkpoints

    run_dir = folder / f"{config}_2_{time.monotonic_ns()}"
    argv = [*PROG, "train", config, *settings(updates, folder), "--procs", "2", "--run-dir", str(run_dir)]
    subprocess.run(argv, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ranks = [json.loads((run_dir / f"metrics.rank{r}.json").read_text()) for r in (0, 1)]
    return {"env_steps_per_s": min(m["env_steps_per_s"] for m in ranks),
            "system": merge_rank_checkpoints(run_dir)["system"]}


def settings(updates: int, folder: Path) -> list[str]:
    return [f"trainer.steps={updates}", "trainer.checkpoint_every=0", "log.every=10",
            "log.embedding_samples=0", "marl.eval_episodes=64", f"log.dir={folder}"]


def equal(a: object, b: object) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def one_process_rate(config: str, updates: int, folder: Path) -> dict:
    """In one process: the rate from the CLI's printed result (the last line is its JSON)."""
    run_dir = folder / f"{config}_1_{time.monotonic_ns()}"
    argv = [*PROG, "train", config, *settings(updates, folder), "--run-dir", str(run_dir)]
    out = subprocess.run(argv, check=True, cwd=ROOT, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)["system"]
    return {"env_steps_per_s": result["env_steps_per_s"], "system": state}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["digits_referential", "speaker_listener"])
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("marl_procs.json"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out: dict = {"command": " ".join(sys.argv), "threads_per_process": os.environ["OMP_NUM_THREADS"],
                 "cores": os.cpu_count(), "configs": {}}
    with tempfile.TemporaryDirectory(prefix="dni-marl-procs-") as tmp:
        for config in args.configs:
            one, two, same = [], [], True
            for _ in range(args.rounds):
                a = one_process_rate(config, args.updates, Path(tmp))
                b = two_process_rate(config, args.updates, Path(tmp))
                one.append(a["env_steps_per_s"])
                two.append(b["env_steps_per_s"])
                same = same and equal(a["system"], b["system"])
            out["configs"][config] = {
                "updates": args.updates, "one_process_env_steps_per_s": one,
                "two_processes_env_steps_per_s": two,
                "two_vs_one": statistics.median(two) / statistics.median(one), "identical_networks": same}
            print(config, out["configs"][config], flush=True)
    out["transport_seconds_per_item"] = latency()
    print("latency", out["transport_seconds_per_item"], flush=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
