"""DNI as a layer of your own model: insert :class:`DNI` in ``forward`` where a lower part hands its
activation (the message) to an upper part, and keep your loop (``zero_grad``, ``backward``, ``step``).

What one training forward and the backward after it do, in the core's terms::

    h  (the lower part's message) ──▶ DNI ──▶ the same values, on to the upper part
    send:      ĝ = U(h[, context])                         (Interface.send: per-example units, warm-up)
    backward:  the upper part's gradient for the output ──▶ target of U's regression
               (Interface.collect: the closed-form or autograd regression, stats, the non-finite policy)
               ĝ, never that gradient ──▶ the lower part

Bootstrapping needs no code: a DNI further up hands its own ĝ down in place of its true gradient, so the
target this DNI regresses onto already contains it.

Why one backward pass, not ``h.backward(ĝ)`` in ``forward``: a user's loop clears gradients between the
forward and ``loss.backward()`` (``loss = f(model(x)); opt.zero_grad(); loss.backward()``), which would
erase a gradient applied during the forward. So the lower part gets ĝ when the backward pass reaches the
boundary, in place of the true gradient. Its update is the same: ĝ was fixed at send time, and nothing
steps before ``opt.step()``. This is the core's feed-forward clock step with ``steps_together``, where
every layer and utility model also steps after the whole step. Waiting for nobody matters once parts live
in different processes or step at different times. That is the job of :class:`~dni_agents.core.System`.

The utility model is a submodule, so the user's one optimizer steps it with the layers, and
``model.state_dict()`` holds it. The interface regresses with the core's code (:meth:`Interface.collect`)
and leaves U's gradient in ``.grad``, adding to what is there, for the user's optimizer. The interface's own
utility optimizer is :class:`_CallerSteps`, whose step does nothing and which owns none of U's
parameters, so clearing it clears nothing of U's.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from torch import nn

from .interface import MODES, Interface, Mode
from .message import InProcess
from .models import UtilityModel
from .nonfinite import OnNonFinite


class _CallerSteps(torch.optim.Optimizer):
    """The interface's utility optimizer when the caller's optimizer steps the utility model. It owns a
    placeholder tensor, not U's parameters, so clearing it leaves U's regression gradient for the caller.
    Its step does nothing."""

    def __init__(self) -> None:
        super().__init__([torch.zeros(0, requires_grad=True)], {})

    def step(self, closure: Any = None) -> None:  # the caller's optimizer takes the step
        return None


class _Boundary(torch.autograd.Function):
    """Forward: the message's values. Backward: the true gradient goes to the DNI as its target, and the
    lower part gets ĝ, fixed at send time."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, dni: DNI, step: int, synthetic: torch.Tensor | None
                ) -> torch.Tensor:
        ctx.dni, ctx.step, ctx.synthetic = dni, step, synthetic
        return h.clone()  # the upper part's own tensor: changed in place, it changes no record of the message

    @staticmethod
    def backward(ctx: Any, true_gradient: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        if ctx.step is not None:  # a second backward through a kept graph brings no new target
            ctx.dni._target_arrived(ctx.step, true_gradient.detach())
            ctx.step = None
        return ctx.synthetic, None, None, None


class DNI(nn.Module):
    """A decoupled neural interface between the part of a model before it and the part after it.

    ``message_shape``: the shape of one row of the message (an int for a vector). With ``context_dim``
    > 0 it is cDNI: the utility model also sees ``context`` (e.g. a one-hot label), passed to
    ``forward`` explicitly. ``mode``: ``dni``, ``cdni`` (the default follows from ``context_dim``),
    ``backprop`` (the identity, with true gradients: the control) or ``none`` (no gradient crosses).
    ``utility``: your own utility model (``forward(message, context)`` returns ĝ shaped like the message);
    by default a :class:`UtilityModel` built with ``utility_options`` (``kind``, ``hidden``, ``layers``,
    ``rank``, ``normalize``), which starts at ĝ = 0. ``scale``, ``warmup_steps``: as
    :class:`Interface`. ``on_nonfinite``: a NaN or Inf target ``stop``-s training with
    :class:`NonFiniteError`, or (``skip``) is not regressed onto and is counted in :attr:`skipped`.
    ``max_in_flight``: how many messages may wait for their backward pass. The oldest are forgotten, so a
    training-mode forward with no backward (an evaluation without ``eval()`` or ``no_grad``) holds no
    memory for long.

    In eval mode, under ``torch.no_grad()``, or on a message with no gradient to carry, ``forward`` is the
    identity and the utility model is not called.
    """

    def __init__(
        self,
        message_shape: int | tuple[int, ...],
        context_dim: int = 0,
        *,
        mode: Mode | None = None,
        utility: nn.Module | None = None,
        scale: float = 1.0,
        warmup_steps: int = 0,
        on_nonfinite: OnNonFinite = "stop",
        max_in_flight: int = 256,
        name: str = "dni",
        **utility_options: Any,
    ) -> None:
        super().__init__()
        shape = (message_shape,) if isinstance(message_shape, int) else tuple(message_shape)
        mode = mode if mode is not None else "cdni" if context_dim > 0 else "dni"
        if mode not in MODES:
            raise ValueError(f"DNI {name}: mode {mode!r} is not one of {', '.join(MODES)}")
        if mode == "cdni" and context_dim <= 0:
            raise ValueError(f"DNI {name}: mode 'cdni' needs context_dim > 0 (got {context_dim})")
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"DNI {name}: on_nonfinite {on_nonfinite!r} is not one of stop, skip")
        synthetic = mode in ("dni", "cdni")
        if synthetic and utility is None:
            utility = UtilityModel(shape, context_dim=context_dim if mode == "cdni" else 0, **utility_options)
        self.message_shape, self.context_dim = shape, context_dim
        self.utility = utility if synthetic else None
        self.interface = Interface(
            name, "lower", "upper", mode, self.utility, _CallerSteps() if synthetic else None, scale=scale,
            warmup_steps=warmup_steps, transport=InProcess(max_in_flight), max_in_flight=max_in_flight,
        )
        self.on_nonfinite: OnNonFinite = on_nonfinite
        self.track_stats = False  # measure ĝ against its target (cosine, relative error, norms) while on
        self._stats: deque[dict] = deque(maxlen=1024)
        self._step = 0  # the id of the next message: keys its target to its prediction

    @property
    def mode(self) -> str:
        return self.interface.mode

    @property
    def skipped(self) -> int:
        """Targets not regressed onto because they or their prediction were not finite (policy ``skip``)."""
        return self.interface.skipped

    def forward(self, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        mode = self.interface.mode
        if mode == "backprop" or not (self.training and torch.is_grad_enabled()):
            return h
        if mode == "none":
            return h.detach()
        if not h.requires_grad:  # nothing below learns from this message
            return h
        if mode == "cdni" and context is None:
            raise ValueError(f"DNI {self.interface.name}: mode 'cdni' needs context= in forward (a tensor of "
                             f"{self.context_dim} numbers per row, e.g. a one-hot label)")
        step, iface = self._step, self.interface
        self._step += 1
        synthetic = iface.send(h, step, context)
        iface.transport.take_message(iface.name, step)  # the upper part gets the message through the graph
        return _Boundary.apply(h, self, step, synthetic)

    def _target_arrived(self, step: int, true_gradient: torch.Tensor) -> None:
        """The upper part's gradient for the message of ``step``: regress the utility model onto it."""
        iface = self.interface
        iface.transport.put_target(iface.name, step, true_gradient)
        with torch.enable_grad():  # a backward pass runs without grad mode; a deeper U's regression needs it
            self._stats.extend(iface.collect(self.track_stats, self.on_nonfinite))

    def stats(self) -> list[dict[str, float]]:
        """What happened since the last call, one record per target, values as floats: ``step`` and
        ``utility_loss`` always, and on steps when :attr:`track_stats` was on ``grad_cosine``,
        ``grad_rel_error``, ``grad_r2`` (ĝ against the true gradient, where defined), ``target_norm``,
        ``synthetic_norm`` and ``message_norm`` (per-example units). The newest 1,024 records are kept."""
        out = [{k: v if k == "step" else float(v) for k, v in record.items()} for record in self._stats]
        self._stats.clear()
        return out

    def get_extra_state(self) -> dict:
        return {"messages_sent": self.interface.messages_sent}  # where warm-up stands

    def set_extra_state(self, state: dict) -> None:
        self.interface.messages_sent = int(state["messages_sent"])

    def extra_repr(self) -> str:
        context = f", context_dim={self.context_dim}" if self.mode == "cdni" else ""
        return f"{self.message_shape}{context}, mode={self.mode!r}"
