"""Simple crypto (mpe2's ``simple_crypto_v3``) batched in torch: ``num_envs`` copies in lockstep, equal to
mpe2's step for step.

| Import       | ``from dni_envs import simple_crypto_v3``                                        |
|--------------|----------------------------------------------------------------------------------|
| Actions      | every agent ``Discrete(4)``: say word 0..3 (no one moves);                       |
|              | ``continuous_actions=True``: ``Box(0, 1, (4,))``, the utterance itself           |
| Parallel API | Yes (one copy: ``parallel_env``); batched: ``vector_env(num_envs)``              |
| Agents       | ``eve_0`` (adversary), ``bob_0``, ``alice_0`` (speaker), in that order           |
| Observation  | alice ``Box(8)``: message (4, one-hot), key (4, one-hot); bob ``Box(8)``: key    |
|              | (4), alice's word (4, one-hot); eve ``Box(4)``: alice's word                     |
| Reward       | alice and bob: eve's error − bob's error; eve: −eve's error; an error is the     |
|              | squared distance of a listener's utterance to the message (one-hot): 0 or 2 for  |
|              | a word; an all-zero utterance scores 0 (mpe2 skips it)                           |

mpe2's scenario (``mpe2/simple_crypto``, ``mpe2/_mpe_utils``) on float64 tensors, observations and
rewards cast to float32: copy ``i`` after ``reset(seed=s)`` gives the observations, rewards and flags of
``mpe2.simple_crypto_v3.parallel_env(max_cycles=...)`` reset with ``seed=s + i`` under the same actions
(tests/test_envs_crypto.py), and then again after each ``reset()`` without a seed.

Alice must get a 1-bit message (landmark 0 or 1, i.e. one-hot ``[1,0,0,0]`` or ``[0,1,0,0]``) to Bob over a
public channel that Eve hears too; Alice and Bob share a random key (also one of those two one-hots). At
reset mpe2 draws the message, then the key, then the positions of the 3 agents and 2 landmarks (drawn so
the generators stay in step; no observation shows them). No agent is movable and none is silent, so each
action is just a word: agent ``k`` saying ``w`` sets its utterance to one-hot ``w``. Alice's utterance
reaches Bob's and Eve's observations (their comm slots, ``comm_slice``: bob ``[4, 8)``, eve ``[0, 4)``) on
the step it is said, i.e. the observation after the step; zeros after reset. Bob's and Eve's words are
scored against the message: eve's error ``e`` and bob's error ``b`` (each 0 when the word is the message,
2 otherwise), rewards ``e - b`` to Alice and Bob and ``-e`` to Eve. (mpe2 skips a listener whose
utterance is all zeros: its error counts 0; a discrete word never is.) Episodes are truncated after
``max_cycles`` steps.

With ``continuous_actions=True`` (mpe2's): every agent's action is a float32 ``Box(0, 1, (4,))`` vector,
actions ``(num_envs, 4)`` floats clipped to the box as mpe2 clips them, and it *is* the agent's utterance
(no one-hot): errors are the squared distances of Bob's and Eve's vectors to the message's one-hot (summed
in mpe2's order; an all-zero vector skipped), observations show Alice's vector; equal to mpe2's
``parallel_env(continuous_actions=True)`` under the same actions (tests/test_envs_crypto.py).

Arguments: ``max_cycles=25``, ``continuous_actions=False``, ``device="cpu"``; mpe2's ``render_mode`` (None
only), ``dynamic_rescaling`` (rendering; accepted, no effect) and ``benchmark_data`` (False only) for
compatibility. An unknown keyword raises TypeError, an unsupported value ValueError, each naming the
key, its value and what is allowed.

:class:`SimpleCrypto` also offers ``goal`` and ``key`` ``(num_envs,)`` int64: the message's and the key's
landmark index (0 or 1) in every copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from ._vector import VectorEnv
from .mpe_batched import check_mpe_kwargs, mpe_action_spaces

EVE, BOB, ALICE = "eve_0", "bob_0", "alice_0"
AGENTS = (EVE, BOB, ALICE)  # mpe2's order: adversary, good listener, speaker
DIM_C = 4  # words, and the landmarks' colour (one-hot) dimension
N_LANDMARKS = 2
N_ENTITIES = 5  # 3 agents + 2 landmarks, whose positions reset draws


class SimpleCrypto(VectorEnv):
    """``num_envs`` copies of mpe2's simple crypto (module docstring)."""

    metadata = {"name": "simple_crypto_v3", "render_modes": [], "is_parallelizable": True}

    def __init__(self, num_envs: int, **kwargs: Any) -> None:
        check_mpe_kwargs(type(self).__name__, kwargs)
        super().__init__(num_envs, max_cycles=kwargs.get("max_cycles", 25),
                         device=kwargs.get("device", "cpu"))
        self.render_mode = None
        self.possible_agents = list(AGENTS)
        dims = {EVE: DIM_C, BOB: 2 * DIM_C, ALICE: 2 * DIM_C}
        self._observation_spaces = {a: spaces.Box(-np.float32(np.inf), np.float32(np.inf), (n,), np.float32)
                                    for a, n in dims.items()}
        # mpe2: unmovable and not silent, so Discrete(1 * dim_c) (the action is the word), or (continuous)
        # Box(0, 1, (0 + dim_c,)) (the action is the utterance)
        self.continuous_actions = bool(kwargs.get("continuous_actions", False))
        self._action_spaces = mpe_action_spaces(self.possible_agents, [DIM_C] * len(AGENTS),
                                                self.continuous_actions)
        self._finish_spaces()
        self.comm_slice: dict[str, slice] = {BOB: slice(DIM_C, 2 * DIM_C), EVE: slice(0, DIM_C)}

        E, dev = self.num_envs, self.device
        f64 = dict(dtype=torch.float64, device=dev)
        self._words = torch.eye(DIM_C, **f64)  # word w -> utterance (one-hot w); landmark i's colour too
        self.goal = torch.zeros(E, dtype=torch.int64, device=dev)
        self.key = torch.zeros(E, dtype=torch.int64, device=dev)
        self.c = torch.zeros(E, len(AGENTS), DIM_C, **f64)  # the agents' utterances (mpe2's state.c)
        self._goal_color = torch.zeros(E, 1, DIM_C, **f64)
        self._key_obs = torch.zeros(E, DIM_C, dtype=torch.float32, device=dev)
        # (agents, listeners): each agent's reward from eve's and bob's errors (exact: weights 0 and +-1)
        self._payoff = torch.tensor([[-1.0, 0.0], [1.0, -1.0], [1.0, -1.0]], **f64)
        self._alice_obs = torch.zeros(E, 2 * DIM_C, dtype=torch.float32, device=dev)

    def _reset(self, rngs: list[np.random.Generator]) -> dict[str, torch.Tensor]:
        E = self.num_envs
        draws = np.empty((E, 2), dtype=np.int64)
        for i, rng in enumerate(rngs):  # mpe2's reset_world, draw for draw
            draws[i, 0] = int(rng.integers(N_LANDMARKS))  # the goal landmark: the message
            draws[i, 1] = int(rng.integers(N_LANDMARKS))  # the key's landmark
            rng.uniform(-1, +1, 2 * N_ENTITIES)  # the 3 agents' then the 2 landmarks' positions (unused)
        draws_t = torch.from_numpy(draws).to(self.device)
        self.goal, self.key = draws_t[:, 0].clone(), draws_t[:, 1].clone()
        colors = self._words[draws_t]  # (E, 2, 4): goal colour, key colour
        self._goal_color = colors[:, :1]
        self._key_obs = colors[:, 1].float()
        self._alice_obs = colors.flatten(1).float()  # [goal colour, key]
        self.c = torch.zeros_like(self.c)
        return self._observe()

    def _observe(self) -> dict[str, torch.Tensor]:
        said = self.c[:, 2].float()  # alice's utterance
        return {EVE: said, BOB: torch.cat([self._key_obs, said], 1), ALICE: self._alice_obs.clone()}

    def _step(self, actions: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if self.continuous_actions:
            return self._step_continuous(actions)
        self.c = self._words[actions]  # (E, 3, 4): every agent's word, one-hot
        d = self.c[:, :2] - self._goal_color  # eve's and bob's utterance against the message
        err = (d * d).sum(-1)  # (E, 2); mpe2 skips an all-zero utterance, which a word never is
        eve, bob, alice = (self._payoff @ err.T).float().unbind(0)  # rows: -e, e - b, e - b
        return self._observe(), {EVE: eve, BOB: bob, ALICE: alice}

    def _step_continuous(self, actions: torch.Tensor) -> tuple[dict[str, torch.Tensor],
                                                                dict[str, torch.Tensor]]:
        """The utterances are the action vectors ``(E, 3 * 4)`` (float32 ones exact in float64, as mpe2's
        ``state.c - color`` is float64); the errors summed in np.sum's order, all-zero utterances skipped."""
        self.c = actions.to(torch.float64).view(self.num_envs, len(AGENTS), DIM_C)
        listeners = self.c[:, :2]  # eve's and bob's
        d = listeners - self._goal_color
        sq = d * d
        err = sq[..., 0]
        for k in range(1, DIM_C):  # np.sum of 4 terms: ((s0 + s1) + s2) + s3
            err = err + sq[..., k]
        err = torch.where((listeners != 0).any(-1), err, 0.0)  # mpe2 skips an all-zero utterance
        eve, bob, alice = (self._payoff @ err.T).float().unbind(0)
        return self._observe(), {EVE: eve, BOB: bob, ALICE: alice}
