"""What splitting the main job's learning across cores could buy at best: the seconds one update takes with
the default 256 environment copies and with 128 and 64 (the same epochs and minibatches, so each minibatch
holds half or a quarter of the rows), one thread, ``--rounds`` alternating rounds of ``--updates`` updates,
the median (the training loop's own env steps per second, evaluation left out). Two processes that each
learn from half the rows (data parallelism, with gradients summed for free) cannot update faster than
one process does on 128 copies: the bound is ``seconds(256) / seconds(128)``. JSON to OUT.

    OMP_NUM_THREADS=1 python scripts/marl_batch_scaling.py [--out OUT] [--rounds N] [--updates N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from dni_agents.config import load_config
from dni_agents.drivers import marl

CONFIG = "digits_referential"
COPIES = (256, 128, 64)


def seconds_per_update(copies: int, updates: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(CONFIG, [f"log.dir={tmp}", "log.embedding_samples=0", f"trainer.steps={updates}",
                                   "marl.eval_episodes=64", f"marl.num_envs={copies}"])
        result = marl.train(cfg, Path(tmp) / "run", log=False, progress=False)
    return copies * cfg.marl.max_steps / result["env_steps_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rounds: dict[int, list[float]] = {n: [] for n in COPIES}
    for _ in range(args.rounds):
        for n in COPIES:
            rounds[n].append(seconds_per_update(n, args.updates))
    median = {n: statistics.median(v) for n, v in rounds.items()}
    bound = median[COPIES[0]] / median[COPIES[1]]
    report = {"script": "scripts/marl_batch_scaling.py", "config": CONFIG, "updates": args.updates,
              "rounds": args.rounds, "seconds_per_update": {str(n): median[n] for n in COPIES},
              "all_rounds": {str(n): v for n, v in rounds.items()},
              "two_core_data_parallel_bound": bound}
    for n in COPIES:
        print(f"{n} copies: {1000 * median[n]:.1f} ms an update")
    print(f"best two cores could do splitting the rows: {bound:.2f}x (issue 16 asks 1.6x)")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
