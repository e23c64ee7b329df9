"""Batched (vectorised) environments in torch: ``num_envs`` copies of one PettingZoo parallel environment
stepped in lockstep, one tensor operation for all copies.

The protocol is the marl driver's vector environment (dni_agents/drivers/marl/env.py, "many copies"):

* ``num_envs``, ``possible_agents``, ``metadata``, ``max_cycles``, ``device``;
* ``observation_space(agent)`` / ``action_space(agent)``: gymnasium spaces of ONE copy (the same object
  on every call);
* ``reset(seed=None, options=None) -> (obs, infos)``;
* ``step(actions) -> (obs, rewards, terminations, truncations, infos)``.

``obs``: ``{agent: float32 tensor (num_envs, obs_dim)}``; ``rewards``: ``{agent: float32 tensor
(num_envs,)}``; ``terminations`` / ``truncations``: ``{agent: bool tensor (num_envs,)}``; ``infos``:
``{agent: {}}``; ``actions``: ``{agent: integers (num_envs,)}`` for ``Discrete`` action spaces (a numpy
array, a torch tensor on any device, or a list), ``{agent: floats (num_envs, n)}`` for ``Box((n,))`` ones
(mpe2's ``continuous_actions=True``; numpy or torch, float32 or float64, integers taken as float64),
clipped to the box as mpe2's ``ClipOutOfBoundsWrapper`` clips them (silently; a NaN is refused, as mpe2
refuses it). All tensors live on ``device``.

Seeding: copy ``i`` has its own numpy generator, seeded as gymnasium seeds (``seeding.np_random(seed + i)``)
by ``reset(seed=seed)``; ``reset()`` without a seed goes on drawing from the copies' generators (fresh
entropy if the env was never seeded), as a PettingZoo environment reset without a seed does. So copy ``i``
replays the one-copy environment reset with ``seed + i`` and then without seeds, draw for draw.

All copies start and end together: an episode is truncated in every copy after ``max_cycles`` steps (no
scenario here terminates early); ``step`` after the end raises until the next ``reset``.

:class:`OneCopy` is a PettingZoo ``ParallelEnv`` made of a vector environment with one copy (numpy
observations, Python rewards), and :func:`versioned_vector` makes a versioned module's ``raw_env,
parallel_env, env, vector_env`` from a :class:`VectorEnv` subclass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils import seeding
from pettingzoo import AECEnv, ParallelEnv
from pettingzoo.utils.conversions import parallel_to_aec

Tensor = torch.Tensor


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_kwargs(owner: str, kwargs: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Raise TypeError naming the first key of ``kwargs`` (and its value) that ``owner`` does not take."""
    allowed = list(allowed)
    for key, value in kwargs.items():
        if key not in allowed:
            raise TypeError(f"{owner}: unknown keyword argument {key}={value!r}; "
                            f"it takes {', '.join(allowed)}")


def check_choice(owner: str, key: str, value: Any, allowed: tuple[Any, ...]) -> None:
    """Raise ValueError unless ``value`` is one of ``allowed`` (compared with ``is`` for None / bools)."""
    if not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
        raise ValueError(f"{owner}: {key}={value!r} is not supported; {key} must be one of "
                         f"{', '.join(repr(a) for a in allowed)}")


class VectorEnv:
    """Base of the batched environments: the protocol above, the copies' generators, action checking.

    A subclass sets a class-level ``metadata`` (its own dict, with its name), and in its ``__init__``
    (after calling this one) ``possible_agents``, ``_observation_spaces`` and ``_action_spaces``
    (all ``Discrete``, or all one-dimensional ``Box``), then calls :meth:`_finish_spaces`; it implements

    * ``_reset(rngs) -> obs``: draw copy ``i``'s initial state from ``rngs[i]`` (in the order the
      original environment draws) and return the observations;
    * ``_step(actions) -> (obs, rewards)``: ``actions`` on ``device``: for ``Discrete`` spaces an int64
      tensor ``(num_envs, len(possible_agents))``, already checked to lie in each agent's
      ``Discrete(n)``; for ``Box`` spaces a float tensor ``(num_envs, sum of the boxes' sizes)``, the
      agents' actions side by side in ``possible_agents`` order (``_action_offsets[j]`` is where agent
      ``j``'s begin), clipped to the boxes, float32 if every agent's actions came as float32, else float64.
    """

    metadata: ClassVar[dict[str, Any]] = {"name": "vector_env", "render_modes": [], "is_parallelizable": True}
    possible_agents: list[str]
    _observation_spaces: dict[str, spaces.Space]
    _action_spaces: dict[str, spaces.Discrete | spaces.Box]
    _continuous: bool = False

    def __init__(self, num_envs: int, *, max_cycles: int = 25, device: str | torch.device = "cpu") -> None:
        name = type(self).__name__
        if not _is_int(num_envs) or num_envs < 1:
            raise ValueError(f"{name}: num_envs={num_envs!r}; it must be an int >= 1")
        if not _is_int(max_cycles) or max_cycles < 1:
            raise ValueError(f"{name}: max_cycles={max_cycles!r}; it must be an int >= 1")
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"{name}: device={device!r} is not a torch device ({exc})") from None
        self.num_envs = int(num_envs)
        self.max_cycles = int(max_cycles)
        self.steps = 0
        self.running = False
        self._rngs: list[np.random.Generator] | None = None

    # ---------------------------------------------------------------------------------- spaces
    def observation_space(self, agent: str) -> spaces.Space:
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self._action_spaces[agent]

    def _finish_spaces(self) -> None:
        """Call at the end of a subclass's ``__init__``: caches what :meth:`step` checks actions with."""
        found = [self._action_spaces[a] for a in self.possible_agents]
        if all(isinstance(s, spaces.Box) and len(s.shape) == 1 for s in found):
            self._continuous = True
            self._action_dims = [int(s.shape[0]) for s in found]
            self._action_offsets = np.cumsum([0, *self._action_dims]).tolist()
            low = np.concatenate([np.asarray(s.low, np.float64) for s in found])
            high = np.concatenate([np.asarray(s.high, np.float64) for s in found])
            self._box_bounds = {dt: (torch.tensor(low, dtype=dt, device=self.device),
                                     torch.tensor(high, dtype=dt, device=self.device))
                                for dt in (torch.float32, torch.float64)}
            return
        if not all(isinstance(s, spaces.Discrete) for s in found):
            raise TypeError(f"{type(self).__name__}: action spaces {found}; they must all be Discrete or all "
                            "one-dimensional Box")
        self._action_n = torch.tensor([s.n for s in found], dtype=torch.int64, device=self.device)
        self._action_n_np = self._action_n.cpu().numpy().astype(np.uint64)

    # ---------------------------------------------------------------------------------- protocol
    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Start an episode in every copy; copy ``i`` as the one-copy environment's ``reset(seed + i)``."""
        if seed is not None:
            if not _is_int(seed):
                raise ValueError(f"{type(self).__name__}: reset(seed={seed!r}); a seed is an int or None")
            self._rngs = [seeding.np_random(int(seed) + i)[0] for i in range(self.num_envs)]
        elif self._rngs is None:
            self._rngs = [seeding.np_random()[0] for _ in range(self.num_envs)]
        obs = self._reset(self._rngs)
        self.steps = 0
        self.running = True
        return obs, {a: {} for a in self.possible_agents}

    def step(self, actions: Mapping[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        if not self.running:
            raise RuntimeError(f"{type(self).__name__}: step() before reset() or after the episode ended "
                               f"(all copies end after max_cycles={self.max_cycles} steps); call reset()")
        obs, rewards = self._step(self._action_matrix(actions))
        self.steps += 1
        ended = self.steps >= self.max_cycles
        if ended:
            self.running = False
        agents, A = self.possible_agents, len(self.possible_agents)
        flags = torch.zeros((2 * A, self.num_envs), dtype=torch.bool, device=self.device)
        if ended:
            flags[A:] = True
        rows = flags.unbind(0)  # one fresh row per agent and flag
        return (obs, rewards, dict(zip(agents, rows[:A], strict=True)),
                dict(zip(agents, rows[A:], strict=True)),
                {a: {} for a in agents})

    def close(self) -> None:
        pass

    # ---------------------------------------------------------------------------------- for subclasses
    def _reset(self, rngs: list[np.random.Generator]) -> dict[str, Tensor]:
        raise NotImplementedError

    def _step(self, actions: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        raise NotImplementedError

    def _action_matrix(self, actions: Mapping[str, Any]) -> Tensor:
        """``(num_envs, agents)`` int64 on ``device``; raises naming the agent on a missing, misshapen,
        non-integer or out-of-range action. (Box action spaces: :meth:`_action_box_matrix`.)"""
        if self._continuous:
            return self._action_box_matrix(actions)
        name, E = type(self).__name__, self.num_envs
        try:
            cols = [actions[a] for a in self.possible_agents]
        except KeyError as exc:
            raise ValueError(f"{name}: no action for agent {exc.args[0]!r}; step() needs one for each of "
                             f"{self.possible_agents}") from None
        if all(isinstance(c, (np.ndarray, list, tuple, int, np.integer)) for c in cols):
            matrix = np.empty((E, len(cols)), dtype=np.int64)
            for j, (a, c) in enumerate(zip(self.possible_agents, cols, strict=True)):
                x = np.asarray(c)
                if x.dtype.kind not in "iu" or x.size != E:
                    raise ValueError(f"{name}: action of {a!r} is {x.dtype} {x.shape}; it must be "
                                     f"integers of shape ({E},)")
                matrix[:, j] = x.reshape(E)
            if (matrix.view(np.uint64) >= self._action_n_np).any():  # negatives wrap to huge
                self._refuse(torch.from_numpy(matrix))
            tensor = torch.from_numpy(matrix)
            return tensor if self.device.type == "cpu" else tensor.to(self.device)
        tensors = [torch.as_tensor(c, device=self.device) for c in cols]
        for a, x in zip(self.possible_agents, tensors, strict=True):
            if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool or x.numel() != E:
                raise ValueError(f"{name}: action of {a!r} is {x.dtype} {tuple(x.shape)}; it must be "
                                 f"integers of shape ({E},)")
        matrix = torch.stack([x.reshape(E) for x in tensors], 1).to(torch.int64)
        if bool(((matrix < 0) | (matrix >= self._action_n)).any()):
            self._refuse(matrix)
        return matrix

    def _action_box_matrix(self, actions: Mapping[str, Any]) -> Tensor:
        """``(num_envs, sum of the boxes' sizes)`` float on ``device``: every agent's ``(num_envs, n)``
        actions side by side, clipped to its box (mpe2's ``ClipOutOfBoundsWrapper``: ``np.clip`` in the
        actions' own dtype); float32 if all came as float32, else float64. Raises naming the agent on a
        missing, misshapen, non-numeric or NaN action."""
        name, E = type(self).__name__, self.num_envs
        parts: list[np.ndarray | Tensor] = []
        for a, n in zip(self.possible_agents, self._action_dims, strict=True):
            try:
                c = actions[a]
            except KeyError:
                raise ValueError(f"{name}: no action for agent {a!r}; step() needs one for each of "
                                 f"{self.possible_agents}") from None
            x = c if isinstance(c, Tensor) else np.asarray(c)
            numeric = (not (x.dtype.is_complex or x.dtype == torch.bool) if isinstance(x, Tensor)
                       else x.dtype.kind in "fiu")
            if not numeric or tuple(x.shape) != (E, n):
                raise ValueError(f"{name}: action of {a!r} is {x.dtype} {tuple(x.shape)}; it must be "
                                 f"floats of shape ({E}, {n}) (its action space is {self._action_spaces[a]})")
            parts.append(x)
        single = all(x.dtype == (torch.float32 if isinstance(x, Tensor) else np.float32) for x in parts)
        dtype = torch.float32 if single else torch.float64
        if all(isinstance(x, np.ndarray) for x in parts):
            matrix = torch.from_numpy(np.concatenate(parts, 1, dtype=np.float32 if single else np.float64))
            matrix = matrix if self.device.type == "cpu" else matrix.to(self.device)
        else:
            matrix = torch.cat([x.to(self.device, dtype) if isinstance(x, Tensor)
                                else torch.tensor(x, dtype=dtype, device=self.device) for x in parts], 1)
        nan = torch.isnan(matrix)
        if bool(nan.any()):
            copy, col = (int(i) for i in nan.nonzero()[0])
            j = int(np.searchsorted(self._action_offsets, col, side="right")) - 1
            raise ValueError(f"{name}: action of {self.possible_agents[j]!r} in copy {copy} is NaN "
                             f"(component {col - self._action_offsets[j]}); mpe2 refuses NaN actions")
        low, high = self._box_bounds[dtype]
        return torch.clamp(matrix, low, high)

    def _refuse(self, matrix: Tensor) -> None:
        bad = (matrix < 0) | (matrix >= self._action_n.to(matrix.device))
        copy, col = (int(i) for i in bad.nonzero()[0])
        agent = self.possible_agents[col]
        raise ValueError(f"{type(self).__name__}: action {int(matrix[copy, col])} of {agent!r} in copy "
                         f"{copy} is outside its action space {self._action_spaces[agent]}")


class OneCopy(ParallelEnv):
    """A vector environment with one copy as a PettingZoo ``ParallelEnv``: numpy float32 observations,
    Python float rewards, bool flags, ``agents`` emptied when the episode ends. ``vector``: the vector
    environment (``num_envs == 1``); a subclass made by :func:`versioned_vector` builds it from kwargs."""

    vector_class: ClassVar[type[VectorEnv] | None] = None

    def __init__(self, vector: VectorEnv | None = None, **kwargs: Any) -> None:
        if vector is None:
            if self.vector_class is None:
                raise TypeError("OneCopy(vector): give a vector environment with num_envs=1")
            vector = self.vector_class(1, **kwargs)
        elif kwargs:
            raise TypeError(f"OneCopy: keyword arguments {sorted(kwargs)} go to the vector environment, "
                            "not here")
        if vector.num_envs != 1:
            raise ValueError(f"OneCopy: the vector environment has num_envs={vector.num_envs}; it needs 1")
        self.vector = vector
        self.metadata = dict(vector.metadata)  # (versioned_vector's class has it as a class attribute)
        self.render_mode = None
        self.possible_agents = list(vector.possible_agents)
        self.agents: list[str] = []
        if hasattr(vector, "comm_slice"):
            self.comm_slice = vector.comm_slice

    def observation_space(self, agent: str) -> spaces.Space:
        return self.vector.observation_space(agent)

    def action_space(self, agent: str) -> spaces.Space:
        return self.vector.action_space(agent)

    @staticmethod
    def _obs(obs: dict[str, Tensor]) -> dict[str, np.ndarray]:
        return {a: o[0].cpu().numpy() for a, o in obs.items()}

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        obs, infos = self.vector.reset(seed=seed, options=options)
        self.agents = list(self.possible_agents)
        return self._obs(obs), {a: dict(i) for a, i in infos.items()}

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        if not self.agents:
            raise RuntimeError(f"{self.metadata.get('name')}: step() with no agents (the episode ended or "
                               "never began); call reset()")
        obs, rewards, terms, truncs, infos = self.vector.step({a: np.asarray(x)[None]  # one copy's
                                                               for a, x in actions.items()})
        rewards = {a: float(r[0]) for a, r in rewards.items()}
        terms = {a: bool(t[0]) for a, t in terms.items()}
        truncs = {a: bool(t[0]) for a, t in truncs.items()}
        if not self.vector.running:
            self.agents = []
        return self._obs(obs), rewards, terms, truncs, {a: dict(i) for a, i in infos.items()}

    def render(self) -> None:
        return None

    def close(self) -> None:
        self.vector.close()


def versioned_vector(
    cls: type[VectorEnv],
) -> tuple[type[OneCopy], Callable[..., ParallelEnv], Callable[..., AECEnv], Callable[..., VectorEnv]]:
    """``raw_env, parallel_env, env, vector_env`` of a versioned module: the one-copy ``ParallelEnv`` class,
    it built from kwargs, it as an ``AECEnv`` (``parallel_to_aec``), and ``vector_env(num_envs, **kwargs)``,
    the batched ``cls``."""
    doc = (f"One copy of :class:`{cls.__module__}.{cls.__name__}` as a PettingZoo ``ParallelEnv`` (kwargs: "
           "the vector environment's).")
    raw = type(f"{cls.__name__}OneCopy", (OneCopy,), {
        "vector_class": cls, "metadata": dict(cls.metadata), "__doc__": doc, "__module__": cls.__module__})

    def parallel_env(**kwargs: Any) -> ParallelEnv:
        return raw(**kwargs)

    def env(**kwargs: Any) -> AECEnv:
        return parallel_to_aec(raw(**kwargs))

    def vector_env(num_envs: int, **kwargs: Any) -> VectorEnv:
        return cls(num_envs, **kwargs)

    parallel_env.__doc__ = f"One copy of {cls.__name__} as a PettingZoo ``ParallelEnv``."
    env.__doc__ = f"One copy of {cls.__name__} as a PettingZoo ``AECEnv`` (agents act in turn)."
    vector_env.__doc__ = f"{cls.__name__}: ``num_envs`` copies in lockstep, torch tensors (vector protocol)."
    return raw, parallel_env, env, vector_env
