"""A :class:`Transport` across processes on ``torch.distributed`` point-to-point (gloo on CPU, NCCL on GPU).

Each process (rank) holds some agents. Interfaces whose two halves live on one rank hand off in process,
as :class:`InProcess` does; for the others the sender's rank ``isend``-s a fixed-size header (kind,
interface id, step, dtype, shape, context) followed by the payload, and the receiver's rank matches what
arrives to ``(interface, step)``. Messages go forward, targets (true gradients) come back, and nobody
waits for anybody's backward pass, except as far as the staleness window asks:

* **staleness window** ``max_staleness`` N: a sender never sends the message of step ``s`` before the
  targets of every step ``<= s - N - 1`` it sent on that interface have come back (or, for a route with
  ``block`` b > 1, of every step in blocks ``<= s // b - N - 1``). N = 0 is lockstep (with
  a ``System.settle()`` between steps, the run equals the in-process one bit for bit); larger N lets the
  stages of a pipeline overlap at the price of older targets.
* **stopping together**: a rank that must stop (a signal) proposes the boundary it is at to every rank
  (:meth:`TorchDistributed.propose_stop`, passed on from peer to peer); a rank that hears a proposal
  proposes its own at once, and all stop at the largest (``agreed_stop``), so their checkpoints fit.
* **timeouts**: whoever waits (for a message, a target, or room in the window) waits at most ``timeout``
  seconds, then raises :class:`PeerError` naming the peer rank and what was awaited. A peer that dies is
  noticed as soon as its socket closes (gloo), and reported the same way. Nothing hangs.

Why threads: a gloo ``irecv`` only reports completion from ``wait()``, and a gloo ``wait`` that times out
poisons the whole process group, so each peer gets a daemon thread that blocks in ``wait`` (without a
deadline) and files what arrives into a queue; the caller's thread applies the deadlines. Sends are
``isend`` from the caller's thread (so their order is the order of ``put_*``), and a per-peer thread waits
on them and keeps their tensors alive until they are done.

``torch.distributed.rpc`` is not used (maintenance mode). Bind to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping

import torch
import torch.distributed as dist

from . import wire
from .message import InProcess, Message, Transport
from .wire import DEFAULT_TIMEOUT, FINISHED, PeerError, Route, free_port, init_process_group

__all__ = ["DEFAULT_TIMEOUT", "FINISHED", "PeerError", "Route", "TorchDistributed", "free_port",
           "init_process_group"]


class TorchDistributed(Transport):
    """Messages and targets between ranks of the default process group (see the module docstring).

    ``placement`` maps every agent name to its rank; ``routes`` lists every interface of the whole system
    (the same list on every rank: the interface id in the header is its index in name order). Received
    items wait in bounded buffers (``capacity`` per interface and kind) until taken by ``(interface, step)``.
    Negative steps are out of band (evaluation passes): never throttled, no target expected.
    """

    def __init__(
        self,
        placement: Mapping[str, int],
        routes: Iterable[Route],
        max_staleness: int = 0,
        timeout: float = DEFAULT_TIMEOUT,
        capacity: int = 1024,
        device: torch.device | str | None = None,
        deliver_to: torch.device | str | None = None,
    ) -> None:
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        if not dist.is_initialized():
            raise RuntimeError("TorchDistributed: call init_process_group() first")
        self.rank = dist.get_rank()
        self.placement = dict(placement)
        self.routes = {r.name: r for r in sorted(routes, key=lambda r: r.name)}
        for r in self.routes.values():
            for who in (r.sender, r.receiver):
                if who not in self.placement:
                    raise ValueError(f"interface {r.name}: agent {who!r} has no rank in the placement")
        self.ids = {name: i for i, name in enumerate(self.routes)}
        self.max_staleness, self.timeout, self.capacity = max_staleness, float(timeout), capacity
        backend = dist.get_backend()
        if device is None:
            device = f"cuda:{torch.cuda.current_device()}" if backend == "nccl" else "cpu"
        self.device = torch.device(device)  # where tensors travel: CUDA for NCCL, CPU for gloo
        # where received tensors are handed over: the models' device
        self.deliver_to = self.device if deliver_to is None else torch.device(deliver_to)
        self.local = InProcess(capacity)  # both halves on this rank
        self._messages: dict[str, OrderedDict[int, Message]] = {}
        self._targets: dict[str, OrderedDict[int, torch.Tensor]] = {}
        self._awaiting: dict[str, set[int]] = {}  # steps sent whose target has not come back yet
        self._arrived: dict[str, OrderedDict[int, None]] = {}  # message steps that arrived (taken or not)
        self._inbox: queue.Queue = queue.Queue()
        self._dead: dict[int, str] = {}  # peer -> why it is gone (error text or "closed")
        self._closed = False
        self.max_in_flight = 0  # most messages of one interface ever awaiting their targets at once
        self.world_size = dist.get_world_size()
        self.next_boundary = 0  # the boundary this rank is at, or reaches next: what it would propose
        self.stop_proposals: dict[int, int] = {}  # rank -> the boundary it proposed to stop at
        self.stop_signal: int | None = None  # the signal that started it (passed on with the proposals)
        ends = [(self.placement[r.sender], self.placement[r.receiver]) for r in self.routes.values()]
        self.peers = sorted(({b for a, b in ends if a == self.rank} | {a for a, b in ends if b == self.rank})
                            - {self.rank})
        self._sends: dict[int, queue.Queue] = {p: queue.Queue() for p in self.peers}
        self._send_errors: dict[int, str] = {}
        self._threads: list[threading.Thread] = []
        for peer in self.peers:
            for target, kind in ((self._receive_loop, "recv"), (self._reap_loop, "send")):
                thread = threading.Thread(target=target, args=(peer,), name=f"dni-{kind}-{peer}", daemon=True)
                thread.start()
                self._threads.append(thread)

    # ----------------------------------------------------------------------------------------- helpers
    def _route(self, interface: str) -> Route:
        try:
            return self.routes[interface]
        except KeyError:
            raise KeyError(f"interface {interface!r} is not a route of this transport") from None

    def is_remote(self, interface: str) -> bool:
        """Whether the two halves of ``interface`` live on different ranks."""
        r = self._route(interface)
        return self.placement[r.sender] != self.placement[r.receiver]

    def _block(self, work: dist.Work) -> None:
        work.wait(wire.FOREVER)
        if self.device.type == "cuda":  # NCCL's wait only orders streams; make the data really be here
            torch.cuda.current_stream(self.device).synchronize()

    def _store(self, store: dict, interface: str, step: int, item: object) -> None:
        q = store.setdefault(interface, OrderedDict())
        q[step] = item
        while len(q) > self.capacity:
            q.popitem(last=False)

    # ------------------------------------------------------------------------------------------ sending
    def _send(self, peer: int, kind: int, iface_id: int, step: int, tensor: torch.Tensor | None = None,
              context: torch.Tensor | None = None) -> None:
        if peer in self._send_errors:  # an earlier send to it failed: gloo's socket to a dead peer
            why = self._send_errors[peer].splitlines()[0].split(". This is typically")[0]
            raise PeerError(f"rank {self.rank}: rank {peer} is gone ({why}) while sending to it", peer)
        payload = [t.detach().to(self.device).contiguous() for t in (tensor, context) if t is not None]
        header = wire.encode_header(kind, iface_id, step, tensor, context, self.device)
        try:
            works = [dist.isend(t, dst=peer) for t in (header, *payload)]
        except RuntimeError as exc:  # gloo: the peer's socket is closed (it died)
            self.poll()
            why = self._dead.get(peer, f"{type(exc).__name__}: {exc}".splitlines()[0])
            raise PeerError(f"rank {self.rank}: rank {peer} is gone ({why}) while sending to it",
                            peer) from None
        self._sends[peer].put((works, [header, *payload]))  # kept alive until the reaper saw them done

    def _reap_loop(self, peer: int) -> None:
        """Wait on this peer's sends in order; drop their tensors once done; remember the first failure."""
        while True:
            item = self._sends[peer].get()
            if item is None:
                return
            works, _tensors = item
            try:
                for work in works:
                    self._block(work)
            except Exception as exc:  # noqa: BLE001 - reported to the caller's thread as a PeerError
                self._send_errors.setdefault(peer, f"{type(exc).__name__}: {exc}")
                self._inbox.put(("error", peer, f"send failed: {type(exc).__name__}: {exc}"))

    def put_message(self, message: Message) -> None:
        route = self._route(message.interface)
        if not self.is_remote(message.interface):
            self.local.put_message(message)
            return
        if message.step >= 0:
            self.throttle(message.step, [message.interface])
            pending = self._awaiting.setdefault(message.interface, set())
            self.poll()
            if message.step not in self._targets.get(message.interface, {}):  # a forward-unlocked
                pending.add(message.step)  # receiver may reply before it has the message
            self.max_in_flight = max(self.max_in_flight, len(pending))
        peer = self.placement[route.receiver]
        self._send(peer, wire.KIND_MESSAGE, self.ids[message.interface], message.step, message.tensor,
                   message.context)

    def put_target(self, interface: str, step: int, target: torch.Tensor) -> None:
        route = self._route(interface)
        if not self.is_remote(interface):
            self.local.put_target(interface, step, target)
            return
        self._send(self.placement[route.sender], wire.KIND_TARGET, self.ids[interface], step, target)

    # ---------------------------------------------------------------------------------------- receiving
    def _receive_loop(self, peer: int) -> None:
        """Header, then payload(s), from one peer, forever (until it says close or fails)."""
        names = list(self.routes)
        try:
            while True:
                header = torch.empty(wire.HEADER_LEN, dtype=torch.int64, device=self.device)
                self._block(dist.irecv(header, src=peer))
                kind, iface_id, step, has_context, *rest = header.tolist()
                if kind == wire.KIND_CLOSE:
                    self._inbox.put(("close", peer, None))
                    return
                if kind == wire.KIND_ACK:
                    self._inbox.put((kind, peer, (names[iface_id], step)))
                    continue
                if kind == wire.KIND_STOP:  # iface_id: the proposing rank; rest[0]: the signal
                    self._inbox.put((kind, peer, (iface_id, step, rest[0])))
                    continue
                tensors = []
                for dtype, shape in wire.payload_layout(rest, has_context):
                    t = torch.empty(shape, dtype=dtype, device=self.device)
                    self._block(dist.irecv(t, src=peer))
                    tensors.append(t)
                self._inbox.put((kind, peer, (names[iface_id], step, *tensors)))
        except Exception as exc:  # noqa: BLE001 - a dead peer: reported to the caller's thread
            self._inbox.put(("error", peer, f"{type(exc).__name__}: {exc}"))

    def _file(self, item: tuple) -> None:
        kind, peer, body = item
        if kind == wire.KIND_MESSAGE:
            self._store(self._arrived, body[0], body[1], None)
        if kind == "error":
            self._dead.setdefault(peer, body)
        elif kind == "close":
            self._dead.setdefault(peer, "it closed its transport")
        elif kind == wire.KIND_MESSAGE:
            name, step, tensor, *context = body
            home = self.deliver_to
            message = Message(name, step, tensor.to(home), context[0].to(home) if context else None)
            self._store(self._messages, name, step, message)
        elif kind == wire.KIND_TARGET:
            name, step, tensor = body
            self._awaiting.get(name, set()).discard(step)
            self._store(self._targets, name, step, tensor.to(self.deliver_to))
        elif kind == wire.KIND_ACK:
            name, step = body
            self._awaiting.get(name, set()).discard(step)
        elif kind == wire.KIND_STOP:
            origin, step, signum = body
            if origin not in self.stop_proposals:
                self.stop_proposals[origin] = step
                self._flood_stop(origin, step, signum, exclude=peer)
            if not self.stop_proposed:
                self.propose_stop(signum)

    def poll(self) -> None:
        """File everything that has arrived so far, without waiting."""
        while True:
            try:
                self._file(self._inbox.get_nowait())
            except queue.Empty:
                return

    def _wait_until(self, ready, peer: int, what: str, timeout: float | None) -> None:
        """Block until ``ready()`` holds; raise :class:`PeerError` naming ``peer`` if it dies or is late."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self.poll()
        while not ready():
            if peer in self._dead:
                raise PeerError(
                    f"rank {self.rank}: rank {peer} is gone ({self._dead[peer]}) while waiting for {what}",
                    peer,
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerError(
                    f"rank {self.rank}: timed out after {timeout:g} s waiting for {what} from rank {peer} "
                    f"(is rank {peer} alive and running the same config?)", peer,
                )
            try:
                self._file(self._inbox.get(timeout=left))
            except queue.Empty:
                pass
            self.poll()

    def take_message(self, interface: str, step: int) -> Message | None:
        if not self.is_remote(interface):
            return self.local.take_message(interface, step)
        self.poll()
        message = self._messages.get(interface, {}).pop(step, None)
        route = self.routes[interface]
        if message is not None and step >= 0 and not route.replies:
            self._send(self.placement[route.sender], wire.KIND_ACK, self.ids[interface], step)
        return message

    def take_target(self, interface: str, step: int) -> torch.Tensor | None:
        if not self.is_remote(interface):
            return self.local.take_target(interface, step)
        self.poll()
        b = self.routes[interface].block
        if b > 1 and any(p // b == step // b for p in self._awaiting.get(interface, ())):
            return None  # a block's targets are handed over together, as its receiver replied them
        return self._targets.get(interface, {}).pop(step, None)

    def wait_message(self, interface: str, step: int, timeout: float | None = None) -> None:
        """Block until the message of ``interface`` at ``step`` has arrived (it stays for
        :meth:`take_message` unless already taken). In-process interfaces return at once: their message is
        put or never comes."""
        if not self.is_remote(interface):
            return
        peer = self.placement[self._route(interface).sender]
        self._wait_until(lambda: step in self._arrived.get(interface, {}), peer,
                         f"the message of {interface} at step {step}", timeout)

    def wait_target(self, interface: str, step: int, timeout: float | None = None) -> None:
        """Block until the target for the message of ``interface`` at ``step`` has come back (or was
        already taken)."""
        if not self.is_remote(interface):
            return
        peer = self.placement[self._route(interface).receiver]
        self._wait_until(
            lambda: step in self._targets.get(interface, {}) or step not in self._awaiting.get(interface, ()),
            peer, f"the target of {interface} at step {step}", timeout,
        )

    def throttle(
        self, step: int, interfaces: Iterable[str] | None = None, timeout: float | None = None
    ) -> None:
        """Block until sending ``step`` keeps within the staleness window: on each remote interface sent
        from here (or just ``interfaces``), every target of steps ``<= step - max_staleness - 1`` is back
        (counted in the route's blocks)."""
        names = self._awaiting if interfaces is None else interfaces
        for name in list(names):
            pending = self._awaiting.get(name)
            if not pending:
                continue
            route = self._route(name)
            b, limit = route.block, step // route.block - self.max_staleness - 1  # in blocks
            what = f"step {limit}" if b == 1 else f"block {limit} (steps < {(limit + 1) * b})"
            self._wait_until(
                lambda pending=pending, b=b, limit=limit: not pending or min(pending) // b > limit,
                self.placement[route.receiver],
                f"the targets of {name} up to {what} (staleness window {self.max_staleness})", timeout,
            )

    # ----------------------------------------------------------------------------------------- stopping
    @property
    def stop_proposed(self) -> bool:
        return self.rank in self.stop_proposals

    @property
    def stopping(self) -> bool:
        """Whether some rank has proposed to stop."""
        return bool(self.stop_proposals)

    def propose_stop(self, signum: int) -> None:
        """Propose to stop at :attr:`next_boundary` (once), and tell every rank."""
        if self.stop_proposed:
            return
        self.stop_signal = self.stop_signal or signum
        self.stop_proposals[self.rank] = self.next_boundary
        self._flood_stop(self.rank, self.next_boundary, signum)

    def _flood_stop(self, origin: int, step: int, signum: int, exclude: int | None = None) -> None:
        """Pass a proposal on to every peer (ranks not joined by an interface hear it through others)."""
        self.stop_signal = self.stop_signal or signum
        if self._closed:
            return
        for peer in self.peers:
            if peer != exclude and peer not in self._dead and peer not in self._send_errors:
                header = torch.zeros(wire.HEADER_LEN, dtype=torch.int64, device=self.device)
                header[:5] = torch.tensor([wire.KIND_STOP, origin, step, 0, signum])
                self._sends[peer].put(([dist.isend(header, dst=peer)], [header]))

    def agreed_stop(self) -> int | None:
        """The boundary every rank stops at, once every rank has proposed one (their largest)."""
        if len(self.stop_proposals) < self.world_size:
            return None
        return max(self.stop_proposals.values())

    def wait_stop_agreement(self, timeout: float | None = None) -> None:
        """Block until every rank has proposed (a :class:`PeerError` if a peer dies or stays silent)."""
        silent = [r for r in range(self.world_size) if r not in self.stop_proposals]
        peer = next((r for r in silent if r in self.peers), self.peers[0] if self.peers else self.rank)
        self._wait_until(lambda: self.agreed_stop() is not None, peer,
                         f"every rank's stop proposal (have {sorted(self.stop_proposals)})", timeout)

    # ------------------------------------------------------------------------------------------ closing
    def close(self, timeout: float | None = None) -> None:
        """Tell every peer we are done, let our sends finish and wait (bounded) until every peer said the
        same. Items that arrive meanwhile are dropped. Peers already gone are not waited for."""
        if self._closed:
            return
        if not self.stop_proposed:  # a rank that closes has run to the end: a peer stopping goes on too
            self.next_boundary = FINISHED
            self.propose_stop(self.stop_signal or 0)
        self._closed = True
        for peer in self.peers:
            if peer not in self._send_errors:
                try:
                    self._send(peer, wire.KIND_CLOSE, -1, -1)
                except Exception:  # noqa: BLE001 - a dead peer cannot be told; nothing to wait for
                    pass
            self._sends[peer].put(None)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.poll()
