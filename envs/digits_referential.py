"""Referential (Lewis) game on real images: scikit-learn's bundled 8x8 handwritten digits.

The sender sees one picture of a digit class and emits a continuous message; in the same step the
receiver sees ``n_candidates`` pictures plus that message and must pick the one of the sender's class.
The target candidate is a *different* picture of that class (never the sender's own), and the distractors
are of distinct other classes, so the message has to carry the class, not the pixels. The message occupies
a fixed slice of the receiver's observation (``comm_slice``); the env fills it with zeros and a learning
framework swaps in the sender's (differentiable) message tensor.

| Import             | ``from dni_envs import digits_referential``                                  |
|--------------------|------------------------------------------------------------------------------|
| Actions            | sender: ``Box(-1, 1, (message_size,))`` message; receiver: ``Discrete(K)``   |
| Parallel API       | Yes                                                                          |
| Agents             | ``agents = ["sender", "receiver"]``                                          |
| Episode length     | 1 step (``max_steps = 1``)                                                   |
| Sender obs         | ``Box(0, 1, (64,), float32)``                                                |
| Receiver obs       | ``Box(low, 1, (K*64 + message_size,), float32)``, low 0 pixels, -1 message   |
| Rewards            | 1.0 to both agents when the receiver picks the target, else 0.0              |
| Private info       | ``infos["sender"]["target"]``: the target class (0-9)                        |

Observations (float32, pixels / 16 so in [0, 1]; an 8x8 image is flattened row-major to 64 values):
  * sender: ``[image (64)]``, a random picture of the target class c.
  * receiver: ``[candidates.flatten() (K * 64), message (message_size)]``; candidate ``i`` is
    ``obs[i * 64:(i + 1) * 64]``. The LAST ``message_size`` dims are the comm slot
    (``comm_slice["receiver"]``), always zeros from the env.

Actions: sender ``Box(-1, 1, (message_size,))``, its message (stored clipped for ``render``, otherwise
ignored); receiver ``Discrete(K)``, the index of its pick.

Infos: ``infos["sender"]["target"]`` is the target class c; ``infos["receiver"]["answer"]`` is the
index of the correct candidate.

Splits: ``"test"`` is every 5th image of the 1797 (index % 5 == 0, 360 images), ``"train"`` the other
1437, ``"all"`` all of them; every episode draws all its pictures from the one split.
"""

from __future__ import annotations

from functools import cache
from typing import Any, NamedTuple

import numpy as np
from gymnasium import spaces

from ._base import SeededParallelEnv

SENDER = "sender"
RECEIVER = "receiver"
N_CLASSES = 10
IMAGE_DIM = 64
SPLITS = ("train", "test", "all")
TEST_EVERY = 5  # image index % TEST_EVERY == 0 -> test split


@cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 images as read-only float32 (N, 64) in [0, 1] and their int64 labels; loaded once."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (np.asarray(data.data, dtype=np.float32) / 16.0).astype(np.float32)
    labels = np.asarray(data.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@cache
def _split(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One split grouped by class: (images sorted by class, their dataset indices, class starts, counts)."""
    images, labels = _digits()
    idx = np.arange(len(labels))
    if split == "train":
        idx = idx[idx % TEST_EVERY != 0]
    elif split == "test":
        idx = idx[idx % TEST_EVERY == 0]
    idx = idx[np.argsort(labels[idx], kind="stable")]
    counts = np.bincount(labels[idx], minlength=N_CLASSES).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    grouped = np.ascontiguousarray(images[idx])
    for arr in (grouped, idx, starts, counts):
        arr.setflags(write=False)
    return grouped, idx, starts, counts


class DigitsReferential(SeededParallelEnv):
    """One-step referential game on sklearn digits; +1 to both agents when the receiver picks the target.

    See the module docstring for the observation / action / reward layout.
    """

    metadata = {"name": "digits_referential_v0", "render_modes": ["ansi"], "is_parallelizable": True}
    private_info_key = "target"
    max_steps = 1

    def __init__(
        self,
        n_candidates: int = 5,
        message_size: int = 2,
        split: str = "train",
        render_mode: str | None = None,
    ) -> None:
        if not _is_int(n_candidates) or not 2 <= n_candidates <= N_CLASSES:
            raise ValueError(f"n_candidates must be an int in [2, {N_CLASSES}], got {n_candidates!r}")
        if not _is_int(message_size) or message_size < 1:
            raise ValueError(f"message_size must be an int >= 1, got {message_size!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            modes = self.metadata["render_modes"]
            raise ValueError(f"render_mode must be None or one of {modes}, got {render_mode!r}")
        self.n_candidates = int(n_candidates)
        self.message_size = int(message_size)
        self.split = split
        self.render_mode = render_mode
        self.possible_agents = [SENDER, RECEIVER]
        self.agents: list[str] = []
        # Shared, read-only, cached per process: constructing many copies costs no reload.
        self._images, self._dataset_index, self._starts, self._counts = _split(split)

        K, m = self.n_candidates, self.message_size
        n_cand_dims = K * IMAGE_DIM
        recv_low = np.concatenate([np.zeros(n_cand_dims), -np.ones(m)]).astype(np.float32)
        recv_high = np.ones(n_cand_dims + m, dtype=np.float32)
        # Built once so observation_space/action_space return the same object every call.
        self._observation_spaces: dict[str, spaces.Space] = {
            SENDER: spaces.Box(0.0, 1.0, (IMAGE_DIM,), dtype=np.float32),
            RECEIVER: spaces.Box(recv_low, recv_high, dtype=np.float32),
        }
        self._action_spaces: dict[str, spaces.Space] = {
            SENDER: spaces.Box(-1.0, 1.0, (m,), dtype=np.float32),
            RECEIVER: spaces.Discrete(K),
        }
        self.comm_slice: dict[str, slice] = {RECEIVER: slice(n_cand_dims, n_cand_dims + m)}

        self._np_random: np.random.Generator | None = None
        self._target = 0  # class c
        self._sender_row = 0  # row of the sender's image in self._images
        self._candidate_rows = np.zeros(K, dtype=np.int64)  # rows of the candidates, in presented order
        self._candidate_classes = np.zeros(K, dtype=np.int64)
        self._answer = 0
        self._message = np.zeros(m, dtype=np.float32)
        self._last_pick: int | None = None
        self._receiver_obs = np.zeros(self._observation_spaces[RECEIVER].shape, dtype=np.float32)

    # -- helpers exposed for tests / analysis -------------------------------------------------------------
    @property
    def sender_index(self) -> int:
        """Dataset index (into ``load_digits()``) of the sender's image."""
        return int(self._dataset_index[self._sender_row])

    @property
    def candidate_indices(self) -> np.ndarray:
        """Dataset indices of the receiver's candidates, in presented order."""
        return self._dataset_index[self._candidate_rows]

    @property
    def candidate_classes(self) -> np.ndarray:
        return self._candidate_classes.copy()

    def _observe(self) -> dict[str, np.ndarray]:
        # Fresh copies each call: a framework may write its message into the receiver's comm slot in place.
        obs = {SENDER: self._images[self._sender_row].copy(), RECEIVER: self._receiver_obs.copy()}
        return {a: obs[a] for a in self.agents}

    def _infos(self) -> dict[str, dict[str, Any]]:
        infos: dict[str, dict[str, Any]] = {
            SENDER: {self.private_info_key: int(self._target)},
            RECEIVER: {"answer": int(self._answer)},
        }
        return {a: infos[a] for a in self.agents}

    def reset(
        self, seed: int | None = None, options: dict | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        self._seed(seed)
        rng = self.np_random
        K = self.n_candidates
        self.agents = list(self.possible_agents)
        game = _draw_games(rng.random((1, _draws(K))), self._starts, self._counts, K)
        self._target = int(game.target[0])
        self._sender_row = int(game.sender_row[0])
        self._candidate_rows = game.candidate_rows[0]
        self._candidate_classes = game.candidate_classes[0]
        self._answer = int(game.answer[0])
        self._receiver_obs = _receiver_observations(self._images, game.candidate_rows, self.message_size)[0]
        self._message = np.zeros(self.message_size, dtype=np.float32)
        self._last_pick = None
        return self._observe(), self._infos()

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        if not self.agents:
            raise RuntimeError("step() called on a finished episode; call reset()")
        if SENDER in actions:
            msg = np.asarray(actions[SENDER], dtype=np.float32).reshape(self.message_size)
            self._message = np.clip(msg, -1.0, 1.0)
        self._last_pick = int(np.asarray(actions[RECEIVER]).item())
        reward = 1.0 if self._last_pick == self._answer else 0.0
        rewards = {a: reward for a in self.agents}
        obs = self._observe()
        infos = self._infos()
        terminations = {a: True for a in self.agents}
        truncations = {a: False for a in self.agents}
        self.agents = []
        return obs, rewards, terminations, truncations, infos

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        pick = self._last_pick
        lines = [
            f"target class={self._target} answer={self._answer} pick={pick}"
            + ("" if pick is None else f" ({'correct' if pick == self._answer else 'wrong'})"),
            "message=" + np.array2string(self._message, precision=2),
            "candidate classes="
            + " ".join(
                f"{'*' if i == self._answer else ' '}{k}" for i, k in enumerate(self._candidate_classes)
            ),
        ]
        return "\n".join(lines)

    def close(self) -> None:
        pass


class _Games(NamedTuple):
    target: np.ndarray  # (E,) class c
    sender_row: np.ndarray  # (E,) row of the sender's picture in the split
    candidate_rows: np.ndarray  # (E, K) rows of the candidates, in presented order
    candidate_classes: np.ndarray  # (E, K)
    answer: np.ndarray  # (E,) where the target landed


def _draws(K: int) -> int:
    """Uniform numbers one game takes: class, sender picture, target picture, 9 keys ranking the other
    classes, K-1 distractor pictures, K keys ordering the candidates."""
    return 3 + (N_CLASSES - 1) + (K - 1) + K


def _draw_games(u: np.ndarray, starts: np.ndarray, counts: np.ndarray, K: int) -> _Games:
    """One game per row of uniforms ``u`` (E, _draws(K)): the one-copy environment and the vector
    environment both deal their games here, so they cannot drift apart."""
    E = len(u)
    c = (u[:, 0] * N_CLASSES).astype(np.int64)
    start, count = starts[c], counts[c]
    # Sender's picture, and a different picture of the same class: draw from count-1, skip the sender's.
    s = (u[:, 1] * count).astype(np.int64)
    t = (u[:, 2] * (count - 1)).astype(np.int64)
    t += t >= s
    # K-1 distinct other classes: the first K-1 of a random permutation of the 9 others, shifted past c.
    others = np.argsort(u[:, 3 : N_CLASSES + 2], axis=1)[:, : K - 1]
    others += others >= c[:, None]
    picks = u[:, N_CLASSES + 2 : N_CLASSES + K + 1]
    rows = np.empty((E, K), dtype=np.int64)
    rows[:, 0] = start + t
    rows[:, 1:] = starts[others] + (picks * counts[others]).astype(np.int64)
    classes = np.empty((E, K), dtype=np.int64)
    classes[:, 0] = c
    classes[:, 1:] = others
    order = np.argsort(u[:, N_CLASSES + K + 1 :], axis=1)  # presented candidate i is candidate order[i]
    return _Games(c, start + s, np.take_along_axis(rows, order, 1), np.take_along_axis(classes, order, 1),
                  np.argmin(order, axis=1))


def _receiver_observations(images: np.ndarray, candidate_rows: np.ndarray, message_size: int) -> np.ndarray:
    """(E, K*64 + message_size): each game's candidates flattened, then the comm slot (zeros)."""
    E, K = candidate_rows.shape
    receiver = np.zeros((E, K * IMAGE_DIM + message_size), dtype=np.float32)
    receiver[:, : K * IMAGE_DIM] = images[candidate_rows].reshape(E, K * IMAGE_DIM)
    return receiver


class DigitsReferentialVector:
    """``num_envs`` copies of :class:`DigitsReferential` dealt and scored in one numpy call each (the marl
    driver's vector-environment protocol: dni_agents/drivers/marl/env.py). Same games, same spaces; all
    copies draw from one generator seeded by ``reset(seed)``, so copy ``i`` does not replay the one-copy
    environment's ``reset(seed + i)``."""

    def __init__(self, num_envs: int, **kwargs: Any) -> None:
        if not _is_int(num_envs) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        self.single = DigitsReferential(**kwargs)
        self.num_envs = int(num_envs)
        self.possible_agents = list(self.single.possible_agents)
        self.comm_slice = self.single.comm_slice
        self._rng = np.random.default_rng()
        self._games: _Games | None = None

    def observation_space(self, agent: str) -> spaces.Space:
        return self.single.observation_space(agent)

    def action_space(self, agent: str) -> spaces.Space:
        return self.single.action_space(agent)

    def _observe(self) -> tuple[dict, dict]:
        env, g = self.single, self._games
        images = env._images
        receiver = _receiver_observations(images, g.candidate_rows, env.message_size)
        obs = {SENDER: images[g.sender_row], RECEIVER: receiver}
        infos = {SENDER: {env.private_info_key: g.target.copy()}, RECEIVER: {"answer": g.answer.copy()}}
        return obs, infos

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        env = self.single
        u = self._rng.random((self.num_envs, _draws(env.n_candidates)))
        self._games = _draw_games(u, env._starts, env._counts, env.n_candidates)
        return self._observe()

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        if self._games is None:
            raise RuntimeError("step() called before reset()")
        pick = np.asarray(actions[RECEIVER]).reshape(self.num_envs)
        reward = (pick == self._games.answer).astype(np.float32)
        obs, infos = self._observe()
        done = np.ones(self.num_envs, dtype=bool)
        return (obs, {a: reward for a in self.possible_agents}, {a: done for a in self.possible_agents},
                {a: ~done for a in self.possible_agents}, infos)


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def parallel_env(**kwargs: Any) -> DigitsReferential:
    """Factory mirroring PettingZoo's ``<module>.parallel_env()`` convention."""
    return DigitsReferential(**kwargs)


def vector_env(num_envs: int, **kwargs: Any) -> DigitsReferentialVector:
    """``num_envs`` copies in lockstep (what the marl driver plays when this module is ``marl.env``)."""
    return DigitsReferentialVector(num_envs, **kwargs)
