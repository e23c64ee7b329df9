"""Training (``dni-agents train copy|charlm``) and evaluation of the recurrent driver."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ...config import Config
from ...core import Interface, System
from ...data import load_text
from ...runtime.checkpoint import check_like, load_system, save_checkpoint
from ...runtime.finished import finished_run, restore_finished
from ...runtime.loop import Loop, step_generator
from ...runtime.run import open_run, resolve_device, with_threads
from ...runtime.stop import StopRequest
from .model import CHECKPOINT, build
from .step import window
from .tasks import CopyStream, CopyTask, Sequence, TextStream, bits_per_char


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


@with_threads()
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
    B, T = tc.batch_size, r.truncation
    seconds, error = 0.0, float("nan")

    def save(step: int) -> Path | None:
        if log:
            _save(run_dir, system, iface, step, cur, stream, sent, bits, scored)
        return Path(run_dir) / CHECKPOINT if log else None

    loop = Loop(cfg, start, logger, save, log=log, progress=progress, stop_at=stop_at, stop=stop,
                unit="window", count_from=1)
    for step in loop:
        t0 = time.perf_counter()
        seq = stream.window(T, cur.n, cur.r, step_generator(cfg.seed, step))
        seq = Sequence(seq.inputs.to(device), seq.targets.to(device), seq.mask.to(device))
        system.track_stats = loop.logs(step)
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
        if loop.logs(step):
            length, solved = cur.length(task.repeat), cur.solved(task.repeat)
            logger.scalars("train", {"loss_nats": loss, "error_bits": error, "length": length,
                                     "solved_length": solved}, step + 1)
            loop.bar.set_postfix(length=length, solved=solved, err=f"{error:.2f}")
        loop.drain(system, step)
    end = loop.end
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
    B, T = tc.batch_size, r.truncation

    def save(step: int) -> Path | None:
        if not log:
            return None
        save_checkpoint(Path(run_dir) / CHECKPOINT, {
            "step": step, "system": system.state_dict(), "stream": stream.state_dict(), "sent": sent,
            "prediction": iface.in_flight(step - 1), "seconds": seconds, "best": best, "curve": curve,
        })
        return Path(run_dir) / CHECKPOINT

    loop = Loop(cfg, start, logger, save, log=log, progress=progress, stop_at=stop_at, stop=stop,
                unit="window", count_from=1)
    for step in loop:
        t0 = time.perf_counter()
        x, y = (t.to(device) for t in stream.window(T))
        system.track_stats = loop.logs(step)
        _, sent, loss = window(
            system, core, iface, step, x,
            lambda o, y=y: F.cross_entropy(o.reshape(-1, V), y.reshape(-1), reduction="sum") / (B * T),
            sent if sent is not None else core.initial_state(B, device), first=sent is None, last=False,
            aux_weight=r.aux_weight,
        )
        seconds += time.perf_counter() - t0
        if loop.logs(step):
            logger.scalars("train", {"bpc": loss / math.log(2)}, step + 1)
        loop.drain(system, step)
        if (tc.eval_every and (step + 1) % tc.eval_every == 0) or step + 1 == tc.steps:
            bpc = bits_per_char(core, valid, device)
            curve.append({"windows": step + 1, "chars": (step + 1) * B * T, "seconds": seconds,
                          "valid_bpc": bpc})
            if bpc < best["bpc"]:
                best = {"bpc": bpc, "step": step + 1,
                        "module": {k: v.detach().clone() for k, v in core.state_dict().items()}}
            logger.scalars("valid", {"bpc": bpc, "best_bpc": best["bpc"]}, step + 1)
            loop.bar.set_postfix(valid_bpc=f"{bpc:.3f}")
    end = loop.end
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
    run_dir, cfg, device = finished_run(run_dir)
    if cfg.rnn.task == "charlm":  # the best validation model, on the test split
        corpus = load_text(cfg.rnn.corpus, cfg.rnn.data_root)
        system, core, _ = build(cfg, cfg.rnn.embed, len(corpus.vocab), len(corpus.vocab), device)

        def best_model(state: dict) -> tuple[int, float]:
            load_system(system, state["system"])
            if state["best"]["module"] is not None:
                check_like("best.module", core.state_dict(), state["best"]["module"])
                core.load_state_dict(state["best"]["module"])
            return int(state["step"]), float(state["best"]["bpc"])

        windows, valid_bpc = restore_finished(run_dir, CHECKPOINT, device, best_model)
        return {"run_dir": str(run_dir), "task": "charlm", "valid_bpc": valid_bpc,
                "test_bpc": bits_per_char(core, corpus.test, device), "windows": windows}
    task = _task(cfg)
    system, core, _ = build(cfg, task.in_dim, task.out_dim, None, device)

    def restore(state: dict) -> tuple[int, Curriculum]:
        load_system(system, state["system"])
        return int(state["step"]), Curriculum(**state["curriculum"])

    windows, cur = restore_finished(run_dir, CHECKPOINT, device, restore)
    n, rr = (cur.solved_n, cur.solved_r) if cur.solved_n else (cur.n, cur.r)
    seq = task.sample(256, n, rr, torch.Generator().manual_seed(12345))
    with torch.no_grad():
        out, _, _ = core(seq.inputs.to(device), core.initial_state(256, device))
        bits = float(task.loss_sum(out, seq, 0, seq.inputs.shape[1]) / seq.mask.sum()) / math.log(2)
    return {"run_dir": str(run_dir), "task": cfg.rnn.task, "solved_length": cur.solved(task.repeat),
            "eval_length": cur.length(task.repeat, n, rr), "error_bits": bits, "windows": windows}
