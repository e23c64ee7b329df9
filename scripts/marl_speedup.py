"""How much faster this tree trains a marl job than another checkout of dni-agents, side by side.

    git worktree add /tmp/base <commit>
    python scripts/marl_speedup.py --baseline /tmp/base --config speaker_listener \
        --out docs/results/marl_speedup.json

Each round runs both trees, one after the other (alternating which goes first), each in a fresh process
on one thread (pinned to one core where ``taskset`` exists: core 0, or ``SPEEDUP_CPU``): a few warm-up
updates, then ``--updates`` updates of play + learn, timed in process CPU time. Reported per tree:
environment steps per CPU-second (playing and learning), and the CPU milliseconds per update spent
playing, in the environment's own ``step``, and learning; the speed-up is the median over rounds of each
round's own ratio. The environment's share bounds what any learner can reach: with learning and the rest
of the rollout free, an update still costs the environment's steps (``ceiling``).

``--train-seeds N``: also train the default config to the end in both trees, seeds 0..N-1 (one thread,
pinned likewise), and report each run's greedy return and heard mutual information: the speed-up must not
cost what is learned.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from dni_agents.config import load_config
from dni_agents.drivers import marl
name, updates = sys.argv[1], int(sys.argv[2])
cfg = load_config(name, ["marl.env_workers=0", *sys.argv[3:]])
system, groups, channels = marl.build(cfg, marl.make_env(cfg), torch.device("cpu"))
player = marl.Player(cfg, groups, channels, torch.device("cpu"), cfg.marl.num_envs)
env_cpu = [0.0]
step = player.envs.step
def timed_step(actions):
    t = time.process_time(); out = step(actions); env_cpu[0] += time.process_time() - t; return out
player.envs.step = timed_step
generator, clock = torch.Generator().manual_seed(0), 0
play = learn = 0.0
steps = 0
for update in range(3 + updates):
    if update == 3:
        play = learn = env_cpu[0] = 0.0
        steps = 0
    t0 = time.process_time()
    ep = player.play(seed=update * cfg.marl.num_envs, generator=generator)
    t1 = time.process_time()
    _, clock = marl.ppo_update(cfg, system, groups, player, ep, generator, clock,
                               track=update % cfg.log.every == 0)
    t2 = time.process_time()
    play, learn, steps = play + t1 - t0, learn + t2 - t1, steps + ep.steps
print(json.dumps({"env_steps_per_cpu_s": steps / (play + learn), "play_ms": 1e3 * play / updates,
                  "env_step_ms": 1e3 * env_cpu[0] / updates, "learn_ms": 1e3 * learn / updates}))
"""


TRAIN = r"""
import json, sys, tempfile, torch
from dni_agents.config import load_config
from dni_agents.drivers import marl
cfg = load_config(sys.argv[1], [f"seed={sys.argv[2]}", "log.embedding_samples=0", *sys.argv[3:]])
result = marl.train(cfg, tempfile.mkdtemp(), log=False, progress=False)
print(json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float))}))
"""


def train_tree(tree: Path, config: str, seed: int, overrides: list[str]) -> dict[str, float]:
    """The final evaluation of one full training run of ``config`` in ``tree``."""
    return _child(tree, TRAIN, config, [str(seed), *overrides])


def run_tree(tree: Path, config: str, updates: int, overrides: list[str]) -> dict[str, float]:
    return _child(tree, CHILD, config, [str(updates), *overrides])


def _child(tree: Path, code: str, config: str, args: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # each tree with its own default config: by name, both would read the installed package's
    own = tree / "configs" / f"{config}.yaml"
    cmd = [sys.executable, "-c", code, str(own) if own.is_file() else config, *args]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", os.environ.get("SPEEDUP_CPU", "0"), *cmd]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=tree).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout (e.g. a git worktree)")
    parser.add_argument("--config", default="speaker_listener")
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train-seeds", type=int, default=0, metavar="N",
                        help="also train to the end on seeds 0..N-1 in both trees (return, heard MI)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE for both trees")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    trees = {"baseline": args.baseline.resolve(), "this": here}
    rounds: list[dict[str, dict[str, float]]] = []
    for r in range(args.rounds):
        order = ["baseline", "this"] if r % 2 == 0 else ["this", "baseline"]
        row = {name: run_tree(trees[name], args.config, args.updates, args.overrides) for name in order}
        rounds.append(row)
        speeds = (f"{k} {v['env_steps_per_cpu_s']:.0f} steps/CPU-s" for k, v in row.items())
        print(f"round {r}: " + "  ".join(speeds), flush=True)

    result: dict = {
        "config": args.config, "updates": args.updates, "rounds": args.rounds, "overrides": args.overrides,
        "baseline_tree": str(trees["baseline"]),
        "baseline_commit": subprocess.run(["git", "-C", str(trees["baseline"]), "rev-parse", "HEAD"],
                                          capture_output=True, text=True).stdout.strip(),
        "this_commit": subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"],
                                      capture_output=True, text=True).stdout.strip(),
    }
    if rounds:
        def median(tree: str, key: str) -> float:
            return statistics.median(row[tree][key] for row in rounds)

        base_ms = median("baseline", "play_ms") + median("baseline", "learn_ms")
        result.update({f"{tree}_{key}": median(tree, key) for tree in trees
                       for key in ("env_steps_per_cpu_s", "play_ms", "env_step_ms", "learn_ms")})
        result["speedup"] = statistics.median(
            row["this"]["env_steps_per_cpu_s"] / row["baseline"]["env_steps_per_cpu_s"] for row in rounds)
        # an update that cost only its environment steps: what no learner can beat on this environment
        result["ceiling"] = base_ms / median("this", "env_step_ms")
        result["per_round"] = rounds
    if args.train_seeds:
        runs = {tree: [train_tree(trees[tree], args.config, seed, args.overrides)
                       for seed in range(args.train_seeds)] for tree in trees}
        result["training"] = runs
        for tree, rows in runs.items():
            mi = [v for row in rows for k, v in row.items() if k.endswith("/mi_bits")]
            result[f"{tree}_mean_return"] = [row["mean_return"] for row in rows]
            result[f"{tree}_heard_mi_bits"] = mi
            print(tree, "return", result[f"{tree}_mean_return"], "heard MI", mi, flush=True)
    print(json.dumps({k: v for k, v in result.items() if k not in ("per_round", "training")}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
