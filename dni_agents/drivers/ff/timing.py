"""What a training step costs: each method's step against **plain PyTorch** (the same layers as one
``nn.Sequential``, one Adam over all parameters, ``loss.backward()``: no framework at all), on the paper's
3-layer FCN shape (784-256-256-10, batch 256, random inputs), one thread, methods interleaved round by
round so that machine noise hits them alike; the median round of each.

``plain-dni`` and ``plain-cdni`` are DNI written out by hand in plain PyTorch, as lean as it allows (the
layers, a zero-initialised linear utility model per interface, its regression onto the next layer's input
gradient with the gradient written out, one Adam for everything: the arithmetic DNI adds and nothing
else): the floor any framework's DNI step stands on. ``plain-layers`` is plain PyTorch
with one Adam per layer (each agent owns its optimizer): what that alone costs. ``fused`` (``trainer.fused``)
gives every Adam, the plain rows' too, one kernel for all tensors.

Each row also counts its step's arithmetic (``matmul_flops``: the FLOPs of every matrix product, forward
and backward, as ``torch.utils.flop_counter`` counts them): the cost a method cannot get below whatever the
framework, beside the time it takes."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ...config import Config, parse_config
from ...data import ImageDataset, batches
from .model import METHODS, build_layers, build_system
from .train import train_step

PLAIN = "plain"  # the reference row: no framework
PLAIN_LAYERS = "plain-layers"  # plain PyTorch with one Adam per layer, as each agent owns its optimizer
PLAIN_DNI = {"plain-dni": "dni", "plain-cdni": "cdni"}  # DNI by hand in plain PyTorch: the floor


def timing_data(seed: int) -> ImageDataset:
    gen = torch.Generator().manual_seed(seed)
    return ImageDataset(
        "timing", torch.randn(2048, 1, 28, 28, generator=gen), torch.randint(0, 10, (2048,), generator=gen),
        torch.randn(10, 1, 28, 28), torch.zeros(10, dtype=torch.long), 10,
    )


def _plain_dni(cfg: Config, data: ImageDataset, stream, conditioned: bool
               ) -> tuple[Callable[[int], None], list[nn.Parameter]]:
    """DNI by hand, as lean as plain PyTorch allows: each layer updates from ĝ = U(h) (per-example units, as
    the core's), the next layer's input gradient is U's regression target, U's gradient is written out (the
    residual times U's input: no graph), and one Adam steps everything once the step is done (one call per
    learning rate)."""
    torch.manual_seed(cfg.seed)
    layers = build_layers(cfg, data.input_shape, data.num_classes)
    context = data.num_classes if conditioned else 0
    utilities = [nn.Linear(cfg.ff.hidden + context, cfg.ff.hidden) for _ in layers[:-1]]
    for u in utilities:
        nn.init.zeros_(u.weight)
        nn.init.zeros_(u.bias)
    lr = cfg.trainer.lr
    u_lr = cfg.interface_defaults.utility.lr or lr
    layer_params = [p for m in layers for p in m.parameters()]
    u_params = [p for u in utilities for p in u.parameters()]
    groups = [{"params": layer_params + u_params, "lr": lr}] if u_lr == lr else \
        [{"params": layer_params, "lr": lr}, {"params": u_params, "lr": u_lr}]
    optimizer = torch.optim.Adam(groups, lr=lr, fused=cfg.trainer.fused)

    def step(_: int) -> None:
        x, y = next(stream)
        onehot = F.one_hot(y, data.num_classes).float() if conditioned else None
        optimizer.zero_grad(set_to_none=True)
        sent, leaves = [], []
        h = x
        for k, layer in enumerate(layers):
            if k:
                h = h.detach().requires_grad_(True)
                leaves.append(h)
            out = layer(h)
            if k == len(layers) - 1:
                F.cross_entropy(out, y).backward()
            else:
                message = out.detach()
                u_in = message if onehot is None else torch.cat([message, onehot], 1)
                with torch.no_grad():
                    prediction = utilities[k](u_in)
                out.backward(prediction / len(x))
                sent.append((u_in, prediction))
                h = message
        with torch.no_grad():  # mse_loss's gradient, in autograd's order: 2/N · (ĝ − target)
            for (u_in, prediction), leaf, u in zip(sent, leaves, utilities, strict=True):
                residual = (prediction - leaf.grad * len(x)).mul_(2.0 / prediction.numel())
                u.weight.grad, u.bias.grad = residual.t().mm(u_in), residual.sum(0)
        optimizer.step()

    return step, layer_params


def step_function(method: str, data: ImageDataset, seed: int, batch_norm: bool, fused: bool = False,
                  hidden: int = 256, batch_size: int = 256
                  ) -> tuple[Callable[[int], None], list[nn.Parameter]]:
    """One training step of ``method`` (or of plain PyTorch: ``plain``, ``plain-layers``, ``plain-dni``,
    ``plain-cdni``) on the timing shape (or another ``hidden`` width and ``batch_size``: a toy size shows
    what the framework's Python costs), as ``step(i)``, and the parameters it trains (layer by layer)."""
    mode = PLAIN_DNI.get(method)
    overrides = [f"interface_defaults.mode={mode}"] if mode else [] if method.startswith(PLAIN) \
        else METHODS[method]
    cfg = parse_config(
        {"driver": "ff", "name": f"timing-{method}", "seed": seed,
         "trainer": {"batch_size": batch_size, "lr": 1e-4, "fused": fused},
         "ff": {"layers": 3, "batch_norm": batch_norm, "hidden": hidden}},
        overrides,
    )
    stream = batches(data.x_train, data.y_train, batch_size, torch.Generator().manual_seed(seed))
    if method in (PLAIN, PLAIN_LAYERS):
        torch.manual_seed(seed)
        model = nn.Sequential(*build_layers(cfg, data.input_shape, data.num_classes))
        groups = [model] if method == PLAIN else list(model)
        optimizers = [torch.optim.Adam(m.parameters(), lr=cfg.trainer.lr, fused=fused) for m in groups]

        def plain(_: int) -> None:
            x, y = next(stream)
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            for optimizer in optimizers:
                optimizer.step()

        return plain, list(model.parameters())
    if mode:
        return _plain_dni(cfg, data, stream, conditioned=mode == "cdni")
    system = build_system(cfg, data, torch.device("cpu"))
    system.track_stats = False
    params = [p for agent in system.agents.values() for p in agent.module.parameters()]
    every = cfg.log.every

    def step(i: int) -> None:
        train_step(system, i, *next(stream), data.num_classes)
        if (i + 1) % every == 0:  # as the training loop drains them (else 1,024 records a channel pile up)
            system.drain_stats()

    return step, params


def matmul_flops(step: Callable[[int], None], i: int) -> int:
    """The FLOPs of the matrix products (and convolutions) one call ``step(i)`` makes, backward included."""
    with FlopCounterMode(display=False) as counter:
        step(i)
    return counter.get_total_flops()


def paired_cost(seconds: list[float], reference: list[float]) -> float:
    """How many times ``reference``'s time one method takes: the median over rounds of the ratio of the two
    times in the same round. A machine that speeds up and slows down over seconds moves both sides of a
    round alike, where a ratio of the two medians would compare a fast round of one with a slow one."""
    return statistics.median(a / b for a, b in zip(seconds, reference, strict=True))


def interleaved_rounds(fns: dict[str, Callable[[int], None]], steps: int, repeats: int,
                       done: dict[str, int]) -> dict[str, list[float]]:
    """Seconds per step of each step function, in ``repeats`` rounds of ``steps`` steps, the functions in
    turn within a round (so that machine noise hits them alike); ``done[name]`` is the index of each one's
    next step, advanced as they run."""
    rounds: dict[str, list[float]] = {m: [] for m in fns}
    for _ in range(repeats):
        for m, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn(done[m])
                done[m] += 1
            rounds[m].append((time.perf_counter() - t0) / steps)
    return rounds


def time_methods(methods: list[str], steps: int, repeats: int = 3, seed: int = 0,
                 batch_norm: bool = True, fused: bool = False) -> list[dict]:
    """Seconds per step of each of ``methods`` (``plain`` for plain PyTorch, or a key of ``METHODS``):
    ``repeats`` rounds of ``steps`` steps each, the methods in turn within a round, after 5 warm-up steps;
    the median round (``steps_per_s``), and each cost as the median over rounds of the ratio of the two
    methods' times in the same round. One intra-op thread (the caller's setting comes back after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = timing_data(seed)
        fns = {m: step_function(m, data, seed, batch_norm, fused)[0] for m in methods}
        done = dict.fromkeys(methods, 0)
        interleaved_rounds(fns, 5, 1, done)  # warm-up
        flops = {}
        for m, fn in fns.items():  # one more step each, counted
            flops[m] = matmul_flops(fn, done[m])
            done[m] += 1
        rounds = interleaved_rounds(fns, steps, repeats, done)
    finally:
        torch.set_num_threads(threads)
    per_step = {m: statistics.median(v) for m, v in rounds.items()}

    def cost(m: str, ref: str) -> float | None:
        return paired_cost(rounds[m], rounds[ref]) if ref in rounds else None

    return [
        {"method": m, "dataset": "timing", "model": "mlp3-784-256-10", "batch_norm": batch_norm,
         "test_accuracy": None, "steps_per_s": 1.0 / per_step[m], "steps": steps, "rounds": repeats,
         "seed": seed, "batch_size": 256, "threads": 1, "fused": fused,
         "cost_vs_backprop": cost(m, "backprop"), "cost_vs_plain": cost(m, PLAIN),
         "matmul_flops": flops[m],
         "flops_vs_plain": flops[m] / flops[PLAIN] if PLAIN in flops else None}
        for m in methods
    ]
