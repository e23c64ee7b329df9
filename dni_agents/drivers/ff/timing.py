"""What a training step costs: each method's step against **plain PyTorch** (the same layers as one
``nn.Sequential``, one Adam over all parameters, ``loss.backward()``: no framework at all), on the paper's
3-layer FCN shape (784-256-256-10, batch 256, random inputs), one thread, methods interleaved round by
round so that machine noise hits them alike; the median round of each."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...config import parse_config
from ...data import ImageDataset, batches
from .model import METHODS, build_layers, build_system
from .train import train_step

PLAIN = "plain"  # the reference row: no framework


def timing_data(seed: int) -> ImageDataset:
    gen = torch.Generator().manual_seed(seed)
    return ImageDataset(
        "timing", torch.randn(2048, 1, 28, 28, generator=gen), torch.randint(0, 10, (2048,), generator=gen),
        torch.randn(10, 1, 28, 28), torch.zeros(10, dtype=torch.long), 10,
    )


def step_function(method: str, data: ImageDataset, seed: int, batch_norm: bool
                  ) -> tuple[Callable[[int], None], list[nn.Parameter]]:
    """One training step of ``method`` (or of plain PyTorch) on the timing shape, as ``step(i)``, and the
    parameters it trains (layer by layer, in order)."""
    overrides = [] if method == PLAIN else METHODS[method]
    cfg = parse_config(
        {"driver": "ff", "name": f"timing-{method}", "seed": seed,
         "trainer": {"batch_size": 256, "lr": 1e-4}, "ff": {"layers": 3, "batch_norm": batch_norm}},
        overrides,
    )
    stream = batches(data.x_train, data.y_train, 256, torch.Generator().manual_seed(seed))
    if method == PLAIN:
        torch.manual_seed(seed)
        model = nn.Sequential(*build_layers(cfg, data.input_shape, data.num_classes))
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.trainer.lr)

        def plain(_: int) -> None:
            x, y = next(stream)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

        return plain, list(model.parameters())
    system = build_system(cfg, data, torch.device("cpu"))
    system.track_stats = False
    params = [p for agent in system.agents.values() for p in agent.module.parameters()]
    return (lambda i: train_step(system, i, *next(stream), data.num_classes)), params


def time_methods(methods: list[str], steps: int, repeats: int = 3, seed: int = 0,
                 batch_norm: bool = True) -> list[dict]:
    """Seconds per step of each of ``methods`` (``plain`` for plain PyTorch, or a key of ``METHODS``):
    ``repeats`` rounds of ``steps`` steps each, the methods in turn within a round, after 5 warm-up steps;
    the median round. One intra-op thread (the caller's setting comes back after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = timing_data(seed)
        fns = {m: step_function(m, data, seed, batch_norm)[0] for m in methods}
        done = dict.fromkeys(methods, 0)
        for m, fn in fns.items():  # warm-up
            for _ in range(5):
                fn(done[m])
                done[m] += 1
        rounds: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(repeats):
            for m, fn in fns.items():
                t0 = time.perf_counter()
                for _ in range(steps):
                    fn(done[m])
                    done[m] += 1
                rounds[m].append((time.perf_counter() - t0) / steps)
    finally:
        torch.set_num_threads(threads)
    per_step = {m: statistics.median(v) for m, v in rounds.items()}
    return [
        {"method": m, "dataset": "timing", "model": "mlp3-784-256-10", "batch_norm": batch_norm,
         "test_accuracy": None, "steps_per_s": 1.0 / per_step[m], "steps": steps, "rounds": repeats,
         "seed": seed, "batch_size": 256, "threads": 1,
         "cost_vs_backprop": per_step[m] / per_step["backprop"] if "backprop" in per_step else None,
         "cost_vs_plain": per_step[m] / per_step[PLAIN] if PLAIN in per_step else None}
        for m in methods
    ]
