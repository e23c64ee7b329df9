"""The ``hier:`` section of a config: the digit stream, A's window and B's memory and unroll."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ...config import Config, NonNegFloat, PosInt, _Strict


class HierConfig(_Strict):
    """Two RNN agents on a digit stream: A (fast) reads one digit per step and ticks every ``period`` steps
    (its truncation window); B (slow) ticks once per A window on A's message alone and updates every
    ``b_truncation`` of its ticks. ``trainer.steps`` counts B's updates (blocks of
    ``period · b_truncation`` digits)."""

    # the digits the stream is made of
    dataset: Literal["digits", "mnist"] = "digits"
    data_root: str | None = None  # mnist: the directory with the IDX files
    period: Annotated[int, Field(ge=2)] = 4  # T: digits per A window = steps per B tick
    memory: Annotated[int, Field(ge=2)] = 2  # K: B counts the target digit over the last T·K digits
    b_truncation: PosInt = 2  # B's ticks per unroll (B updates every b_truncation·T digits)
    # A's GRU width
    a_hidden: PosInt = 64
    # B's GRU width
    b_hidden: PosInt = 64
    message_size: PosInt = 64  # A -> B: a linear read of A's state, summed over the window
    target_digit: Annotated[int, Field(ge=0, le=9)] = 3  # what B counts
    # what a cdni utility model on A -> B sees besides the message: B's label at that tick (the paper's cDNI)
    # or the target digit's count in the message's own window (an oracle of what the message must carry)
    cdni_context: Literal["label", "window"] = "label"
    eval_streams: PosInt = 256  # test-digit streams scored per evaluation
    eval_blocks: PosInt = 16  # blocks per evaluation stream
    b_delay_s: NonNegFloat = 0.0  # B sleeps this long per tick: a slow B, to measure who waits for whom

SECTION = HierConfig


def agent_names(cfg: Config) -> list[str]:
    """A (fast) and B (slow)."""
    return ["A", "B"]
