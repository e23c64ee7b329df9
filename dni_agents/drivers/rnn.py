"""Recurrent driver: an RNN trained with truncated BPTT, talking to its own future self.

The RNN is one agent with one interface, ``rnn -> rnn``. It unrolls ``T`` steps (a window) per tick; at
the end of the window it *sends* its state (LSTM: ``h`` and ``c`` together) through the interface and the
next window *receives* it as its initial state. What crosses the truncation boundary backwards is the
method:

=========  ========================================================================================
bptt       interface mode ``none``: plain truncation, no gradient crosses the boundary
dni        the utility model's ĝ for the final state, scaled (0.1), applied at once; the next window's
           gradient for its initial state — which already contains *its* ĝ — is the target (bootstrapping)
dni_aux    dni plus an auxiliary task (``rnn.aux``): from every step of the window a linear head predicts
           the synthetic gradient the window will end with, so the core learns to anticipate it
=========  ========================================================================================

Nothing here is DNI-specific: the boundary is ``tick.receive`` / ``tick.send`` on a core interface, like
every other channel in the framework. Tasks: Copy and Repeat Copy (Graves et al. 2014) with a curriculum,
and a character-level language model (bits per character; early stopping on validation).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import Config, ConfigError, load_config
from ..core import Agent, Interface, System
from ..data import load_text
from .common import (
    apply_checkpoint,
    build_interface,
    check_like,
    eval_hint,
    load_checkpoint,
    load_system,
    log_interfaces,
    make_optimizer,
    open_run,
    plot_against_data_and_time,
    resolve_device,
    save_checkpoint,
    write_report,
)
from .stop import StopRequest

METHODS: dict[str, list[str]] = {
    "bptt": ["interface_defaults.mode=none", "rnn.aux=false"],
    "dni": ["interface_defaults.mode=dni", "rnn.aux=false"],
    "dni_aux": ["interface_defaults.mode=dni", "rnn.aux=true"],
}
AGENT = "rnn"
CHECKPOINT = "checkpoint.pt"


# ------------------------------------------------------------------------------------------------ model
class Core(nn.Module):
    """Input layer → LSTM/GRU → readout, plus the aux head of ``dni_aux``. The recurrent state travels as
    one flat tensor (LSTM: ``[h | c]``), because that tensor is the message across the boundary."""

    def __init__(self, cell: str, in_dim: int, hidden: int, out_dim: int, vocab: int | None, aux: bool):
        super().__init__()
        self.cell, self.hidden = cell, hidden
        self.embed = nn.Embedding(vocab, in_dim) if vocab else None
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(in_dim, hidden, batch_first=True)
        self.readout = nn.Linear(hidden, out_dim)
        self.state_size = hidden * (2 if cell == "lstm" else 1)
        self.aux = nn.Linear(hidden, self.state_size) if aux else None

    def initial_state(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(batch, self.state_size, device=device)

    def forward(
        self, x: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x``: (B, T, in) or (B, T) token ids. Returns outputs (B, T, out), hidden states (B, T, H), and
        the final state (B, state_size)."""
        if self.embed is not None:
            x = self.embed(x)
        if self.cell == "lstm":
            h0, c0 = state.split(self.hidden, dim=-1)
            hs, (h, c) = self.rnn(x, (h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous()))
            final = torch.cat([h[0], c[0]], -1)
        else:
            hs, h = self.rnn(x, state.unsqueeze(0).contiguous())
            final = h[0]
        return self.readout(hs), hs, final


# ------------------------------------------------------------------------------------------------ tasks
@dataclass
class Sequence:
    """One batch of sequences: inputs, targets and a mask of the steps that are scored."""

    inputs: torch.Tensor  # (B, L, in) float, or (B, L) token ids
    targets: torch.Tensor  # (B, L, out) bits, or (B, L) token ids
    mask: torch.Tensor  # (B, L) 1 where the step is scored


class CopyTask:
    """Copy (Graves et al. 2014): ``N`` random ``bits``-bit vectors, a delimiter, then reproduce them.
    Repeat Copy: the delimiter channel carries the repeat count ``R`` (scaled), the output is the sequence
    ``R`` times followed by an end marker. Inputs have two extra channels (delimiter, repeat count);
    outputs one extra (end marker, repeat copy only). Curriculum: the length grows when the error of a
    batch (bits per scored step) falls below the threshold; for repeat copy ``N`` and ``R`` grow in turn."""

    def __init__(self, repeat: bool, bits: int, max_repeats: int = 20) -> None:
        self.repeat, self.bits, self.max_repeats = repeat, bits, max_repeats
        self.in_dim = bits + 2
        self.out_dim = bits + (1 if repeat else 0)

    def sample(self, batch: int, n: int, r: int, generator: torch.Generator) -> Sequence:
        b = self.bits
        data = torch.randint(0, 2, (batch, n, b), generator=generator).float()
        reps = r if self.repeat else 1
        out_len = n * reps + (1 if self.repeat else 0)
        length = n + 1 + out_len
        x = torch.zeros(batch, length, self.in_dim)
        y = torch.zeros(batch, length, self.out_dim)
        mask = torch.zeros(batch, length)
        x[:, :n, :b] = data
        x[:, n, b] = 1.0  # delimiter
        if self.repeat:
            x[:, n, b + 1] = r / self.max_repeats
        y[:, n + 1: n + 1 + n * reps, :b] = data.repeat(1, reps, 1)
        if self.repeat:
            y[:, -1, b] = 1.0  # end marker
        mask[:, n + 1:] = 1.0
        return Sequence(x, y, mask)

    def loss_sum(self, out: torch.Tensor, seq: Sequence, lo: int, hi: int) -> torch.Tensor:
        """Summed binary cross-entropy (nats) over the scored steps ``lo:hi``."""
        bce = F.binary_cross_entropy_with_logits(out, seq.targets[:, lo:hi], reduction="none").sum(-1)
        return (bce * seq.mask[:, lo:hi]).sum()


class CopyStream:
    """Sequences back to back in each of ``B`` rows, cut into windows of ``T`` steps wherever they fall (as a
    continuous stream, so a sequence often spans a window boundary and sometimes fits inside a window). New
    sequences have the curriculum's current length."""

    def __init__(self, task: CopyTask, batch: int) -> None:
        self.task, self.batch = task, batch
        self.x = torch.zeros(batch, 0, task.in_dim)
        self.y = torch.zeros(batch, 0, task.out_dim)
        self.mask = torch.zeros(batch, 0)

    def window(self, T: int, n: int, r: int, generator: torch.Generator) -> Sequence:
        """The next ``T`` steps (new sequences of length ``n``, ``r`` drawn as needed)."""
        while self.x.shape[1] < T:
            seq = self.task.sample(self.batch, n, r, generator)
            self.x, self.y = torch.cat([self.x, seq.inputs], 1), torch.cat([self.y, seq.targets], 1)
            self.mask = torch.cat([self.mask, seq.mask], 1)
        out = Sequence(self.x[:, :T], self.y[:, :T], self.mask[:, :T])
        self.x, self.y, self.mask = self.x[:, T:], self.y[:, T:], self.mask[:, T:]
        return out

    def state_dict(self) -> dict:
        return {"x": self.x, "y": self.y, "mask": self.mask}

    def load_state_dict(self, state: dict) -> None:
        self.x, self.y, self.mask = state["x"], state["y"], state["mask"]


class TextStream:
    """``B`` rows, each a contiguous stretch of the text, read ``T`` characters at a time (wrapping)."""

    def __init__(self, ids: torch.Tensor, batch: int) -> None:
        n = len(ids) // batch
        self.rows = ids[: n * batch].view(batch, n)
        self.pos = 0

    def window(self, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos + T + 1 > self.rows.shape[1]:
            self.pos = 0
        x = self.rows[:, self.pos: self.pos + T]
        y = self.rows[:, self.pos + 1: self.pos + T + 1]
        self.pos += T
        return x, y

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = int(state["pos"])


@torch.no_grad()
def bits_per_char(
    core: Core, ids: torch.Tensor, device: torch.device, rows: int = 16, chunk: int = 1000
) -> float:
    """Cross-entropy in bits per character, the state carried through the whole text (no truncation)."""
    n = len(ids) // rows
    data = ids[: n * rows].view(rows, n).to(device)
    state = core.initial_state(rows, device)
    total = 0.0
    for lo in range(0, n - 1, chunk):
        hi = min(n - 1, lo + chunk)
        out, _, state = core(data[:, lo:hi], state)
        total += float(F.cross_entropy(out.reshape(-1, out.shape[-1]), data[:, lo + 1: hi + 1].reshape(-1),
                                       reduction="sum"))
    return total / (rows * (n - 1)) / math.log(2)


# ------------------------------------------------------------------------------------------------ system
def build(cfg: Config, in_dim: int, out_dim: int, vocab: int | None, device: torch.device
          ) -> tuple[System, Core, Interface]:
    r = cfg.rnn
    core = Core(r.cell, in_dim, r.hidden, out_dim, vocab, r.aux).to(device)
    optimizer = make_optimizer(cfg.trainer.optimizer, core.parameters(), cfg.trainer.lr,
                               fused=cfg.trainer.fused)
    agent = Agent(AGENT, core, optimizer, max_grad_norm=r.max_grad_norm)
    iface = build_interface(cfg, AGENT, AGENT, (core.state_size,), device)
    return System([agent], [iface], on_nonfinite=cfg.trainer.on_nonfinite), core, iface


def window(
    system: System, core: Core, iface: Interface, step: int, x: torch.Tensor, loss_fn,
    state: torch.Tensor | None, first: bool, last: bool, aux_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One tick: the window's unroll from the state the previous window sent (a fresh leaf whose gradient
    goes back as that window's target), its loss, and — unless the sequence ends here — the final state sent
    to the next window (ĝ applied now). ``loss_fn(out)`` is the window's summed loss already divided by the
    batch's normaliser. Returns the outputs, the final state (detached) and the loss value."""
    with system.tick(AGENT, step) as tick:
        start = state if first else tick.receive(iface, step=step - 1)
        out, hs, final = core(x, start)
        loss = loss_fn(out)
        tick.add_loss(loss)
        if not last:
            tick.send(iface, final, step=step)
            if core.aux is not None and iface.utility is not None:
                # dni_aux: every step of the window predicts the synthetic gradient the window ends with
                with torch.no_grad():
                    target = iface.utility(final.detach(), None)
                pred = core.aux(hs)
                tick.add_loss(aux_weight * F.mse_loss(pred, target.unsqueeze(1).expand_as(pred)))
    return out.detach(), final.detach(), loss.item()


# ------------------------------------------------------------------------------------------------ training
@dataclass
class Curriculum:
    """Where a copy task stands: the current ``n`` (and ``r``), and the last ``(n, r)`` solved."""

    n: int
    r: int
    solved_n: int = 0
    solved_r: int = 0
    grow_r_next: bool = False

    def length(self, repeat: bool, n: int | None = None, r: int | None = None) -> int:
        """The task's length: ``n`` for copy, ``n·r`` (the output's length) for repeat copy."""
        n, r = (self.n, self.r) if n is None else (n, r)
        return n * r if repeat else n

    def solved(self, repeat: bool) -> int:
        return self.length(repeat, self.solved_n, self.solved_r)

    def advance(self, repeat: bool, max_repeats: int) -> None:
        self.solved_n, self.solved_r = self.n, self.r
        if repeat and self.grow_r_next and self.r < max_repeats:
            self.r += 1
        else:
            self.n += 1
        self.grow_r_next = not self.grow_r_next


def _task(cfg: Config) -> CopyTask:
    return CopyTask(repeat=cfg.rnn.task == "repeat_copy", bits=cfg.rnn.bits, max_repeats=cfg.rnn.max_repeats)


def train(
    cfg: Config, run_dir: Path, resume: Path | None = None, log: bool = True, progress: bool = True,
    stop_at: int | None = None, stop: StopRequest | None = None,
) -> dict:
    """Train ``cfg`` for ``trainer.steps`` windows; return the result. ``stop_at`` ends early (as a crash
    would), for tests; ``stop``: on SIGINT/SIGTERM checkpoint at the next window boundary and raise
    Interrupted."""
    stop = stop or StopRequest()
    if cfg.rnn.task == "charlm":
        return train_lm(cfg, run_dir, resume, log, progress, stop_at, stop)
    device = resolve_device(cfg.device)
    r, tc = cfg.rnn, cfg.trainer
    task = _task(cfg)
    torch.manual_seed(cfg.seed)
    system, core, iface = build(cfg, task.in_dim, task.out_dim, None, device)
    stream = CopyStream(task, tc.batch_size)
    cur = Curriculum(r.start_length, 1)
    start, sent, bits, scored = 0, None, 0.0, 0.0  # sent: the state the last window sent

    def restore(ckpt: dict) -> int:
        nonlocal start, sent, bits, scored, cur
        load_system(system, ckpt["system"])
        if ckpt["sent"] is not None:  # the state crossing into the next window: trainer.batch_size rows
            check_like("sent", core.initial_state(tc.batch_size, device), ckpt["sent"])
        stream.load_state_dict(ckpt["stream"])
        start, bits, scored = int(ckpt["step"]), float(ckpt["bits"]), float(ckpt["scored"])
        cur = Curriculum(**ckpt["curriculum"])
        sent = ckpt["sent"]
        iface.restore_in_flight(sent, start - 1, prediction=ckpt["prediction"])
        return start + 1  # windows are logged at ``step + 1``: the one at ``start`` came before the save

    run_dir, logger = open_run(cfg, run_dir, resume, log, device, CHECKPOINT, restore)
    end = tc.steps if stop_at is None else min(stop_at, tc.steps)
    bar = tqdm(total=end, initial=start, desc=cfg.name, disable=not progress, leave=False, unit="window")
    B, T = tc.batch_size, r.truncation
    seconds, error = 0.0, float("nan")

    def save(step: int) -> Path | None:
        if log:
            _save(run_dir, system, iface, step, cur, stream, sent, bits, scored)
        return Path(run_dir) / CHECKPOINT if log else None

    for step in range(start, end):
        stop.check(step, save, bar, logger)
        t0 = time.perf_counter()
        seq = stream.window(T, cur.n, cur.r, torch.Generator().manual_seed(cfg.seed * 1_000_003 + step))
        seq = Sequence(seq.inputs.to(device), seq.targets.to(device), seq.mask.to(device))
        system.track_stats = log and (step + 1) % cfg.log.every == 0
        _, sent, loss = window(
            system, core, iface, step, seq.inputs, lambda o, seq=seq: task.loss_sum(o, seq, 0, T) / (B * T),
            sent if sent is not None else core.initial_state(B, device), first=sent is None, last=False,
            aux_weight=r.aux_weight,
        )
        seconds += time.perf_counter() - t0
        # the curriculum looks at the error of about one batch of sequences' worth of scored steps
        bits += loss * B * T / math.log(2)  # the window's summed cross-entropy, in bits
        scored += float(seq.mask.sum())
        if scored >= B * (cur.n * (cur.r if task.repeat else 1)):
            error, bits, scored = bits / scored, 0.0, 0.0
            if error < r.threshold:
                cur.advance(task.repeat, r.max_repeats)
        bar.update(1)
        if log and (step + 1) % cfg.log.every == 0:
            length, solved = cur.length(task.repeat), cur.solved(task.repeat)
            logger.scalars("train", {"loss_nats": loss, "error_bits": error, "length": length,
                                     "solved_length": solved}, step + 1)
            log_interfaces(logger, system, step + 1)
            bar.set_postfix(length=length, solved=solved, err=f"{error:.2f}")
        else:
            system.drain_stats()
        if log and tc.checkpoint_every and (step + 1) % tc.checkpoint_every == 0:
            _save(run_dir, system, iface, step + 1, cur, stream, sent, bits, scored)
    bar.close()
    result = {"task": r.task, "T": T, "solved_length": cur.solved(task.repeat),
              "length": cur.length(task.repeat), "windows": end, "train_seconds": seconds}
    if log:
        _save(run_dir, system, iface, end, cur, stream, sent, bits, scored)
        logger.scalars("final", {"solved_length": cur.solved(task.repeat)}, end)
        result["run_dir"] = str(run_dir)
    logger.close()
    return result


def _save(run_dir: Path, system: System, iface: Interface, step: int, cur: Curriculum, stream: CopyStream,
          sent: torch.Tensor | None, bits: float, scored: float) -> None:
    """Everything an exact resume needs, including the state in flight across the boundary."""
    save_checkpoint(Path(run_dir) / CHECKPOINT, {
        "step": step, "curriculum": dict(vars(cur)), "system": system.state_dict(),
        "stream": stream.state_dict(), "sent": sent, "prediction": iface.in_flight(step - 1),
        "bits": bits, "scored": scored,
    })


def train_lm(
    cfg: Config, run_dir: Path, resume: Path | None = None, log: bool = True, progress: bool = True,
    stop_at: int | None = None, stop: StopRequest | None = None,
) -> dict:
    """The character-level language model: ``B`` streams of text in windows of ``T``; validation bits per
    character every ``trainer.eval_every`` windows; the best validation model is scored on the test split."""
    device = resolve_device(cfg.device)
    r, tc = cfg.rnn, cfg.trainer
    corpus = load_text(r.corpus, r.data_root)
    V = len(corpus.vocab)
    torch.manual_seed(cfg.seed)
    system, core, iface = build(cfg, r.embed, V, V, device)
    stream = TextStream(corpus.train, tc.batch_size)
    valid = corpus.valid[: r.eval_chars]
    start, sent, seconds = 0, None, 0.0
    best: dict = {"bpc": float("inf"), "step": 0, "module": None}
    curve: list[dict] = []  # validation BPC against windows, characters and seconds

    def restore(ckpt: dict) -> int:
        nonlocal start, sent, seconds, best, curve
        load_system(system, ckpt["system"])
        if ckpt["sent"] is not None:  # the state crossing into the next window: trainer.batch_size rows
            check_like("sent", core.initial_state(tc.batch_size, device), ckpt["sent"])
        stream.load_state_dict(ckpt["stream"])
        start, sent, seconds = int(ckpt["step"]), ckpt["sent"], float(ckpt["seconds"])
        best, curve = ckpt["best"], ckpt["curve"]
        iface.restore_in_flight(sent, start - 1, prediction=ckpt["prediction"])
        return start + 1  # windows are logged at ``step + 1``: the one at ``start`` came before the save

    run_dir, logger = open_run(cfg, run_dir, resume, log, device, CHECKPOINT, restore)
    end = tc.steps if stop_at is None else min(stop_at, tc.steps)
    bar = tqdm(total=end, initial=start, desc=cfg.name, disable=not progress, leave=False, unit="window")
    B, T = tc.batch_size, r.truncation

    def save(step: int) -> Path | None:
        if not log:
            return None
        save_checkpoint(Path(run_dir) / CHECKPOINT, {
            "step": step, "system": system.state_dict(), "stream": stream.state_dict(), "sent": sent,
            "prediction": iface.in_flight(step - 1), "seconds": seconds, "best": best, "curve": curve,
        })
        return Path(run_dir) / CHECKPOINT

    stop = stop or StopRequest()
    for step in range(start, end):
        stop.check(step, save, bar, logger)
        t0 = time.perf_counter()
        x, y = (t.to(device) for t in stream.window(T))
        system.track_stats = log and (step + 1) % cfg.log.every == 0
        _, sent, loss = window(
            system, core, iface, step, x,
            lambda o, y=y: F.cross_entropy(o.reshape(-1, V), y.reshape(-1), reduction="sum") / (B * T),
            sent if sent is not None else core.initial_state(B, device), first=sent is None, last=False,
            aux_weight=r.aux_weight,
        )
        seconds += time.perf_counter() - t0
        bar.update(1)
        if log and (step + 1) % cfg.log.every == 0:
            logger.scalars("train", {"bpc": loss / math.log(2)}, step + 1)
            log_interfaces(logger, system, step + 1)
        else:
            system.drain_stats()
        if (tc.eval_every and (step + 1) % tc.eval_every == 0) or step + 1 == tc.steps:
            bpc = bits_per_char(core, valid, device)
            curve.append({"windows": step + 1, "chars": (step + 1) * B * T, "seconds": seconds,
                          "valid_bpc": bpc})
            if bpc < best["bpc"]:
                best = {"bpc": bpc, "step": step + 1,
                        "module": {k: v.detach().clone() for k, v in core.state_dict().items()}}
            logger.scalars("valid", {"bpc": bpc, "best_bpc": best["bpc"]}, step + 1)
            bar.set_postfix(valid_bpc=f"{bpc:.3f}")
        if log and tc.checkpoint_every and (step + 1) % tc.checkpoint_every == 0:
            save(step + 1)
    bar.close()
    result: dict = {"task": "charlm", "corpus": r.corpus, "T": T, "windows": end, "train_seconds": seconds,
                    "chars_per_s": end * B * T / max(seconds, 1e-9), "curve": curve}
    if end == tc.steps and best["module"] is not None:
        core.load_state_dict(best["module"])
        result.update(valid_bpc=best["bpc"], best_windows=best["step"],
                      test_bpc=bits_per_char(core, corpus.test, device))
        logger.scalars("test", {"bpc": result["test_bpc"]}, end)
    if log:
        save(end)
        result["run_dir"] = str(run_dir)
    logger.close()
    return result


def evaluate(run_dir: Path) -> dict:
    """``dni-agents eval RUN_DIR``: the curriculum reached, and the error at the longest solved length."""
    run_dir = Path(run_dir)
    cfg = load_config(str(run_dir / "config.yaml"))
    device = resolve_device(cfg.device)
    state = load_checkpoint(run_dir / CHECKPOINT, device)
    if cfg.rnn.task == "charlm":  # the best validation model, on the test split
        corpus = load_text(cfg.rnn.corpus, cfg.rnn.data_root)
        system, core, _ = build(cfg, cfg.rnn.embed, len(corpus.vocab), len(corpus.vocab), device)

        def best_model(state: dict) -> tuple[int, float]:
            load_system(system, state["system"])
            if state["best"]["module"] is not None:
                check_like("best.module", core.state_dict(), state["best"]["module"])
                core.load_state_dict(state["best"]["module"])
            return int(state["step"]), float(state["best"]["bpc"])

        windows, valid_bpc = apply_checkpoint(run_dir / CHECKPOINT, state, best_model, eval_hint(run_dir))
        return {"run_dir": str(run_dir), "task": "charlm", "valid_bpc": valid_bpc,
                "test_bpc": bits_per_char(core, corpus.test, device), "windows": windows}
    task = _task(cfg)
    system, core, _ = build(cfg, task.in_dim, task.out_dim, None, device)

    def restore(state: dict) -> tuple[int, Curriculum]:
        load_system(system, state["system"])
        return int(state["step"]), Curriculum(**state["curriculum"])

    windows, cur = apply_checkpoint(run_dir / CHECKPOINT, state, restore, eval_hint(run_dir))
    n, rr = (cur.solved_n, cur.solved_r) if cur.solved_n else (cur.n, cur.r)
    seq = task.sample(256, n, rr, torch.Generator().manual_seed(12345))
    with torch.no_grad():
        out, _, _ = core(seq.inputs.to(device), core.initial_state(256, device))
        bits = float(task.loss_sum(out, seq, 0, seq.inputs.shape[1]) / seq.mask.sum()) / math.log(2)
    return {"run_dir": str(run_dir), "task": cfg.rnn.task, "solved_length": cur.solved(task.repeat),
            "eval_length": cur.length(task.repeat, n, rr), "error_bits": bits, "windows": windows}


# ------------------------------------------------------------------------------------------------ benchmark
def _run(base: str, method: str, extra: list[str]) -> dict:
    cfg = load_config(base, [*METHODS[method], *extra])
    t0 = time.perf_counter()
    result = train(cfg, Path("runs") / cfg.name, log=False, progress=False)
    result["wall_s"] = time.perf_counter() - t0
    return result


def _split_only(only: list[str] | None) -> tuple[set[str], set[str]]:
    """``--only`` names as (tasks, methods); an unknown name is a user error that lists the known ones."""
    tasks = {"copy", "repeat_copy", "charlm", "wallclock"}
    unknown = [n for n in only or [] if n not in tasks and n not in METHODS]
    if unknown:
        raise ConfigError(f"--only: {','.join(unknown)} is neither a task ({', '.join(sorted(tasks))}) "
                          f"nor a method ({', '.join(METHODS)})")
    return {n for n in only or [] if n in tasks}, {n for n in only or [] if n in METHODS}


def bench(quick: bool = False, out: Path | None = None, seeds: int | None = None, overrides: list[str] = (),
          only: list[str] | None = None) -> dict:
    """``dni-agents bench rnn``: the paper's Table 1 shape — Copy and Repeat Copy (longest length solved
    within the same window budget) and the char-LM (test BPC), for bptt / dni / dni_aux at several T — and
    the wall-clock study: bptt at T = 8, 20, 40 against dni at T = 8 on the char-LM, validation BPC against
    characters seen and seconds (JSON, and a PNG beside it). ``only`` names tasks (``copy``,
    ``repeat_copy``, ``charlm``, ``wallclock``: the wall-clock study) and/or methods (``bptt``, ``dni``,
    ``dni_aux``): a run is kept when its task and its method are both named, or their kind is not named at
    all (``--only repeat_copy,dni``: Repeat Copy's dni column only)."""
    seeds = seeds or 1
    Ts = [3, 5] if quick else [2, 3, 4, 5, 8]
    copy_steps = 2000 if quick else 20000
    lm_steps = 300 if quick else 6000
    lm_eval = ["trainer.eval_every=100" if quick else "trainer.eval_every=500",
               "rnn.eval_chars=20000" if quick else "rnn.eval_chars=100000"]
    tasks = ["copy"] if quick else ["copy", "repeat_copy", "charlm"]
    only_tasks, only_methods = _split_only(only)
    keep = lambda task, method=None: (not only_tasks or task in only_tasks) and (  # noqa: E731
        method is None or not only_methods or method in only_methods)
    records: list[dict] = []
    report = {"benchmark": "rnn", "quick": quick, "overrides": list(overrides), "results": records}
    bar = tqdm(desc="bench rnn", unit="run", leave=False)
    for seed in range(seeds):
        for task in tasks:
            for T in Ts if task != "charlm" else [t for t in Ts if t >= 3]:
                for method in METHODS:
                    if not keep(task, method):
                        continue
                    if task == "charlm":
                        extra = [f"rnn.truncation={T}", f"trainer.steps={lm_steps}", *lm_eval]
                        base = "charlm"
                    else:
                        extra = [f"rnn.task={task}", f"rnn.truncation={T}", f"trainer.steps={copy_steps}"]
                        base = "copy"
                    res = _run(base, method, [*extra, *overrides, f"seed={seed}", f"name=bench_{task}"])
                    metric = "test_bpc" if task == "charlm" else "solved_length"
                    records.append({
                        "study": "table1", "method": method, "task": task, "T": T, "seed": seed,
                        "metric": metric, "value": res[metric],
                        "chars_per_s": res.get("chars_per_s"), "wall_s": res["wall_s"],
                        "curve": res.get("curve"),
                    })
                    bar.update(1)
                    tqdm.write(f"{task:>11} T={T} {method:>7}: {metric} {res[metric]:.3f} "
                               f"({res['wall_s']:.0f} s)")
                    write_report(out, report)
        # wall-clock study: the same characters for every run, so the curves are comparable in data and time
        if keep("wallclock"):
            per_row = lm_steps * 8  # characters each of the batch's streams reads, the same for every run
            for method, T in (("bptt", 8), ("bptt", 20), ("bptt", 40), ("dni", 8)):
                if not keep("wallclock", method):
                    continue
                extra = [f"rnn.truncation={T}", f"trainer.steps={per_row // T}", *lm_eval,
                         f"trainer.eval_every={max(1, (per_row // T) // (3 if quick else 12))}"]
                res = _run("charlm", method, [*extra, *overrides, f"seed={seed}", "name=bench_wallclock"])
                records.append({
                    "study": "wallclock", "method": method, "task": "charlm", "T": T, "seed": seed,
                    "metric": "valid_bpc", "value": res["valid_bpc"], "chars_per_s": res["chars_per_s"],
                    "wall_s": res["wall_s"], "curve": res["curve"],
                })
                bar.update(1)
                tqdm.write(f"  wallclock {method} T={T}: best valid BPC {res['valid_bpc']:.3f}, "
                           f"{res['chars_per_s']:.0f} chars/s")
                write_report(out, report)
    bar.close()
    if out is not None:
        plot_wallclock(records, Path(out).with_suffix(".png"))
    return {"results": [{k: v for k, v in r.items() if k != "curve"} for r in records],
            "out": str(out) if out else None}


def plot_wallclock(records: list[dict], path: Path) -> None:
    """Validation BPC against characters seen and against seconds, one line per (method, T)."""
    rows = [r for r in records if r["study"] == "wallclock" and r["curve"]]
    if not rows:
        return
    lines = [(f"{r['method']} T={r['T']}", [p["chars"] for p in r["curve"]],
              [p["seconds"] for p in r["curve"]], [p["valid_bpc"] for p in r["curve"]]) for r in rows]
    plot_against_data_and_time(path, lines, "characters seen", "validation bits per character")
