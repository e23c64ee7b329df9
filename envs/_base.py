"""What every dni_envs environment shares: a per-instance seeded generator and fixed space objects, and
PettingZoo's versioned-module convention (``raw_env``, ``parallel_env``, ``env``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from pettingzoo import AECEnv, ParallelEnv
from pettingzoo.utils.conversions import parallel_to_aec


class SeededParallelEnv(ParallelEnv):
    """Subclasses fill ``_observation_spaces`` / ``_action_spaces`` once (PettingZoo wants the same space
    object on every call) and call :meth:`_seed` from ``reset``."""

    _observation_spaces: dict[str, spaces.Space]
    _action_spaces: dict[str, spaces.Space]
    _np_random: np.random.Generator | None = None

    @property
    def np_random(self) -> np.random.Generator:
        """Per-instance generator; lazily seeded from OS entropy if reset() never got a seed."""
        if self._np_random is None:
            self._np_random, _ = seeding.np_random()
        return self._np_random

    def _seed(self, seed: int | None) -> None:
        if seed is not None:
            self._np_random, _ = seeding.np_random(seed)

    def observation_space(self, agent: str) -> spaces.Space:
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self._action_spaces[agent]


def versioned(
    cls: type[ParallelEnv],
) -> tuple[type[ParallelEnv], Callable[..., ParallelEnv], Callable[..., AECEnv]]:
    """``raw_env, parallel_env, env`` of a versioned module (``dni_envs.switch_riddle_v0``): the class, the
    environment as a ``ParallelEnv``, and as an ``AECEnv`` (agents act in turn, ``parallel_to_aec``)."""

    def parallel_env(**kwargs: Any) -> ParallelEnv:
        return cls(**kwargs)

    def env(**kwargs: Any) -> AECEnv:
        return parallel_to_aec(cls(**kwargs))

    parallel_env.__doc__ = f"{cls.__name__} as a PettingZoo ``ParallelEnv``."
    env.__doc__ = f"{cls.__name__} as a PettingZoo ``AECEnv`` (agents act in turn)."
    return cls, parallel_env, env
