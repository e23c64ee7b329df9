"""The decoupled neural interface: one channel from a sender agent to a receiver agent, in the order of the
paper's protocol.

1. **send** (sender, :meth:`Interface.send`): the message ``h`` goes out detached; the utility model
   predicts ĝ = U(h, context) from it, and the sender gets ĝ at once, so it can update now (update
   unlocking).
2. **receive → reply** (receiver, :meth:`Interface.receive`, :meth:`Interface.reply`): the receiver gets a
   fresh leaf ``z``; after its own backward pass it replies ``z.grad``, the true gradient, which already
   contains whatever synthetic gradient the receiver itself got from further downstream (bootstrapping, no
   special code).
3. **regress** (sender, :meth:`Interface.collect`): when the true gradient comes back, the utility model
   regresses its prediction onto it (``regression_loss``, ``backward``, its optimizer's ``step``) and ĝ's
   fidelity is measured.

That is the reference path, written with autograd. Its speed-ups (``closed_form``, ``keep_prediction``,
``merged_steps``) each live in one place, are switched by :class:`~dni_agents.core.speedups.SpeedUps` and
are described, with where they give other numbers, in :mod:`~dni_agents.core.speedups`.

Modes: ``dni`` (ĝ now), ``cdni`` (ĝ from U(h, context)), ``backprop`` (the sender waits for the true
gradient: the coupled, locked baseline), ``none`` (no gradient crosses). With ``lambda_true > 0`` a
synthetic mode also waits and applies ``λ·true + (1-λ)·ĝ`` (BP(λ)).

Non-finite numbers: a NaN or Inf target or prediction is never regressed onto. The system's policy
(``on_nonfinite``) decides whether it stops the run (:class:`NonFiniteError`) or is skipped and counted.

Units: gradients of a batch-mean loss are 1/B of per-example gradients, so with ``per_example=True``
(default) the utility model predicts per-example gradients (targets × B, ĝ / B; B: the rows of one step's
message, a message that stacks ``stacked`` steps being learned as those messages), whatever the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .fidelity import fidelity
from .message import InProcess, Message, Transport
from .models import regression_loss
from .nonfinite import NonFiniteError, OnNonFinite, first_nonfinite
from .optim import StepQueue, clear_grads
from .speedups import ClosedFormRegression, SpeedUps, keeps_prediction

Mode = Literal["dni", "cdni", "backprop", "none"]
MODES: tuple[str, ...] = ("dni", "cdni", "backprop", "none")


@dataclass
class _Sent:
    """Sender-side record of one message until its target has come back."""

    message: torch.Tensor
    prediction: torch.Tensor | None  # U(h, context) in per-example units, graph to U's parameters only
    warm: int  # rows still in warm-up (the first ones): their ĝ is learned but not applied
    context: torch.Tensor | None = None  # what the utility model saw besides the message (cDNI)
    version: int = 0  # utility-model updates before the prediction was made
    target: torch.Tensor | None = None
    learned: bool = False  # the utility model has regressed onto the target
    consumed: bool = False  # a locked sender has taken its gradient
    weight: torch.Tensor | None = None  # per row, how much it counts in the utility model's regression
    x: torch.Tensor | None = None  # closed_form: the x of ĝ = W·x + b (the prediction then has no graph)
    units: int = 1  # per-example units: the batch a row's gradient is averaged over (B; 1 if not per-example)


class Interface:
    """A channel ``sender -> receiver`` with an optional utility model and synthetic-input model.
    ``speedups``: which of the speed-ups over the autograd reference path are on (default: all).

    All state lives on the instance (nothing global), so many systems can share a process.
    """

    def __init__(
        self,
        name: str,
        sender: str,
        receiver: str,
        mode: Mode = "dni",
        utility: nn.Module | None = None,
        utility_optimizer: torch.optim.Optimizer | None = None,
        scale: float = 1.0,
        lambda_true: float = 0.0,
        warmup_steps: int = 0,
        synthetic_input: nn.Module | None = None,
        synthetic_input_optimizer: torch.optim.Optimizer | None = None,
        transport: Transport | None = None,
        per_example: bool = True,
        learn: bool = True,
        max_in_flight: int = 1024,
        speedups: SpeedUps | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"interface {name}: mode {mode!r} is not one of {', '.join(MODES)}")
        if mode in ("dni", "cdni") and utility is None:
            raise ValueError(f"interface {name}: mode {mode!r} needs a utility model")
        if not 0.0 <= lambda_true <= 1.0:
            raise ValueError(f"interface {name}: lambda_true must be in [0, 1], got {lambda_true}")
        self.name, self.sender, self.receiver, self.mode = name, sender, receiver, mode
        self.utility, self.utility_optimizer = utility, utility_optimizer
        self.scale, self.lambda_true, self.warmup_steps = scale, lambda_true, warmup_steps
        self.synthetic_input, self.synthetic_input_optimizer = synthetic_input, synthetic_input_optimizer
        self.transport = transport if transport is not None else InProcess()
        self.speedups = speedups if speedups is not None else SpeedUps()
        self.steps = StepQueue(merge=self.speedups.merged_steps)  # a System puts its own queue here
        self.per_example, self.learn, self.max_in_flight = per_example, learn, max_in_flight
        self.messages_sent = 0
        self._sent: dict[int, _Sent] = {}
        self._received: dict[int, torch.Tensor] = {}
        # step -> (Î(source), source, synthetic-input updates so far): the prediction to regress once the real
        # message comes; recomputed from source if the model was updated meanwhile (a message that arrives
        # late, from another process), since the old graph then saw weights that have changed in place
        self._predicted_inputs: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}
        self._synthetic_input_updates = 0
        self._utility_updates = 0
        self._closed_form_of: nn.Module | None = None
        self._closed_form_regression: ClosedFormRegression | None = None
        self.skipped = 0  # targets not regressed onto because they (or their prediction) were not finite

    @property
    def synthetic(self) -> bool:
        """Whether this interface produces synthetic gradients."""
        return self.mode in ("dni", "cdni")

    @property
    def locked(self) -> bool:
        """Whether the sender must wait for the receiver's true gradient before it can update."""
        return self.mode == "backprop" or (self.synthetic and self.lambda_true > 0)

    @property
    def utility_updates(self) -> int:
        """How many optimizer steps the utility model has taken (a bench counts how often it learned)."""
        return self._utility_updates

    # ---------------------------------------------------------- 1. send: the message out, ĝ back now
    def send(
        self, h: torch.Tensor, step: int, context: torch.Tensor | None = None,
        weight: torch.Tensor | None = None, stacked: int = 1,
    ) -> torch.Tensor | None:
        """Send ``h`` at ``step``; return the gradient the sender applies to ``h`` now, or None (it gets
        nothing now: mode ``none``, warm-up, or a locked mode whose gradient comes with the target).
        ``weight`` (one entry per row of ``h``, default all 1) is how much each row counts as an example of
        the utility model's regression: 0 for a row the channel did not carry (an outage), whose target says
        nothing about the utility of a message that was heard. ``stacked``: ``h`` holds the messages of that
        many consecutive steps, step-major, and counts as that many messages (see Units above)."""
        if stacked < 1 or h.shape[0] % stacked:
            raise ValueError(f"interface {self.name}: {h.shape[0]} rows do not stack {stacked} messages")
        message = h.detach()
        self.transport.put_message(Message(self.name, step, message, context))
        if self.mode == "none":
            return None
        if weight is not None and weight.shape != message.shape[:1]:
            raise ValueError(f"interface {self.name}: weight must have one entry per row of the message "
                             f"({message.shape[0]}), got shape {tuple(weight.shape)}")
        self.messages_sent += stacked
        prediction = x = ctx = None
        if self.synthetic:
            if self.mode == "cdni" and context is None:
                raise ValueError(f"interface {self.name}: cdni needs a context tensor at send()")
            ctx = context if self.mode == "cdni" else None
            prediction, x = self._predict(message, ctx)
        # the rows of the stack's messages still in warm-up (its first is number messages_sent - stacked + 1)
        rows = h.shape[0] // stacked
        warm = min(max(self.warmup_steps - self.messages_sent + stacked, 0), stacked) * rows
        record = _Sent(message, prediction, warm, ctx, version=self._utility_updates,
                       weight=None if weight is None else weight.detach().to(message.device, message.dtype),
                       x=x, units=rows if self.per_example else 1)
        self._sent[step] = record
        self._bound(self._sent)  # targets that never came back: forget the oldest
        if self.locked:
            return None
        return self._synthetic_gradient(record)

    def _predict(
        self, message: torch.Tensor, context: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ĝ = U(message, context) in per-example units, and the closed form's x (None on the reference path,
        whose prediction keeps a graph to U's parameters for the regression's backward pass, unless U will
        not learn)."""
        self.steps.apply_pending(self.utility_optimizer)  # a step put off is taken before U predicts
        closed = self._closed_form() if self.speedups.closed_form else None
        if closed is not None:
            return closed.predict(message, context)
        with torch.set_grad_enabled(self.learn and torch.is_grad_enabled()):
            return self.utility(message, context), None

    def _synthetic_gradient(self, record: _Sent) -> torch.Tensor | None:
        """ĝ as the sender applies it: scaled, in the units of its batch-mean loss, none in warm-up."""
        if record.prediction is None or record.warm == len(record.message):
            return None
        gradient = record.prediction.detach() * (self.scale / record.units)
        if record.warm:  # a stack that straddles the end of warm-up: its first messages get none
            gradient[: record.warm] = 0
        return gradient

    # ---------------------------------------------------------- 2. receive, and reply the true gradient
    def receive(self, step: int, source: torch.Tensor | None = None) -> torch.Tensor:
        """The receiver's input for ``step``: the message as a fresh leaf (so its gradient can be replied),
        or, with a synthetic-input model and a ``source``, the predicted message (forward unlocking)."""
        if self.synthetic_input is not None and source is not None:
            predicted = self.synthetic_input(source)
            self._predicted_inputs[step] = (predicted, source, self._synthetic_input_updates)
            self._bound(self._predicted_inputs)
            z = predicted.detach()
        else:
            message = self.transport.take_message(self.name, step)
            if message is None:
                raise RuntimeError(
                    f"interface {self.name}: no message for step {step} (has {self.sender!r} sent it?)"
                )
            z = message.tensor.detach()
        if self.mode == "none":
            return z
        z.requires_grad_(True)
        self._received[step] = z
        self._bound(self._received)
        return z

    def reply(self, step: int, usable: bool = True) -> None:
        """After the receiver's backward pass: send ``z.grad`` back as the target (zeros if unused).
        ``usable=False`` (the receiver's update was skipped: no gradient this step) replies NaNs, so the
        sender skips what depended on it instead of reading a zero as 'the loss ignores this message'."""
        z = self._received.pop(step, None)
        if z is None:
            return
        if not usable:
            target = torch.full_like(z, float("nan"))
        else:
            target = z.grad if z.grad is not None else torch.zeros_like(z)
        self.transport.put_target(self.name, step, target)

    # ---------------------------------------------------------- 3. the true gradient back: regress
    def target_arrived(self, step: int) -> bool:
        """Whether the true gradient for the message of ``step`` is here (pulling it from the transport)."""
        record = self._sent.get(step)
        if record is None:
            return False
        if record.target is None:
            record.target = self.transport.take_target(self.name, step)
        return record.target is not None

    def locked_gradient(self, step: int) -> torch.Tensor:
        """For a locked sender: the gradient to apply once the target is here (true, or BP(λ) mix)."""
        if not self.target_arrived(step):
            raise RuntimeError(f"interface {self.name}: no target yet for step {step}")
        record = self._sent[step]
        gradient = record.target
        synthetic = self._synthetic_gradient(record)
        if self.synthetic and self.lambda_true < 1.0:
            gradient = self.lambda_true * gradient
            if synthetic is not None:
                gradient = gradient + (1.0 - self.lambda_true) * synthetic
        record.consumed = True
        if record.learned:
            del self._sent[step]
        return gradient

    def collect(
        self, track: bool = True, on_nonfinite: OnNonFinite = "stop"
    ) -> list[dict[str, float | torch.Tensor]]:
        """Learn from every target that has arrived: regress the utility model's send-time predictions onto
        them (one optimizer step for all that arrived together) and (``track``) measure ĝ against each.
        Returns one stats dict per target (``step`` and ``utility_loss``, plus the fidelity stats when
        tracked), values as 0-d tensors. A non-finite target or prediction raises :class:`NonFiniteError`
        (``stop``) or is left out and counted in :attr:`skipped` (``skip``)."""
        if not self._sent and not self._predicted_inputs:  # nothing in flight (a system asks after each tick)
            return []
        ready: list[tuple[int, _Sent]] = []
        for step in list(self._sent):
            record = self._sent[step]
            if record.learned or not self.target_arrived(step):
                continue
            if record.prediction is not None:
                ready.append((step, record))
            record.learned = True
            if not self.locked or record.consumed:
                del self._sent[step]
        stats = self._learn_utility(ready, track, on_nonfinite) if ready else []
        self._learn_synthetic_inputs()
        return stats

    def _finite(self, ready: list[tuple[int, _Sent]], on_nonfinite: OnNonFinite) -> list[tuple[int, _Sent]]:
        """The records whose target and prediction are finite."""
        kept = []
        for step, record in ready:
            bad = first_nonfinite([record.target, record.prediction])
            if bad is None:
                kept.append((step, record))
            elif on_nonfinite == "stop":
                raise NonFiniteError(self.name, ("target", "synthetic gradient")[bad], step)
            else:
                self.skipped += 1
        return kept

    def _learn_utility(
        self, ready: list[tuple[int, _Sent]], track: bool, on_nonfinite: OnNonFinite
    ) -> list[dict[str, float | torch.Tensor]]:
        """The utility regression: each prediction (:meth:`_regressed_prediction`) onto its target in
        per-example units, one optimizer step for all of ``ready``, and (``track``) how good each ĝ was. A
        NaN or Inf in a target or prediction shows in its loss, so the losses (scalars) are checked, and
        only if one is not finite, the records themselves."""
        losses, closed_terms, stats = [], [], []
        for step, record in ready:
            prediction = self._regressed_prediction(record)
            target = record.target * record.units
            if record.x is None:  # the reference path: a loss to back-propagate
                with torch.enable_grad():  # (a caller's no_grad would leave the model nothing to learn)
                    loss = regression_loss(prediction, target, record.weight)
                losses.append(loss)
                # a copy: mse_loss's 0-d result views a buffer the size of the message, which a kept
                # stats record would keep alive
                value = loss.detach().clone()
            else:  # closed_form: the residual once, for the loss and the gradient
                residual = prediction - target
                value = ClosedFormRegression.loss(residual, record.weight)
                closed_terms.append((residual, record.x, record.weight))
            out: dict[str, float | torch.Tensor] = {"step": step, "utility_loss": value}
            kept = slice(None) if record.weight is None else record.weight > 0
            if track and (record.weight is None or bool(kept.any())):
                out.update(fidelity(record.prediction.detach()[kept], target[kept], record.message[kept]))
            stats.append(out)
        if first_nonfinite([out["utility_loss"] for out in stats]) is not None:
            kept = self._finite(ready, on_nonfinite)  # raises (stop), or leaves them out (skip)
            if len(kept) < len(ready):
                return self._learn_utility(kept, track, on_nonfinite) if kept else []
        graph = [loss for loss in losses if loss.requires_grad]
        if self.learn and self.utility_optimizer is not None and (graph or closed_terms):
            count = len(graph) + len(closed_terms)  # the loss is the mean of the regressions' losses
            self.steps.clear(self.utility_optimizer)
            if graph:
                (sum(graph) / count).backward()
            if closed_terms:
                self._closed_form().set_gradients(closed_terms, count)
            self.steps.step(self.utility_optimizer)
            self._utility_updates += 1
        return stats

    def _regressed_prediction(self, record: _Sent) -> torch.Tensor:
        """The prediction the regression pulls towards the target: the one made at send time, unless the
        utility model was updated since. Then the reference predicts again with the current weights (a
        graph built before the update saw weights since changed in place), and ``keep_prediction`` keeps
        the send-time one where it applies (:func:`~dni_agents.core.speedups.keeps_prediction`)."""
        prediction = record.prediction
        if record.version == self._utility_updates or keeps_prediction(
                self.speedups, self.utility, self.transport.is_remote(self.name)):
            return prediction
        if record.x is not None:
            return self._closed_form().predict_again(record.x, record.message.shape)
        if not prediction.requires_grad:  # nothing learns from it (``learn=False``, a send under no_grad)
            return prediction
        with torch.enable_grad():
            return self.utility(record.message, record.context)

    def _closed_form(self) -> ClosedFormRegression | None:
        """The utility model's closed-form regression (``closed_form``), if it is one linear map."""
        if self._closed_form_of is not self.utility:  # looked up once per utility model (a hot path)
            self._closed_form_of = self.utility
            self._closed_form_regression = ClosedFormRegression.of(self.utility)
        return self._closed_form_regression

    # ---------------------------------------------------------- forward unlocking: the synthetic input
    def _learn_synthetic_inputs(self) -> None:
        """Regress each synthetic input onto the real message once that message has arrived."""
        for step in list(self._predicted_inputs):
            message = self.transport.take_message(self.name, step)
            if message is None:
                continue
            predicted, source, updates = self._predicted_inputs.pop(step)
            if self.synthetic_input_optimizer is not None:
                if updates != self._synthetic_input_updates:
                    predicted = self.synthetic_input(source)
                clear_grads(self.synthetic_input_optimizer)
                F.mse_loss(predicted, message.tensor).backward()
                self.synthetic_input_optimizer.step()
                self._synthetic_input_updates += 1

    # ---------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        state: dict = {"messages_sent": self.messages_sent}
        for key in ("utility", "utility_optimizer", "synthetic_input", "synthetic_input_optimizer"):
            part = getattr(self, key)
            if part is not None:
                state[key] = part.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.messages_sent = int(state["messages_sent"])
        for key in ("utility", "utility_optimizer", "synthetic_input", "synthetic_input_optimizer"):
            if key in state:
                getattr(self, key).load_state_dict(state[key])

    def in_flight(self, step: int) -> torch.Tensor | None:
        """The prediction of ``step``'s message while its target is to come (:meth:`restore_in_flight`)."""
        record = self._sent.get(step)
        return None if record is None or record.prediction is None else record.prediction.detach()

    def restore_in_flight(
        self, h: torch.Tensor, step: int, context: torch.Tensor | None = None,
        prediction: torch.Tensor | None = None,
    ) -> None:
        """After loading a checkpoint: put back the message of ``step`` that was sent before it was written
        and whose target had not come yet, without handing out its gradient again. ``prediction`` (from
        :meth:`in_flight`) is the value the utility model gave then. Its regression treats it as a message
        sent before the last update: it regresses that value (``keep_prediction``) or predicts again with the
        model as it is when the target comes, which is what an uninterrupted run does (and gives the same
        value when no update came between), so the run continues exactly."""
        self.messages_sent -= 1 if self.mode != "none" else 0
        self.send(h, step, context)
        record = self._sent.get(step)
        if record is not None and record.x is not None and prediction is not None:
            record.prediction = prediction.detach().clone()  # the closed form's gradient is the residual × x
            record.version = -1  # as if sent before the last update (see above)
        elif record is not None and record.prediction is not None and prediction is not None:
            # exactly the saved value (new - new is exactly 0), with the gradient of the current model
            record.prediction = prediction + (record.prediction - record.prediction.detach())
            record.version = -1

    def _bound(self, pending: dict) -> None:  # the oldest are dropped: memory stays bounded
        while len(pending) > self.max_in_flight:
            del pending[next(iter(pending))]
