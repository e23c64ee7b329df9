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

from .bench import bench, plot, summarize
from .config import SECTION, agent_names
from .dist import measure_slow_b, placement_for, train_distributed
from .model import A_SELF, B_SELF, CHECKPOINT, MESSAGE, METHODS, TEMPORAL, A, B, Hier, Sender, build
from .step import Carry, a_window, b_unroll, block_metrics, evaluate_stream, tick_step, train_block
from .stream import Block, DigitStream
from .train import _streams, check_carried, evaluate, train

__all__ = [
    "agent_names",
    "SECTION",
    "A", "A_SELF", "B", "B_SELF", "CHECKPOINT", "MESSAGE", "METHODS", "TEMPORAL", "Block", "Carry",
    "DigitStream", "Hier", "Sender", "_streams", "a_window", "b_unroll", "bench", "block_metrics", "build",
    "check_carried", "evaluate", "evaluate_stream", "measure_slow_b", "placement_for", "plot", "summarize",
    "tick_step", "train", "train_block", "train_distributed",
]
