"""Ctrl-C (SIGINT) and SIGTERM during `dni-agents train`: a real signal to a real child process. The run
writes a checkpoint at the next step boundary, prints one line saying how to resume and exits 130 / 143;
`--resume` then ends with exactly the parameters of an uninterrupted run of the same length.

Nothing here depends on how fast the machine is: the child trains for a million steps (it cannot finish
first), the signal is sent once its first periodic checkpoint exists (it is training), and wherever it
stops (step k), the resumed run and the uninterrupted reference both end at step k + EXTRA. Every process
runs with one thread, the reference the same way as the interrupted run, so the comparison is exact."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from exact import assert_equal_states

from dni_agents.launch import cli_command
from dni_agents.runtime.ranks import merge_rank_checkpoints

FF = ["ff.hidden=32", "trainer.batch_size=16", "trainer.eval_every=0", "log.every=5",
      "log.embedding_samples=0", "trainer.checkpoint_every=20", "distributed.timeout=20"]
MARL = ["marl.num_envs=4", "marl.eval_episodes=8", "log.every=1", "log.embedding_samples=0",
        "trainer.checkpoint_every=2"]
EXTRA = 15  # steps after the stop that the resumed and the reference run both train
LONG = "trainer.steps=1000000"


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(argv), env=child_env(), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def interrupt(argv: list[str], cwd: Path, started: Path, signum: int) -> tuple[int, str]:
    """Start ``dni-agents ARGV``, wait until ``started`` exists (it is training), send ``signum`` and return
    (exit status, stderr)."""
    proc = subprocess.Popen(cli_command(argv), env=child_env(), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        assert started.exists(), "the run did not start within 120 s"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def stop_line(err: str, signame: str) -> tuple[int, str]:
    """The one line a stopped run prints: (the step it stopped at, the resume command it names)."""
    lines = [line.strip() for line in re.split(r"[\r\n]", err)]  # the progress bar redraws with \r
    lines = [line for line in lines if line and "%|" not in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    line = lines[0]
    assert line.startswith(f"dni-agents: stopped by {signame} at step "), line
    step = int(line.split(" at step ")[1].split()[0])
    assert "; resume with: dni-agents train " in line and " --resume " in line, line
    return step, line.split("; resume with: ")[1]


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize(("config", "overrides", "signum"), [
    ("ff_digits", FF, signal.SIGINT),
    ("speaker_listener", MARL, signal.SIGTERM),
])
def test_a_signal_checkpoints_prints_how_to_resume_and_the_resumed_run_ends_exactly(
    tmp_path, config, overrides, signum
):
    run = tmp_path / "run"
    base = ["train", config, *overrides, f"log.dir={tmp_path}"]
    status, err = interrupt([*base, LONG, "--run-dir", str(run)], tmp_path, run / "checkpoint.pt", signum)
    assert status == 128 + signum == (130 if signum == signal.SIGINT else 143), err
    step, command = stop_line(err, signal.Signals(signum).name)
    state = load(run / "checkpoint.pt")
    assert state.get("step", state.get("update")) == step >= 2
    assert command.endswith(f"--resume {run}") and LONG in command

    end = f"trainer.steps={step + EXTRA}"
    resumed = run_cli([*base, end, "--resume", str(run)], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    reference = run_cli([*base, end, "--run-dir", str(tmp_path / "reference")], tmp_path)
    assert reference.returncode == 0, reference.stderr
    got, expected = load(run / "checkpoint.pt"), load(tmp_path / "reference" / "checkpoint.pt")
    assert_equal_states(got["system"], expected["system"])
    assert got.get("step", got.get("update")) == step + EXTRA


def test_a_signal_to_a_two_process_run_stops_both_ranks_at_one_step_and_it_resumes_exactly(tmp_path):
    """SIGTERM to the `--procs 2` launcher alone (as `kill PID` does): it passes the signal on, the ranks
    agree on one step, each writes its checkpoint of it; resumed, the run ends as an uninterrupted one.
    (Ctrl-C in a terminal reaches every process of the group: each rank then gets the signal twice, once
    from the terminal and once from the launcher, and the second changes nothing; see the next test.)"""
    run = tmp_path / "run"
    base = ["train", "ff_digits", *FF, f"log.dir={tmp_path}", "--procs", "2"]
    status, err = interrupt([*base, LONG, "--run-dir", str(run)], tmp_path,
                            run / "checkpoint.rank1.step20.pt", signal.SIGTERM)
    assert status == 143, err
    step, command = stop_line(err, "SIGTERM")  # rank 0 says it, once
    assert "--procs 2" in command
    assert [load(run / f"checkpoint.rank{r}.pt")["step"] for r in (0, 1)] == [step, step]

    end = f"trainer.steps={step + EXTRA}"
    resumed = run_cli([*base, end, "--resume", str(run)], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    reference = run_cli([*base, end, "--run-dir", str(tmp_path / "reference")], tmp_path)
    assert reference.returncode == 0, reference.stderr
    assert_equal_states(merge_rank_checkpoints(run), merge_rank_checkpoints(tmp_path / "reference"))


def test_stop_request_is_inert_off_the_main_thread_and_restores_the_handlers():
    import threading

    from dni_agents.runtime.stop import Interrupted, StopRequest

    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        assert signal.getsignal(signal.SIGINT) != before
        os.kill(os.getpid(), signal.SIGINT)  # recorded, not raised
        time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal changes nothing
        time.sleep(0.01)
        assert stop.signum == signal.SIGINT
        saved = []
        with pytest.raises(Interrupted) as caught:
            stop.check(7, lambda step: saved.append(step) or Path("ckpt.pt"))
        assert saved == [7] and caught.value.exit_status == 130 and caught.value.step == 7
    assert signal.getsignal(signal.SIGINT) == before

    out: list = []
    thread = threading.Thread(target=lambda: out.append(StopRequest().__enter__()._previous))
    thread.start()
    thread.join()
    assert out == [{}]  # signals can only be caught on the main thread: nothing installed there


@pytest.mark.parametrize("driver", ["ff", "marl"])
def test_the_progress_bar_of_a_resumed_run_continues_at_k_of_n(tmp_path, capsys, driver):
    from dni_agents.config import load_config
    from dni_agents.drivers import ff, marl

    module, cfg = (ff, load_config("ff_digits", [*FF, "trainer.steps=30", f"log.dir={tmp_path}"])) \
        if driver == "ff" else (marl, load_config("referential", [*MARL, "trainer.steps=6",
                                                                   f"log.dir={tmp_path}"]))
    k, n = (20, 30) if driver == "ff" else (4, 6)
    module.train(cfg, tmp_path / "run", progress=False, stop_at=k)
    capsys.readouterr()
    module.train(cfg, tmp_path / "run", resume=tmp_path / "run", progress=True)
    bar = capsys.readouterr().err
    assert f"| {k}/{n} [" in bar, bar
    assert f"| 0/{n - k} [" not in bar and f"| 0/{n} [" not in bar
