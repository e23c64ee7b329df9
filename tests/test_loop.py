"""The one loop skeleton (dni_agents.runtime.loop): which steps are measured, when stats are drained and
checkpoints written, and that a stop_at run ends as a crash would. Every driver's loop is this one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dni_agents.config import load_config
from dni_agents.logging import RunLogger
from dni_agents.runtime.loop import Loop, step_generator


def loop_for(tmp_path: Path, *overrides: str, count_from: int = 0, stop_at: int | None = None,
             log: bool = False) -> tuple[Loop, list[int]]:
    cfg = load_config("ff_digits", ["trainer.steps=10", "log.every=4", *overrides])
    saved: list[int] = []
    logger = RunLogger(tmp_path, enabled=False)
    loop = Loop(cfg, 0, logger, lambda step: saved.append(step), log=log, progress=False, stop_at=stop_at,
                count_from=count_from)
    return loop, saved


@pytest.mark.parametrize("count_from, measured", [(0, [0, 4, 8, 9]), (1, [3, 7, 9])])
def test_every_log_every_th_log_point_and_the_last_step_are_measured(tmp_path, count_from, measured):
    loop, _ = loop_for(tmp_path, count_from=count_from)
    assert [s for s in loop if loop.measured(s)] == measured
    assert not any(loop.logs(s) for s in range(10))  # a run that is not logged writes nothing


def test_checkpoints_follow_the_cadence_and_stop_at_ends_as_a_crash_would(tmp_path):
    loop, saved = loop_for(tmp_path, "trainer.checkpoint_every=3")
    assert list(loop) == list(range(10)) and saved == [3, 6, 9] and loop.finished
    loop, saved = loop_for(tmp_path, "trainer.checkpoint_every=3", stop_at=5)
    assert list(loop) == list(range(5)) and saved == [3] and not loop.finished


class FakeSystem:
    """What Loop.drain reads of a system: the stats each interface has gathered since the last drain."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.skipped: dict[str, int] = {}

    def drain_stats(self) -> dict[str, list[dict]]:
        out, self.records = {"a->b": self.records}, []
        return out


def test_stats_are_drained_on_measured_steps_only_so_a_logged_loss_is_the_interval_mean(tmp_path):
    loop, _ = loop_for(tmp_path)
    system = FakeSystem()
    drained = {}
    for step in loop:
        system.records.append({"step": step, "utility_loss": float(step)})
        if step == 4:
            system.records[-1]["grad_cosine"] = 0.5  # fidelity: measured on this step only
        out = loop.drain(system, step)
        assert (out is None) == (not loop.measured(step))
        if out is not None:
            drained[step] = out["a->b"]
    assert drained[0] == {"utility_loss": 0.0}
    assert drained[4] == {"utility_loss": (1 + 2 + 3 + 4) / 4, "grad_cosine": 0.5}
    assert drained[8] == {"utility_loss": (5 + 6 + 7 + 8) / 4} and drained[9] == {"utility_loss": 9.0}


def test_a_steps_generator_depends_on_the_seed_and_the_step_only():
    draw = lambda seed, step: torch.rand(3, generator=step_generator(seed, step))  # noqa: E731
    assert torch.equal(draw(1, 5), draw(1, 5))
    assert not torch.equal(draw(1, 5), draw(1, 6)) and not torch.equal(draw(1, 5), draw(2, 5))


def test_every_drivers_training_runs_with_the_threads_its_config_asks_for():
    """trainer.threads (default 1: no oversubscription on a shared machine), marl.threads where set; the
    caller's setting comes back after, also when training fails."""
    from dni_agents.drivers import ff, hier, marl, rnn
    from dni_agents.runtime.run import with_threads

    for train in (ff.train, rnn.train, hier.train, marl.train, ff.train_distributed, hier.train_distributed):
        assert hasattr(train, "__wrapped__"), train  # wrapped by with_threads
    before = torch.get_num_threads()
    seen = []
    probe = with_threads()(lambda cfg: seen.append(torch.get_num_threads()))
    probe(load_config("ff_digits"))
    assert load_config("ff_digits").trainer.threads == 1 and seen == [1]
    probe(load_config("ff_digits", ["trainer.threads=0"]))  # 0: leave torch's setting
    assert seen[-1] == before

    def fails(cfg):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        with_threads()(fails)(load_config("ff_digits", ["trainer.threads=1"]))
    assert torch.get_num_threads() == before
    from dni_agents.drivers.marl.train import threads

    assert threads(load_config("digits_referential", ["marl.threads=2"])) == 2  # marl's own name wins
    assert threads(load_config("speaker_listener", ["trainer.threads=3"])) == 3


@pytest.mark.parametrize("mkl_cbwr", [None, "AUTO"])
def test_several_threads_warn_when_products_may_depend_on_them(mkl_cbwr):
    """Importing dni_agents asks MKL for its strict mode (a user's own MKL_CBWR wins); a run on several
    threads without it says so in one line, and one thread never does."""
    import os
    import subprocess
    import sys

    from dni_agents.runtime.blas import reproducible_products

    if reproducible_products() is None:
        pytest.skip("torch's BLAS here is not MKL")
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    if mkl_cbwr:
        env["MKL_CBWR"] = mkl_cbwr
    code = ("import dni_agents, warnings\n"
            "from dni_agents.config import load_config\n"
            "from dni_agents.runtime.blas import reproducible_products\n"
            "from dni_agents.runtime.run import with_threads\n"
            "print(reproducible_products())\n"
            "for n in (1, 2):\n"
            "    with_threads()(lambda cfg: None)(load_config('ff_digits', [f'trainer.threads={n}']))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    warned = [line for line in out.stderr.splitlines() if "RuntimeWarning" in line]
    if mkl_cbwr is None:
        assert out.stdout.split() == ["True"] and warned == []
    else:
        assert out.stdout.split() == ["False"]
        assert len(warned) == 1 and "2 threads without MKL's strict mode (MKL_CBWR='AUTO')" in warned[0]
