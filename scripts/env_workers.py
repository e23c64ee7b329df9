"""What environment workers buy (``marl.env_workers``): each config trains for a short budget with 0, 1
and 2 workers, in turn, ``--rounds`` times; the environment steps per second of each (the training loop,
evaluation left out) and their ratio to 0 workers, the median round; and whether every run's result is the
same (it must be). Also where one update's time goes with no workers: playing (the environments' own
stepping inside it) and learning (whether threads change results: ``scripts/marl_threads.py``). JSON to
OUT.

    OMP_NUM_THREADS=1 python scripts/env_workers.py [--out OUT] [--rounds N]
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import tempfile
import time
from pathlib import Path

from dni_agents.config import load_config
from dni_agents.drivers import marl

rollout = importlib.import_module("dni_agents.drivers.marl.rollout")
marl_train = importlib.import_module("dni_agents.drivers.marl.train")  # the module, not marl.train()

RUNS = [("speaker_listener", ["trainer.steps=60", "marl.eval_episodes=64"])]
SHARE_RUNS = [("speaker_listener", ["trainer.steps=30"]), ("digits_referential", ["trainer.steps=60"])]


def one(name: str, overrides: list[str], workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(name, [f"log.dir={tmp}", "log.embedding_samples=0", *overrides,
                                 f"marl.env_workers={workers}"])
        result = marl.train(cfg, Path(tmp) / "run", log=False, progress=False)
    return {"env_steps_per_s": result["env_steps_per_s"], "mean_return": result["mean_return"],
            "curve": result["curve"]}


def shares(name: str, overrides: list[str]) -> dict:
    """Seconds of playing, of the environments' stepping inside it, and of learning, over a short run."""
    spent = {"play": 0.0, "env": 0.0, "learn": 0.0}
    play, update, copies = rollout.Player.play, marl_train.ppo_update, rollout.make_copies

    def timed(key, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - t0
        return wrapper

    def make_copies(*args, **kwargs):
        envs = copies(*args, **kwargs)
        envs.step, envs.reset = timed("env", envs.step), timed("env", envs.reset)
        return envs

    rollout.Player.play, marl_train.ppo_update, rollout.make_copies = (timed("play", play),
                                                                       timed("learn", update), make_copies)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(name, [f"log.dir={tmp}", "log.embedding_samples=0", "marl.eval_episodes=10",
                                     *overrides])
            marl.train(cfg, Path(tmp) / "run", log=False, progress=False)
    finally:
        rollout.Player.play, marl_train.ppo_update, rollout.make_copies = play, update, copies
    total = spent["play"] + spent["learn"]
    return {"config": name, "overrides": overrides, **{f"{k}_s": v for k, v in spent.items()},
            "env_share": spent["env"] / total, "learn_share": spent["learn"] / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    report: dict = {"script": "scripts/env_workers.py", "rounds": args.rounds, "runs": [],
                    "shares": [shares(n, o) for n, o in SHARE_RUNS]}
    for s in report["shares"]:
        print(f"{s['config']}: environments {s['env_share']:.0%} of an update, "
              f"learning {s['learn_share']:.0%}")
    for name, overrides in RUNS:
        rows: dict[int, list[dict]] = {0: [], 1: [], 2: []}
        for _ in range(args.rounds):
            for workers in rows:
                rows[workers].append(one(name, overrides, workers))
        same = all(r["mean_return"] == rows[0][0]["mean_return"] and r["curve"] == rows[0][0]["curve"]
                   for rs in rows.values() for r in rs)
        speed = {w: statistics.median(r["env_steps_per_s"] for r in rs) for w, rs in rows.items()}
        run = {"config": name, "overrides": overrides, "identical_results": same,
               "env_steps_per_s": speed, "ratio_vs_0_workers": {w: v / speed[0] for w, v in speed.items()},
               "mean_return": rows[0][0]["mean_return"]}
        report["runs"].append(run)
        print(f"{name}: " + ", ".join(f"{w} workers {v:,.0f} steps/s ({v / speed[0]:.2f}x)"
                                      for w, v in speed.items()) + f"; identical results: {same}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
