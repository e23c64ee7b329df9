"""Start N processes of one command on this machine, as ``torchrun`` would, and leave no orphans.

Each child gets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` (127.0.0.1
by default) and a free ``MASTER_PORT``. When one child fails, the others get ``grace`` seconds to notice
(their transport times out or sees the dead peer and exits with an error naming it); whoever is still
running then is killed. The exit status is the first failure's, or 0. SIGINT and SIGTERM are passed on
to the children, which stop together with a checkpoint (exit status 130 / 143).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from .core.distributed import free_port


def child_env(rank: int, world_size: int, addr: str, port: int) -> dict[str, str]:
    """The environment of rank ``rank``. Unless ``OMP_NUM_THREADS`` is set, each child gets its share of
    the cores (as torchrun sets 1): N processes of torch's default thread count each oversubscribe the
    machine, and a run beside other work then slows down many times over."""
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // world_size))
    return {
        **os.environ,
        "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": addr, "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": threads,
    }


def launch(command: Sequence[str], procs: int, addr: str = "127.0.0.1", grace: float = 60.0) -> int:
    """Run ``command`` (argv) in ``procs`` processes; wait for all; return the exit status."""
    if procs < 1:
        raise ValueError(f"--procs must be >= 1, got {procs}")
    port = free_port(addr)
    children = [subprocess.Popen(list(command), env=child_env(r, procs, addr, port)) for r in range(procs)]
    status, deadline = 0, None

    def forward(signum: int, frame: object) -> None:
        """Ctrl-C / SIGTERM: every child stops at one step boundary with a checkpoint (they agree on it),
        so pass the signal on (from a terminal they have it already; a second one changes nothing) and
        keep waiting for them."""
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        while None in [c.poll() for c in children]:  # a list: poll every child, each time
            failed = [c.returncode for c in children if c.returncode not in (None, 0)]
            if failed and deadline is None:
                status, deadline = failed[0], time.monotonic() + grace
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for child in children:  # stragglers after a failure
            if child.poll() is None:
                child.kill()
                child.wait()
    if status == 0:
        status = next((c.returncode for c in children if c.returncode != 0), 0)
    return status


def cli_command(argv: Sequence[str]) -> list[str]:
    """The ``dni-agents`` command line ``argv`` as run by this interpreter."""
    return [sys.executable, "-m", "dni_agents.cli", *argv]
