"""One block of training of the hierarchical system on the core's ticks (A's windows, B's unroll) and its
evaluation on held-out streams: the loop body, kept apart from the model (nanoGPT's split)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...core import Tick
from .model import A, B, Hier
from .stream import Block, DigitStream


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
