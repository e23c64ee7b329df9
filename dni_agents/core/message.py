"""What crosses an interface, and the transport that carries it.

Two things travel: a *message* (the sender's activation, forward) and a *target* (the receiver's true
gradient for that message, backward, possibly later). Both are keyed by ``(interface name, step)`` so a
delayed target always finds the message it belongs to. Interfaces never hand tensors to each other
directly; they go through a :class:`Transport`, so the same interface code runs in one process
(:class:`InProcess`) or across processes (a ``torch.distributed`` transport).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Message:
    """An activation message sent over interface ``interface`` at clock ``step``.

    ``tensor`` is always detached from the sender's graph: the receiver can never reach the sender's
    parameters through it. ``context`` is optional side information (a label for cDNI).
    """

    interface: str
    step: int
    tensor: torch.Tensor
    context: torch.Tensor | None = None


class Transport(ABC):
    """Moves messages forward and gradient targets backward between the two halves of interfaces."""

    @abstractmethod
    def put_message(self, message: Message) -> None: ...

    @abstractmethod
    def take_message(self, interface: str, step: int) -> Message | None:
        """Remove and return the message of ``interface`` at ``step``; None if it has not arrived."""

    @abstractmethod
    def put_target(self, interface: str, step: int, target: torch.Tensor) -> None: ...

    @abstractmethod
    def take_target(self, interface: str, step: int) -> torch.Tensor | None:
        """Remove and return the target for the message of ``interface`` at ``step``; None if not here yet."""

    def is_remote(self, interface: str) -> bool:
        """Whether ``interface``'s two halves live in different processes (its targets may come late)."""
        return False


class InProcess(Transport):
    """Direct hand-off inside one process: deterministic, no copies.

    Each queue keeps at most ``capacity`` entries per interface; older entries that nobody took (a
    receiver that ticks less often than its sender, say) are dropped so memory stays bounded.
    """

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._messages: dict[str, OrderedDict[int, Message]] = {}
        self._targets: dict[str, OrderedDict[int, torch.Tensor]] = {}

    def _put(self, store: dict, interface: str, step: int, item: object) -> None:
        queue = store.setdefault(interface, OrderedDict())
        queue[step] = item
        while len(queue) > self.capacity:
            queue.popitem(last=False)

    def put_message(self, message: Message) -> None:
        self._put(self._messages, message.interface, message.step, message)

    def take_message(self, interface: str, step: int) -> Message | None:
        return self._messages.get(interface, {}).pop(step, None)

    def put_target(self, interface: str, step: int, target: torch.Tensor) -> None:
        self._put(self._targets, interface, step, target)

    def take_target(self, interface: str, step: int) -> torch.Tensor | None:
        return self._targets.get(interface, {}).pop(step, None)
