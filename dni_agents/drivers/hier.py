"""Hierarchical driver: two RNN agents ticking at different timescales (the paper's multi-network system).

Agent A (fast) reads one handwritten digit per step. Every ``T`` steps (its window: truncated BPTT) it
answers its own question, *how many of my last T digits were odd*, and sends a message to agent B.
Agent B (slow) ticks once per A window and sees only A's messages; it must say *how many times the target
digit (3) appeared in the last T·K digits*: something A's own task does not need, and which spans K of
B's ticks, so B needs memory too. B unrolls ``b_truncation`` ticks before it updates.

The channel ``A -> B`` is an ordinary core :class:`Interface`; its mode is the method:

==========  ============================================================================================
none        A learns from its own task only; B reads whatever A's state happens to hold
backprop    B's error flows into A: A's windows and B's unroll form one tick, so A waits for B
dni         A updates at the end of every window with ĝ from the utility model; B's true gradient for
            the message arrives when B updates, and trains the utility model
cdni        dni, the utility model also seeing B's label for that tick (one-hot count); with
            ``hier.cdni_context=window`` it sees the count in the message's own window instead: an oracle
            of what the message has to carry, which shows what a utility model of the message alone lacks
==========  ============================================================================================

Both agents may also talk to their own future selves across their truncation boundaries (``A -> A``,
``B -> B``: mode ``none`` is plain truncation, ``dni`` the temporal synthetic gradient of the ``rnn``
driver). Clock: step ids are digit indices; A's tick of window ``w`` is step ``(w + 1)·T - 1``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import Config, ConfigError, interface_config, load_config
from ..core import Agent, Interface, System, Tick
from ..data import load_dataset
from .common import (
    apply_checkpoint,
    build_interface,
    check_like,
    eval_hint,
    load_checkpoint,
    load_system,
    log_interfaces,
    make_optimizer,
    merge_rank_checkpoints,
    open_run,
    plot_against_data_and_time,
    rank_files,
    resolve_device,
    save_checkpoint,
    write_report,
)
from .rnn import Core
from .stop import StopRequest

A, B = "A", "B"
MESSAGE, A_SELF, B_SELF = "A->B", "A->A", "B->B"
CHECKPOINT = "checkpoint.pt"
# hier.yaml lists the channels in this order: interfaces.0 = A -> B, .1 = A -> A, .2 = B -> B
METHODS: dict[str, list[str]] = {
    "none": ["interfaces.0.mode=none"],
    "backprop": ["interfaces.0.mode=backprop"],
    "dni": ["interfaces.0.mode=dni"],
    "cdni": ["interfaces.0.mode=cdni"],
    "cdni_window": ["interfaces.0.mode=cdni", "hier.cdni_context=window"],
}
TEMPORAL: dict[str, list[str]] = {
    "off": ["interfaces.1.mode=none", "interfaces.2.mode=none"],
    "on": ["interfaces.1.mode=dni", "interfaces.2.mode=dni"],
}


# ------------------------------------------------------------------------------------------------ agents
class Sender(nn.Module):
    """Agent A: a GRU over the digits, a readout for its own count at the end of the window, and a message
    that summarises the window: a linear read of A's state at every step, summed over the window (a sum
    suits counts; a read of the final state alone left the digits' identities too hard to reach, for
    backprop and DNI alike)."""

    def __init__(self, in_dim: int, hidden: int, classes: int, message_size: int) -> None:
        super().__init__()
        self.core = Core("gru", in_dim, hidden, classes, None, aux=False)
        self.message = nn.Linear(hidden, message_size)

    def forward(
        self, x: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x``: (N, T, in). Returns A's logits at the window's end, its final state and the message."""
        out, hs, final = self.core(x, state)
        return out[:, -1], final, self.message(hs).sum(1)


@dataclass
class Block:
    """``U = b_truncation`` windows of ``T`` digits for each of the ``N`` streams, with every target."""

    x: torch.Tensor  # (N, U, T, in) images
    odd: torch.Tensor  # (N, U) A's target: odd digits in each window
    count: torch.Tensor  # (N, U) B's target: the target digit in the last T·K digits, at each B tick
    window_count: torch.Tensor  # (N, U) the target digit in each window alone (for the projector)


class DigitStream:
    """``N`` independent streams of random digits (drawn with replacement). Keeps the per-window counts of the
    last ``K - 1`` windows, so B's target at a tick spans blocks."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, streams: int, T: int, K: int, U: int, digit: int):
        self.x, self.y = x.flatten(1), y
        self.N, self.T, self.K, self.U, self.digit = streams, T, K, U, digit
        self.history = torch.zeros(streams, K - 1, dtype=torch.long)  # before the stream: no digits

    def block(self, generator: torch.Generator) -> Block:
        idx = torch.randint(0, len(self.y), (self.N, self.U * self.T), generator=generator)
        labels = self.y[idx].view(self.N, self.U, self.T)
        window_count = (labels == self.digit).sum(-1)
        counts = torch.cat([self.history, window_count], 1)  # (N, K - 1 + U)
        count = counts.unfold(1, self.K, 1).sum(-1)  # sliding sum over K windows: (N, U)
        self.history = counts[:, counts.shape[1] - (self.K - 1):]
        x = self.x[idx].view(self.N, self.U, self.T, -1)
        return Block(x, (labels % 2).sum(-1), count, window_count)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.history = state["history"]


# ------------------------------------------------------------------------------------------------ system
@dataclass
class Hier:
    system: System
    a: Sender
    b: Core
    message: Interface
    a_self: Interface
    b_self: Interface
    cdni_context: str = "label"  # what a cdni utility model sees: B's label, or the window's own count

    @property
    def joint(self) -> bool:
        """``backprop`` on A -> B couples the agents: A's windows and B's unroll are one tick."""
        return any(len(group) > 1 for group in self.system.coupled())


def _check_channels(cfg: Config) -> None:
    for name, (s, r) in ((A_SELF, (A, A)), (B_SELF, (B, B))):
        mode = interface_config(cfg, s, r).mode
        if mode not in ("none", "dni"):
            raise ConfigError(
                f"interfaces ({name}): mode {mode!r} is not supported on an agent's channel to its own "
                f"future (allowed: none, dni)"
            )
    mode = interface_config(cfg, A, B).mode
    if mode == "rial":
        raise ConfigError(
            f"interfaces ({MESSAGE}): mode 'rial' needs driver marl (allowed: none, backprop, dni, cdni)"
        )


def _agent_lr(cfg: Config, name: str) -> float:
    return next((a.lr for a in cfg.agents if a.name == name and a.lr is not None), cfg.trainer.lr)


def build(cfg: Config, in_dim: int, device: torch.device) -> Hier:
    h = cfg.hier
    _check_channels(cfg)
    T, K, U = h.period, h.memory, h.b_truncation
    a = Sender(in_dim, h.a_hidden, T + 1, h.message_size).to(device)
    b = Core("gru", h.message_size, h.b_hidden, T * K + 1, None, aux=False).to(device)
    opt, fused = cfg.trainer.optimizer, cfg.trainer.fused
    agents = [
        Agent(A, a, make_optimizer(opt, a.parameters(), _agent_lr(cfg, A), fused=fused), period=T),
        Agent(B, b, make_optimizer(opt, b.parameters(), _agent_lr(cfg, B), fused=fused), period=T * U),
    ]
    message = build_interface(cfg, A, B, (h.message_size,), device, context_dim=T * K + 1)
    a_self = build_interface(cfg, A, A, (h.a_hidden,), device)
    b_self = build_interface(cfg, B, B, (h.b_hidden,), device)
    system = System(agents, [message, a_self, b_self], on_nonfinite=cfg.trainer.on_nonfinite)
    return Hier(system, a, b, message, a_self, b_self, h.cdni_context)


def tick_step(window: int, T: int) -> int:
    """The clock step of the tick that ends window ``window`` (A's tick; B's too, once per window)."""
    return (window + 1) * T - 1


@dataclass
class Carry:
    """What crosses block boundaries: each agent's state (sent through its own channel) and the first
    window's index of the next block."""

    a_state: torch.Tensor | None = None
    b_state: torch.Tensor | None = None


def a_window(hier: Hier, tick: Tick, block: Block, steps: list[int], j: int, first_window: int, carry: Carry,
             stats: dict, T: int) -> None:
    """A's window ``j`` of the block in ``tick``: its own loss, and its message (and state) sent at
    ``steps[j]``."""
    start = carry.a_state if first_window + j == 0 else tick.receive(hier.a_self, step=steps[j] - T)
    logits, final, message = hier.a(block.x[:, j], start)
    loss = F.cross_entropy(logits, block.odd[:, j])
    tick.add_loss(loss)
    labels = block.window_count if hier.cdni_context == "window" else block.count
    context = F.one_hot(labels[:, j], hier.b.readout.out_features).float()
    tick.send(hier.message, message, context=context, step=steps[j])
    tick.send(hier.a_self, final, step=steps[j])
    carry.a_state = final.detach()
    stats[f"a_loss_{j}"] = loss.item()
    stats[f"a_correct_{j}"] = (logits.argmax(-1) == block.odd[:, j]).float().mean().item()


def b_unroll(hier: Hier, tick: Tick, block: Block, steps: list[int], first_window: int, carry: Carry,
             stats: dict, T: int, delay_s: float = 0.0) -> None:
    """B's unroll over the block's messages in ``tick`` (one B tick per A window; ``delay_s`` of sleep per
    tick makes B artificially slow, for measurements)."""
    n_classes = hier.b.readout.out_features
    start = carry.b_state if first_window == 0 else tick.receive(hier.b_self, step=steps[0] - T)
    messages = torch.stack([tick.receive(hier.message, step=s) for s in steps], 1)
    if delay_s:
        time.sleep(delay_s * len(steps))
    out, _, final = hier.b(messages, start)
    loss = F.cross_entropy(out.reshape(-1, n_classes), block.count.reshape(-1))
    tick.add_loss(loss)
    tick.send(hier.b_self, final, step=steps[-1])
    carry.b_state = final.detach()
    stats["b_loss"] = loss.item()
    stats["b_accuracy"] = (out.argmax(-1) == block.count).float().mean().item()
    stats["messages"] = messages.detach()


def block_metrics(stats: dict, U: int) -> dict:
    """The block's stats as ``train_block`` returns them (A's averaged over its windows; B's if B ran)."""
    out: dict = {}
    if "a_loss_0" in stats:
        out["a_loss"] = sum(stats[f"a_loss_{j}"] for j in range(U)) / U
        out["a_accuracy"] = sum(stats[f"a_correct_{j}"] for j in range(U)) / U
    for key in ("b_loss", "b_accuracy", "messages"):
        if key in stats:
            out[key] = stats[key]
    return out


def train_block(hier: Hier, block: Block, first_window: int, carry: Carry, T: int, delay_s: float = 0.0
                ) -> dict:
    """One block: A's ``U`` windows (each its own tick, unless backprop couples A to B) and B's unroll over
    their messages. Returns the block's losses, accuracies and the messages B received."""
    U = block.x.shape[1]
    steps = [tick_step(first_window + j, T) for j in range(U)]
    stats: dict = {}
    system = hier.system
    if hier.joint:  # A must wait for B's backward pass: one tick for the whole block
        with system.tick([A, B], steps[-1]) as tick:
            for j in range(U):
                a_window(hier, tick, block, steps, j, first_window, carry, stats, T)
            b_unroll(hier, tick, block, steps, first_window, carry, stats, T, delay_s)
    else:  # A updates at the end of every window; B when its unroll ends
        for j in range(U):
            with system.tick(A, steps[j]) as tick:
                a_window(hier, tick, block, steps, j, first_window, carry, stats, T)
        with system.tick(B, steps[-1]) as tick:
            b_unroll(hier, tick, block, steps, first_window, carry, stats, T, delay_s)
    system.check_settled()
    return block_metrics(stats, U)


@torch.no_grad()
def evaluate_stream(hier: Hier, stream: DigitStream, blocks: int, seed: int, device: torch.device
                    ) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """A's and B's accuracy on fresh streams of held-out digits, both states carried through the whole
    stream (no truncation at test time). Also returns every message B received and its labels (the target
digit in that window, B's count, the odd digits in that window), block by block."""
    generator = torch.Generator().manual_seed(seed)
    a_state = torch.zeros(stream.N, hier.a.core.state_size, device=device)
    b_state = torch.zeros(stream.N, hier.b.state_size, device=device)
    a_right = b_right = a_total = b_total = 0.0
    messages, labels = [], []
    for _ in range(blocks):
        block = stream.block(generator)
        msgs = []
        for j in range(block.x.shape[1]):
            logits, a_state, message = hier.a(block.x[:, j].to(device), a_state)
            a_right += float((logits.argmax(-1).cpu() == block.odd[:, j]).sum())
            a_total += block.odd.shape[0]
            msgs.append(message)
        m = torch.stack(msgs, 1)
        out, _, b_state = hier.b(m, b_state)
        b_right += float((out.argmax(-1).cpu() == block.count).sum())
        b_total += block.count.numel()
        messages.append(m.reshape(-1, m.shape[-1]).cpu())
        labels.append(torch.stack([block.window_count, block.count, block.odd], -1).reshape(-1, 3))
    metrics = {"a_accuracy": a_right / a_total, "b_accuracy": b_right / b_total}
    return metrics, torch.cat(messages), torch.cat(labels)


# ------------------------------------------------------------------------------------------------ training
def _streams(cfg: Config):
    h = cfg.hier
    if h.dataset == "mnist" and h.data_root is None:
        raise ConfigError("hier.data_root: mnist needs the directory holding its IDX files "
                          "(train-images-idx3-ubyte[.gz], …); the offline default is hier.dataset=digits")
    data = load_dataset(h.dataset, h.data_root)
    make = lambda x, y, n: DigitStream(x, y, n, h.period, h.memory, h.b_truncation, h.target_digit)  # noqa: E731
    return data, make(data.x_train, data.y_train, cfg.trainer.batch_size), make


def check_carried(cfg: Config, stream: DigitStream, ckpt: dict, device: torch.device) -> None:
    """What a checkpoint carries across blocks (the stream's window counts, A's and B's states) must have
    this config's shapes (trainer.batch_size streams, hier.memory windows, the agents' hidden sizes), or
    the first block after the resume would fail."""
    h, n = cfg.hier, cfg.trainer.batch_size
    check_like("stream", stream.state_dict(), ckpt["stream"])
    for key, hidden in (("a_state", h.a_hidden), ("b_state", h.b_hidden)):
        if ckpt[key] is not None:
            check_like(key, torch.zeros(n, hidden, device=device), ckpt[key])


def train(
    cfg: Config, run_dir: Path, resume: Path | None = None, log: bool = True, progress: bool = True,
    stop_at: int | None = None, stop: StopRequest | None = None,
) -> dict:
    """Train for ``trainer.steps`` blocks (B updates); evaluate on held-out digits every
    ``trainer.eval_every`` blocks and at the end. ``stop_at`` ends early (as a crash would), for tests;
    ``stop``: on SIGINT/SIGTERM checkpoint at the next block boundary and raise Interrupted."""
    device = resolve_device(cfg.device)
    h, tc = cfg.hier, cfg.trainer
    torch.manual_seed(cfg.seed)
    data, stream, make_stream = _streams(cfg)
    hier = build(cfg, data.input_dim, device)
    T, U = h.period, h.b_truncation
    start, seconds, carry, curve = 0, 0.0, Carry(), []

    def restore(ckpt: dict) -> int:
        nonlocal start, seconds, carry, curve
        load_system(hier.system, ckpt["system"])
        check_carried(cfg, stream, ckpt, device)
        stream.load_state_dict(ckpt["stream"])
        start, seconds, curve = int(ckpt["step"]), float(ckpt["seconds"]), ckpt["curve"]
        carry = Carry(ckpt["a_state"], ckpt["b_state"])
        last = tick_step(start * U - 1, T)  # the step both states were sent at
        hier.a_self.restore_in_flight(carry.a_state, last, prediction=ckpt["a_prediction"])
        hier.b_self.restore_in_flight(carry.b_state, last, prediction=ckpt["b_prediction"])
        return start + 1  # blocks are logged at ``step + 1``: the one at ``start`` came before the save

    run_dir, logger = open_run(cfg, run_dir, resume, log, device, CHECKPOINT, restore)
    end = tc.steps if stop_at is None else min(stop_at, tc.steps)
    if carry.a_state is None:
        carry = Carry(torch.zeros(tc.batch_size, h.a_hidden, device=device),
                      torch.zeros(tc.batch_size, h.b_hidden, device=device))

    def evaluate(step: int) -> dict:
        test = make_stream(data.x_test, data.y_test, h.eval_streams)
        metrics, messages, labels = evaluate_stream(hier, test, h.eval_blocks, cfg.seed + 999, device)
        point = {"steps": step, "digits": step * U * T * tc.batch_size, "seconds": seconds, **metrics}
        curve.append(point)
        logger.scalars("test", metrics, step)
        return {"point": point, "messages": messages, "labels": labels}

    def save(step: int) -> Path | None:
        if not log:
            return None
        last = tick_step(step * U - 1, T)
        save_checkpoint(Path(run_dir) / CHECKPOINT, {
            "step": step, "system": hier.system.state_dict(), "stream": stream.state_dict(),
            "seconds": seconds, "curve": curve, "a_state": carry.a_state, "b_state": carry.b_state,
            "a_prediction": hier.a_self.in_flight(last), "b_prediction": hier.b_self.in_flight(last),
        })
        return Path(run_dir) / CHECKPOINT

    bar = tqdm(total=end, initial=start, desc=cfg.name, disable=not progress, leave=False, unit="block")
    stop = stop or StopRequest()
    for step in range(start, end):
        stop.check(step, save, bar, logger)
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        t0 = time.perf_counter()
        block = stream.block(generator)
        block = Block(*(t.to(device) for t in (block.x, block.odd, block.count, block.window_count)))
        hier.system.track_stats = log and (step + 1) % cfg.log.every == 0
        metrics = train_block(hier, block, step * U, carry, T, h.b_delay_s)
        seconds += time.perf_counter() - t0
        bar.update(1)
        if log and (step + 1) % cfg.log.every == 0:
            logger.agent(A, {"loss": metrics["a_loss"], "accuracy": metrics["a_accuracy"]}, step + 1)
            logger.agent(B, {"loss": metrics["b_loss"], "accuracy": metrics["b_accuracy"]}, step + 1)
            log_interfaces(logger, hier.system, step + 1)
            bar.set_postfix(a=f"{metrics['a_accuracy']:.2f}", b=f"{metrics['b_accuracy']:.2f}")
        else:
            hier.system.drain_stats()
        if log and (step + 1) % cfg.log.histogram_every == 0:
            logger.message_histogram(MESSAGE, metrics["messages"], step + 1)
        if tc.eval_every and (step + 1) % tc.eval_every == 0 and step + 1 < tc.steps:
            evaluate(step + 1)
        if log and tc.checkpoint_every and (step + 1) % tc.checkpoint_every == 0:
            save(step + 1)
    bar.close()
    result: dict = {"method": hier.message.mode, "T": T, "K": h.memory, "steps": end,
                    "train_seconds": seconds}
    if end == tc.steps:
        final = evaluate(end)
        result.update({k: final["point"][k] for k in ("a_accuracy", "b_accuracy")}, curve=curve)
        n = min(cfg.log.embedding_samples, len(final["messages"]))
        if log and n:
            digit = h.target_digit
            header = [f"digit_{digit}_in_window", f"digit_{digit}_count", "odd_in_window"]
            logger.embedding(f"messages/{MESSAGE}", final["messages"][:n], final["labels"][:n].tolist(), end,
                             label_header=header)
    if log:
        save(end)
        result["run_dir"] = str(run_dir)
    logger.close()
    return result


def train_distributed(cfg: Config, run_dir: Path, log: bool = True, progress: bool = True,
                      resume: Path | None = None, stop: StopRequest | None = None) -> dict:
    """A on one process, B on another (``--procs 2``): see :mod:`dni_agents.drivers.hier_dist`."""
    from .hier_dist import train_distributed as on_two_ranks  # it imports this module

    return on_two_ranks(cfg, run_dir, log=log, progress=progress, resume=resume, stop=stop)


def evaluate(run_dir: Path) -> dict:
    """``dni-agents eval RUN_DIR``: A's and B's accuracy on held-out digit streams."""
    run_dir = Path(run_dir)
    cfg = load_config(str(run_dir / "config.yaml"))
    device = resolve_device(cfg.device)
    if not (run_dir / CHECKPOINT).is_file() and rank_files(run_dir):  # a run on several processes
        path, state = run_dir / "checkpoint.rank*.pt", merge_rank_checkpoints(run_dir, device)
    else:
        path = run_dir / CHECKPOINT
        state = load_checkpoint(path, device)
    data, _, make_stream = _streams(cfg)
    hier = build(cfg, data.input_dim, device)

    def restore(state: dict) -> int:
        load_system(hier.system, state["system"])
        return int(state["step"])

    steps = apply_checkpoint(path, state, restore, eval_hint(run_dir))
    test = make_stream(data.x_test, data.y_test, cfg.hier.eval_streams)
    metrics, _, _ = evaluate_stream(hier, test, cfg.hier.eval_blocks, cfg.seed + 999, device)
    return {"run_dir": str(run_dir), "steps": steps, **metrics}


# ------------------------------------------------------------------------------------------------ benchmark
def bench(quick: bool = False, out: Path | None = None, seeds: int | None = None, overrides: list[str] = (),
          only: list[str] | None = None) -> dict:
    """``dni-agents bench hier``: B's and A's held-out accuracy for each mode on A -> B (temporal DNI off,
    and in the full run also on), the same block budget for all, several seeds; JSON records and a PNG of
    accuracy against blocks and seconds. Quick: the four modes and dni with temporal DNI on both agents.
``only`` keeps the methods it names (``dni``, ``dni+temporal``)."""
    seeds = seeds or (2 if quick else 3)
    steps = 2000 if quick else 4000
    runs = [(m, "off") for m in METHODS] + ([("dni", "on")] if quick else [(m, "on") for m in METHODS])
    records: list[dict] = []
    report = {"benchmark": "hier", "quick": quick, "overrides": list(overrides), "results": records}
    bar = tqdm(total=len(runs) * seeds, desc="bench hier", unit="run", leave=False)
    for seed in range(seeds):
        for method, temporal in runs:
            label = method if temporal == "off" else f"{method}+temporal"
            if only and label not in only and method not in only:
                continue
            cfg = load_config("hier", [*METHODS[method], *TEMPORAL[temporal], f"trainer.steps={steps}",
                                       f"trainer.eval_every={steps // 10}", *overrides, f"seed={seed}",
                                       f"name=bench_{label.replace('+', '_')}"])
            t0 = time.perf_counter()
            res = train(cfg, Path("runs") / cfg.name, log=False, progress=False)
            wall = time.perf_counter() - t0
            records.append({
                "method": method, "temporal_dni": temporal == "on", "T": cfg.hier.period,
                "K": cfg.hier.memory, "seed": seed,
                "a_accuracy": res["a_accuracy"], "b_accuracy": res["b_accuracy"],
                "steps": steps,
                "digits": steps * cfg.hier.period * cfg.hier.b_truncation * cfg.trainer.batch_size,
                "wall_s": wall, "train_s": res["train_seconds"], "curve": res["curve"],
            })
            bar.update(1)
            tqdm.write(f"{label:>18} seed {seed}: B {res['b_accuracy']:.3f}  A {res['a_accuracy']:.3f}  "
                       f"({wall:.0f} s)")
            write_report(out, report)
    bar.close()
    summary = summarize(records)
    report["summary"] = summary
    write_report(out, report)
    if out is not None:
        plot(records, Path(out).with_suffix(".png"))
    return {"summary": summary, "out": str(out) if out else None}


def summarize(records: list[dict]) -> list[dict]:
    """Mean and range over seeds, per method."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["temporal_dni"]), []).append(r)
    rows = []
    for (method, temporal), rs in groups.items():
        row = {"method": method, "temporal_dni": temporal, "seeds": len(rs)}
        for key in ("b_accuracy", "a_accuracy", "wall_s"):
            values = [r[key] for r in rs]
            row[key] = sum(values) / len(values)
            row[f"{key}_min"], row[f"{key}_max"] = min(values), max(values)
        rows.append(row)
    return rows


def _mean(records: list[dict], key: str, i: int) -> float:
    return sum(r["curve"][i][key] for r in records) / len(records)


def plot(records: list[dict], path: Path) -> None:
    """B's held-out accuracy against blocks and against training seconds (seed means of each point)."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["method"] + ("+temporal" if r["temporal_dni"] else ""), []).append(r)
    lines = []
    for label, rs in groups.items():
        n = min(len(r["curve"]) for r in rs)
        lines.append((label, [rs[0]["curve"][i]["steps"] for i in range(n)],
                      [_mean(rs, "seconds", i) for i in range(n)],
                      [_mean(rs, "b_accuracy", i) for i in range(n)]))
    plot_against_data_and_time(path, lines, "blocks (B updates)", "B accuracy (held-out digits)")

