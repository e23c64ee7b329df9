"""The one loop skeleton every driver's training runs in. The driver writes what a step *does* in its own
``for step in loop:`` body (CleanRL: one visible loop per algorithm); what is around a step lives here,
once:

* steps ``start .. end`` (``end``: ``trainer.steps``, or a test's ``stop_at``, which ends the run as a crash
  would), and the progress bar;
* a stop request (SIGINT/SIGTERM) honoured at a step boundary: checkpoint there and raise ``Interrupted``;
* the checkpoint cadence (``trainer.checkpoint_every``: after every that many steps);
* the one policy for statistics: a step is *measured* on every ``log.every``-th step and on the last one;
  the interfaces' stats are drained on measured steps only, so a logged ``utility_loss`` is the mean over
  the steps since the last measured one and ĝ fidelity is that of the measured step itself;
* the histogram cadence (:meth:`Loop.histograms`): every ``log.histogram_every``-th log point (``auto``:
  a fifth of the run) but not the untrained first one, whose spike would set every later slice's scale,
  and always the last step, so a run of any length shows its final messages;
* each step's own random generator, so a resumed run draws what the uninterrupted one drew.

Drivers count steps in one of two ways: from 0 (``count_from=0``: the step's index is its log point, as
in ff and marl) or from 1 (``count_from=1``: a window or block is logged at the number done, as in rnn and
hier). Both share the rule above, applied to the log point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..config import Config
from ..core import System
from ..logging import RunLogger
from .stop import StopRequest


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random generator of step ``step`` of a run seeded ``seed``: a function of both only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def mean_stats(records: list[Mapping[str, Any]]) -> dict[str, float]:
    """Average each stat over the records that carry it (fidelity is measured only on measured steps; the
    utility loss on every step)."""
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for r in records for k in r if k != "step"):
        values = [float(r[key]) for r in records if key in r]
        out[key] = sum(values) / len(values)
    return out


StatTag = Callable[[str, str], str]  # (interface, stat) -> the stat's TensorBoard tag


def log_interfaces(logger: RunLogger, system: System, step: int,
                   tag: StatTag | None = None) -> dict[str, dict[str, float]]:
    """Drain the system's stats and log their means under ``interface/<name>/…`` (or the tags ``tag``
    gives: a driver's own layout), and what ``trainer.on_nonfinite=skip`` skipped so far under
    ``skipped/<agent or interface>``."""
    out = {}
    for name, records in system.drain_stats().items():
        out[name] = mean_stats(records)
        if tag is None:
            logger.interface(name, out[name], step)
        else:
            for key, value in out[name].items():
                if not math.isnan(value):
                    logger.scalar(tag(name, key), value, step)
    logger.scalars("skipped", system.skipped, step)
    return out


def histogram_every(cfg: Config) -> int:
    """``log.histogram_every`` as a number of steps (``auto``: a fifth of ``trainer.steps``)."""
    every = cfg.log.histogram_every
    return max(cfg.trainer.steps // 5, 1) if every == "auto" else int(every)


class Loop:
    """Iterate over a run's steps (``for step in loop``) with the bar, stop requests and checkpoints.

    ``save(step)`` writes the checkpoint of a run that has done ``step`` steps and returns its path (None
    when the run is not logged); ``unit`` names a step on the bar (``step``, ``window``, ``update``). A run
    on several processes passes ``check(step, bar)``, its stop check that all ranks agree on
    (:meth:`StopRequest.check_ranks`), and ``rank``: only rank 0 shows a bar."""

    def __init__(
        self, cfg: Config, start: int, logger: RunLogger, save: Callable[[int], Path | None], *,
        log: bool, progress: bool, stop_at: int | None = None, stop: StopRequest | None = None,
        unit: str = "step", count_from: int = 0, check: Callable[[int, Any], None] | None = None,
        rank: int | None = None, stat_tag: StatTag | None = None,
    ) -> None:
        self.cfg, self.start, self.logger, self.save, self.log = cfg, start, logger, save, log
        self.steps = cfg.trainer.steps
        self.end = self.steps if stop_at is None else min(stop_at, self.steps)
        self.stop = stop or StopRequest()
        self.count_from = count_from
        self.stat_tag = stat_tag
        self.histogram_every = histogram_every(cfg)
        self.check = check or (lambda step, bar: self.stop.check(step, self.save, bar, self.logger))
        self.bar = tqdm(total=self.end, initial=start, leave=False, unit=unit,
                        desc=cfg.name if rank is None else f"{cfg.name} rank {rank}",
                        disable=not progress or bool(rank))

    def __iter__(self) -> Iterator[int]:
        every = self.cfg.trainer.checkpoint_every
        for step in range(self.start, self.end):
            self.check(step, self.bar)
            yield step
            if every and (step + 1) % every == 0:
                self.save(step + 1)
            self.bar.update(1)
        self.bar.close()

    @property
    def finished(self) -> bool:
        """Whether the run went the whole ``trainer.steps`` (not stopped early by ``stop_at``)."""
        return self.end == self.steps

    def at(self, step: int) -> int:
        """The log point of ``step``."""
        return step + self.count_from

    def due(self, every: int, step: int) -> bool:
        """Whether ``step`` is on a cadence of ``every`` log points (0: never)."""
        return bool(every) and self.at(step) % every == 0

    def measured(self, step: int) -> bool:
        """Whether ``step`` is measured: every ``log.every``-th log point, and the last step."""
        return self.due(self.cfg.log.every, step) or step == self.steps - 1

    def histograms(self, step: int) -> bool:
        """Whether ``step`` gets histograms (and marl's projector snapshots), in a logged run: every
        ``log.histogram_every``-th log point but the untrained first one (log point 0: its spike would
        swamp the scale of every later slice), and the last step of the run."""
        at = self.at(step)
        return self.log and ((at > 0 and at % self.histogram_every == 0) or step == self.steps - 1)

    def logs(self, step: int) -> bool:
        """Whether ``step`` is written to TensorBoard (a measured step of a logged run)."""
        return self.log and self.measured(step)

    def drain(self, system: System, step: int) -> dict[str, dict[str, float]] | None:
        """On a measured step: each interface's stats since the last one, averaged, and logged when the
        run is; None on other steps (the stats keep accumulating; the core bounds how many it keeps)."""
        if not self.measured(step):
            return None
        if self.log:
            return log_interfaces(self.logger, system, self.at(step), self.stat_tag)
        return {name: mean_stats(records) for name, records in system.drain_stats().items()}
