"""Environment copies stepped in worker processes (``marl.env_workers: N``).

The learner keeps the networks and chooses every copy's action in one batch, as without workers; the
copies are cut into N contiguous slices, worker ``w`` steps its slice (a :class:`~.env.ParallelCopies` of
its own, copy ``i`` reset with ``seed + i`` as in one process), and the learner waits for all of them.
Each copy sees the same actions and seeds as in one process, so a run gives the same results with any
number of workers (tests/test_marl_workers.py). What it buys is the environments' own time divided by N;
the learner's (the policy, PPO) is unchanged: with 2 cores it pays where stepping is a large share of an
update (docs/benchmarks.md measures it).

Observations and actions travel through each worker's stdin and stdout (pickled numpy arrays, between
this process and the children it started); a worker is a fresh interpreter (``python -m
dni_agents.drivers.marl.env_worker``: no fork of a process that holds torch threads, and no re-import of
the user's main script, which ``multiprocessing``'s spawn would do), does no torch work, and ends with
the learner (``close()``, or when its stdin closes). A worker that raises sends its error back; one that
dies is named.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from typing import Any

import numpy as np

WORKER_MODULE = "dni_agents.drivers.marl.env_worker"


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

    def __init__(self, spec: str, kwargs: dict, num_envs: int, workers: int) -> None:
        workers = max(1, min(workers, num_envs))
        self.name, self.num_envs = spec, num_envs
        bounds = [round(num_envs * w / workers) for w in range(workers + 1)]
        self.rows = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
        self._starts = bounds[:-1]
        self._procs: list[subprocess.Popen] = []
        try:
            for first, count in zip(self._starts, self.rows, strict=True):
                proc = subprocess.Popen([sys.executable, "-m", WORKER_MODULE], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, start_new_session=True)
                self._procs.append(proc)
                self._send(len(self._procs) - 1, (spec, dict(kwargs), first, count))
            ready = self._gather()
        except BaseException:
            self.close()
            raise
        self.possible_agents = list(ready[0][0])
        if ready[0][1]:
            self.message_sources = self._message_sources

    def _send(self, w: int, item: Any) -> None:
        try:
            pickle.dump(item, self._procs[w].stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self._procs[w].stdin.flush()
        except OSError:  # a broken pipe: the worker is gone
            self._died(w)

    def _gather(self) -> list[Any]:
        """Every worker's answer, in order; a worker's error or death is raised here, naming it."""
        answers = []
        for w, proc in enumerate(self._procs):
            try:
                kind, payload = pickle.load(proc.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                self._died(w)
            if kind == "error":
                self.close()
                raise RuntimeError(f"marl.env_workers: environment worker {w} ({self.name}) failed:\n"
                                   f"{payload}")
            answers.append(payload)
        return answers

    def _died(self, w: int) -> None:
        proc = self._procs[w]
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self.close()
        raise RuntimeError(f"marl.env_workers: environment worker {w} ({self.name}, copies "
                           f"{self._starts[w]}..{self._starts[w] + self.rows[w] - 1}) died "
                           f"(exit code {code}; its error, if any, is above)") from None

    def _ask(self, command: str, payloads: list[Any]) -> list[Any]:
        for w, payload in enumerate(payloads):
            self._send(w, (command, payload))
        return self._gather()

    def reset(self, seed: int) -> tuple[dict, dict]:
        parts = self._ask("reset", [seed] * len(self._procs))
        return _concat([p[0] for p in parts], self.rows), _concat([p[1] for p in parts], self.rows)

    def step(self, actions: dict[str, np.ndarray]) -> tuple[dict, dict, dict, dict, dict]:
        slices = [{a: v[s: s + n] for a, v in actions.items()} for s, n in zip(self._starts, self.rows,
                                                                              strict=True)]
        parts = self._ask("step", slices)
        return tuple(_concat([p[k] for p in parts], self.rows) for k in range(5))  # type: ignore[return-value]

    def _message_sources(self) -> list[dict]:
        return [row for part in self._ask("sources", [None] * len(self._procs)) for row in part]

    def close(self) -> None:
        """Stop the workers (idempotent): their stdin closes, they exit."""
        procs, self._procs = self._procs, []
        for proc in procs:
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()

    def __del__(self) -> None:
        self.close()
