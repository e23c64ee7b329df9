"""Switch riddle (Foerster et al. 2016, "Learning to communicate with deep multi-agent RL").

Each day one prisoner, chosen uniformly at random, enters the interrogation room. Only that prisoner sees
the light bulb, may set it for the next visitor and may Tell the warden that everyone has visited. The
bulb is the only channel between agents, so it is exposed as the comm slice of every observation.
"""

from __future__ import annotations

from math import comb
from typing import Any

import numpy as np
from gymnasium import spaces

from ._base import SeededParallelEnv


class SwitchRiddle(SeededParallelEnv):
    """Parallel switch riddle with a shared reward.

    Observation per agent (float32 Box of shape (3,)): ``[in_room, switch_bit, day / max_steps]``.
    ``switch_bit`` is the bulb as left by the previous prisoner in the room (initially off), and it is 0
    for prisoners not in the room. It is the comm slice (index 1, ``comm_slice[agent] == slice(1, 2)``):
    the bit written by the prisoner in the room on day t is what the next prisoner in the room reads.

    Action per agent: ``Discrete(4)`` decoded as ``tell = action // 2`` and ``switch = action % 2``.
    As in the paper only the prisoner in the room acts: its ``switch`` sets the bulb and its ``tell``
    announces that everyone has visited; actions of prisoners outside the room are ignored.

    Reward (identical for all agents): on Tell, +1 if every prisoner has visited (including today's)
    else -1, and the episode terminates; if ``max_steps`` days pass without a Tell the episode is
    truncated with reward 0. ``infos[agent]["has_visited"]`` says whether that prisoner has visited.
    """

    metadata = {"name": "switch_riddle_v0", "render_modes": ["ansi"], "is_parallelizable": True}
    private_info_key = "has_visited"

    def __init__(
        self, n_agents: int = 3, max_steps: int | None = None, render_mode: str | None = None
    ) -> None:
        if n_agents < 1:
            raise ValueError("n_agents must be >= 1")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unsupported render_mode {render_mode!r}")
        self.n_agents = n_agents
        # The paper's episode length 4n - 6 days; floor at 1 so tiny n still gives a playable episode.
        self.max_steps = max(1, 4 * n_agents - 6) if max_steps is None else int(max_steps)
        if self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        self.render_mode = render_mode
        self.possible_agents = [f"prisoner_{i}" for i in range(n_agents)]
        self.agents: list[str] = []
        # Built once so observation_space/action_space return the same object every call.
        obs_space = spaces.Box(0.0, 1.0, (3,), dtype=np.float32)
        act_space = spaces.Discrete(4)
        self._observation_spaces = {a: obs_space for a in self.possible_agents}
        self._action_spaces = {a: act_space for a in self.possible_agents}
        self.comm_slice: dict[str, slice] = {a: slice(1, 2) for a in self.possible_agents}

        self._np_random: np.random.Generator | None = None
        self._day = 0
        self._in_room = 0
        self._switch = 0
        self._visited = np.zeros(n_agents, dtype=bool)
        self._last_tell: bool | None = None
        self._setter: int | None = None  # who set the bulb the prisoner in the room sees now

    def _enter(self) -> None:
        self._in_room = int(self.np_random.integers(self.n_agents))
        self._visited[self._in_room] = True

    def _observe(self) -> dict[str, np.ndarray]:
        obs = {}
        for i, agent in enumerate(self.possible_agents):
            here = i == self._in_room
            obs[agent] = np.array(
                [float(here), float(self._switch) if here else 0.0, self._day / self.max_steps],
                dtype=np.float32,
            )
        return {a: obs[a] for a in self.agents}

    def _infos(self) -> dict[str, dict[str, Any]]:
        idx = {a: i for i, a in enumerate(self.possible_agents)}
        return {a: {"has_visited": bool(self._visited[idx[a]])} for a in self.agents}

    def reset(
        self, seed: int | None = None, options: dict | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        self._seed(seed)
        self.agents = list(self.possible_agents)
        self._day = 0
        self._switch = 0
        self._visited = np.zeros(self.n_agents, dtype=bool)
        self._last_tell = None
        self._setter = None
        self._enter()
        return self._observe(), self._infos()

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        if not self.agents:
            raise RuntimeError("step() called on a finished episode; call reset()")
        # Missing action for the prisoner in the room counts as 0 (no Tell, bulb off).
        action = int(np.asarray(actions.get(self.possible_agents[self._in_room], 0)).item())
        tell, switch = divmod(action, 2)
        self._last_tell = bool(tell)
        reward, terminated, truncated = 0.0, False, False
        if tell:
            reward = 1.0 if bool(self._visited.all()) else -1.0
            terminated = True
        else:
            self._switch = switch
            self._day += 1
            if self._day >= self.max_steps:
                truncated = True
            else:
                self._setter = self._in_room
                self._enter()
        obs = self._observe()
        infos = self._infos()
        rewards = {a: reward for a in self.agents}
        terminations = {a: terminated for a in self.agents}
        truncations = {a: truncated for a in self.agents}
        if terminated or truncated:
            self.agents = []
        return obs, rewards, terminations, truncations, infos

    def message_sources(self) -> dict[str, str | None]:
        """Who each prisoner hears through the bulb now: the prisoner in the room hears the one who was in
        the room yesterday (``None`` on day 0); nobody else hears anything. Lets a learning framework
        route a differentiable message instead of the numpy bit."""
        heard = {a: None for a in self.agents}
        if self._setter is not None and self.agents:
            heard[self.possible_agents[self._in_room]] = self.possible_agents[self._setter]
        return heard

    def optimal_return(self) -> float:
        """Upper bound on expected return: P(all prisoners visited within ``max_steps`` days).

        An oracle that knows who has visited tells on the day the last prisoner enters (if ever) and never
        tells wrongly, so its return is exactly that probability; no policy can beat it. It is computed
        exactly by inclusion-exclusion, sum_k (-1)^k C(n, k) ((n - k) / n)^T, not by sampling. It tends to
        1.0 only as T grows; with n=3, T=6 it is 540/729 ~= 0.741, and a 1-bit counting protocol attains it
        for n=3 (see tests). For larger n a 1-bit channel generally cannot reach this bound.
        """
        n, t = self.n_agents, self.max_steps
        return float(sum((-1) ** k * comb(n, k) * ((n - k) / n) ** t for k in range(n + 1)))

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        visited = "".join("x" if v else "." for v in self._visited)
        return (
            f"day={self._day}/{self.max_steps} in_room={self.possible_agents[self._in_room]} "
            f"switch={'on' if self._switch else 'off'} visited={visited} last_tell={self._last_tell}"
        )

    def close(self) -> None:
        pass


def parallel_env(**kwargs: Any) -> SwitchRiddle:
    """Factory mirroring PettingZoo's ``<module>.parallel_env()`` convention."""
    return SwitchRiddle(**kwargs)
