"""The environment side of the multi-agent driver: build a PettingZoo parallel environment from config, and
step mpe2's AEC-converted environments directly."""

from __future__ import annotations

import importlib
import re
from collections.abc import Collection
from typing import Any

import numpy as np
from pettingzoo.utils.conversions import aec_to_parallel, aec_to_parallel_wrapper
from pettingzoo.utils.env import AECEnv

from ...config import Config, ConfigError, import_object
from .workers import WorkerCopies


def make_env(cfg: Config) -> Any:
    """``marl.env`` is a module with ``parallel_env()`` (``mpe2.simple_speaker_listener_v4``,
    ``dni_envs.referential``) or ``module:callable``, returning a PettingZoo ``ParallelEnv`` or an ``AECEnv``
    (converted with PettingZoo's own ``aec_to_parallel`` if it declares ``is_parallelizable``)."""
    return make_env_from(cfg.marl.env, cfg.marl.env_kwargs)


def make_env_from(spec: str, kwargs: dict, extra: dict | None = None) -> Any:
    """:func:`make_env` from the two keys it reads (what an environment worker gets); ``extra``: the
    ``marl.eval_env_kwargs`` merged over ``kwargs`` (an error then names the key of the one it came from)."""
    factory = import_object(spec, "marl.env", default_attr="parallel_env")
    if not callable(factory):
        raise ConfigError(f"marl.env: {spec!r} is not callable")
    env = constructed(spec, factory, {**kwargs, **(extra or {})}, set(extra or ()))
    if isinstance(env, AECEnv):
        if not env.metadata.get("is_parallelizable", False):
            raise ConfigError(f"marl.env: {spec} is an AEC environment whose metadata does not declare "
                              "is_parallelizable (its agents need not act at once); give a ParallelEnv")
        env = aec_to_parallel(env)
    return DirectParallel(env) if isinstance(env, aec_to_parallel_wrapper) else env


def constructed(spec: str, factory: Any, kwargs: dict, evaluation: Collection[str] = (),
                args: tuple = ()) -> Any:
    """``factory(*args, **kwargs)``; an environment that refuses its keyword arguments (TypeError,
    ValueError) becomes one line naming the key and value it names, e.g.
    ``marl.eval_env_kwargs.split='tset': split must be one of ...`` (the keys in ``evaluation`` came from
    ``marl.eval_env_kwargs``, the others from ``marl.env_kwargs``)."""
    try:
        return factory(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        named = [k for k in kwargs if re.search(rf"\b{re.escape(str(k))}\b", message)]
        named = [k for k in named if k in evaluation] or named  # the evaluation's own keys are the suspects
        # "unknown keyword argument foo=1; it takes max_cycles, ...": the key written with its value
        named = [k for k in named if re.search(rf"\b{re.escape(str(k))}\s*=", message)] or named
        if len(named) == 1:
            key = named[0]
            section = "marl.eval_env_kwargs" if key in evaluation else "marl.env_kwargs"
            raise ConfigError(f"{section}.{key}={kwargs[key]!r}: {spec} refuses it ({message})") from None
        section = "marl.eval_env_kwargs" if evaluation else "marl.env_kwargs"
        raise ConfigError(f"{section}: {spec} refuses {kwargs} ({message})") from None


def eval_env_kwargs(cfg: Config, train_env: bool = False) -> dict:
    """The keyword arguments of an evaluation environment: ``marl.eval_env_kwargs`` merged over
    ``marl.env_kwargs`` (a key in both takes the evaluation value); ``train_env``: the training ones."""
    return dict(cfg.marl.env_kwargs) if train_env else {**cfg.marl.env_kwargs, **cfg.marl.eval_env_kwargs}


def eval_config(cfg: Config, train_env: bool = False) -> Config:
    """``cfg`` with the evaluation environment's keyword arguments as its ``marl.env_kwargs`` (what a
    :class:`~dni_agents.drivers.marl.rollout.Player` of greedy evaluation is built from). Checks them first
    (one environment built), so a key the environment refuses is named as ``marl.eval_env_kwargs.KEY``."""
    if train_env or not cfg.marl.eval_env_kwargs:
        return cfg
    held_out = make_env_from(cfg.marl.env, cfg.marl.env_kwargs, cfg.marl.eval_env_kwargs)
    _same_spaces(cfg, make_env_from(cfg.marl.env, cfg.marl.env_kwargs), held_out)
    marl = cfg.marl.model_copy(update={"env_kwargs": eval_env_kwargs(cfg)})
    return cfg.model_copy(update={"marl": marl})


def _same_spaces(cfg: Config, train: Any, held_out: Any) -> None:
    """The networks trained on ``train`` can play ``held_out`` only if it has the same agents, observations
    and actions: ``marl.eval_env_kwargs`` may change what is drawn (``split: test``), not the game's shape.
    The error names the key that changes it (each tried alone), or the whole mapping."""
    found = _space_difference(train, held_out)
    if found is None:
        return
    extra, key = cfg.marl.eval_env_kwargs, "marl.eval_env_kwargs"
    if len(extra) > 1:
        for k, v in extra.items():
            alone = make_env_from(cfg.marl.env, cfg.marl.env_kwargs, {k: v})
            if _space_difference(train, alone) is not None:
                extra = {k: v}
                break
    if len(extra) == 1:
        key = f"{key}.{next(iter(extra))}={next(iter(extra.values()))!r}"
    raise ConfigError(f"{key}: the evaluation environment has {found}, so the trained networks cannot play "
                      "it (allowed: keys that change what is drawn, not the agents or their spaces)")


def _space_difference(train: Any, other: Any) -> str | None:
    """The first agent list or space in which ``other`` differs from ``train``, in words; None if none."""
    if list(other.possible_agents) != list(train.possible_agents):
        return f"agents {list(other.possible_agents)} (training: {list(train.possible_agents)})"
    for agent in train.possible_agents:
        for what in ("observation_space", "action_space"):
            mine, theirs = getattr(other, what)(agent), getattr(train, what)(agent)
            if mine != theirs:
                return f"{agent}'s {what.replace('_', ' ')} {mine} (training: {theirs})"
    return None


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
        raw = self.raw
        raw.reset(seed=seed, options=options)
        self.agents = list(raw.agents)
        observations = {a: raw.observe(a) for a in raw.agents
                        if not (raw.terminations[a] or raw.truncations[a])}
        return observations, dict(**raw.infos)

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


# ------------------------------------------------------------------------------------------ many copies
# The driver plays every environment copy in lockstep through one *vector environment*:
#
#   num_envs: int
#   reset(seed) -> (obs, infos)
#   step(actions) -> (obs, rewards, terminations, truncations, infos)
#   message_sources() -> one {receiver: sender or None} per copy      (optional: routing environments)
#
# obs: {agent: array (num_envs, *obs_shape)}; rewards / terminations / truncations: {agent: (num_envs,)};
# infos: {agent: {key: (num_envs,)}}; actions: {agent: numpy (num_envs, *action_shape)}. Arrays may be numpy
# or torch tensors on any device (the rollout keeps its records on the CPU: rollout.as_tensors). A copy
# whose episode has ended is not stepped again: its entries are ignored until the next reset. An
# environment module that offers ``vector_env(num_envs, **env_kwargs)`` is used as it is (one call for all
# copies instead of one Python call per copy: dni_envs' batched mpe2 scenarios, envs/_vector.py); any other
# is wrapped in :class:`ParallelCopies`.


def make_copies(cfg: Config, num_envs: int, workers: int | None = None) -> Any:
    """``num_envs`` copies of ``marl.env`` as one vector environment (the module's own ``vector_env`` when
    it has one and ``marl.env`` names no callable), stepped in ``workers`` processes if > 0 (None:
    ``marl.env_workers``)."""
    module_name, _, attr = cfg.marl.env.partition(":")
    vector = None if attr else getattr(importlib.import_module(module_name), "vector_env", None)
    workers = cfg.marl.env_workers if workers is None else workers
    if callable(vector):
        if workers:
            raise ConfigError(
                f"marl.env_workers: {workers}, but {module_name} steps all its copies in one vectorised "
                "call (its vector_env), which workers cannot split without changing its random draws; "
                "set marl.env_workers=0 (its stepping is a few % of an update: docs/benchmarks.md)")
        return constructed(cfg.marl.env, vector, cfg.marl.env_kwargs, args=(num_envs,))
    if workers:
        return WorkerCopies(cfg.marl.env, cfg.marl.env_kwargs, num_envs, workers)
    return ParallelCopies([make_env(cfg) for _ in range(num_envs)], cfg.marl.env)


class ParallelCopies:
    """PettingZoo parallel environments stepped one by one, seen as one vector environment. Copy ``i`` is
    reset with ``seed + i``; agents missing from a copy's observation read as zeros."""

    def __init__(self, envs: list[Any], name: str = "env") -> None:
        self.envs, self.name, self.num_envs = envs, name, len(envs)
        self.possible_agents = list(envs[0].possible_agents)
        self.running = np.zeros(len(envs), dtype=bool)
        if callable(getattr(envs[0], "message_sources", None)):
            self.message_sources = lambda: [env.message_sources() for env in self.envs]

    def _shape(self, agent: str) -> tuple[int, ...]:
        return tuple(self.envs[0].observation_space(agent).shape)

    def _gather(self, per_copy: list[tuple[dict, dict]]) -> tuple[dict, dict]:
        obs, infos = {}, {}
        for a in self.possible_agents:
            shape = (self.num_envs, *self._shape(a))
            found = [o.get(a) for o, _ in per_copy]
            if all(x is not None for x in found):  # every copy has the agent: one conversion
                obs[a] = np.asarray(found, dtype=np.float32).reshape(shape)
            else:
                rows = np.zeros(shape, dtype=np.float32)
                for e, x in enumerate(found):
                    if x is not None:
                        rows[e] = np.asarray(x, dtype=np.float32).reshape(shape[1:])
                obs[a] = rows
            keys = {k for _, inf in per_copy for k in inf.get(a, {})}
            infos[a] = {k: np.asarray([inf.get(a, {}).get(k, -1) for _, inf in per_copy]) for k in keys}
        return obs, infos

    def reset(self, seed: int) -> tuple[dict, dict]:
        self._last = [env.reset(seed=seed + i) for i, env in enumerate(self.envs)]
        self.running[:] = True
        return self._gather(self._last)

    def step(self, actions: dict[str, np.ndarray]) -> tuple[dict, dict, dict, dict, dict]:
        E = self.num_envs
        rewards = {a: np.zeros(E, dtype=np.float32) for a in self.possible_agents}
        ended = {a: np.zeros(E, dtype=bool) for a in self.possible_agents}
        per_copy = {a: _items(v) for a, v in actions.items()}
        for e in np.flatnonzero(self.running):
            env = self.envs[e]
            o, r, term, trunc, inf = env.step({a: v[e] for a, v in per_copy.items()})
            for a, value in r.items():
                rewards[a][e] = float(value)
            done = [term[a] or trunc.get(a, True) for a in env.possible_agents if a in term]
            if any(done) != all(done):
                raise RuntimeError(f"{self.name}: agents of one episode finished at different steps; the "
                                   "marl driver needs episodes that end for all agents together")
            if all(done):
                self.running[e] = False
                for a in ended:
                    ended[a][e] = True
            self._last[e] = (o, inf)
        obs, infos = self._gather(self._last)
        return obs, rewards, ended, {a: np.zeros(E, dtype=bool) for a in ended}, infos


def _items(actions: np.ndarray) -> Any:
    """One agent's actions in every copy, indexable by copy: discrete ones as Python ints (what PettingZoo
    environments check for), box actions as they are."""
    return actions.tolist() if actions.ndim == 1 and np.issubdtype(actions.dtype, np.integer) else actions
