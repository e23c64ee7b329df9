"""Stopping a training run cleanly on Ctrl-C (SIGINT) or SIGTERM: a checkpoint, one line, exit 130 / 143.

The signal handler only records the signal; the training loop looks at it between two steps (a *boundary*:
the state after every step before it and none after), writes the checkpoint an exact ``--resume`` needs,
and raises :class:`Interrupted`. Nothing is ever cut in the middle of an update, so resuming from that
checkpoint ends with the parameters of an uninterrupted run::

    with StopRequest() as stop:              # the CLI does this around a driver's train()
        for step in range(start, end):
            stop.check(step, save)           # save(step) writes the checkpoint of this boundary
            ...                              # one training step

On several processes every rank must stop at the *same* boundary, or their checkpoints would not fit
together. :func:`stop_point` agrees on it over the run's transport: a rank that is asked to stop (by its
own signal, or by a peer) tells every rank the boundary it is at; all stop at the largest one
(:meth:`StopRequest.check_ranks`; the transport side is
:meth:`dni_agents.core.distributed.TorchDistributed.propose_stop`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Training stopped on a signal at ``step`` (a boundary), after writing ``checkpoint`` (None when the
    run does not log). The exit status is the shell's for that signal: 130 (SIGINT), 143 (SIGTERM)."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        where = f"checkpoint {checkpoint}" if checkpoint is not None else "no checkpoint (logging is off)"
        super().__init__(f"stopped by {name} at step {step}; {where}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class StopRequest:
    """Records SIGINT / SIGTERM while installed (``with StopRequest() as stop``). A second signal changes
    nothing: the loop is already on its way to the next boundary (use SIGKILL to end it at once).

    Not installed (or off the main thread, where Python cannot catch signals) it never asks to stop, so
    drivers take one without checking for None."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def check(self, step: int, save: Callable[[int], Path | None], *closing: Any) -> None:
        """At the boundary before ``step``: if a signal came, ``save(step)``, close ``closing`` (the
        progress bar, the TensorBoard logger: every event so far is then on disk) and raise
        :class:`Interrupted`."""
        if self.signum is not None:
            checkpoint = save(step)
            for thing in closing:
                thing.close()
            raise Interrupted(self.signum, step, checkpoint)

    def check_ranks(
        self, step: int, transport: Any, finish: Callable[[int], Path | None], *closing: Any
    ) -> None:
        """:meth:`check` for a rank of a multi-process run: once every rank agreed to stop at ``step``
        (:func:`stop_point`), ``finish(step)`` (drain what is in flight, write this rank's checkpoint), close
        ``closing`` and the transport, and raise :class:`Interrupted` (with the signal that started it, on
        whichever rank it came)."""
        if stop_point(self, transport, step):
            checkpoint = finish(step)
            for thing in (*closing, transport):
                thing.close()
            raise Interrupted(self.signum or transport.stop_signal or signal.SIGTERM, step, checkpoint)


def stop_point(stop: StopRequest, transport: Any, step: int) -> bool:
    """For a rank of a multi-process run, at the boundary before ``step``: whether every rank stops here.

    A signal to this rank becomes a proposal to stop at ``step``; a peer's proposal makes this rank propose
    the boundary it is at too (the transport does that as soon as the proposal arrives, even mid-step, so a
    rank blocked on a peer never delays the agreement). The ranks stop at the largest proposal, which no
    rank has passed when it proposes: so a rank waits here only while it has reached every proposal it
    knows and some rank has not spoken yet."""
    transport.next_boundary = step
    if stop.requested and not transport.stop_proposed:
        transport.propose_stop(stop.signum)
    transport.poll()
    if transport.stopping:
        if transport.agreed_stop() is None and step >= max(transport.stop_proposals.values()):
            transport.wait_stop_agreement()
        if transport.agreed_stop() == step:
            return True
    transport.next_boundary = step + 1  # a proposal that arrives during the step names the next boundary
    return False
