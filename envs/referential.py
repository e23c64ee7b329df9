"""Lewis signalling (referential) game as a two-step PettingZoo ParallelEnv.

The sender sees the target's features and emits a continuous message; one step later the receiver sees
all candidates plus that message and must pick the target. The message occupies a fixed slice of the
receiver's observation (``comm_slice``) so a learning framework can swap it for a differentiable tensor
and route gradients (or synthetic gradients) from the receiver back into the sender.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from ._base import SeededParallelEnv

SENDER = "sender"
RECEIVER = "receiver"


class ReferentialGame(SeededParallelEnv):
    """Two-step referential game; +1 to both agents when the receiver picks the target.

    Candidates are i.i.d. uniform vectors in [0, 1]^n_features (distinct almost surely), and the target is
    a uniformly random candidate index.

    Observations (float32):
      * sender: ``[target_features (n_features), phase]``; at step 1 the features are zeros.
      * receiver: ``[candidates.flatten() (n_candidates * n_features), phase, message (message_size)]``;
        at step 0 candidates and message are zeros. The LAST ``message_size`` dims are the comm slice
        (``comm_slice["receiver"]``) holding the sender's step-0 message.

    Actions: sender ``Box(-1, 1, (message_size,))`` (clipped; ignored at step 1); receiver
    ``Discrete(n_candidates)`` (ignored at step 0, its pick at step 1).
    ``infos["sender"]["target"]`` is the target index (the sender's private information).
    """

    metadata = {"name": "referential_v0", "render_modes": ["ansi"], "is_parallelizable": True}
    private_info_key = "target"

    def __init__(
        self,
        n_candidates: int = 5,
        n_features: int = 8,
        message_size: int = 4,
        render_mode: str | None = None,
    ) -> None:
        for key, value in (("n_candidates", n_candidates), ("n_features", n_features),
                           ("message_size", message_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key}={value!r}: it must be an int >= 1")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unsupported render_mode {render_mode!r}")
        self.n_candidates = n_candidates
        self.n_features = n_features
        self.message_size = message_size
        self.render_mode = render_mode
        self.possible_agents = [SENDER, RECEIVER]
        self.agents: list[str] = []

        n_cand_dims = n_candidates * n_features
        recv_low = np.concatenate([np.zeros(n_cand_dims + 1), -np.ones(message_size)]).astype(np.float32)
        recv_high = np.ones(n_cand_dims + 1 + message_size, dtype=np.float32)
        # Built once so observation_space/action_space return the same object every call.
        self._observation_spaces: dict[str, spaces.Space] = {
            SENDER: spaces.Box(0.0, 1.0, (n_features + 1,), dtype=np.float32),
            RECEIVER: spaces.Box(recv_low, recv_high, dtype=np.float32),
        }
        self._action_spaces: dict[str, spaces.Space] = {
            SENDER: spaces.Box(-1.0, 1.0, (message_size,), dtype=np.float32),
            RECEIVER: spaces.Discrete(n_candidates),
        }
        recv_dim = n_cand_dims + 1 + message_size
        self.comm_slice: dict[str, slice] = {RECEIVER: slice(recv_dim - message_size, recv_dim)}

        self._np_random: np.random.Generator | None = None
        self._step = 0
        self._candidates = np.zeros((n_candidates, n_features), dtype=np.float32)
        self._target = 0
        self._message = np.zeros(message_size, dtype=np.float32)
        self._last_pick: int | None = None

    def _observe(self) -> dict[str, np.ndarray]:
        phase = np.float32(self._step)
        if self._step == 0:
            sender = np.append(self._candidates[self._target], phase)
            receiver = np.zeros(self._observation_spaces[RECEIVER].shape, dtype=np.float32)
        else:
            sender = np.append(np.zeros(self.n_features, dtype=np.float32), phase)
            receiver = np.concatenate([self._candidates.ravel(), [phase], self._message])
        obs = {SENDER: sender.astype(np.float32), RECEIVER: receiver.astype(np.float32)}
        return {a: obs[a] for a in self.agents}

    def _infos(self) -> dict[str, dict[str, Any]]:
        infos: dict[str, dict[str, Any]] = {SENDER: {self.private_info_key: int(self._target)}, RECEIVER: {}}
        return {a: infos[a] for a in self.agents}

    def reset(
        self, seed: int | None = None, options: dict | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        self._seed(seed)
        rng = self.np_random
        self.agents = list(self.possible_agents)
        self._step = 0
        self._candidates = rng.random((self.n_candidates, self.n_features)).astype(np.float32)
        self._target = int(rng.integers(self.n_candidates))
        self._message = np.zeros(self.message_size, dtype=np.float32)
        self._last_pick = None
        return self._observe(), self._infos()

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        if not self.agents:
            raise RuntimeError("step() called on a finished episode; call reset()")
        rewards = {a: 0.0 for a in self.agents}
        if self._step == 0:
            msg = np.asarray(actions[SENDER], dtype=np.float32).reshape(self.message_size)
            self._message = np.clip(msg, -1.0, 1.0)
            self._step = 1
            done = False
        else:
            self._last_pick = int(np.asarray(actions[RECEIVER]).item())
            reward = 1.0 if self._last_pick == self._target else 0.0
            rewards = {a: reward for a in self.agents}
            done = True
        obs = self._observe()
        infos = self._infos()
        terminations = {a: done for a in self.agents}
        truncations = {a: False for a in self.agents}
        if done:
            self.agents = []
        return obs, rewards, terminations, truncations, infos

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        lines = [f"step={self._step} target={self._target} pick={self._last_pick}"]
        lines.append("message=" + np.array2string(self._message, precision=2))
        for i, cand in enumerate(self._candidates):
            mark = "*" if i == self._target else " "
            lines.append(f"{mark}{i}: " + np.array2string(cand, precision=2))
        return "\n".join(lines)

    def close(self) -> None:
        pass


def parallel_env(**kwargs: Any) -> ReferentialGame:
    """Factory mirroring PettingZoo's ``<module>.parallel_env()`` convention."""
    return ReferentialGame(**kwargs)
