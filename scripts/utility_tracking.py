"""Is the RNN's boundary gradient predictable from the state, and does the utility model keep up with it?

For each setting this trains the copy config (DNI at every window boundary) and records, for every window,
the boundary state (the message), the bootstrapped target the next window sends back, and the utility
model's prediction. It then reports, over the second half of the run:

- ``online_cosine``: the cosine between ĝ and its target, what DNI actually delivered;
- ``global_r2``: held-out R² of one least-squares linear map state -> target fitted on the even windows and
  scored on the odd ones (is there one linear utility model for the whole half?);
- ``local_r2``: the same within chunks of ``--chunk`` windows, averaged (is there one for each stretch of
  training, however fast it moves?);
- ``constant_r2``: the same for the even windows' mean target alone (the bar a state-dependent map must
  clear), and ``utility_r2``: R² of the utility model's own predictions.

Fits and scores split by window, never by example: the examples of one window share their next window's
inputs, so an example-level split lets a fit memorise each window (it scores R² ≈ 1 on held-out examples
of the same windows while scoring below zero on held-out windows).

A frozen sender (``trainer.lr=1e-6``) against the config's moving one separates "the target is not
predictable" from "the target is predictable but moves faster than the utility model follows".

    python scripts/utility_tracking.py --out docs/results/utility_tracking.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from dni_agents.config import load_config
from dni_agents.core import Interface
from dni_agents.drivers import rnn

SETTINGS = {  # name: overrides of the copy config
    "frozen_sender": ["trainer.lr=0.000001"],
    "moving_sender": [],
    "moving_sender_utility_lr_1e-4": ["interface_defaults.utility.lr=0.0001"],
}


def r2(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """1 − SSE / SST, SST about the target's own per-dimension mean."""
    return float(1 - (prediction - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum())


def held_out_r2(x_fit: torch.Tensor, y_fit: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                ridge: float = 1e-3) -> float:
    """R² on (x_test, y_test) of a ridge least-squares map (with bias) fitted on (x_fit, y_fit)."""
    xb = torch.cat([x_fit, torch.ones(len(x_fit), 1, dtype=x_fit.dtype)], 1)
    w = torch.linalg.solve(xb.T @ xb + ridge * torch.eye(xb.shape[1], dtype=x_fit.dtype), xb.T @ y_fit)
    return r2(torch.cat([x_test, torch.ones(len(x_test), 1, dtype=x_test.dtype)], 1) @ w, y_test)


def measure(overrides: list[str], windows: int, task: str, truncation: int, seed: int, chunk: int,
            keep: int) -> dict:
    cfg = load_config("copy", [f"rnn.task={task}", f"rnn.truncation={truncation}", f"trainer.steps={windows}",
                               f"seed={seed}", "name=utility_tracking", *overrides])
    records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    original = Interface._learn_utility

    def recording(self: Interface, ready: list, track: bool) -> list:
        for _, sent in ready:
            target = sent.target * self._units(sent.message)
            records.append((sent.message[:keep].flatten(1).double(), target[:keep].flatten(1).double(),
                            sent.prediction.detach()[:keep].flatten(1).double()))
        return original(self, ready, track)

    Interface._learn_utility = recording
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            result = rnn.train(cfg, Path(tmp), log=False, progress=False)
            wall = time.perf_counter() - t0
    finally:
        Interface._learn_utility = original
    late = records[len(records) // 2:]
    cos = torch.stack([torch.nn.functional.cosine_similarity(p.flatten(), t.flatten(), dim=0)
                       for _, t, p in late])

    def split(rows: list) -> tuple[torch.Tensor, ...]:
        even, odd = rows[0::2], rows[1::2]
        return (torch.cat([m for m, _, _ in even]), torch.cat([t for _, t, _ in even]),
                torch.cat([m for m, _, _ in odd]), torch.cat([t for _, t, _ in odd]))

    fit, test = torch.cat([t for _, t, _ in late[0::2]]), torch.cat([t for _, t, _ in late[1::2]])
    constant = r2(fit.mean(0).expand_as(test), test)
    utility = r2(torch.cat([p for _, _, p in late]), torch.cat([t for _, t, _ in late]))
    local = [held_out_r2(*split(late[i:i + chunk])) for i in range(0, len(late) - chunk + 1, chunk)]
    return {"overrides": overrides, "task": task, "T": truncation, "windows": windows, "seed": seed,
            "online_cosine": float(cos.mean()), "global_r2": held_out_r2(*split(late)),
            "local_r2": sum(local) / len(local), "constant_r2": constant, "utility_r2": utility,
            "local_chunks": len(local), "chunk": chunk,
            "solved_length": result["solved_length"], "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="repeat_copy", choices=["copy", "repeat_copy"])
    parser.add_argument("--truncation", type=int, default=2)
    parser.add_argument("--windows", type=int, default=4000)
    parser.add_argument("--chunk", type=int, default=250, help="windows per local least-squares fit")
    parser.add_argument("--keep", type=int, default=64, help="examples of each batch recorded")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=",".join(SETTINGS), help=f"some of: {','.join(SETTINGS)}")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for name in args.only.split(","):
        row = {"setting": name, **measure(SETTINGS[name], args.windows, args.task, args.truncation, args.seed,
                                          args.chunk, args.keep)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            args.out.write_text(json.dumps({"command": "python scripts/utility_tracking.py", "args": {
                k: str(v) for k, v in vars(args).items()}, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
