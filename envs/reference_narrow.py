"""Simple reference (mpe2's ``simple_reference_v3``) with the agents' words taken away.

| Import       | ``from dni_envs import reference_narrow``                                        |
|--------------|----------------------------------------------------------------------------------|
| Actions      | Discrete(5): no-op, left, right, down, up (mpe2's moves, no words)               |
| Parallel API | Yes                                                                              |
| Agents       | ``agent_0``, ``agent_1``                                                         |
| Observation  | Box(11 + slot, + 3 with ``oracle``): velocity, landmarks, other's goal, slot     |
| Reward       | mpe2's: ``local_ratio`` × −(the *other* agent's distance to its goal) + the rest |
|              | × the mean of both, so each agent is paid for how well it guided the other       |

Two agents and three coloured landmarks; each agent must reach a landmark whose colour only the *other*
agent sees. In mpe2 each agent also says one of 10 words every step, which the other observes; here the
agents only move (they always say word 0, so the environment carries nothing between them) and the
observation ends in ``slot`` zeros, which the driver's channel overwrites with the other agent's message
(``interfaces[i].obs_slice: [11, 11 + slot]``). With a narrow noisy channel (2 binary symbols for 3 colours)
a fixed random code gives two colours one symbol on most seeds, so each agent has to learn what to say.
``oracle=True`` appends the agent's *own* goal colour (one-hot): the upper reference, a receiver told what
the message is about.

``vector_env(num_envs, **kwargs)`` (:class:`ReferenceNarrowVector`) steps all copies in one batched torch
call (mpe2's physics in :mod:`dni_envs.mpe_batched`); copy ``i`` equals ``parallel_env`` reset with
``seed + i``, so the marl driver, which uses it, plays the same episodes as with one-by-one copies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from ._base import SeededParallelEnv
from .simple_reference import SimpleReference

MOVES = 5  # mpe2's discrete action = move + 5 · word; word 0 here


class ReferenceNarrow(SeededParallelEnv):  # its spaces; mpe2 seeds itself
    metadata = {"name": "reference_narrow_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(self, slot: int = 2, oracle: bool = False, max_cycles: int = 25, local_ratio: float = 0.5,
                 render_mode: str | None = None) -> None:
        from mpe2 import simple_reference_v3

        if slot < 0:
            raise ValueError(f"slot must be >= 0, got {slot}")
        if render_mode is not None:
            raise ValueError(f"unsupported render_mode {render_mode!r}")
        self.env = simple_reference_v3.parallel_env(max_cycles=max_cycles, local_ratio=local_ratio)
        self.slot, self.oracle = slot, oracle
        self.render_mode = render_mode  # None: PettingZoo's wrappers read it
        self.possible_agents = list(self.env.possible_agents)
        self.agents: list[str] = []
        dim = 11 + slot + (3 if oracle else 0)
        box = spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self._observation_spaces = dict.fromkeys(self.possible_agents, box)
        self._action_spaces = {a: spaces.Discrete(MOVES) for a in self.possible_agents}
        self.comm_slice = {a: slice(11, 11 + slot) for a in self.possible_agents}

    def _own_goal(self, agent: str) -> np.ndarray:
        """One-hot of the landmark ``agent`` must reach (what the other agent sees as a colour)."""
        world = self.env.unwrapped.world
        me = next(a for a in world.agents if a.name == agent)
        other = next(a for a in world.agents if a.goal_a is me)
        return np.eye(3, dtype=np.float32)[world.landmarks.index(other.goal_b)]

    def _observe(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for agent, o in obs.items():
            parts = [o[:11].astype(np.float32), np.zeros(self.slot, np.float32)]
            if self.oracle:
                parts.append(self._own_goal(agent))
            out[agent] = np.concatenate(parts)
        return out

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        obs, infos = self.env.reset(seed=seed, options=options)
        self.agents = list(self.env.agents)
        return self._observe(obs), infos

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        moves = {a: int(np.asarray(actions[a]).item()) for a in actions}
        bad = {a: m for a, m in moves.items() if not 0 <= m < MOVES}
        if bad:
            raise ValueError(f"actions {bad}: a move is 0..{MOVES - 1} (no-op, left, right, down, up)")
        obs, rewards, terms, truncs, infos = self.env.step(moves)
        self.agents = list(self.env.agents)
        return self._observe(obs), rewards, terms, truncs, infos

    def close(self) -> None:
        self.env.close()


def parallel_env(**kwargs: Any) -> ReferenceNarrow:
    return ReferenceNarrow(**kwargs)


class ReferenceNarrowVector(SimpleReference):
    """``num_envs`` copies of :class:`ReferenceNarrow` in lockstep, torch tensors (the vector protocol of
    :mod:`dni_envs._vector`), built on :class:`dni_envs.simple_reference.SimpleReference`: copy ``i``
    after ``reset(seed=s)`` equals ``ReferenceNarrow`` reset with ``s + i`` under the same moves
    (tests/test_envs_mpe.py). Same kwargs as :class:`ReferenceNarrow`, plus ``device``."""

    metadata = {"name": "reference_narrow_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(self, num_envs: int, slot: int = 2, oracle: bool = False, max_cycles: int = 25,
                 local_ratio: float = 0.5, render_mode: str | None = None,
                 device: str | torch.device = "cpu") -> None:
        if slot < 0:
            raise ValueError(f"slot must be >= 0, got {slot}")
        if render_mode is not None:
            raise ValueError(f"unsupported render_mode {render_mode!r}")
        self.slot, self.oracle = slot, bool(oracle)
        self.obs_dim = 11 + slot + (3 if oracle else 0)
        self._setup(num_envs, local_ratio, max_cycles, device, actions=MOVES)  # move m is mpe2's m + 5 · 0
        self.comm_slice = {a: slice(11, 11 + slot) for a in self.possible_agents}

    def _obs_columns(self, j: int) -> list[dict[int, float]]:
        return super()._obs_columns(j)[:11] + [{} for _ in range(self.obs_dim - 11)]

    def _obs_bias(self, j: int, goal: np.ndarray) -> np.ndarray:
        bias = np.zeros((len(goal), self.obs_dim))
        bias[:, :11] = super()._obs_bias(j, goal)[:, :11]
        if self.oracle:  # the own goal: the landmark the other agent's colour names
            bias[:, 11 + self.slot:] = np.eye(3)[goal[:, 1 - j]]
        return bias


def vector_env(num_envs: int, **kwargs: Any) -> ReferenceNarrowVector:
    """``num_envs`` copies in lockstep (what the marl driver plays when this module is ``marl.env``)."""
    return ReferenceNarrowVector(num_envs, **kwargs)
