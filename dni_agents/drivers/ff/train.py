"""Training in one process: one step of the chain of agents, evaluation on the real forward chain, the
loop (``dni-agents train ff_*``) and ``eval``."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ...config import Config
from ...core import System
from ...data import ImageDataset, batches, load_dataset
from ...runtime.checkpoint import load_system, save_checkpoint
from ...runtime.finished import finished_run, restore_finished
from ...runtime.loop import Loop
from ...runtime.run import open_run, resolve_device, with_threads
from ...runtime.stop import StopRequest
from .model import CHECKPOINT, build_system


def train_step(system: System, step: int, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    """One clock step: each layer ticks in turn; with DNI each one has updated before the next runs. Layers
    joined by ``backprop`` interfaces tick together (``system.coupled()``): one backward pass through them,
    as plain PyTorch makes, instead of one per layer with the gradient handed back between them. The
    optimizers' steps are taken together at the end (``system.steps_together``): the same numbers, fewer
    calls."""
    names = list(system.agents)
    last = names[-1]
    onehot = F.one_hot(y, num_classes).float() if any(i.mode == "cdni" for i in system.interfaces.values()) \
        else None  # only cDNI's utility model reads the label
    sent: dict[str, torch.Tensor] = {}
    with system.steps_together():  # each layer and utility model steps once, after its last use
        for group in system.coupled():
            with system.tick(group, step) as t:
                for name in group:
                    inp = x
                    if name != names[0]:
                        inbound = system.inbound(name)[0]
                        inp = t.receive(inbound, source=x if inbound.synthetic_input is not None else None)
                    out = system.agents[name].module(inp)
                    if name == last:
                        loss = F.cross_entropy(out, y)
                        t.add_loss(loss)
                    else:
                        outbound = system.outbound(name)[0]
                        t.send(outbound, out, context=onehot)
                        sent[outbound.name] = out.detach()
        system.settle()
    system.check_settled()
    return {"loss": loss.detach(), "logits": out.detach(), "messages": sent}


def batch_accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """The share of the batch the top layer got right (asked for only on logged steps: ~1.5% of a step)."""
    return float((logits.argmax(1) == y).float().mean())


@torch.no_grad()
def evaluate_chain(system: System, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> dict:
    """Accuracy and loss of the real forward chain (eval mode: batch-norm running statistics)."""
    modules = [a.module for a in system.agents.values()]
    for m in modules:
        m.eval()
    correct, total_loss = 0, 0.0
    for i in range(0, len(x), batch_size):
        h = x[i : i + batch_size]
        for m in modules:
            h = m(h)
        correct += int((h.argmax(1) == y[i : i + batch_size]).sum())
        total_loss += float(F.cross_entropy(h, y[i : i + batch_size], reduction="sum"))
    for m in modules:
        m.train()
    return {"test_accuracy": correct / len(x), "test_loss": total_loss / len(x)}


@torch.no_grad()
def top_messages(system: System, x: torch.Tensor) -> torch.Tensor:
    """What the last hidden layer sends to the top for inputs x (eval mode): the projector's vectors."""
    modules = [a.module for a in system.agents.values()][:-1]
    h = x
    for m in modules:
        m.eval()
        h = m(h)
        m.train()
    return h


@with_threads()
def train(
    cfg: Config,
    run_dir: Path,
    resume: Path | None = None,
    data: ImageDataset | None = None,
    log: bool = True,
    progress: bool = True,
    stop_at: int | None = None,
    stop: StopRequest | None = None,
) -> dict:
    """Train ``cfg`` and return the final metrics. ``stop_at`` ends early (as a crash would), for tests;
    ``stop`` (the CLI's): on SIGINT/SIGTERM checkpoint at the next step boundary and raise Interrupted."""
    device = resolve_device(cfg.device)
    data = data or load_dataset(cfg.ff.dataset, cfg.ff.data_root)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    system = build_system(cfg, data, device)
    start = 0

    def restore(state: dict) -> int:
        nonlocal start
        load_system(system, state["system"])
        start = int(state["step"])
        return start  # steps are logged at ``step``: the crashed run's from here on are dropped

    run_dir, logger = open_run(cfg, run_dir, resume, log, device, CHECKPOINT, restore)
    tc = cfg.trainer
    stream = batches(x_train, y_train, tc.batch_size, torch.Generator().manual_seed(cfg.seed), start=start)

    def save(step: int) -> Path | None:
        if not log:
            return None
        save_checkpoint(Path(run_dir) / CHECKPOINT, {"step": step, "system": system.state_dict()})
        return Path(run_dir) / CHECKPOINT

    loop = Loop(cfg, start, logger, save, log=log, progress=progress, stop_at=stop_at, stop=stop)
    t0 = time.perf_counter()
    for step in loop:
        x, y = next(stream)
        system.track_stats = loop.logs(step)
        out = train_step(system, step, x, y, data.num_classes)
        if loop.logs(step):
            top = list(system.agents)[-1]
            accuracy = batch_accuracy(out["logits"], y)
            logger.agent(top, {"loss": float(out["loss"]), "accuracy": accuracy}, step)
            loop.bar.set_postfix(loss=f"{float(out['loss']):.3f}")
        loop.drain(system, step)
        if loop.histograms(step):
            for name, message in out["messages"].items():
                logger.message_histogram(name, message, step)
        if log and tc.eval_every and (step + 1) % tc.eval_every == 0 and step + 1 < tc.steps:
            logger.scalars("eval", evaluate_chain(system, x_test, y_test), step)
    seconds = time.perf_counter() - t0
    if not loop.finished:  # stopped early on purpose: leave it as a crash would
        logger.close()
        return {}
    metrics = evaluate_chain(system, x_test, y_test)
    metrics.update(steps=tc.steps, steps_per_s=(loop.end - start) / max(seconds, 1e-9))
    if log:
        logger.scalars("eval", {k: metrics[k] for k in ("test_accuracy", "test_loss")}, tc.steps)
        n = min(cfg.log.embedding_samples, len(x_test))
        if n:
            vectors = top_messages(system, x_test[:n])
            logger.embedding("messages/top_input", vectors, y_test[:n].tolist(), tc.steps)
        save_checkpoint(Path(run_dir) / CHECKPOINT, {"step": tc.steps, "system": system.state_dict()})
        metrics["run_dir"] = str(run_dir)
    logger.close()
    return metrics


def evaluate(run_dir: Path) -> dict:
    """``dni-agents eval RUN_DIR``: test accuracy of the checkpointed chain (of a run on several processes
    too: its ranks' checkpoints put together, evaluated in this one process)."""
    run_dir, cfg, device = finished_run(run_dir)
    data = load_dataset(cfg.ff.dataset, cfg.ff.data_root)
    system = build_system(cfg, data, device)

    def restore(state: dict) -> int:
        load_system(system, state["system"])
        return int(state["step"])

    step = restore_finished(run_dir, CHECKPOINT, device, restore)
    metrics = evaluate_chain(system, data.x_test.to(device), data.y_test.to(device))
    return {"run_dir": str(run_dir), "step": step, **metrics}
