"""A finished run folder read back for ``dni-agents eval``: its own config, and its checkpoint (or its ranks'
checkpoints put together) in the system the driver builds from that config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from ..config import Config, load_config
from .checkpoint import apply_checkpoint, load_checkpoint
from .ranks import merge_rank_checkpoints, rank_files
from .run import eval_hint, resolve_device

T = TypeVar("T")


def finished_run(run_dir: Path) -> tuple[Path, Config, torch.device]:
    """A run folder's path, its own config and the device that config asks for (``dni-agents eval``)."""
    run_dir = Path(run_dir)
    cfg = load_config(str(run_dir / "config.yaml"))
    return run_dir, cfg, resolve_device(cfg.device)


def restore_finished(run_dir: Path, checkpoint: str, device: torch.device, restore: Callable[[dict], T]) -> T:
    """Put a run folder's checkpoint into what the driver built from its config: ``restore(state)``. A run on
    several processes has one checkpoint per rank: they are put together first, to evaluate in this one
    process. A checkpoint that does not fit the run's config is a one-line error."""
    run_dir = Path(run_dir)
    if not (run_dir / checkpoint).is_file() and rank_files(run_dir):
        path, state = run_dir / "checkpoint.rank*.pt", merge_rank_checkpoints(run_dir, device)
    else:
        path = run_dir / checkpoint
        state = load_checkpoint(path, device)
    return apply_checkpoint(path, state, restore, eval_hint(run_dir))
