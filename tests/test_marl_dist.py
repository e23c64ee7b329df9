"""The multi-agent driver on two processes (speaker on rank 0, listener on rank 1, over gloo on loopback):
lockstep equals the in-process run bit for bit, a killed rank ends the other with one line naming it, and
a killed run resumes from the ranks' common checkpoint and ends as if never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from exact import assert_equal_states
from ranks import env_for, needs_gloo, rank_metrics

from dni_agents.cli import main
from dni_agents.config import ConfigError, load_config
from dni_agents.core.distributed import free_port
from dni_agents.drivers import marl
from dni_agents.drivers.marl.dist import check_split
from dni_agents.launch import cli_command
from dni_agents.runtime.ranks import merge_rank_checkpoints, placement_for

TINY = ["trainer.steps=3", "marl.num_envs=16", "marl.eval_episodes=32", "log.every=1", "trainer.threads=1",
        "log.embedding_samples=0", "distributed.timeout=20"]

pytestmark = needs_gloo


@pytest.mark.parametrize("config, mode", [
    ("digits_referential", "cdni"),  # the main job: its gate reads the receiver's policy from the episode
    ("speaker_listener", "dni"),
    ("speaker_listener", "backprop"),  # the joint tick split at the process boundary
    ("speaker_listener", "none"),
    ("reference", "dni"),  # two agents talking both ways, each its own rank
])
def test_lockstep_on_two_processes_equals_the_in_process_run(tmp_path, monkeypatch, config, mode):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    overrides = [*TINY, f"interface_defaults.mode={mode}", f"log.dir={tmp_path}"]
    assert main(["train", config, *overrides, "--procs", "2", "--run-dir", str(tmp_path / "dist")]) == 0
    ranks = rank_metrics(tmp_path / "dist")
    names = [a.name for a in load_config(config).agents]
    assert ranks[0]["agents"] == [names[0]] and ranks[1]["agents"] == [names[1]]
    per_minibatch = load_config(config).marl.max_steps - 1  # delay 1: the last step's message is not sent
    assert ranks[0]["max_in_flight"] <= max(per_minibatch, 1)  # lockstep: one minibatch in flight at most

    reference = marl.train(load_config(config, overrides), tmp_path / "single", progress=False)
    expected = torch.load(Path(reference["run_dir"]) / marl.CHECKPOINT, weights_only=True)["system"]
    assert_equal_states(merge_rank_checkpoints(tmp_path / "dist")["system"], expected)
    for r in (0, 1):  # every rank ends with every network and evaluates them as the one process does
        for key in ("mean_return", "ablated_return", "silenced_return"):
            assert ranks[r][key] == reference[key], (r, key)
    fidelity = [k for k in reference if k.endswith("/grad_cosine")]
    assert (mode in ("dni", "cdni")) == bool(fidelity)
    for key in fidelity:  # measured where the utility model learns: the sender's rank
        sender = key.split("->")[0]
        assert ranks[names.index(sender)][key] == reference[key]


@pytest.mark.parametrize("batched, per_minibatch", [("true", 1), ("false", 24)])
def test_a_staleness_window_lets_the_sender_run_minibatches_ahead(
    tmp_path, monkeypatch, batched, per_minibatch,
):
    """Messages in flight: a minibatch carries the episode as one message (batched replay) or as 24."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    overrides = [*TINY, "distributed.max_staleness=2", f"log.dir={tmp_path}",
                 f"marl.batched_replay={batched}"]
    argv = ["train", "speaker_listener", *overrides, "--procs", "2", "--run-dir", str(tmp_path / "d")]
    assert main(argv) == 0
    ranks = rank_metrics(tmp_path / "d")
    # up to 3 minibatches wait for their targets
    assert per_minibatch < ranks[0]["max_in_flight"] <= 3 * per_minibatch
    assert ranks[0]["mean_return"] == ranks[1]["mean_return"]  # the ranks still play with the same networks


def test_what_cannot_cross_ranks_is_refused_in_one_line(tmp_path):
    def split(mode: str) -> None:
        cfg = load_config("reference", [f"interface_defaults.mode={mode}", f"log.dir={tmp_path}"])
        _, groups, channels = marl.build(cfg, marl.make_env(cfg), torch.device("cpu"))
        check_split(groups, channels, placement_for(cfg, 2, what="agent"))

    split("dni")  # both ways with ĝ: nobody waits for anybody
    with pytest.raises(ConfigError, match="backprop channels run both ways between ranks 0 and 1"):
        split("backprop")
    with pytest.raises(ConfigError, match="agent_0->agent_1 is cdni and its gate holds the ĝ agent_1 gets"):
        split("cdni")
    with pytest.raises(ConfigError, match="3 processes for 2 agents"):
        placement_for(load_config("speaker_listener"), 3, what="agent")


def start_pair(argv: list[str], tmp_path: Path) -> list[subprocess.Popen]:
    port = free_port()
    return [subprocess.Popen(cli_command(argv), env=env_for(r, 2, port), cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for r in (0, 1)]


def kill_when(
    procs: list[subprocess.Popen], ready: list[Path], victim: int
) -> tuple[subprocess.Popen, str, float]:
    """Wait until every path in ``ready`` exists (both ranks are training), SIGKILL rank ``victim``; return
    the survivor, its stderr and how long it took to end."""
    try:
        deadline = time.monotonic() + 120
        while not all(f.exists() for f in ready) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        os.kill(procs[victim].pid, signal.SIGKILL)
        t0 = time.monotonic()
        survivor = procs[1 - victim]
        _, err = survivor.communicate(timeout=30)
        return survivor, err, time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def test_a_killed_rank_ends_the_other_with_an_error_naming_it(tmp_path):
    run = tmp_path / "run"
    argv = ["train", "speaker_listener", *TINY, "trainer.steps=100000", "trainer.checkpoint_every=2",
            "distributed.timeout=5", f"log.dir={tmp_path}", "--run-dir", str(run)]
    procs = start_pair(argv, tmp_path)
    survivor, err, took = kill_when(procs, [run / f"checkpoint.rank{r}.step2.pt" for r in (0, 1)], victim=0)
    assert survivor.returncode == 1, err
    assert "rank 0 is gone" in err and "Traceback" not in err
    assert took < 5 + 15  # at once when its socket closes, at worst the 5 s timeout (room for a busy machine)


def test_a_killed_run_resumes_from_the_ranks_common_checkpoint_and_ends_as_if_never_stopped(
    tmp_path, monkeypatch
):
    """Like with like: the resumed run and the uninterrupted reference both run on two processes."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    overrides = [*TINY, "trainer.steps=40", "trainer.checkpoint_every=4", "distributed.timeout=5",
                 "marl.epochs=2", "marl.max_steps=10", "interface_defaults.mode=cdni", f"log.dir={tmp_path}"]
    run = tmp_path / "run"
    procs = start_pair(["train", "speaker_listener", *overrides, "--run-dir", str(run)], tmp_path)
    survivor, err, _ = kill_when(procs, [run / f"checkpoint.rank{r}.step4.pt" for r in (0, 1)], victim=1)
    assert survivor.returncode == 1 and "rank 1 is gone" in err, err
    assert not (run / "metrics.rank0.json").exists()  # it really stopped mid-run

    assert main(["train", "speaker_listener", *overrides, "--procs", "2", "--resume", str(run)]) == 0
    ranks = rank_metrics(run)
    assert 0 < ranks[0]["start"] < 40 and ranks[0]["start"] % 4 == 0

    reference = tmp_path / "reference"
    assert main(["train", "speaker_listener", *overrides, "--procs", "2", "--run-dir", str(reference)]) == 0
    assert_equal_states(merge_rank_checkpoints(run)["system"], merge_rank_checkpoints(reference)["system"])
    assert ranks[0]["mean_return"] == rank_metrics(reference)[0]["mean_return"]
    # the multi-process folder evaluates in one process, from the ranks' checkpoints put together
    assert marl.evaluate(run)["mean_return"] == ranks[0]["mean_return"]
