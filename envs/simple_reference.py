"""Simple reference (mpe2's ``simple_reference_v3``) batched in torch: ``num_envs`` copies in lockstep,
equal to mpe2's step for step.

| Import       | ``from dni_envs import simple_reference_v3``                                     |
|--------------|----------------------------------------------------------------------------------|
| Actions      | ``Discrete(50)``: move + 5 · word (moves no-op, left, right, down, up; 10 words) |
|              | or, ``continuous_actions=True``, ``Box(0, 1, (15,))``: 5 move components (force  |
|              | ``5 · (a2 − a1, a4 − a3)``), then the utterance (10)                             |
| Parallel API | Yes (one copy: ``parallel_env``); batched: ``vector_env(num_envs)``              |
| Agents       | ``agent_0``, ``agent_1``                                                         |
| Observation  | ``Box(21)``: own velocity (2), the 3 landmarks' positions relative to it (6),    |
|              | the colour of the landmark the *other* agent must reach (3), its word (10)       |
| Reward       | ``local_ratio`` × −(the other agent's distance to its goal) + (1 − local_ratio)  |
|              | × the mean of both agents' such rewards                                          |

mpe2's scenario and physics (``mpe2/simple_reference``, ``mpe2/_mpe_utils``) on float64 tensors
(:mod:`dni_envs.mpe_batched`), observations and rewards cast to float32: copy ``i`` after
``reset(seed=s)`` gives the observations, rewards and flags of
``mpe2.simple_reference_v3.parallel_env(max_cycles=..., local_ratio=...)`` reset with ``seed=s + i``
under the same actions (to 1e-5; tests/test_envs_mpe.py), and then again after each ``reset()`` without a
seed. Two agents and three coloured landmarks; each must reach a landmark whose colour only the other
sees, and both move and speak every step (a word reaches the other's observation one step later; zeros
after reset). Episodes are truncated after ``max_cycles`` steps.

With ``continuous_actions=True`` the actions are mpe2's continuous ones (float32 ``Box(0, 1, (15,))``,
actions ``(num_envs, 15)`` floats, clipped to the box as mpe2 clips them; :mod:`dni_envs.mpe_batched`):
``a[:5]`` pushes with force ``5 · (a[2] − a[1], a[4] − a[3])`` (``a[0]``, the no-op, is unused), ``a[5:]``
is the agent's utterance as given; equal to mpe2's ``parallel_env(continuous_actions=True)`` under the
same actions (tests/test_envs_mpe.py).

Arguments: ``local_ratio=0.5``, ``max_cycles=25``, ``continuous_actions=False``, ``device="cpu"``; mpe2's
``render_mode`` (None only), ``dynamic_rescaling`` (rendering; accepted, no effect) and ``benchmark_data``
(False only) for compatibility.

:class:`SimpleReference` also offers ``goal`` ``(num_envs, 2)``: the landmark index agent ``j``'s
observed colour names, i.e. the goal of the *other* agent (mpe2's ``agents[j].goal_b``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from ._vector import VectorEnv
from .mpe_batched import AgentBody, BatchedWorld, Body, check_mpe_kwargs, mpe_action_spaces

AGENTS = ("agent_0", "agent_1")
LANDMARK_COLORS = np.array([[0.75, 0.25, 0.25], [0.25, 0.75, 0.25], [0.25, 0.25, 0.75]])
CONTIGUOUS = torch.contiguous_format


class SimpleReference(VectorEnv):
    """``num_envs`` copies of mpe2's simple reference (module docstring). A variant (another observation
    or action space, e.g. :class:`dni_envs.reference_narrow.ReferenceNarrowVector`) checks its own kwargs,
    calls :meth:`_setup` and overrides :meth:`_obs_columns` / :meth:`_obs_bias`."""

    metadata = {"name": "simple_reference_v3", "render_modes": [], "is_parallelizable": True}
    obs_dim = 21

    def __init__(self, num_envs: int, **kwargs: Any) -> None:
        check_mpe_kwargs(type(self).__name__, kwargs, ("local_ratio",))
        self._setup(num_envs, local_ratio=kwargs.get("local_ratio", 0.5),
                    max_cycles=kwargs.get("max_cycles", 25), device=kwargs.get("device", "cpu"),
                    continuous=kwargs.get("continuous_actions", False))

    def _setup(self, num_envs: int, local_ratio: float, max_cycles: int, device: str | torch.device,
               actions: int | None = None, continuous: bool = False) -> None:
        """The world, spaces and read-outs; ``actions``: each agent's ``Discrete`` size if not mpe2's 50
        (a smaller one keeps the low action values: word 0 for 5); ``continuous``: mpe2's
        ``continuous_actions`` (``Box(0, 1, (15,))``; not with ``actions``)."""
        name = type(self).__name__
        number = isinstance(local_ratio, (int, float)) and not isinstance(local_ratio, bool)
        if not number or not 0 <= local_ratio <= 1:
            raise ValueError(f"{name}: local_ratio={local_ratio!r}; it must be a number in [0, 1]")
        super().__init__(num_envs, max_cycles=max_cycles, device=device)
        self.local_ratio = float(local_ratio)
        self.continuous_actions = bool(continuous)
        if continuous and actions is not None:
            raise ValueError(f"{name}: continuous actions have mpe2's Box(15); actions={actions!r} is for "
                             "discrete ones")
        self.render_mode = None
        self.possible_agents = list(AGENTS)
        agents = [AgentBody(a, collide=False) for a in AGENTS]
        landmarks = [Body(f"landmark {i}", collide=False) for i in range(3)]
        self.world = w = BatchedWorld(self.num_envs, agents, landmarks, dim_c=10, device=self.device,
                                      continuous=self.continuous_actions)
        box = spaces.Box(-np.float32(np.inf), np.float32(np.inf), (self.obs_dim,), np.float32)
        self._observation_spaces = dict.fromkeys(self.possible_agents, box)
        sizes = [actions or n for n in w.action_sizes]
        self._action_spaces = mpe_action_spaces(self.possible_agents, sizes, self.continuous_actions)
        self._finish_spaces()
        # One batched product reads, for each agent j, its observation and the other agent's offset from
        # j's goal landmark; the per-episode parts (the goal colours, minus the goals' positions) are a bias.
        readouts = []
        for j in range(2):
            columns = self._obs_columns(j)
            columns += [{w.pos_col(1 - j, k): 1.0} for k in range(2)]  # (minus the goal: the bias)
            readouts.append(w.readout(columns))
        self._readout = torch.stack(readouts)  # (agents, D, obs_dim + 2)
        lr = self.local_ratio  # reward_j = lr * local_j + (1 - lr) * mean(local), local = -distance
        self._mix = -torch.tensor([[lr + (1 - lr) / 2, (1 - lr) / 2], [(1 - lr) / 2, lr + (1 - lr) / 2]],
                                  dtype=torch.float64, device=self.device)
        self.goal = torch.zeros(self.num_envs, 2, dtype=torch.int64, device=self.device)

    def _obs_columns(self, j: int) -> list[dict[int, float]]:
        """Agent j's observation as read-out columns of the world state (:meth:`BatchedWorld.readout`):
        velocity, landmarks relative to it, its goal's colour (all bias), the other agent's word."""
        w = self.world
        columns = [{w.vel_col(j, k): 1.0} for k in range(2)]
        columns += [{w.pos_col(2 + i, k): 1.0, w.pos_col(j, k): -1.0} for i in range(3) for k in range(2)]
        columns += [{} for _ in range(3)]
        return columns + [{w.c_col(1 - j, k): 1.0} for k in range(10)]

    def _obs_bias(self, j: int, goal: np.ndarray) -> np.ndarray:
        """``(num_envs, obs_dim)``: what agent j's observation adds to its read-out; ``goal`` ``(E, 2)``."""
        bias = np.zeros((len(goal), self.obs_dim))
        bias[:, 8:11] = LANDMARK_COLORS[goal[:, j]]
        return bias

    def _reset(self, rngs: list[np.random.Generator]) -> dict[str, torch.Tensor]:
        E = self.num_envs
        goal = np.empty((E, 2), dtype=np.int64)
        pos = np.empty((E, 5, 2))
        for i, rng in enumerate(rngs):  # mpe2's reset_world, draw for draw
            goal[i, 0] = int(rng.integers(3))
            goal[i, 1] = int(rng.integers(3))
            pos[i] = rng.uniform(-1, +1, 10).reshape(5, 2)  # agent_0, agent_1, 3 landmarks
        self.world.reset(pos)
        self.goal = torch.from_numpy(goal).to(self.device)
        bias = np.zeros((2, E, self.obs_dim + 2))
        for j in range(2):
            bias[j, :, : self.obs_dim] = self._obs_bias(j, goal)
            bias[j, :, self.obs_dim:] = -pos[np.arange(E), 2 + goal[:, j]]
        self._bias = torch.from_numpy(bias).to(self.device)
        return self._observe()[0]

    def _observe(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The observations and, for each agent j, the other agent's offset from j's goal (2, E, 2)."""
        state = self.world.state
        out = torch.baddbmm(self._bias, state.expand(2, *state.shape), self._readout)
        obs = out[..., : self.obs_dim].to(torch.float32, memory_format=CONTIGUOUS)
        return dict(zip(self.possible_agents, obs, strict=True)), out[..., self.obs_dim:]

    def _step(self, actions: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        self.world.step(actions)
        obs, offset = self._observe()
        reward = (self._mix @ torch.linalg.vector_norm(offset, dim=2)).float()
        return obs, dict(zip(self.possible_agents, reward, strict=True))
