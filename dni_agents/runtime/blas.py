"""Matrix products that give the same bits on any number of threads.

MKL, torch's BLAS on x86 CPUs, may split the inner sum of a product between threads (seen here: a
5×1600 by 1600×64 weight gradient), so a run on two threads drifts from one thread's in the last bits and
then further. MKL's conditional numerical reproducibility in strict mode (``MKL_CBWR=AUTO,STRICT``) keeps
each product's order whatever the threads, at no cost we could measure (docs/benchmarks.md). MKL reads the
setting once, at its first call: importing :mod:`dni_agents` asks for it (unless ``MKL_CBWR`` is already
set: the user's own choice wins), and :func:`reproducible_products` says whether it holds."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

STRICT_MODE = "AUTO,STRICT"
_STRICT_BIT = 0x10000  # MKL_CBWR_STRICT
_ALL = -1  # MKL_CBWR_ALL: the whole setting


def request_strict_products() -> None:
    """Ask MKL for its strict reproducible mode (before its first call; child processes inherit it)."""
    os.environ.setdefault("MKL_CBWR", STRICT_MODE)


def reproducible_products() -> bool | None:
    """Whether this process's MKL runs in strict mode (products independent of the thread count); None when
    torch has no MKL to ask (another BLAS: nothing known). Reading it fixes MKL's mode: ask first."""
    import torch

    try:
        get = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so")).mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    return bool(get(_ALL) & _STRICT_BIT)
