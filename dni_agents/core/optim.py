"""What the core does to an agent's or a utility model's optimizer besides ``step``: clearing gradients,
and stepping several optimizers at once."""

from __future__ import annotations

import operator
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.optim import Adam
from torch.optim import optimizer as _optimizer
from torch.optim.adam import adam

_ADAM_KEYS = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach", "capturable",
              "differentiable", "fused", "decoupled_weight_decay")
_adam_key = operator.itemgetter(*_ADAM_KEYS)  # a group's hyperparameters as one tuple, in one C call


def clear_grads(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.zero_grad(set_to_none=True)`` without its wrappers (a profiler range and a dynamo guard,
    ~9 µs a call on a CPU: a DNI step of the 3-layer MLP clears seven optimizers)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None


def _mergeable(optimizer: torch.optim.Optimizer) -> bool:
    """A plain ``torch.optim.Adam`` with float hyperparameters, no step hooks and its own ``step`` (not one
    set on the instance: a wrapper someone expects to be called): its step is exactly one call of the
    functional ``adam`` per parameter group, which other such groups can share."""
    return (type(optimizer) is Adam and "step" not in vars(optimizer)
            and not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks
            and not (getattr(optimizer, "grad_scale", None) or getattr(optimizer, "found_inf", None))
            and all(isinstance(g["lr"], float) and not g["differentiable"] and not g["capturable"]
                    for g in optimizer.param_groups))


def step_together(optimizers: list[torch.optim.Optimizer]) -> None:
    """``for o in optimizers: o.step()``, bit for bit, in as few calls as their hyperparameters allow.

    Adam updates each tensor on its own (the same arithmetic whichever list it is in), so the groups of
    several Adam optimizers with equal hyperparameters are stepped by one call of ``torch.optim.adam.adam``,
    each optimizer keeping its own state (its checkpoint does not change). A step call costs ~0.1 ms
    of Python on a CPU whatever its size: a DNI step of the 3-layer MLP steps five optimizers, a
    backprop tick of its coupled layers three. An Adam that leaves the kernel to torch gets the foreach
    kernels, which give the bits of torch's one-tensor-at-a-time default on a CPU in less time
    (tests/test_optim.py). Any other optimizer (or an Adam with hooks) steps itself."""
    hooked = _optimizer._global_optimizer_pre_hooks or _optimizer._global_optimizer_post_hooks
    if not optimizers or hooked:
        for optimizer in optimizers:
            optimizer.step()
        return
    merged: dict[tuple, tuple[list[list[torch.Tensor]], list[bool]]] = {}
    for optimizer in optimizers:
        if not _mergeable(optimizer):
            optimizer.step()
            continue
        for group in optimizer.param_groups:
            key = _adam_key(group)
            lists, complex_ = merged.setdefault(key, ([[] for _ in range(6)], []))
            complex_.append(optimizer._init_group(group, *lists))
    with torch.no_grad():
        for key, (lists, complex_) in merged.items():
            hp = dict(zip(_ADAM_KEYS, key, strict=True))
            if hp["foreach"] is None and not hp["fused"]:  # torch's default on a CPU is one tensor at a
                hp["foreach"] = True  # time; the foreach kernels give the same bits in ~60% of the time
            if lists[0]:
                adam(*lists, amsgrad=hp["amsgrad"], has_complex=any(complex_), beta1=hp["betas"][0],
                     beta2=hp["betas"][1], lr=hp["lr"], weight_decay=hp["weight_decay"], eps=hp["eps"],
                     maximize=hp["maximize"], foreach=hp["foreach"], capturable=False, differentiable=False,
                     fused=hp["fused"], grad_scale=None, found_inf=None,
                     decoupled_weight_decay=hp["decoupled_weight_decay"])


class StepQueue:
    """Optimizer steps, taken at once or (inside :meth:`together`) put off and taken together when it ends.

    A system and its interfaces share one queue. Putting a step off is safe only while nothing reads the
    parameters it changes: so an optimizer whose step is pending is stepped (with all that is pending) before
    its gradients are cleared again or its model is used (the system's next tick of that agent, the
    interface's next prediction); what else the caller reads inside the block is the caller's business. In
    one feed-forward clock step nothing is: every layer and utility model steps once, after its last use."""

    def __init__(self) -> None:
        self.pending: list[torch.optim.Optimizer] = []
        self.deferring = False

    def step(self, *optimizers: torch.optim.Optimizer) -> None:
        """Step ``optimizers`` now (together: :func:`step_together`) or, inside :meth:`together`, later."""
        if not self.deferring:
            step_together(list(optimizers))
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
            step_together(pending)

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
