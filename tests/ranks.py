"""What the tests of runs on several processes share: the gloo skip mark, a child's environment, the ranks'
metrics files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from dni_agents.launch import child_env

ROOT = Path(__file__).resolve().parents[1]

needs_gloo = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)


def env_for(rank: int, world: int, port: int) -> dict[str, str]:
    """Rank ``rank``'s environment: the rendezvous, one thread, this checkout importable."""
    env = child_env(rank, world, "127.0.0.1", port)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def rank_metrics(run: Path, world: int = 2) -> dict[int, dict]:
    return {r: json.loads((run / f"metrics.rank{r}.json").read_text()) for r in range(world)}
