"""The core's speed-ups: what each one replaces of the reference path, when it gives other numbers, and the
switches (:class:`SpeedUps`) that turn them off.

The reference path is the paper's protocol done with autograd (:mod:`~dni_agents.core.interface`): at send
time the utility model predicts ĝ with a graph; when the true gradient comes back, the regression loss of
that prediction onto it is back-propagated, and the utility model's optimizer steps (each optimizer its own
``step``). Each speed-up lives in one place and is tested against that path (tests/test_speedups.py,
tests/test_optim.py):

``closed_form`` (:class:`ClosedFormRegression`)
    A plain linear utility model ĝ = W·x + b (``UtilityModel.linear``: no rank, no gate) is regressed
    without a graph: the gradient of its loss is written out, the residual times x for W and its sum over
    rows for b, in autograd's order of operations. The same parameters bit for bit; no graph is built at
    send time and no backward pass is run.
``keep_prediction`` (:func:`keeps_prediction`)
    A target that comes after the utility model was updated (since its message was sent) is regressed
    from the prediction made at send time, not from a prediction made again with the current weights,
    when the model is affine (``affine``: its weight gradient does not depend on its weights) and its
    targets come from this process. The two agree whenever no update came between (a feed-forward clock
    step: each target comes back in the step its message went out). They differ when one did: a message
    an RNN sends to its next window, or a slow agent's, whose target comes after the update of the step in
    between; the kept residual is then that of the weights at send time, the step is taken at the current
    ones. It saves a forward pass of the utility model per such target. A target from another process may
    be several updates late, and a deeper model's send-time graph saw weights since changed in place: both
    always predict again.
``merged_steps`` (:class:`~dni_agents.core.optim.MergedAdam`)
    The plain ``torch.optim.Adam`` optimizers stepped at one time (the agents of one tick, or every
    optimizer of a ``System.steps_together`` block) step as one ``Adam`` over all their parameter groups,
    one kernel call per set of equal hyperparameters, each optimizer keeping its own state (its checkpoint
    does not change). Bit for bit each optimizer's own step. Turn it off for an optimizer with step hooks
    of its own (merged, they are not called; a global step hook sees the merged optimizer once instead of
    each); an optimizer whose ``step`` was replaced (an LR scheduler does that) or that is not a plain
    ``Adam`` always steps itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SpeedUps:
    """Which speed-ups are on (all by default: each gives the reference path's numbers where it applies,
    see the module's docstring for where it does not). ``SpeedUps.reference()`` turns all off.

    ``closed_form`` and ``keep_prediction`` are an interface's (``Interface(speedups=)``); ``merged_steps``
    belongs to whoever steps the optimizers: a ``System`` for its agents and interfaces, an interface used
    on its own for its utility model. ``System(speedups=)`` sets all three for everything it holds."""

    closed_form: bool = True
    keep_prediction: bool = True
    merged_steps: bool = True

    @classmethod
    def reference(cls) -> SpeedUps:
        """Every speed-up off: autograd for every regression, a fresh prediction after every utility-model
        update, each optimizer stepping itself."""
        return cls(closed_form=False, keep_prediction=False, merged_steps=False)


def keeps_prediction(speedups: SpeedUps, utility: nn.Module | None, remote: bool) -> bool:
    """Whether a target that comes after a utility-model update is regressed from the send-time prediction
    (``keep_prediction``): only for an affine model whose targets come from this process."""
    return speedups.keep_prediction and bool(getattr(utility, "affine", False)) and not remote


class ClosedFormRegression:
    """``closed_form``: the regression of ĝ = W·x + b (``linear``, applied to ``x = model.linear_input(h,
    context)``) with its gradient written out instead of taken by autograd."""

    def __init__(self, model: nn.Module, linear: nn.Linear) -> None:
        self.model, self.linear = model, linear

    @staticmethod
    def of(model: nn.Module | None) -> ClosedFormRegression | None:
        """The closed form of ``model`` if it is one linear map (it has an ``nn.Linear`` ``linear`` and a
        ``linear_input``, as a plain linear ``UtilityModel``), else None (a user's own model included)."""
        linear = getattr(model, "linear", None)
        if isinstance(linear, nn.Linear) and hasattr(model, "linear_input"):
            return ClosedFormRegression(model, linear)
        return None

    def predict(
        self, message: torch.Tensor, context: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ĝ in the message's shape, with no graph, and the x it was computed from (kept for the gradient)."""
        with torch.no_grad():
            x = self.model.linear_input(message, context)
            return self.linear(x).reshape(message.shape), x

    def predict_again(self, x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """What the model predicts now from the kept x (no graph)."""
        with torch.no_grad():
            return self.linear(x).reshape(shape)

    @staticmethod
    def loss(residual: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """The regression loss from the residual ĝ − target (the value of ``regression_loss``; the mean
        square as a dot product: one pass, no buffer)."""
        if weight is None:
            flat = residual.reshape(-1)
            return flat.dot(flat) / flat.numel()
        per_row = residual.pow(2).flatten(1).mean(1)
        return (per_row * weight.flatten()).sum() / weight.sum().clamp_min(1e-12)

    def set_gradients(self, terms: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]], count: int
                      ) -> None:
        """Add to the linear map's gradients those of ``sum(losses) / count`` for the regressions ``terms``,
        each ``(residual, x, row weights or None)``, as autograd makes them, bit for bit: the loss's
        gradient for the prediction (the scaled residual) times x for W, summed over rows for b. The
        residuals are scaled in place (the caller has read what it needs of them)."""
        with torch.no_grad():
            first = terms[0][0]
            share = torch.ones((), dtype=first.dtype, device=first.device) / count \
                if count > 1 or terms[0][2] is not None else None  # one unweighted term: × 1.0 changes no bit
            for residual, x, weight in reversed(terms):  # autograd's order: the latest graph first
                rows = residual.shape[0]
                if weight is None:  # mse_loss's mean: 2/N · (p − t) · share
                    g = residual.mul_(2.0 / residual.numel())
                    g = g.mul_(share) if share is not None else g
                else:  # the weighted mean over rows of each row's mean: share/Σw · w_i / D · 2(p − t)
                    per_row = (share / weight.sum().clamp_min(1e-12)) * weight \
                        / (residual.numel() // max(rows, 1))
                    g = per_row.view(-1, *([1] * (residual.dim() - 1))) * (2 * residual)
                g = g.reshape(rows, -1)
                for param, grad in ((self.linear.weight, g.t().mm(x)), (self.linear.bias, g.sum(0))):
                    if param is not None:
                        param.grad = grad if param.grad is None else param.grad.add_(grad)
