"""Environment copies stepped in worker processes (``marl.env_workers: N``).

The learner keeps the networks and chooses every copy's action in one batch, as without workers; the
copies are cut into N contiguous slices, worker ``w`` steps its slice (a :class:`~.env.ParallelCopies` of
its own, copy ``i`` reset with ``seed + i`` as in one process), and the learner waits for all of them.
Each copy sees the same actions and seeds as in one process, so a run gives the same results with any
number of workers (tests/test_marl_workers.py). What it buys is the environments' own time divided by N;
the learner's (the policy, PPO) is unchanged: with 2 cores it pays where stepping is a large share of an
update (docs/benchmarks.md measures it).

Observations and actions travel through pipes (numpy arrays, pickled); workers are spawned fresh (no fork
of a process that holds torch threads), get no torch, and end with the learner (``close()``, or daemon
processes when it dies). A worker that raises sends its error back; one that dies is named.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np


def _serve(conn: Connection, copies_of: Callable, env_of: Callable, spec: str, kwargs: dict, first: int,
           count: int) -> None:
    """A worker: build copies ``first .. first + count - 1`` (``copies_of([env_of(spec, kwargs), …])``:
    env.py's ParallelCopies and make_env_from, handed over so this module needs no import of env.py) and
    step them on request until told to stop."""
    try:
        copies = copies_of([env_of(spec, kwargs) for _ in range(count)], spec)
        conn.send(("ready", (copies.possible_agents, callable(getattr(copies, "message_sources", None)))))
        while True:
            command, payload = conn.recv()
            if command == "reset":
                conn.send(("ok", copies.reset(seed=payload + first)))
            elif command == "step":
                conn.send(("ok", copies.step(payload)))
            elif command == "sources":
                conn.send(("ok", copies.message_sources()))
            else:  # "close"
                break
    except (EOFError, KeyboardInterrupt):  # the learner is gone
        pass
    except Exception:  # noqa: BLE001 — every error goes back to the learner, which raises it
        try:
            conn.send(("error", traceback.format_exc()))
        except (BrokenPipeError, OSError):
            pass
    finally:
        conn.close()


def _concat(parts: list[dict], rows: list[int]) -> dict:
    """Per-agent arrays of the slices end to end; an info key a slice lacks reads -1 there (as in one
    process, where a copy without the key reads -1)."""
    out: dict = {}
    for agent in parts[0]:
        values = [p[agent] for p in parts]
        if isinstance(values[0], dict):
            keys = list(dict.fromkeys(k for v in values for k in v))
            out[agent] = {k: np.concatenate([v[k] if k in v else np.full(n, -1) for v, n in
                                             zip(values, rows, strict=True)]) for k in keys}
        else:
            out[agent] = np.concatenate(values)
    return out


class WorkerCopies:
    """``num_envs`` copies of ``spec`` in ``workers`` processes, seen as one vector environment (the
    interface of :class:`~.env.ParallelCopies`)."""

    def __init__(self, spec: str, kwargs: dict, num_envs: int, workers: int, copies_of: Callable,
                 env_of: Callable) -> None:
        workers = max(1, min(workers, num_envs))
        self.name, self.num_envs = spec, num_envs
        bounds = [round(num_envs * w / workers) for w in range(workers + 1)]
        self.rows = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
        self._starts = bounds[:-1]
        context = mp.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        try:
            for first, count in zip(self._starts, self.rows, strict=True):
                ours, theirs = context.Pipe()
                args = (theirs, copies_of, env_of, spec, dict(kwargs), first, count)
                proc = context.Process(target=_serve, args=args, name=f"dni-env-worker-{len(self._procs)}",
                                       daemon=True)
                proc.start()
                theirs.close()
                self._conns.append(ours)
                self._procs.append(proc)
            ready = self._gather()
        except BaseException:
            self.close()
            raise
        self.possible_agents = list(ready[0][0])
        if ready[0][1]:
            self.message_sources = self._message_sources

    def _gather(self) -> list[Any]:
        """Every worker's answer, in order; a worker's error or death is raised here, naming it."""
        answers = []
        for w, conn in enumerate(self._conns):
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                self._died(w)
            if kind == "error":
                self.close()
                raise RuntimeError(f"marl.env_workers: environment worker {w} ({self.name}) failed:\n"
                                   f"{payload}")
            answers.append(payload)
        return answers

    def _died(self, w: int) -> None:
        self._procs[w].join(timeout=1)
        code = self._procs[w].exitcode
        self.close()
        raise RuntimeError(f"marl.env_workers: environment worker {w} ({self.name}, copies "
                           f"{self._starts[w]}..{self._starts[w] + self.rows[w] - 1}) died "
                           f"(exit code {code})") from None

    def _ask(self, command: str, payloads: list[Any]) -> list[Any]:
        for w, (conn, payload) in enumerate(zip(self._conns, payloads, strict=True)):
            try:
                conn.send((command, payload))
            except OSError:  # a broken pipe: the worker is gone
                self._died(w)
        return self._gather()

    def reset(self, seed: int) -> tuple[dict, dict]:
        parts = self._ask("reset", [seed] * len(self._conns))
        return _concat([p[0] for p in parts], self.rows), _concat([p[1] for p in parts], self.rows)

    def step(self, actions: dict[str, np.ndarray]) -> tuple[dict, dict, dict, dict, dict]:
        slices = [{a: v[s: s + n] for a, v in actions.items()} for s, n in zip(self._starts, self.rows,
                                                                              strict=True)]
        parts = self._ask("step", slices)
        return tuple(_concat([p[k] for p in parts], self.rows) for k in range(5))  # type: ignore[return-value]

    def _message_sources(self) -> list[dict]:
        return [row for part in self._ask("sources", [None] * len(self._conns)) for row in part]

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
            conn.close()
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
        self._conns, self._procs = [], []

    def __del__(self) -> None:
        self.close()
