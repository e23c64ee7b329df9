"""Does a driver's default run keep its speed on a machine shared with another CPU-bound process?

Each bundled default config trains for a short budget twice, alone and beside one busy-looping process
(one core's worth of load), alternately, and reports the seconds and their ratio (issue 16: at least half
the speed it has alone). JSON to OUT (default: stdout only).

    python scripts/shared_machine.py [--out OUT] [--rounds N] [--threads N]

``--threads N`` trains every run with N torch threads (``trainer.threads``, and ``marl.threads`` for the
marl configs) instead of each config's own setting.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

from dni_agents.config import driver_module, load_config

# (config, overrides that shorten it): every driver's default job
RUNS = [
    ("ff_digits", []),
    ("ff_digits", ["interface_defaults.mode=cdni"]),
    ("copy", ["trainer.steps=1000"]),
    ("hier", ["trainer.steps=1500", "trainer.eval_every=0"]),
    ("speaker_listener", ["trainer.steps=40", "marl.eval_episodes=64"]),
    ("digits_referential", ["trainer.steps=200", "marl.eval_episodes=100"]),
]


def busy(stop: mp.Event) -> None:  # type: ignore[valid-type]
    while not stop.is_set():
        pass


def seconds(name: str, overrides: list[str], threads: int | None = None) -> float:
    if threads is not None:
        marl = load_config(name).driver == "marl"
        overrides = [*overrides, f"trainer.threads={threads}", *([f"marl.threads={threads}"] if marl else [])]
    cfg = load_config(name, overrides)
    t0 = time.perf_counter()
    driver_module(cfg.driver).train(cfg, Path("runs") / cfg.name, log=False, progress=False)
    return time.perf_counter() - t0


def main(args: list[str]) -> None:
    out = Path(args[args.index("--out") + 1]) if "--out" in args else None
    rounds = int(args[args.index("--rounds") + 1]) if "--rounds" in args else 1
    threads = int(args[args.index("--threads") + 1]) if "--threads" in args else None
    rows = []
    for name, overrides in RUNS:
        alone, shared = [], []
        for _ in range(rounds):
            alone.append(seconds(name, overrides, threads))
            stop = mp.Event()
            load = mp.Process(target=busy, args=(stop,), daemon=True)
            load.start()
            try:
                shared.append(seconds(name, overrides, threads))
            finally:
                stop.set()
                load.join()
        row = {"config": name, "overrides": overrides, "alone_s": min(alone), "shared_s": min(shared),
               "speed_kept": min(alone) / min(shared)}
        rows.append(row)
        print(f"{name} {' '.join(overrides)}: alone {row['alone_s']:.1f} s, beside a busy process "
              f"{row['shared_s']:.1f} s: {100 * row['speed_kept']:.0f}% of its speed", flush=True)
    if out is not None:
        out.write_text(json.dumps({"rounds": rounds, "threads": threads, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
