"""The environment side of the multi-agent driver: build a PettingZoo parallel environment from config, and
step mpe2's AEC-converted environments directly."""

from __future__ import annotations

import importlib
from typing import Any

from pettingzoo.utils.conversions import aec_to_parallel_wrapper

from ..config import Config, ConfigError


def make_env(cfg: Config) -> Any:
    """``marl.env`` is a module with ``parallel_env()`` (``mpe2.simple_speaker_listener_v4``,
    ``dni_envs.referential``) or ``module:callable``."""
    spec = cfg.marl.env
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"marl.env: cannot import {module_name!r} ({exc})") from None
    factory = getattr(module, attr or "parallel_env", None)
    if not callable(factory):
        raise ConfigError(f"marl.env: {spec!r} has no callable {attr or 'parallel_env'!r}")
    try:
        env = factory(**cfg.marl.env_kwargs)
    except TypeError as exc:
        raise ConfigError(f"marl.env_kwargs: {spec} rejects {cfg.marl.env_kwargs} ({exc})") from None
    return DirectParallel(env) if isinstance(env, aec_to_parallel_wrapper) else env


class DirectParallel:
    """PettingZoo's AEC→parallel conversion (how ``mpe2`` builds its parallel envs), stepping the raw AEC
    environment directly. The stock wrapper computes every agent's observation before each agent's turn
    (``last()``) and throws it away, and routes every attribute through two checking wrappers; together that
    was half of speaker–listener's training time. Same observations, rewards and flags
    (tests/test_marl.py compares them step by step); the actions are ours, hence already in bounds."""

    def __init__(self, env: aec_to_parallel_wrapper) -> None:
        self.wrapped = env
        self.raw = env.aec_env.unwrapped
        self.possible_agents = list(env.possible_agents)
        self.agents: list[str] = []

    def __getattr__(self, name: str) -> Any:  # spaces, metadata, comm_slice, ...
        return getattr(self.wrapped, name)

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        observations, infos = self.wrapped.reset(seed=seed, options=options)
        self.agents = list(self.wrapped.agents)
        return observations, infos

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        raw = self.raw
        rewards = dict.fromkeys(raw.agents, 0.0)
        for agent in list(raw.agents):
            if agent != raw.agent_selection:
                raise RuntimeError(f"{agent} is not the agent to act ({raw.agent_selection}): the agents "
                                   "of a parallel environment must step in a cycle")
            raw.step(actions[agent])
            for a in raw.agents:
                rewards[a] = rewards.get(a, 0.0) + raw.rewards[a]
        terminations, truncations, infos = dict(raw.terminations), dict(raw.truncations), dict(raw.infos)
        observations = {a: raw.observe(a) for a in raw.agents}
        while raw.agents and (raw.terminations[raw.agent_selection] or raw.truncations[raw.agent_selection]):
            raw.step(None)
        self.agents = list(raw.agents)
        return observations, rewards, terminations, truncations, infos
