"""What every dni_envs environment shares: a per-instance seeded generator and fixed space objects."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from pettingzoo import ParallelEnv


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
