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

from .bench import bench, plot_wallclock
from .config import SECTION, agent_names
from .model import AGENT, CHECKPOINT, METHODS, Core, build
from .step import window
from .tasks import CopyStream, CopyTask, Sequence, TextStream, bits_per_char
from .train import Curriculum, _task, evaluate, train, train_lm

__all__ = [
    "agent_names",
    "SECTION",
    "AGENT", "CHECKPOINT", "METHODS", "CopyStream", "CopyTask", "Core", "Curriculum", "Sequence",
    "TextStream", "_task", "bench", "bits_per_char", "build", "evaluate", "plot_wallclock", "train",
    "train_lm", "window",
]
