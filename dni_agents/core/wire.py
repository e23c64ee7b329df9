"""What travels between ranks and how a rank joins them: the fixed-size header that precedes every payload
(kind, interface id, step, then dtype and shape of the message and of its context), the route of an
interface, the error a peer's failure becomes, and the env:// rendezvous (127.0.0.1 unless told)."""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT = 30.0
MAX_NDIM = 8
# header: kind, interface id, step, has_context, then (dtype code, ndim, shape[MAX_NDIM]) for the message
# tensor and for the context
HEADER_LEN = 4 + 2 * (2 + MAX_NDIM)
KIND_MESSAGE, KIND_TARGET, KIND_CLOSE, KIND_ACK, KIND_STOP = 1, 2, 3, 4, 5
DTYPES: tuple[torch.dtype, ...] = (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8,
    torch.bool,
)
FINISHED = 2**62  # the stop proposal of a rank that has run to the end
FOREVER = datetime.timedelta(days=365)  # a gloo wait that times out poisons the group: never let it


class PeerError(RuntimeError):
    """A peer rank did not deliver what was awaited in time, died, or closed too early."""

    def __init__(self, message: str, peer: int) -> None:
        super().__init__(message)
        self.peer = peer


@dataclass(frozen=True)
class Route:
    """One interface as the transport sees it. ``replies=False`` (mode ``none``): no target ever comes
    back, so the receiving rank acknowledges each message it takes instead (a bare header), and the
    staleness window bounds the sender all the same (otherwise it could run arbitrarily far ahead).

    ``block``: the staleness window counts blocks of this many consecutive steps (step ``s`` is in block
    ``s // block``). 1 (default): it counts steps. A sender whose receiver replies only once per several of
    its messages (a slow agent that unrolls over a block of them) needs the block, or a window of 0 would
    wait for a target the receiver cannot give before it has the rest of the block. The targets of a block
    are also handed over together (:meth:`TorchDistributed.take_target` returns None while some of the
    block's are still on their way), so the sender learns from them in one go whatever the arrival timing,
    as it would in one process."""

    name: str
    sender: str
    receiver: str
    replies: bool = True
    block: int = 1

    def __post_init__(self) -> None:
        if self.block < 1:
            raise ValueError(f"route {self.name}: block must be >= 1, got {self.block}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for a rendezvous on this machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def init_process_group(
    rank: int | None = None,
    world_size: int | None = None,
    backend: str | None = None,
    addr: str | None = None,
    port: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[int, int]:
    """Join the default process group (env:// rendezvous) and return ``(rank, world_size)``.

    Arguments left None come from ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` (as ``torchrun``
    sets them); the address defaults to 127.0.0.1 so nothing listens beyond this machine unless asked.
    ``timeout`` bounds the rendezvous and any collective."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    os.environ["MASTER_ADDR"] = addr or os.environ.get("MASTER_ADDR", "127.0.0.1")
    if port is not None:
        os.environ["MASTER_PORT"] = str(port)
    elif "MASTER_PORT" not in os.environ:
        raise ValueError("init_process_group: no port given and MASTER_PORT is not set")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(
        backend, init_method="env://", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout),
    )
    return rank, world_size


def encode_header(kind: int, iface_id: int, step: int, tensor: torch.Tensor | None,
                  context: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """The header of one send: what the receiving rank needs to allocate the payload that follows."""
    fields = [kind, iface_id, step, int(context is not None)]
    for t in (tensor, context):
        if t is None:
            fields += [0, 0] + [0] * MAX_NDIM
            continue
        if t.dim() > MAX_NDIM:
            raise ValueError(f"tensors of more than {MAX_NDIM} dimensions cannot be sent, got {t.dim()}")
        if t.dtype not in DTYPES:
            raise ValueError(f"dtype {t.dtype} cannot be sent (allowed: {', '.join(map(str, DTYPES))})")
        fields += [DTYPES.index(t.dtype), t.dim(), *t.shape, *[0] * (MAX_NDIM - t.dim())]
    return torch.tensor(fields, dtype=torch.int64, device=device)


def payload_layout(rest: list[int], has_context: int) -> list[tuple[torch.dtype, list[int]]]:
    """(dtype, shape) of each payload tensor a header announces (``rest``: its fields after the first 4)."""
    out = []
    for part in range(1 + has_context):
        code, ndim, *shape = rest[part * (2 + MAX_NDIM): (part + 1) * (2 + MAX_NDIM)]
        out.append((DTYPES[code], shape[:ndim]))
    return out
