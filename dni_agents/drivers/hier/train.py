"""Training and evaluating the hierarchical system in one process (``dni-agents train hier``, ``eval``)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ...config import Config, ConfigError
from ...data import load_dataset
from ...runtime.checkpoint import check_like, load_system, save_checkpoint
from ...runtime.finished import finished_run, restore_finished
from ...runtime.loop import Loop, step_generator
from ...runtime.run import open_run, resolve_device, with_threads
from ...runtime.stop import StopRequest
from .model import CHECKPOINT, MESSAGE, A, B, build
from .step import Carry, evaluate_stream, tick_step, train_block
from .stream import Block, DigitStream


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


@with_threads()
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

    loop = Loop(cfg, start, logger, save, log=log, progress=progress, stop_at=stop_at, stop=stop,
                unit="block", count_from=1)
    for step in loop:
        t0 = time.perf_counter()
        block = stream.block(step_generator(cfg.seed, step))
        block = Block(*(t.to(device) for t in (block.x, block.odd, block.count, block.window_count)))
        hier.system.track_stats = loop.logs(step)
        metrics = train_block(hier, block, step * U, carry, T, h.b_delay_s)
        seconds += time.perf_counter() - t0
        if loop.logs(step):
            logger.agent(A, {"loss": metrics["a_loss"], "accuracy": metrics["a_accuracy"]}, step + 1)
            logger.agent(B, {"loss": metrics["b_loss"], "accuracy": metrics["b_accuracy"]}, step + 1)
            loop.bar.set_postfix(a=f"{metrics['a_accuracy']:.2f}", b=f"{metrics['b_accuracy']:.2f}")
        loop.drain(hier.system, step)
        if loop.histograms(step):
            logger.message_histogram(MESSAGE, metrics["messages"], step + 1)
        if tc.eval_every and (step + 1) % tc.eval_every == 0 and step + 1 < tc.steps:
            evaluate(step + 1)
    end = loop.end
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


def evaluate(run_dir: Path) -> dict:
    """``dni-agents eval RUN_DIR``: A's and B's accuracy on held-out digit streams."""
    run_dir, cfg, device = finished_run(run_dir)
    data, _, make_stream = _streams(cfg)
    hier = build(cfg, data.input_dim, device)

    def restore(state: dict) -> int:
        load_system(hier.system, state["system"])
        return int(state["step"])

    steps = restore_finished(run_dir, CHECKPOINT, device, restore)
    test = make_stream(data.x_test, data.y_test, cfg.hier.eval_streams)
    metrics, _, _ = evaluate_stream(hier, test, cfg.hier.eval_blocks, cfg.seed + 999, device)
    return {"run_dir": str(run_dir), "steps": steps, **metrics}
