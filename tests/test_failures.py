"""Failures a user can cause end as one line and exit status 2, before anything is written: bad or foreign
checkpoints on resume and eval, a run folder that cannot be made, observation ranges past the end of the
observation. And a resumed run shows every step once in TensorBoard."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard_record import read_scalars

from dni_agents.cli import main
from dni_agents.config import load_config
from dni_agents.data import load_dataset
from dni_agents.drivers import ff, hier, marl, rnn

ROOT = Path(__file__).resolve().parents[1]
TINY_FF = ["trainer.steps=4", "trainer.eval_every=0", "trainer.checkpoint_every=2", "log.every=2",
           "log.embedding_samples=0", "ff.hidden=32"]


def run_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI, assert the user-error contract (exit 2, one stderr line, no traceback), return the
    message after the prefix."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("dni-agents: error: ")
    assert "Traceback" not in captured.err + captured.out
    return lines[0][len("dni-agents: error: "):]


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``folder`` with its inode, modification time and bytes: a rewrite shows."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(folder))] = (st.st_ino, st.st_mtime_ns, path.read_bytes())
    return out


@pytest.fixture(scope="module")
def finished_ff_run(tmp_path_factory) -> Path:
    """A tiny finished ff run (hidden 32, three layers, dni), made once and copied by each test."""
    root = tmp_path_factory.mktemp("ff")
    assert main(["train", "ff_digits", f"log.dir={root}", *TINY_FF]) == 0
    return root / "ff_digits"


@pytest.fixture
def ff_run(finished_ff_run, tmp_path, capsys) -> Path:
    run = tmp_path / "ff_digits"
    shutil.copytree(finished_ff_run, run)
    capsys.readouterr()
    return run


# ------------------------------------------------------------------------------ 1. bad checkpoint files
def half_written(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_FILES = {
    "random bytes": lambda p: p.write_bytes(os.urandom(4096)),
    "half written": half_written,
    "empty": lambda p: p.write_bytes(b""),
    "a text file": lambda p: p.write_text("step: 4\n"),
}


@pytest.mark.parametrize("command", ["resume", "eval"])
@pytest.mark.parametrize("damage", list(BAD_FILES))
def test_an_unreadable_checkpoint_is_one_line_and_leaves_the_run_as_it_was(ff_run, capsys, damage, command):
    checkpoint = ff_run / ff.CHECKPOINT
    BAD_FILES[damage](checkpoint)
    before = snapshot(ff_run)
    argv = (["train", str(ff_run / "config.yaml"), "--resume", str(ff_run)] if command == "resume"
            else ["eval", str(ff_run)])
    message = run_error(capsys, argv)
    assert message.startswith(f"{checkpoint}: not a dni-agents checkpoint (truncated or corrupted: ")
    assert snapshot(ff_run) == before


@pytest.mark.parametrize("command", ["resume", "eval"])
def test_a_torch_file_holding_something_else_is_not_a_checkpoint(ff_run, capsys, command):
    checkpoint = ff_run / ff.CHECKPOINT
    torch.save(torch.zeros(3), checkpoint)
    before = snapshot(ff_run)
    argv = (["train", str(ff_run / "config.yaml"), "--resume", str(ff_run)] if command == "resume"
            else ["eval", str(ff_run)])
    assert run_error(capsys, argv) == (
        f"{checkpoint}: not a dni-agents checkpoint (it holds a Tensor, not a dict of run state)"
    )
    assert snapshot(ff_run) == before


def test_a_checkpoint_of_another_driver_names_the_missing_agent(ff_run, tmp_path, capsys):
    cfg = load_config("copy", [f"log.dir={tmp_path}", "rnn.hidden=8", "trainer.batch_size=2",
                               "rnn.truncation=2", "trainer.steps=2", "log.every=1"])
    rnn.train(cfg, tmp_path / "copy", progress=False)
    shutil.copy(tmp_path / "copy" / rnn.CHECKPOINT, ff_run / ff.CHECKPOINT)
    before = snapshot(ff_run)
    message = run_error(capsys, ["train", str(ff_run / "config.yaml"), "--resume", str(ff_run)])
    assert message == (
        f"{ff_run / ff.CHECKPOINT} does not match this config: agent layer0 is not in the checkpoint "
        f"(it has rnn) (resume with the run's own config, {ff_run / 'config.yaml'})"
    )
    assert snapshot(ff_run) == before


@pytest.mark.parametrize("override, problem", [
    ("ff.hidden=16",
     "agent layer0: module.1.weight has shape [32, 64] in the checkpoint, [16, 64] in the config"),
    ("ff.layers=4", "agent layer3 is not in the checkpoint (it has layer0, layer1, layer2)"),
    ("ff.layers=2", "the checkpoint has agent layer2, which this config does not (it builds layer0, layer1)"),
    ("interface_defaults.mode=backprop",
     "interface layer0->layer1: the checkpoint has utility, which this config does not"),
    ("trainer.optimizer=sgd",
     "agent layer0: optimizer has no 'momentum' setting in the checkpoint (another optimizer?)"),
])
def test_resuming_with_another_config_names_the_first_part_that_differs(ff_run, capsys, override, problem):
    before = snapshot(ff_run)
    message = run_error(capsys, ["train", str(ff_run / "config.yaml"), override, "--resume", str(ff_run)])
    assert message == (f"{ff_run / ff.CHECKPOINT} does not match this config: {problem} "
                       f"(resume with the run's own config, {ff_run / 'config.yaml'})")
    assert snapshot(ff_run) == before


def test_eval_with_an_edited_config_names_the_part_that_differs(ff_run, capsys):
    config = ff_run / "config.yaml"
    config.write_text(config.read_text().replace("hidden: 32", "hidden: 16"))
    message = run_error(capsys, ["eval", str(ff_run)])
    assert message == (f"{ff_run / ff.CHECKPOINT} does not match this config: agent layer0: module.1.weight "
                       f"has shape [32, 64] in the checkpoint, [16, 64] in the config (was {config} edited?)")


def test_the_runs_own_config_still_resumes_and_evaluates(ff_run, capsys):
    assert main(["train", str(ff_run / "config.yaml"), "trainer.steps=6", "--resume", str(ff_run)]) == 0
    assert main(["eval", str(ff_run)]) == 0
    assert '"step": 6' in capsys.readouterr().out


def test_a_checkpoint_without_the_drivers_entries_is_one_line(ff_run, capsys):
    state = torch.load(ff_run / ff.CHECKPOINT, weights_only=True)
    del state["step"]
    torch.save(state, ff_run / ff.CHECKPOINT)
    before = snapshot(ff_run)
    message = run_error(capsys, ["train", str(ff_run / "config.yaml"), "--resume", str(ff_run)])
    assert message.startswith(f"{ff_run / ff.CHECKPOINT} does not match this config: it has no 'step' entry")
    assert snapshot(ff_run) == before


def test_hier_resumed_with_another_batch_size_names_the_carried_state(tmp_path, capsys):
    small = ["hier.a_hidden=8", "hier.b_hidden=8", "hier.message_size=4", "trainer.batch_size=4",
             "hier.eval_streams=4", "hier.eval_blocks=1", "trainer.steps=2", "trainer.eval_every=0",
             "log.embedding_samples=0", f"log.dir={tmp_path}"]
    assert main(["train", "hier", *small]) == 0
    run = tmp_path / "hier"
    capsys.readouterr()
    before = snapshot(run)
    message = run_error(capsys, ["train", str(run / "config.yaml"), "trainer.batch_size=2", "--resume",
                                 str(run)])
    assert message.startswith(f"{run / hier.CHECKPOINT} does not match this config: stream: history has "
                              "shape [4, ")
    assert snapshot(run) == before


def _cli(*argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dni_agents.cli", *argv], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def test_a_bad_rank_checkpoint_ends_every_rank_with_one_line_and_writes_nothing(tmp_path, capsys):
    run = tmp_path / "dist"
    overrides = [*TINY_FF, "distributed.timeout=30", f"log.dir={tmp_path}"]
    done = _cli("train", "ff_digits", *overrides, "--procs", "2", "--run-dir", str(run))
    assert done.returncode == 0, done.stderr
    bad = run / "checkpoint.rank1.step4.pt"
    bad.write_bytes(os.urandom(4096))  # its hard link checkpoint.rank1.pt too
    before = snapshot(run)
    failed = _cli("train", "ff_digits", *overrides, "--procs", "2", "--resume", str(run))
    lines = failed.stderr.splitlines()
    assert failed.returncode == 2 and len(lines) == 1, failed.stderr
    assert lines[0].startswith(f"dni-agents: error: {bad}: not a dni-agents checkpoint (truncated or ")
    assert snapshot(run) == before
    message = run_error(capsys, ["eval", str(run)])  # the ranks' checkpoints put together: the same file
    assert message.startswith(f"{run / 'checkpoint.rank1.pt'}: not a dni-agents checkpoint")


# ------------------------------------------------------------------------------ 2. unwritable log folder
def test_a_log_dir_under_a_file_is_one_line_before_any_training(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    message = run_error(capsys, ["train", "ff_digits", f"log.dir={blocker}/inside", "trainer.steps=2"])
    assert message == f"log.dir: cannot create the run folder {blocker}/inside/ff_digits: Not a directory"
    assert run_error(capsys, ["train", "ff_digits", f"log.dir={blocker}", "trainer.steps=2"]) == (
        f"log.dir: cannot create the run folder {blocker}/ff_digits: {blocker} is a file, not a folder"
    )
    assert run_error(capsys, ["train", "ff_digits", "trainer.steps=2", "--run-dir", f"{blocker}/run"]) == (
        f"--run-dir: cannot create the run folder {blocker}/run: {blocker} is a file, not a folder"
    )
    assert blocker.read_text() == "not a folder\n" and sorted(tmp_path.iterdir()) == [blocker]


def test_a_log_dir_under_a_file_on_several_processes_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    done = _cli("train", "ff_digits", *TINY_FF, "distributed.timeout=30", f"log.dir={blocker}/inside",
                "--procs", "2")
    expected = f"log.dir: cannot create the run folder {blocker}/inside/ff_digits: Not a directory"
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"dni-agents: error: {expected}"]


# ------------------------------------------------------------------------------ 3. observation ranges
@pytest.mark.parametrize("value", ["[0,99]", "[3,4]", "[2,4]"])
def test_private_info_obs_argmax_must_lie_inside_the_observation(tmp_path, capsys, value):
    message = run_error(capsys, ["train", "speaker_listener", f"marl.private_info.obs_argmax={value}",
                                 "marl.num_envs=2", "trainer.steps=1", f"log.dir={tmp_path}"])
    lo, hi = (int(v) for v in value.strip("[]").split(","))
    assert message == (f"marl.private_info.obs_argmax: [{lo}, {hi}] is outside speaker_0's observation of "
                       "size 3 (allowed: [start, stop) with 0 <= start < stop <= 3)")
    assert list(tmp_path.iterdir()) == []  # checked while building, before the run folder


def test_private_info_obs_argmax_inside_the_observation_trains(tmp_path, capsys):
    assert main(["train", "speaker_listener", "marl.private_info.obs_argmax=[1,3]", "marl.num_envs=2",
                 "trainer.steps=1", "marl.eval_episodes=2", "log.embedding_samples=0",
                 f"log.dir={tmp_path}"]) == 0


# ------------------------------------------------------------------------------ 4. TensorBoard after resume
def _single_file_scalars(events: Path, folder: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of one event file alone (read_scalars reads a folder)."""
    alone = folder
    alone.mkdir()
    shutil.copy(events, alone / events.name)
    return read_scalars(alone)


SMALL_MARL = ["trainer.steps=1", "marl.num_envs=2", "marl.eval_episodes=2", "log.embedding_samples=0"]


@pytest.mark.parametrize("config, override, message", [
    # a message narrower than the speaker's words: its action would silently stay 0
    ("speaker_listener", "interfaces.0.obs_slice=[8,10]",
     "interfaces[0].obs_slice: [8, 10] makes speaker_0->listener_0's message 2 wide, but speaker_0 "
     "(agents[0], policy: false) acts with its message and its action space Discrete(3) takes 3 (allowed: "
     "a 3-wide message, or policy: true; for 2 on purpose, with the action left at 0, set "
     "interfaces[0].size=2)"),
    ("speaker_listener", "~interfaces.0.obs_slice",  # appended (no slot): marl.message_size's width
     "marl.message_size: 4 makes speaker_0->listener_0's message 4 wide, but speaker_0 (agents[0], policy: "
     "false) acts with its message and its action space Discrete(3) takes 3"),
    # the environment declares the receiver's comm slot (crypto: Bob's is [4, 8))
    ("crypto", "interfaces.0.obs_slice=[4,7]",
     "interfaces[0].obs_slice: [4, 7] is 3 wide, but bob_0's comm slot (the environment's comm_slice) is "
     "[4, 8), 4 wide (allowed: [4, 8] or no obs_slice; for a 3-wide message inside the slot on purpose, set "
     "interfaces[0].size=3 too)"),
    ("crypto", "interfaces.0.obs_slice=[3,7]",
     "interfaces[0].obs_slice: [3, 7] is not inside bob_0's comm slot [4, 8) (the environment's comm_slice): "
     "the message would replace observation entries that are no communication (allowed: [4, 8] or no "
     "obs_slice)"),
    # an environment's refusal names the key it names, and the evaluation environment keeps the spaces
    ("crypto", "marl.env_kwargs.foo=1",
     "marl.env_kwargs.foo=1: dni_envs.simple_crypto_v3 refuses it (SimpleCrypto: unknown keyword argument "
     "foo=1; it takes max_cycles, "),
    ("referential", "marl.env_kwargs.message_size=0",
     "marl.env_kwargs.message_size=0: dni_envs.referential refuses it (message_size=0: it must be an int "
     ">= 1)"),
    ("digits_referential", "marl.eval_env_kwargs.message_size=0",
     "marl.eval_env_kwargs.message_size=0: dni_envs.digits_referential refuses it (message_size must be an "
     "int >= 1, got 0)"),
    ("speaker_listener", "marl.eval_env_kwargs.continuous_actions=true",
     "marl.eval_env_kwargs.continuous_actions=True: the evaluation environment has speaker_0's action space "
     "Box(0.0, 1.0, (3,), float32) (training: Discrete(3)), so the trained networks cannot play it (allowed: "
     "keys that change what is drawn, not the agents or their spaces)"),
])
def test_a_message_that_does_not_fit_or_an_env_refusal_is_one_line_and_leaves_no_run(tmp_path, capsys, config,
                                                                                      override, message):
    got = run_error(capsys, ["train", config, override, *SMALL_MARL, f"log.dir={tmp_path}"])
    assert got.startswith(message)
    assert list(tmp_path.iterdir()) == []  # the run folder the CLI opened is gone again


def test_a_narrow_message_asked_for_with_size_builds():
    for config, extra in (("crypto", ["interfaces.0.obs_slice=[4,7]", "interfaces.0.size=3"]),
                          ("speaker_listener", ["interfaces.0.obs_slice=[8,10]", "interfaces.0.size=2"])):
        cfg = load_config(config, [*SMALL_MARL, *extra])
        _, _, channels = marl.build(cfg, marl.make_env(cfg), torch.device("cpu"))
        assert channels[0].size == 3 if config == "crypto" else 2


def test_a_resumed_run_shows_each_step_once_with_the_values_of_the_run_that_continued(tmp_path):
    digits = load_dataset("digits")
    args = [f"log.dir={tmp_path}", "trainer.steps=40", "trainer.checkpoint_every=20", "trainer.eval_every=0",
            "log.every=5", "log.embedding_samples=0", "ff.hidden=32"]
    run = tmp_path / "cut"
    crashed = load_config("ff_digits", [*args, "name=cut", "trainer.batch_size=64"])
    ff.train(crashed, run, data=digits, progress=False, stop_at=30)  # logged 20, 25 after the save at 20
    first = set(run.glob("events.out.tfevents.*"))
    # the batches differ after the resume, so the crashed run's values at 20 and 25 are told apart
    resumed = load_config("ff_digits", [*args, "name=cut", "trainer.batch_size=32"])
    ff.train(resumed, run, resume=run, data=digits, progress=False)
    (new,) = set(run.glob("events.out.tfevents.*")) - first
    (old,) = first
    before, after = _single_file_scalars(old, tmp_path / "old"), _single_file_scalars(new, tmp_path / "new")
    scalars = read_scalars(run)
    assert scalars["agent/layer2/loss"][-1][0] == 39
    for tag, points in scalars.items():
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)), (tag, steps)
        assert points == [p for p in before.get(tag, []) if p[0] < 20] + after[tag], tag
    assert [s for s, _ in before["agent/layer2/loss"]] == [0, 5, 10, 15, 20, 25]
    assert before["agent/layer2/loss"][4] != after["agent/layer2/loss"][0]  # the test can tell them apart


@pytest.mark.parametrize("driver", ["rnn", "hier", "marl"])
def test_other_drivers_resumed_show_each_step_once_and_keep_the_step_they_saved_at(tmp_path, driver):
    """rnn and hier log a window/block at ``step + 1``: the event at the resume step came before the save
    and is kept; marl logs at ``update`` like ff. The crash: a run that logged past its last checkpoint
    (``saved``) up to ``crashed``, then put back to that checkpoint."""
    if driver == "rnn":
        args = ["rnn.hidden=16", "trainer.batch_size=4", "rnn.truncation=3", "log.every=10",
                "trainer.steps=60", "trainer.checkpoint_every=20"]
        module, base, saved, crashed = rnn, "copy", 40, 50
    elif driver == "hier":
        args = ["hier.a_hidden=8", "hier.b_hidden=8", "hier.message_size=4", "trainer.batch_size=4",
                "hier.eval_streams=4", "hier.eval_blocks=1", "log.every=1", "trainer.eval_every=0",
                "trainer.steps=8", "trainer.checkpoint_every=3", "log.embedding_samples=0"]
        module, base, saved, crashed = hier, "hier", 6, 7
    else:
        args = ["trainer.steps=5", "marl.num_envs=4", "marl.eval_episodes=4", "log.every=1",
                "log.embedding_samples=0", "trainer.checkpoint_every=2"]
        module, base, saved, crashed = marl, "referential", 2, 4
    whole = load_config(base, [f"log.dir={tmp_path}", *args, "name=whole"])
    module.train(whole, tmp_path / "whole", progress=False)
    cfg = load_config(base, [f"log.dir={tmp_path}", *args, "name=cut"])
    run = tmp_path / "cut"
    module.train(cfg, run, progress=False, stop_at=saved)
    shutil.copy(run / module.CHECKPOINT, tmp_path / "saved.pt")
    module.train(cfg, run, resume=run, progress=False, stop_at=crashed)
    logged = {s for points in read_scalars(run).values() for s, _ in points}
    assert max(logged) >= saved + 1  # events past the checkpoint, for the resume to drop
    shutil.copy(tmp_path / "saved.pt", run / module.CHECKPOINT)
    module.train(cfg, run, resume=run, progress=False)
    expected, scalars = read_scalars(tmp_path / "whole"), read_scalars(run)
    assert scalars.keys() == expected.keys()
    for tag, points in scalars.items():
        steps = [s for s, _ in points]
        assert steps == sorted(set(steps)), tag
        if not tag.startswith("final/"):  # rnn logs ``final`` where stop_at stops it, too
            assert steps == [s for s, _ in expected[tag]], tag
