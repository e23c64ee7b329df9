"""Agents, the ticks in which they update, and the system that holds them together.

A driver's training step reads like this::

    system.track_stats = log_now                  # measure ĝ's fidelity only on the steps you log
    for agent in chain:
        with system.tick(agent, step) as t:
            x = t.receive(inbound) if inbound else batch
            h = agent.module(x)
            t.send(outbound, h, context=labels)   # or t.add_loss(loss) at the top
    system.settle()
    if log_now:
        stats = system.drain_stats()

Leaving the ``with`` block updates the agent at once if every outgoing interface gave it a gradient
now (DNI: update unlocking). If one is locked (``backprop``, BP(λ)), the tick waits in the system until
its targets are back; :meth:`System.settle` finishes it then, and lets every interface learn from the
targets that have arrived.

A tick may also update several agents together (``system.tick([a, b], step)``): one backward pass, each
agent's optimizer steps. A ``backprop`` channel between agents of one tick is then simply an edge of the
graph (the receiver gets the live tensor), which is how a coupled cycle (two agents talking both ways, or
a shared network talking to itself over time) trains with true gradients without deadlocking.

Non-finite numbers: each tick checks its losses, the gradients it applies to messages (ĝ, or a locked
sender's target) and its parameter gradients in one go, before any optimizer steps; each interface
checks the targets it regresses onto. The system's ``on_nonfinite`` policy either stops the run
(:class:`NonFiniteError`, naming where and when) or skips: the tick does not update and replies NaN
targets, so that what depends on it is skipped too. Skipping saves a run from a bad batch; it cannot
undo an optimizer step that overflowed from finite gradients (every later tick is then skipped, and
:attr:`System.skipped` shows it).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from contextlib import AbstractContextManager

import torch
from torch import nn

from .interface import Interface
from .message import Transport
from .nonfinite import NonFiniteError, OnNonFinite, first_nonfinite
from .optim import StepQueue
from .speedups import SpeedUps


class Agent:
    """A network with its own optimizer. It ticks (updates) every ``period`` steps of the global clock,
    at steps ``period - 1, 2·period - 1, …``. ``max_grad_norm`` clips its gradient before each step."""

    def __init__(
        self,
        name: str,
        module: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        period: int = 1,
        max_grad_norm: float | None = None,
    ) -> None:
        if period < 1:
            raise ValueError(f"agent {name}: period must be >= 1, got {period}")
        self.name, self.module, self.optimizer, self.period = name, module, optimizer, period
        self.max_grad_norm = max_grad_norm

    def before_step(self) -> None:
        """Between backward and the optimizer step: clip the gradient norm if asked (RL needs it)."""
        if self.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.module.parameters(), self.max_grad_norm)

    def state_dict(self) -> dict:
        state = {"module": self.module.state_dict()}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])


class Tick:
    """One update of one agent (or of several together) at one clock step. Use through
    ``with system.tick(agent, step) as t``."""

    def __init__(self, system: System, agents: list[Agent], step: int) -> None:
        self.system, self.agents, self.step = system, agents, step
        self.agent = agents[0]
        self._names = {a.name for a in agents}
        self._losses: list[torch.Tensor] = []
        self._now: list[tuple[Interface, torch.Tensor, torch.Tensor]] = []  # (interface, h, ĝ) to apply now
        self._locked: list[tuple[Interface, torch.Tensor, int]] = []  # (interface, h, step) awaiting target
        self._received: list[tuple[Interface, int]] = []
        self._live: dict[tuple[str, int], torch.Tensor] = {}  # backprop edges inside this tick

    def receive(
        self, interface: Interface | str, source: torch.Tensor | None = None, step: int | None = None
    ) -> torch.Tensor:
        """The message on ``interface`` sent at ``step`` (default: this tick's step; an RNN reads the state
        its previous window sent, a slow agent the messages of the steps since its last tick)."""
        iface = self.system.interfaces[interface] if isinstance(interface, str) else interface
        step = self.step if step is None else step
        live = self._live.pop((iface.name, step), None)
        if live is not None:
            return live
        self._received.append((iface, step))
        return iface.receive(step, source)

    def send(
        self,
        interface: Interface | str,
        h: torch.Tensor,
        context: torch.Tensor | None = None,
        step: int | None = None,
        weight: torch.Tensor | None = None,
        stacked: int = 1,
    ) -> None:
        """Send ``h`` (as the message of ``step``, default this tick's step); its synthetic gradient (if
        any) is applied when the tick ends. ``weight``, ``stacked``: see :meth:`Interface.send`."""
        iface = self.system.interfaces[interface] if isinstance(interface, str) else interface
        step = self.step if step is None else step
        if iface.mode == "backprop" and iface.receiver in self._names:
            self._live[(iface.name, step)] = h  # receiver updates in this same backward pass
            iface.messages_sent += stacked  # sent all the same: a checkpoint does not depend on grouping
            return
        # the keywords only when used: an interface class of one's own whose send lacks them works without
        if stacked != 1:
            gradient = iface.send(h, step, context, weight, stacked=stacked)
        elif weight is not None:
            gradient = iface.send(h, step, context, weight)
        else:
            gradient = iface.send(h, step, context)
        if iface.locked:
            self._locked.append((iface, h, step))
        elif gradient is not None:
            self._now.append((iface, h, gradient))

    def add_loss(self, loss: torch.Tensor) -> None:
        """A loss of the agent's own (a scalar), minimised in the same backward pass."""
        self._losses.append(loss)

    @property
    def ready(self) -> bool:
        """Whether every locked interface has its target back, so the agent can update."""
        return all(iface.target_arrived(step) for iface, _, step in self._locked)

    def update(self) -> None:
        """One backward pass over losses and message gradients, one step of each agent's optimizer, then
        reply targets. Before any optimizer steps, one check (one device sync) that every loss, every
        gradient applied to a message (ĝ, or a locked sender's target) and the agents' parameter gradients
        are finite; if not, raise :class:`NonFiniteError` (policy ``stop``) or :meth:`skip`."""
        roots: list[torch.Tensor] = list(self._losses)
        grads: list[torch.Tensor | None] = [None] * len(roots)
        who = "+".join(a.name for a in self.agents)
        checked = [(loss, who, "loss", self.step) for loss in self._losses]
        for iface, h, g in self._now:
            roots.append(h)
            grads.append(g)
            checked.append((g, iface.name, "synthetic gradient", self.step))
        for iface, h, step in self._locked:
            roots.append(h)
            grads.append(iface.locked_gradient(step))
            checked.append((grads[-1], iface.name, "target", step))
        keep = [i for i, r in enumerate(roots) if r.requires_grad]
        optimizers = [a.optimizer for a in self.agents if a.optimizer is not None]
        steps = self.system.steps
        for optimizer in optimizers:
            steps.clear(optimizer)
        if keep:
            torch.autograd.backward([roots[i] for i in keep], [grads[i] for i in keep])
        for agent in self.agents:  # a backward pass may overflow where loss and ĝ are finite
            for group in agent.optimizer.param_groups if agent.optimizer is not None else ():
                checked += [(p.grad, agent.name, "gradient", self.step) for p in group["params"]
                            if p.grad is not None]  # the gradients the step would apply
        bad = first_nonfinite([c[0] for c in checked])
        if bad is not None:
            if self.system.on_nonfinite == "stop":
                raise NonFiniteError(*checked[bad][1:])
            for optimizer in optimizers:
                steps.clear(optimizer)
            self.skip()
            return
        for agent in self.agents:
            agent.before_step()
        steps.step(*optimizers)  # now (coupled agents' Adams merged), or later: steps_together
        for iface, step in self._received:
            iface.reply(step)

    def skip(self) -> None:
        """Policy ``skip``: the agents keep their parameters and optimizer states (the backward pass's
        gradients were dropped), and every message this tick received gets a NaN target. A zero target
        would be applied as 'this message does not matter'; NaN says 'no gradient this step', so a locked
        sender waiting on it finishes (skipped in turn: no deadlock) and no utility model regresses onto
        it. Counted per agent in :attr:`System.skipped`."""
        self.system._skipped_ticks.update(a.name for a in self.agents)
        for iface, step in self._received:
            iface.reply(step, usable=False)

    def __enter__(self) -> Tick:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.system._end(self)


class System:
    """Agents, the interfaces between them, and the clock. All state is on the instance.

    ``track_stats`` (default False): whether interfaces measure ĝ against its target (cosine, relative
    error, norms: a few more passes over every message) for the targets that arrive while it is on. Turn
    it on for the steps you log, then :meth:`drain_stats`. Each interface keeps at most ``stats_capacity``
    records (the newest), so memory stays bounded even if nobody drains. ``on_nonfinite``: a NaN or Inf
    loss, ĝ, target or parameter gradient ``stop``-s the run (:class:`NonFiniteError`) or its update is
    ``skip``-ped (counted in :attr:`skipped`). ``speedups`` (:class:`~dni_agents.core.speedups.SpeedUps`),
    if given, is set on every interface and decides whether the optimizers stepped at one time step as
    one (default: merged).
    """

    def __init__(
        self,
        agents: Iterable[Agent],
        interfaces: Iterable[Interface],
        transport: Transport | None = None,
        remote: Iterable[str] = (),
        on_nonfinite: OnNonFinite = "stop",
        stats_capacity: int = 1024,
        speedups: SpeedUps | None = None,
    ) -> None:
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
        self.agents: dict[str, Agent] = {}
        # agents that live in other processes: an interface may have one of them at its other end
        self.remote: frozenset[str] = frozenset(remote)
        for agent in agents:
            if agent.name in self.agents:
                raise ValueError(f"two agents are named {agent.name!r}")
            self.agents[agent.name] = agent
        self.interfaces: dict[str, Interface] = {}
        for iface in interfaces:
            if iface.sender in self.remote and iface.receiver in self.remote:
                raise ValueError(f"interface {iface.name}: neither end is an agent of this system")
            for role, who in (("sender", iface.sender), ("receiver", iface.receiver)):
                if who not in self.agents and who not in self.remote:
                    raise ValueError(
                        f"interface {iface.name}: unknown {role} {who!r} (agents: {', '.join(self.agents)})"
                    )
            if iface.name in self.interfaces:
                raise ValueError(f"two interfaces are named {iface.name!r}")
            if transport is not None:
                iface.transport = transport
            if speedups is not None:
                iface.speedups = speedups
            self.interfaces[iface.name] = iface
        self.waiting: list[Tick] = []
        self.track_stats = False
        self.on_nonfinite = on_nonfinite
        # optimizer steps: at once, or put off inside ``steps_together``; merged unless switched off
        self.steps = StepQueue(merge=(speedups if speedups is not None else SpeedUps()).merged_steps)
        for iface in self.interfaces.values():
            iface.steps = self.steps
        self._stats: dict[str, deque[dict]] = {n: deque(maxlen=stats_capacity) for n in self.interfaces}
        self._skipped_ticks: Counter[str] = Counter()

    def interface(self, sender: str, receiver: str) -> Interface:
        for iface in self.interfaces.values():
            if iface.sender == sender and iface.receiver == receiver:
                return iface
        raise KeyError(f"no interface from {sender!r} to {receiver!r}")

    def inbound(self, agent: str) -> list[Interface]:
        return [i for i in self.interfaces.values() if i.receiver == agent]

    def outbound(self, agent: str) -> list[Interface]:
        return [i for i in self.interfaces.values() if i.sender == agent]

    def coupled(self) -> list[list[str]]:
        """The agents, grouped so that agents joined by ``backprop`` channels share a group: such a group
        must update in one tick (``system.tick(group, step)``), or a cycle of locked channels deadlocks."""
        parent = {name: name for name in self.agents}

        def root(x: str) -> str:
            while parent[x] != x:
                x = parent[x]
            return x

        for iface in self.interfaces.values():
            if iface.mode == "backprop" and iface.sender in parent and iface.receiver in parent:
                parent[root(iface.sender)] = root(iface.receiver)
        groups: dict[str, list[str]] = {}
        for name in self.agents:
            groups.setdefault(root(name), []).append(name)
        return list(groups.values())

    def tick(self, agent: Agent | str | list[Agent | str], step: int) -> Tick:
        """Begin ``agent``'s update at ``step`` (a list: several agents updated in one backward pass)."""
        agents = agent if isinstance(agent, list) else [agent]
        agents = [self.agents[a] if isinstance(a, str) else a for a in agents]
        for a in agents:  # its module is about to run: a step of its put off is taken first
            if a.optimizer is not None:
                self.steps.apply_pending(a.optimizer)
        return Tick(self, agents, step)

    def steps_together(self) -> AbstractContextManager[None]:
        """``with system.steps_together():`` put every optimizer step of the block off (agents' and utility
        models') and take them together when it ends: bit for bit the same parameters, in one call per set
        of Adam hyperparameters instead of one per optimizer (a DNI step of the 3-layer MLP: five calls
        become one or two; see ``merged_steps``). Safe while nothing in the block reads an updated network's
        parameters other than through the system (a tick of that agent, a prediction of that utility
        model), which take the step first: in a feed-forward clock step, where each layer ticks once,
        nothing does."""
        return self.steps.together()

    def _end(self, tick: Tick) -> None:
        if tick.ready:
            tick.update()
        else:
            self.waiting.append(tick)
        self.settle()

    def settle(self) -> None:
        """Let interfaces learn from arrived targets and finish the waiting ticks that can finish, until
        nothing changes (a finished tick replies targets, which may free the ticks below it)."""
        progress = True
        while progress:
            progress = False
            for name, iface in self.interfaces.items():
                self._stats[name].extend(iface.collect(self.track_stats, self.on_nonfinite))
            for tick in list(self.waiting):
                if tick.ready:
                    self.waiting.remove(tick)
                    tick.update()
                    progress = True

    def check_settled(self) -> None:
        """Raise if a tick still waits for a target (a locked interface whose receiver never ticked)."""
        if self.waiting:
            tick = self.waiting[0]
            names = [i.name for i, _, step in tick._locked if not i.target_arrived(step)]
            raise RuntimeError(
                f"agent {tick.agent.name} (step {tick.step}) still waits for the true gradient on "
                f"{', '.join(names)}: did the receiver tick at that step?"
            )

    def drain_stats(self) -> dict[str, list[dict]]:
        """The stats gathered since the last call (at most ``stats_capacity`` newest per interface): one
        record per target, fidelity stats only where tracked (values may be 0-d tensors)."""
        out = {name: list(stats) for name, stats in self._stats.items() if stats}
        for stats in self._stats.values():
            stats.clear()
        return out

    @property
    def skipped(self) -> Counter[str]:
        """What policy ``skip`` left out so far: per agent, ticks that did not update; per interface,
        targets its utility model did not regress onto."""
        out = Counter(self._skipped_ticks)
        out.update({name: i.skipped for name, i in self.interfaces.items() if i.skipped})
        return out

    def state_dict(self) -> dict:
        self.steps.apply_pending()
        return {
            "agents": {name: a.state_dict() for name, a in self.agents.items()},
            "interfaces": {name: i.state_dict() for name, i in self.interfaces.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.steps.pending.clear()  # steps of the state being replaced
        for name, agent in self.agents.items():
            agent.load_state_dict(state["agents"][name])
        for name, iface in self.interfaces.items():
            iface.load_state_dict(state["interfaces"][name])
