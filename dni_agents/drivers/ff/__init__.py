"""Feed-forward driver: every layer is an agent, with a decoupled interface to the next layer.

The paper's fully connected nets (256 units, batch-norm, ReLU; 3 to 6 layers) and a small CNN, trained
with one of five methods, which are nothing but interface settings:

=========  ==================================================================================
backprop   every interface in ``backprop`` mode: the coupled, locked baseline
dni        synthetic gradients from U(h) at every interface
cdni       synthetic gradients from U(h, one-hot label)
unlock     cDNI plus synthetic inputs Î(x): every layer trains without waiting for any other
top-only   ``none``: only the top layer learns (the paper's "no bprop" floor)
=========  ==================================================================================

Test accuracy is always measured on the real forward chain x → layer0 → … → top (for ``unlock``
too: the synthetic inputs are a training device, never used at evaluation).
"""

from __future__ import annotations

from ...runtime.ranks import local_system, placement_for, stage_placement
from .bench import FULL_MODELS, bench, method_config
from .config import SECTION, agent_names
from .dist import (
    drain,
    evaluate_pipeline,
    train_distributed,
    train_step_distributed,
)
from .model import CHECKPOINT, METHODS, build_layers, build_system, message_shapes
from .timing import PLAIN, time_methods
from .train import evaluate, evaluate_chain, top_messages, train, train_step

__all__ = [
    "agent_names",
    "SECTION",
    "PLAIN",
    "CHECKPOINT", "FULL_MODELS", "METHODS", "bench", "build_layers", "build_system", "drain", "evaluate",
    "evaluate_chain", "evaluate_pipeline", "local_system", "message_shapes", "method_config", "placement_for",
    "stage_placement", "time_methods", "top_messages", "train", "train_distributed", "train_step",
    "train_step_distributed",
]
