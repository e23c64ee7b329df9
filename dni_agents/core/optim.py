"""What the core does to an agent's or a utility model's optimizer besides ``step``: clearing gradients,
and the ``merged_steps`` speed-up (:mod:`~dni_agents.core.speedups`): several Adam optimizers stepped as
one, with torch's public optimizer API only."""

from __future__ import annotations

import operator
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.optim import Adam


def clear_grads(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.zero_grad(set_to_none=True)`` without its profiler range and compiler guard: the core
    clears every optimizer once per tick, where those wrappers cost more than setting the gradients."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None


def mergeable(optimizer: torch.optim.Optimizer) -> bool:
    """A plain ``torch.optim.Adam`` whose ``step`` is the class's own (not one set on the instance, as an
    LR scheduler or a wrapper does: whoever set it expects it called), not scaled by AMP, whose groups'
    settings are plain values, learning rates floats, none ``capturable`` or ``differentiable``: its step
    is Adam's arithmetic on each parameter and nothing else, which another Adam over the same parameters
    and state repeats exactly."""
    return _plain_adam(optimizer) and all(_Settings(g).key is not None for g in optimizer.param_groups)


def _plain_adam(optimizer: torch.optim.Optimizer) -> bool:
    own = vars(optimizer)
    return type(optimizer) is Adam and "step" not in own and own.get("grad_scale") is None \
        and own.get("found_inf") is None


_PLAIN = (float, int, bool, str, type(None))


class _Settings:
    """One Adam group's hyperparameters: ``key`` (None if the group cannot be merged) and ``settings`` for
    the merged group (foreach where the group leaves the kernel to torch and is not fused). Read once and
    checked against the group at each step (one C-level read and compare), so a changed learning rate is
    followed."""

    __slots__ = ("group", "size", "read", "values", "key", "settings")

    def __init__(self, group: dict) -> None:
        names = tuple(k for k in group if k != "params")
        self.group, self.size = group, len(group)
        self.read = operator.itemgetter(*names) if names else (lambda _: ())
        self.values = self.read(group)
        settings = dict(zip(names, self.values if len(names) > 1 else (self.values,), strict=True))
        plain = all(isinstance(v, _PLAIN) or (isinstance(v, tuple) and all(isinstance(x, _PLAIN) for x in v))
                    for v in settings.values())
        if plain and settings.get("foreach") is None and not settings.get("fused"):
            settings["foreach"] = True
        ok = plain and bool(names) and isinstance(settings.get("lr"), float) \
            and not settings.get("differentiable") and not settings.get("capturable")
        self.settings = settings
        self.key = tuple(sorted(settings.items())) if ok else None

    def current(self, group: dict) -> bool:
        return group is self.group and len(group) == self.size and self.read(group) == self.values


class MergedAdam:
    """Steps several plain Adam optimizers as one ``torch.optim.Adam`` (its groups: one per set of equal
    hyperparameters, holding the parameters of all the owners' groups that have them). Before each step the
    merged optimizer's ``state[p]`` is the owner's own ``owner.state[p]`` dict (the same object), and each
    group's hyperparameters are the owners' current ones (a changed learning rate is followed); so the
    owners' states advance exactly as their own steps would advance them, and their ``state_dict`` is
    unchanged. Adam updates each parameter on its own, so the same arithmetic in one call gives the same
    bits; a group that leaves the kernel to torch gets the foreach kernels, which on a CPU give the bits of
    torch's one-tensor-at-a-time default in less time (tests/test_optim.py)."""

    def __init__(self) -> None:
        self._adam: Adam | None = None
        self._settings: dict[int, _Settings] = {}  # id(group) -> its settings, read again when they change

    def _settings_of(self, group: dict) -> _Settings:
        settings = self._settings.get(id(group))
        if settings is None or not settings.current(group):
            if len(self._settings) > 1024:  # groups of optimizers long gone: start again
                self._settings.clear()
            settings = self._settings[id(group)] = _Settings(group)
        return settings

    def step(self, optimizers: list[torch.optim.Optimizer]) -> None:
        """``for o in optimizers: o.step()``, bit for bit; the ones that are not :func:`mergeable` step
        themselves."""
        groups: dict[tuple, dict] = {}
        owned: list[tuple[torch.Tensor, dict]] = []
        for optimizer in optimizers:
            plain = _plain_adam(optimizer)
            settings = [self._settings_of(g) for g in optimizer.param_groups] if plain else []
            if not settings or any(s.key is None for s in settings):
                optimizer.step()
                continue
            state = optimizer.state
            for s in settings:
                merged = groups.get(s.key)
                if merged is None:
                    merged = groups[s.key] = {**s.settings, "params": []}
                for p in s.group["params"]:
                    if p.grad is not None:  # a parameter without a gradient has no step and gets no state
                        merged["params"].append(p)
                        owned.append((p, state[p]))
        if not owned:
            return
        merged_groups = [g for g in groups.values() if g["params"]]
        if self._adam is None:
            self._adam = Adam(merged_groups)
        adam = self._adam
        adam.param_groups = merged_groups
        adam.state.update(owned)
        try:
            adam.step()
        finally:  # hold no owner's tensors between steps (an owner may load another state meanwhile)
            adam.state.clear()
            adam.param_groups = []


def step_together(optimizers: list[torch.optim.Optimizer], merged: MergedAdam | None = None) -> None:
    """``for o in optimizers: o.step()``, bit for bit, in as few calls as their hyperparameters allow
    (:class:`MergedAdam`; pass one to reuse it)."""
    (merged if merged is not None else MergedAdam()).step(optimizers)


class StepQueue:
    """Optimizer steps, taken at once or (inside :meth:`together`) put off and taken together when it ends;
    ``merge`` (the ``merged_steps`` speed-up): steps taken at one time go through one :class:`MergedAdam`.

    A system and its interfaces share one queue. Putting a step off is safe only while nothing reads the
    parameters it changes: so an optimizer whose step is pending is stepped (with all that is pending) before
    its gradients are cleared again or its model is used (the system's next tick of that agent, the
    interface's next prediction); what else the caller reads inside the block is the caller's business. In
    one feed-forward clock step nothing is: every layer and utility model steps once, after its last use."""

    def __init__(self, merge: bool = True) -> None:
        self.merge = merge
        self.pending: list[torch.optim.Optimizer] = []
        self.deferring = False
        self._merged = MergedAdam()

    def _take(self, optimizers: list[torch.optim.Optimizer]) -> None:
        if self.merge:
            self._merged.step(optimizers)
        else:
            for optimizer in optimizers:
                optimizer.step()

    def step(self, *optimizers: torch.optim.Optimizer) -> None:
        """Step ``optimizers`` now (together, if ``merge``) or, inside :meth:`together`, later."""
        if not self.deferring:
            self._take(list(optimizers))
            return
        for optimizer in optimizers:
            self.apply_pending(optimizer)
            self.pending.append(optimizer)

    def clear(self, optimizer: torch.optim.Optimizer) -> None:
        """Clear ``optimizer``'s gradients, after taking its pending step."""
        self.apply_pending(optimizer)
        clear_grads(optimizer)

    def apply_pending(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Take the pending steps (all of them; with ``optimizer``: only if its step is among them)."""
        if self.pending and (optimizer is None or optimizer in self.pending):  # identity: no __eq__
            pending, self.pending = self.pending, []
            self._take(pending)

    @contextmanager
    def together(self) -> Iterator[None]:
        """Put the steps off until the block ends, then take them in as few calls as they allow."""
        if self.deferring:  # nested: the outer block takes them
            yield
            return
        self.deferring = True
        try:
            yield
        finally:  # on an error too: the ticks that finished would have stepped already
            self.deferring = False
            self.apply_pending()
