"""Simple speaker–listener (mpe2's ``simple_speaker_listener_v4``) batched in torch: ``num_envs`` copies
in lockstep, equal to mpe2's step for step.

| Import       | ``from dni_envs import simple_speaker_listener_v4``                              |
|--------------|----------------------------------------------------------------------------------|
| Actions      | speaker ``Discrete(3)`` (say 0/1/2); listener ``Discrete(5)`` (no-op, left,      |
|              | right, down, up); ``continuous_actions=True``: speaker ``Box(0, 1, (3,))`` (its  |
|              | utterance), listener ``Box(0, 1, (5,))`` (force ``5 · (a2 − a1, a4 − a3)``)      |
| Parallel API | Yes (one copy: ``parallel_env``); batched: ``vector_env(num_envs)``              |
| Agents       | ``speaker_0``, ``listener_0``                                                    |
| Observation  | speaker ``Box(3)``: goal landmark colour; listener ``Box(11)``: own velocity,    |
|              | the 3 landmarks' positions relative to it, the speaker's word (one-hot)          |
| Reward       | both: −(squared distance from the listener to the goal landmark)                 |

mpe2's scenario and physics (``mpe2/simple_speaker_listener``, ``mpe2/_mpe_utils``) on float64 tensors
(:mod:`dni_envs.mpe_batched`), observations and rewards cast to float32: copy ``i`` after
``reset(seed=s)`` gives the observations, rewards and flags of
``mpe2.simple_speaker_listener_v4.parallel_env(max_cycles=...)`` reset with ``seed=s + i`` under the same
actions (to 1e-5; tests/test_envs_mpe.py), and then again after each ``reset()`` without a seed. The
speaker cannot move; the listener cannot speak and has to reach the goal landmark, whose colour only the
speaker sees. The speaker's word reaches the listener's observation one step later (mpe2's order: it is
the utterance of the last step; zeros after reset). Episodes are truncated after ``max_cycles`` steps.

With ``continuous_actions=True`` the actions are mpe2's continuous ones (float32 ``Box(0, 1)``, actions
``(num_envs, n)`` floats, clipped to the box as mpe2 clips them; :mod:`dni_envs.mpe_batched`): the
speaker's vector is its utterance as given, the listener's ``a`` pushes with force ``5 · (a[2] − a[1],
a[4] − a[3])`` (``a[0]``, the no-op, is unused); equal to mpe2's ``parallel_env(continuous_actions=True)``
under the same actions (tests/test_envs_mpe.py).

Arguments: ``max_cycles=25``, ``continuous_actions=False``, ``device="cpu"``; mpe2's ``render_mode`` (None
only), ``dynamic_rescaling`` (rendering; accepted, no effect) and ``benchmark_data`` (False only) for
compatibility.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from ._vector import VectorEnv
from .mpe_batched import AgentBody, BatchedWorld, Body, check_mpe_kwargs, mpe_action_spaces

SPEAKER, LISTENER = "speaker_0", "listener_0"
LANDMARK_COLORS = np.array([[0.65, 0.15, 0.15], [0.15, 0.65, 0.15], [0.15, 0.15, 0.65]])


class SimpleSpeakerListener(VectorEnv):
    """``num_envs`` copies of mpe2's simple speaker–listener (module docstring)."""

    metadata = {"name": "simple_speaker_listener_v4", "render_modes": [], "is_parallelizable": True}

    def __init__(self, num_envs: int, **kwargs: Any) -> None:
        check_mpe_kwargs(type(self).__name__, kwargs)
        super().__init__(num_envs, max_cycles=kwargs.get("max_cycles", 25),
                         device=kwargs.get("device", "cpu"))
        self.render_mode = None
        self.possible_agents = [SPEAKER, LISTENER]
        agents = [AgentBody(SPEAKER, size=0.075, collide=False, movable=False),
                  AgentBody(LISTENER, size=0.075, collide=False, silent=True)]
        landmarks = [Body(f"landmark {i}", size=0.04, collide=False) for i in range(3)]
        self.continuous_actions = bool(kwargs.get("continuous_actions", False))
        self.world = BatchedWorld(self.num_envs, agents, landmarks, dim_c=3, device=self.device,
                                  continuous=self.continuous_actions)
        box = {a: spaces.Box(-np.float32(np.inf), np.float32(np.inf), (n,), np.float32)
               for a, n in ((SPEAKER, 3), (LISTENER, 11))}
        self._observation_spaces = box
        self._action_spaces = mpe_action_spaces(self.possible_agents, self.world.action_sizes,
                                                self.continuous_actions)
        self._finish_spaces()
        w = self.world
        # One product reads the listener's observation and its offset from the goal (per-episode bias).
        columns = [{w.vel_col(1, k): 1.0} for k in range(2)]
        columns += [{w.pos_col(2 + i, k): 1.0, w.pos_col(1, k): -1.0} for i in range(3) for k in range(2)]
        columns += [{w.c_col(0, k): 1.0} for k in range(3)]
        columns += [{w.pos_col(1, k): 1.0} for k in range(2)]  # minus the goal's position (the bias)
        self._readout = w.readout(columns)
        self._neg_ones = torch.full((2,), -1.0, dtype=torch.float64, device=self.device)
        self.goal = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)

    def _reset(self, rngs: list[np.random.Generator]) -> dict[str, torch.Tensor]:
        E = self.num_envs
        goal = np.empty(E, dtype=np.int64)
        pos = np.empty((E, 5, 2))
        for i, rng in enumerate(rngs):  # mpe2's reset_world, draw for draw
            goal[i] = int(rng.integers(3))
            pos[i] = rng.uniform(-1, +1, 10).reshape(5, 2)  # speaker, listener, 3 landmarks
        self.world.reset(pos)
        self.goal = torch.from_numpy(goal).to(self.device)
        bias = np.zeros((E, 13))
        bias[:, 11:] = -pos[np.arange(E), 2 + goal]
        self._bias = torch.from_numpy(bias).to(self.device)
        self._speaker_obs = torch.from_numpy(LANDMARK_COLORS[goal].astype(np.float32)).to(self.device)
        return self._observe()[0]

    def _observe(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The observations and the listener's offset from the goal landmark ``(num_envs, 2)``."""
        out = torch.addmm(self._bias, self.world.state, self._readout)
        return {SPEAKER: self._speaker_obs.clone(), LISTENER: out[:, :11].float()}, out[:, 11:]

    def _step(self, actions: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        self.world.step(actions)
        obs, offset = self._observe()
        reward = ((offset * offset) @ self._neg_ones).float()  # -(squared distance), as mpe2 sums it
        return obs, {SPEAKER: reward, LISTENER: reward.clone()}
