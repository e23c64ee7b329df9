"""mpe2's multi-agent particle world (``mpe2._mpe_utils.core.World`` stepped by ``SimpleEnv``) batched in
torch: every copy's state in one float64 tensor, one step of all copies in a few tensor ops.

It equals mpe2 step for step, for discrete and for continuous actions (float64, as mpe2's numpy; the
scenarios cast observations to float32 at the end):

* discrete action decoding (``SimpleEnv._execute_world_step`` / ``_set_action``): a movable agent's action
  is ``move + (2 * dim_p + 1) * word`` (a silent one's is just the move, an unmovable speaker's just the
  word); move 1/2/3/4 pushes -x/+x/-y/+y with force ``accel`` (5.0 when None), word ``w`` sets the agent's
  utterance to one-hot ``w`` (silent agents' stays zeros);
* continuous action decoding (``continuous=True``, mpe2's ``continuous_actions=True``): an agent's action
  is a vector in ``Box(0, 1, (n,))``, ``n = (2 * dim_p + 1 if movable else 0) + (dim_c unless silent)``: a
  movable agent's first ``2 * dim_p + 1`` components ``a`` push with force ``accel * (a[2] - a[1],
  a[4] - a[3])`` (``a[0]`` is the unused no-op component; the differences are taken in the actions'
  dtype, as mpe2 takes them, then float64), the remaining ``dim_c`` components (all of an unmovable
  speaker's) are the agent's utterance as given (silent agents' stays zeros). Nothing is clipped here:
  mpe2's ``ClipOutOfBoundsWrapper`` clips to the box before, as :class:`dni_envs._vector.VectorEnv` does;
* ``World.step``: collision forces between colliding entities (softplus penetration, ``contact_force``,
  ``contact_margin``), then for movable entities ``pos += vel * dt; vel = vel * (1 - damping) +
  force / mass * dt``, then the ``max_speed`` clamp.

How: a copy's state is one row ``[positions, velocities, utterances]`` of ``state`` ``(num_envs, D)``,
``D = 2 · entities · dim_p + agents · dim_c`` (``pos``, ``vel``, ``c`` are views shaped
``(num_envs, entities, dim_p)`` / ``(num_envs, agents, dim_c)``; agents first, then landmarks, as
``World.entities``). Without collisions and speed limits a step is linear: ``state' = state @ T +
table[joint action]``, where ``T`` moves positions by ``vel · dt`` and damps velocities, and a row of
``table`` holds every agent's ``force / mass · dt`` and utterance for one joint action. That is one
lookup and one ``addmm`` for all copies and entities (continuous actions: the forces and utterances are
computed from the action vectors in a few elementwise ops and take the table row's place); scenarios read
observations the same way (one ``addmm`` with a per-episode constant, :meth:`BatchedWorld.readout`).
Matrix products sum the same float64 terms as mpe2 (times 1 or 0) and may fuse a multiply-add, so
results differ from mpe2 by an ulp at most, never more than rounding. Collisions and speed limits add
their (non-linear) terms after the product.

Motor and communication noise (``u_noise``, ``c_noise``) come from numpy's global generator in mpe2, which
no batched stepping can replay; a world with them is refused. Scripted agents (``action_callback``) are
not modelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from ._vector import check_choice, check_kwargs

Tensor = torch.Tensor
JOINT_TABLE_LIMIT = 1 << 20  # entries of the joint-action table; beyond it, one lookup per agent


# ------------------------------------------------------------------------- what every scenario shares
def mpe_action_spaces(agents: list[str], sizes: list[int], continuous: bool) -> dict[str, spaces.Space]:
    """mpe2's action spaces: ``Discrete(n)``, or (``continuous_actions=True``) ``Box(0, 1, (n,))`` float32."""
    if continuous:
        return {a: spaces.Box(low=0, high=1, shape=(n,)) for a, n in zip(agents, sizes, strict=True)}
    return {a: spaces.Discrete(n) for a, n in zip(agents, sizes, strict=True)}


MPE_KWARGS = ("max_cycles", "device", "continuous_actions", "render_mode", "dynamic_rescaling",
              "benchmark_data")


def check_mpe_kwargs(owner: str, kwargs: dict[str, Any], scenario_kwargs: tuple[str, ...] = ()) -> None:
    """The keyword arguments a batched scenario takes: its own (``scenario_kwargs``) and mpe2's common ones
    (:data:`MPE_KWARGS`), these only at the values the batched world implements."""
    check_kwargs(owner, kwargs, (*scenario_kwargs, *MPE_KWARGS))
    check_choice(owner, "continuous_actions", kwargs.get("continuous_actions", False), (False, True))
    check_choice(owner, "render_mode", kwargs.get("render_mode"), (None,))
    check_choice(owner, "benchmark_data", kwargs.get("benchmark_data", False), (False,))
    check_choice(owner, "dynamic_rescaling", kwargs.get("dynamic_rescaling", True), (True, False))


@dataclass(frozen=True)
class Body:
    """An entity (mpe2's ``Entity``; the defaults are a landmark's): ``size``, ``movable``, ``collide``,
    ``mass`` (``initial_mass``), ``max_speed``."""

    name: str
    size: float = 0.050
    movable: bool = False
    collide: bool = True
    mass: float = 1.0
    max_speed: float | None = None


@dataclass(frozen=True)
class AgentBody(Body):
    """An agent (mpe2's ``Agent``: movable and speaking by default); ``accel`` None means mpe2's
    sensitivity 5.0; ``u_noise`` / ``c_noise`` must stay None (see the module docstring)."""

    movable: bool = True
    silent: bool = False
    accel: float | None = None
    u_noise: float | None = None
    c_noise: float | None = None


class BatchedWorld:
    """``num_envs`` copies of one mpe2 world (module docstring). :meth:`reset` sets the positions,
    :meth:`step` takes each agent's discrete action (``continuous=True``: each agent's action vector);
    the state is ``state`` (float64, on ``device``) and its views ``pos``, ``vel``, ``c``.
    ``action_sizes``: each agent's ``Discrete`` size, or (continuous) its ``Box`` size."""

    def __init__(self, num_envs: int, agents: list[AgentBody], landmarks: list[Body], *, dim_c: int,
                 device: str | torch.device = "cpu", dim_p: int = 2, dt: float = 0.1, damping: float = 0.25,
                 contact_force: float = 1e2, contact_margin: float = 1e-3, continuous: bool = False) -> None:
        for a in agents:
            if a.u_noise or a.c_noise:
                raise ValueError(f"agent {a.name}: u_noise={a.u_noise!r}, c_noise={a.c_noise!r}; mpe2 draws "
                                 "noise from numpy's global generator, which the batched world cannot replay")
        self.num_envs, self.dim_c, self.dim_p = num_envs, dim_c, dim_p
        self.continuous = bool(continuous)
        self.device = torch.device(device)
        self.agents, self.landmarks = list(agents), list(landmarks)
        self.entities: list[Body] = [*self.agents, *self.landmarks]
        self.dt, self.damping = dt, damping
        self.contact_force, self.contact_margin = contact_force, contact_margin
        A, N, P = len(self.agents), len(self.entities), dim_p
        self.dim = 2 * N * P + A * dim_c
        f64 = dict(dtype=torch.float64, device=self.device)

        # The linear part of a step: positions move by vel * dt, velocities are damped, utterances reset.
        T = np.zeros((self.dim, self.dim))
        for i, e in enumerate(self.entities):
            for k in range(P):
                p, v = self.pos_col(i, k), self.vel_col(i, k)
                T[p, p] = 1.0
                if e.movable:
                    T[v, p] = dt
                    T[v, v] = 1 - damping
        self._T = torch.tensor(T, **f64)

        self.action_sizes = [self.action_size(a) for a in self.agents]
        if self.continuous:
            self._setup_continuous()
        else:
            self._setup_discrete()

        # Pairs that collide (mpe2's get_collision_force gives forces only to them, only to movable ones).
        pairs = [(i, j) for i in range(N) for j in range(i + 1, N)
                 if self.entities[i].collide and self.entities[j].collide
                 and (self.entities[i].movable or self.entities[j].movable)]
        self.collisions = bool(pairs)
        if pairs:
            ia, ib = zip(*pairs, strict=True)
            movable = [float(e.movable) for e in self.entities]
            self._pair_a = torch.tensor(ia, dtype=torch.int64, device=self.device)
            self._pair_b = torch.tensor(ib, dtype=torch.int64, device=self.device)
            self._pair_min = torch.tensor([self.entities[i].size + self.entities[j].size for i, j in pairs],
                                          **f64)[:, None]
            self._pair_on_a = torch.tensor([movable[i] for i in ia], **f64)[:, None]
            self._pair_on_b = torch.tensor([movable[j] for j in ib], **f64)[:, None]
            per_mass_dt = [m / e.mass * dt for m, e in zip(movable, self.entities, strict=True)]
            self._per_mass_dt = torch.tensor(per_mass_dt, **f64)[:, None]
        self.clamp_speed = any(e.max_speed is not None and e.movable for e in self.entities)
        speeds = [e.max_speed if e.max_speed is not None and e.movable else math.inf for e in self.entities]
        self._max_speed = torch.tensor(speeds, **f64)[:, None]
        self.state = torch.zeros(num_envs, self.dim, **f64)

    def _setup_discrete(self) -> None:
        """What each action value of each agent adds to the next state (force / mass * dt, utterance), as
        one table row per joint action, or one table per agent if the joint one would be too big."""
        P, D, dt = self.dim_p, self.dim, self.dt
        f64 = dict(dtype=torch.float64, device=self.device)
        tables = []
        for j, (a, n) in enumerate(zip(self.agents, self.action_sizes, strict=True)):
            table = np.zeros((n, D))
            for k in range(n):
                force, word = self._decode(a, k)
                if a.movable:  # mpe2's float64 ops in mpe2's order: the entries are exact
                    table[k, self.vel_col(j, 0): self.vel_col(j, 0) + P] = force / a.mass * dt
                table[k, self.c_col(j, 0): self.c_col(j, 0) + self.dim_c] = word
            tables.append(table)
        joint = math.prod(self.action_sizes)
        if joint * self.dim <= JOINT_TABLE_LIMIT:  # one row per joint action: one lookup a step
            rows = np.zeros((1, D))
            for table in tables:  # row-major over agents; each entry is one agent's (disjoint columns)
                rows = (rows[:, None, :] + table[None, :, :]).reshape(-1, D)
            self._joint = torch.tensor(rows, **f64)
            strides = np.cumprod([1, *self.action_sizes[::-1]])[:-1][::-1].copy()
            self._strides = torch.tensor(strides, dtype=torch.int64, device=self.device)
            self._int_matmul = self.device.type == "cpu"  # CUDA has no integer matmul
        else:
            self._joint = None
            self._table = torch.tensor(np.concatenate(tables), **f64)
            offsets = np.cumsum([0, *self.action_sizes[:-1]])
            self._offsets = torch.tensor(offsets, dtype=torch.int64, device=self.device)

    def _setup_continuous(self) -> None:
        """Where each agent's action vector goes: columns of the concatenated actions, of ``state``."""
        P, mdim = self.dim_p, 2 * self.dim_p + 1
        plus, minus, vel, scale, mass, src, dst = [], [], [], [], [], [], []
        offset = 0
        for j, (a, n) in enumerate(zip(self.agents, self.action_sizes, strict=True)):
            at = offset
            if a.movable:  # u[k] = a[2k + 2] - a[2k + 1] (mpe2: u[0] = a[2] - a[1], u[1] = a[4] - a[3])
                for k in range(P):
                    plus.append(at + 2 * k + 2)
                    minus.append(at + 2 * k + 1)
                    vel.append(self.vel_col(j, k))
                    scale.append(5.0 if a.accel is None else a.accel)
                    mass.append(a.mass)
                at += mdim
            if not a.silent:
                src += range(at, at + self.dim_c)
                dst += [self.c_col(j, k) for k in range(self.dim_c)]
            offset += n
        index = dict(dtype=torch.int64, device=self.device)
        f64 = dict(dtype=torch.float64, device=self.device)
        self._plus, self._minus = torch.tensor(plus, **index), torch.tensor(minus, **index)
        self._vel_cols, self._sensitivity = torch.tensor(vel, **index), torch.tensor(scale, **f64)
        self._move_mass = torch.tensor(mass, **f64)
        self._comm_src, self._comm_cols = torch.tensor(src, **index), torch.tensor(dst, **index)
        self._moves, self._speaks = bool(plus), bool(src)

    # ------------------------------------------------------------------------------ layout
    def pos_col(self, entity: int, k: int) -> int:
        """Column of ``state`` holding coordinate ``k`` of entity ``entity``'s position."""
        return entity * self.dim_p + k

    def vel_col(self, entity: int, k: int) -> int:
        return (len(self.entities) + entity) * self.dim_p + k

    def c_col(self, agent: int, k: int) -> int:
        return 2 * len(self.entities) * self.dim_p + agent * self.dim_c + k

    @property
    def pos(self) -> Tensor:
        """``(num_envs, entities, dim_p)`` view of ``state``."""
        n = len(self.entities) * self.dim_p
        return self.state[:, :n].view(self.num_envs, -1, self.dim_p)

    @property
    def vel(self) -> Tensor:
        n = len(self.entities) * self.dim_p
        return self.state[:, n: 2 * n].view(self.num_envs, -1, self.dim_p)

    @property
    def c(self) -> Tensor:
        """``(num_envs, agents, dim_c)``: each agent's last utterance (zeros for silent agents)."""
        return self.state[:, 2 * len(self.entities) * self.dim_p:].view(self.num_envs, -1, self.dim_c)

    def readout(self, columns: list[dict[int, float]]) -> Tensor:
        """``(D, K)`` float64: ``state @ readout(columns)`` is, in output column ``j``, the sum of
        ``coeff * state[:, col]`` over ``columns[j].items()`` (e.g. ``{pos_col(2, 0): 1, pos_col(1, 0): -1}``:
        landmark 2's x relative to agent 1)."""
        W = np.zeros((self.dim, len(columns)))
        for j, terms in enumerate(columns):
            for col, coeff in terms.items():
                W[col, j] = coeff
        return torch.tensor(W, dtype=torch.float64, device=self.device)

    # ------------------------------------------------------------------------------ actions
    def action_size(self, agent: AgentBody) -> int:
        """mpe2's ``Discrete`` size: (2·dim_p + 1 if movable else 1) × (dim_c unless silent); continuous:
        the ``Box`` size, (2·dim_p + 1 if movable else 0) + (dim_c unless silent)."""
        if self.continuous:
            return (2 * self.dim_p + 1 if agent.movable else 0) + (0 if agent.silent else self.dim_c)
        n = 2 * self.dim_p + 1 if agent.movable else 1
        return n if agent.silent else n * self.dim_c

    def _decode(self, agent: AgentBody, action: int) -> tuple[np.ndarray, np.ndarray]:
        """mpe2's ``_execute_world_step`` + ``_set_action`` for one discrete action: (force, utterance)."""
        u, c = np.zeros(self.dim_p), np.zeros(self.dim_c)
        if agent.movable:
            mdim = 2 * self.dim_p + 1
            move, action = action % mdim, action // mdim
            if move > 0:
                u[(move - 1) // 2] = -1.0 if move % 2 == 1 else +1.0
            u *= 5.0 if agent.accel is None else agent.accel
            u = u + 0.0  # mpe2 adds its (absent) motor noise
        if not agent.silent:
            c[action] = 1.0
        return u, c

    # ------------------------------------------------------------------------------ dynamics
    def reset(self, pos: np.ndarray | Tensor) -> None:
        """Positions ``(num_envs, entities, dim_p)``; velocities and utterances zero (mpe2's reset_world)."""
        state = np.zeros((self.num_envs, self.dim))
        n = len(self.entities) * self.dim_p
        state[:, :n] = np.asarray(pos, dtype=np.float64).reshape(self.num_envs, n)
        self.state = torch.from_numpy(state).to(self.device)

    def step(self, actions: Tensor) -> None:
        """One ``World.step`` of every copy; ``actions`` ``(num_envs, agents)`` int64, in range, or
        (continuous) ``(num_envs, sum(action_sizes))`` float32 / float64, the agents' action vectors side by
        side (clipped to their boxes already, as mpe2's wrapper clips them)."""
        if self.continuous:
            added = self._continuous_added(actions)
        elif self._joint is not None:
            index = actions @ self._strides if self._int_matmul else (actions * self._strides).sum(1)
            added = self._joint[index]
        else:
            added = self._table[actions + self._offsets].sum(1)
        old = self.state
        self.state = torch.addmm(added, old, self._T)
        if self.collisions:
            self.vel.add_(self._collision_forces(old) * self._per_mass_dt)
        if self.clamp_speed:
            vel = self.vel
            speed = torch.sqrt(vel[..., 0:1] ** 2 + vel[..., 1:2] ** 2)
            vel.copy_(torch.where(speed > self._max_speed, vel / speed * self._max_speed, vel))

    def _continuous_added(self, actions: Tensor) -> Tensor:
        """``(num_envs, D)``: what the continuous actions add to the next state (``table``'s row in the
        discrete step): force / mass * dt at the movable agents' velocities, the speakers' utterances."""
        added = torch.zeros(self.num_envs, self.dim, dtype=torch.float64, device=self.device)
        if self._moves:  # mpe2's order: (a[2k+2] - a[2k+1]) in the actions' dtype, * accel, / mass, * dt
            diff = (actions[:, self._plus] - actions[:, self._minus]).to(torch.float64)
            added[:, self._vel_cols] = diff * self._sensitivity / self._move_mass * self.dt
        if self._speaks:
            added[:, self._comm_cols] = actions[:, self._comm_src].to(torch.float64)
        return added

    def _collision_forces(self, state: Tensor) -> Tensor:
        """``(num_envs, entities, dim_p)``: the summed contact forces at ``state`` (mpe2's
        apply_environment_force: each pair once, each force on the movable ones)."""
        n = len(self.entities) * self.dim_p
        pos = state[:, :n].view(self.num_envs, -1, self.dim_p)
        delta = pos[:, self._pair_a] - pos[:, self._pair_b]
        dist = torch.sqrt(torch.sum(torch.square(delta), -1, keepdim=True))
        k = self.contact_margin
        penetration = torch.logaddexp(torch.zeros_like(dist), -(dist - self._pair_min) / k) * k
        f = self.contact_force * delta / dist * penetration
        force = torch.zeros_like(pos)
        force.index_add_(1, self._pair_a, f * self._pair_on_a)
        force.index_add_(1, self._pair_b, -f * self._pair_on_b)
        return force
