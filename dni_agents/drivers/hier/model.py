"""The hierarchical system: A (fast RNN, its own odd-count task) and B (slow RNN, the target count), the
digit stream, and one block of training (A's windows, B's unroll) on the core's ticks."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...config import Config, ConfigError, interface_config
from ...core import Agent, Interface, System, Tick
from ..common import build_interface, make_optimizer
from ..rnn.model import Core

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
