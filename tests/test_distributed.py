"""Layers on several processes over torch.distributed (gloo on loopback): lockstep equals the in-process
run, a staleness window still learns, and a silent or dead peer ends in an error naming its rank, never a
hang. Every test uses at most two small worker processes and a few seconds of timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from exact import assert_equal_states
from ranks import env_for, needs_gloo, rank_metrics

from dni_agents.cli import main
from dni_agents.config import ConfigError, load_config
from dni_agents.core import Agent, Interface, Message, SyntheticInputModel, System
from dni_agents.core.distributed import free_port
from dni_agents.drivers import ff
from dni_agents.launch import cli_command, launch

TINY = ["ff.hidden=32", "trainer.batch_size=16", "trainer.eval_every=0", "log.every=5",
        "log.embedding_samples=0", "distributed.timeout=20"]

pytestmark = needs_gloo


@pytest.mark.parametrize("mode", ["dni", "backprop", "none"])
def test_lockstep_on_two_processes_equals_the_in_process_run(tmp_path, mode):
    overrides = [*TINY, "trainer.steps=20", f"interface_defaults.mode={mode}", f"log.dir={tmp_path}"]
    status = main(["train", "ff_digits", *overrides, "--procs", "2", "--run-dir", str(tmp_path / "dist")])
    assert status == 0
    ranks = rank_metrics(tmp_path / "dist")
    assert ranks[0]["agents"] == ["layer0", "layer1"] and ranks[1]["agents"] == ["layer2"]
    assert ranks[0]["max_in_flight"] == 1  # lockstep (backprop: the sender waits for its target anyway)

    cfg = load_config("ff_digits", overrides)
    reference = ff.train(cfg, tmp_path / "single", progress=False)
    expected = torch.load(Path(reference["run_dir"]) / ff.CHECKPOINT, weights_only=True)["system"]
    got: dict = {"agents": {}, "interfaces": {}}
    for rank in (0, 1):
        state = torch.load(tmp_path / "dist" / f"checkpoint.rank{rank}.pt", weights_only=True)["system"]
        got["agents"].update(state["agents"])
        # an interface is in both ranks' checkpoints; its utility model learns on the sender's rank
        for name, iface in state["interfaces"].items():
            if state["agents"].get(name.split("->")[0]) is not None or name not in got["interfaces"]:
                got["interfaces"][name] = iface
    assert set(got["agents"]) == {"layer0", "layer1", "layer2"}
    torch.testing.assert_close(got["agents"], expected["agents"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got["interfaces"], expected["interfaces"], rtol=1e-6, atol=1e-7)
    assert ranks[1]["test_accuracy"] == pytest.approx(reference["test_accuracy"])
    assert ranks[1]["test_loss"] == pytest.approx(reference["test_loss"], rel=1e-5)


def test_a_staleness_window_still_learns(tmp_path):
    # targets come back up to 3 steps late and in bursts (one utility step per burst): a faster utility
    # model keeps up (in process and in lockstep ~0.85 either way; ~0.65 at 3e-4 with this window)
    overrides = [*TINY, "trainer.steps=200", "trainer.batch_size=32", "ff.hidden=64",
                 "interface_defaults.mode=cdni", "interface_defaults.utility.lr=0.001",
                 "distributed.max_staleness=3", f"log.dir={tmp_path}"]
    status = main(["train", "ff_digits", *overrides, "--procs", "2", "--run-dir", str(tmp_path / "stale")])
    assert status == 0
    ranks = rank_metrics(tmp_path / "stale")
    assert 1 <= ranks[0]["max_in_flight"] <= 3 + 1  # the window holds
    assert ranks[1]["test_accuracy"] > 0.5  # chance is 0.1; ~0.85 seen
    assert ranks[1]["test_loss"] < 1.5  # chance is 2.3


def test_forward_unlocked_layers_on_two_processes(tmp_path):
    """cDNI + synthetic inputs: the top stage need not wait for its input, only stay within the window."""
    overrides = [*TINY, "trainer.steps=30", "interface_defaults.mode=cdni", "distributed.max_staleness=2",
                 "interface_defaults.synthetic_input={kind: mlp, hidden: 32}", f"log.dir={tmp_path}"]
    assert main(["train", "ff_digits", *overrides, "--procs", "2", "--run-dir", str(tmp_path / "run")]) == 0
    ranks = rank_metrics(tmp_path / "run")
    assert ranks[0]["max_in_flight"] <= 2 + 1 and 0 <= ranks[1]["test_accuracy"] <= 1


ROUND_TRIP = textwrap.dedent("""
    import torch
    import torch.distributed as dist
    from dni_agents.core import Message
    from dni_agents.core.distributed import Route, TorchDistributed, init_process_group

    rank, world = init_process_group(backend="gloo", timeout=10)
    routes = [Route("a->b", "a", "b"), Route("a->a2", "a", "a2"), Route("b->a", "b", "a", replies=False)]
    transport = TorchDistributed({"a": 0, "a2": 0, "b": 1}, routes, max_staleness=5, timeout=10)
    payloads = {
        0: (torch.randn(3, 2, 1, 4, generator=torch.Generator().manual_seed(0)), torch.eye(3)),
        1: (torch.arange(6).reshape(2, 3), None),
        2: (torch.tensor(1.5, dtype=torch.bfloat16), torch.tensor([True, False])),
    }
    if rank == 0:
        for step in (2, 0, 1):  # out of order: matched by (interface, step), not arrival
            transport.put_message(Message("a->b", step, *payloads[step]))
        transport.put_message(Message("a->a2", 0, torch.ones(1)))  # both ends here: in process
        assert transport.take_message("a->a2", 0).tensor.tolist() == [1.0]
        for step in (0, 1, 2):
            transport.wait_target("a->b", step)
            assert transport.take_target("a->b", step).tolist() == [float(step)] * 2
        transport.wait_message("b->a", 7)
        assert transport.take_message("b->a", 7).tensor.dtype == torch.int32
        assert transport.take_message("b->a", 7) is None  # taken once
    else:
        for step in (0, 1, 2):
            transport.wait_message("a->b", step)
            got = transport.take_message("a->b", step)
            tensor, context = payloads[step]
            assert got.step == step and torch.equal(got.tensor, tensor) and got.tensor.dtype == tensor.dtype
            assert (got.context is None) == (context is None)
            assert context is None or torch.equal(got.context, context)
            transport.put_target("a->b", step, torch.full((2,), float(step)))
        transport.put_message(Message("b->a", 7, torch.zeros(2, dtype=torch.int32)))
        transport.throttle(7 + 5 + 1)  # mode none: rank 0 acknowledges what it took
    transport.close()
    dist.destroy_process_group()
    print("OK", flush=True)
""")


def run_pair(script: str, tmp_path: Path, *args: str) -> list[tuple[str, str]]:
    port = free_port()
    procs = [
        subprocess.Popen([sys.executable, "-c", script, *args], env=env_for(r, 2, port), cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for r in (0, 1)
    ]
    try:
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    return outs


def test_headers_carry_any_shape_dtype_and_context_matched_by_step(tmp_path):
    outs = run_pair(ROUND_TRIP, tmp_path)
    assert all("OK" in out for out, _ in outs)


WORKER = textwrap.dedent("""
    import os, sys, time
    import torch.distributed as dist
    from dni_agents.core.distributed import PeerError, Route, TorchDistributed, init_process_group

    rank, world = init_process_group(backend="gloo", timeout=10)
    transport = TorchDistributed({"a": 0, "b": 1}, [Route("a->b", "a", "b")], timeout=float(sys.argv[1]))
    if rank == 0:  # alive but silent until the peer has timed out (however slow the machine is)
        deadline = time.monotonic() + 60
        while not os.path.exists("timed-out") and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        t0 = time.monotonic()
        try:
            transport.wait_message("a->b", 0)
        except PeerError as exc:
            print(f"ERROR after {time.monotonic() - t0:.2f}s peer={exc.peer}: {exc}", flush=True)
        open("timed-out", "w").close()
    transport.close(timeout=10)  # rank 0 never sent anything; both say goodbye
    dist.destroy_process_group()
    print("CLEAN", flush=True)
""")


def test_a_silent_peer_times_out_with_an_error_naming_its_rank(tmp_path):
    outs = run_pair(WORKER, tmp_path, "2")
    waited = outs[1][0]
    assert "peer=0" in waited and "timed out after 2 s" in waited
    assert float(waited.split("after ")[1].split("s ")[0]) >= 2.0  # never early (late only if the machine is)
    assert "the message of a->b at step 0 from rank 0" in waited
    assert all("CLEAN" in out for out, _ in outs)


@pytest.mark.parametrize("victim", [0, 1])
def test_a_killed_rank_ends_the_other_with_an_error_naming_it(tmp_path, victim):
    port = free_port()
    argv = ["train", "ff_digits", *TINY, "trainer.steps=1000000", "distributed.timeout=5",
            "trainer.checkpoint_every=5", f"log.dir={tmp_path}", "--run-dir", str(tmp_path / "run")]
    procs = [
        subprocess.Popen(cli_command(argv), env=env_for(r, 2, port), cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for r in (0, 1)
    ]
    try:
        deadline = time.monotonic() + 120
        started = [tmp_path / "run" / f"checkpoint.rank{r}.step5.pt" for r in (0, 1)]
        while not all(f.exists() for f in started) and time.monotonic() < deadline:
            time.sleep(0.05)  # both ranks are training (each wrote its first checkpoint)
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        os.kill(procs[victim].pid, signal.SIGKILL)
        t0 = time.monotonic()
        survivor = procs[1 - victim]
        _, err = survivor.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert survivor.returncode == 1, err
    assert f"rank {victim} is gone" in err and "Traceback" not in err
    # a dead peer is seen when its socket closes (at once), at worst after the transport's 5 s timeout;
    # the bound catches a hang, with room for a machine busy with other work
    assert took < 5 + 15
    assert all(p.poll() is not None for p in procs)  # nobody left behind


def test_system_accepts_interfaces_to_agents_elsewhere():
    a = Agent("a", torch.nn.Linear(2, 2))
    iface = Interface("a->b", "a", "b", mode="none")
    system = System([a], [iface], remote=["b"])
    assert system.outbound("a") == [iface] and system.coupled() == [["a"]]
    with pytest.raises(ValueError, match="unknown receiver 'c'"):
        System([a], [Interface("a->c", "a", "c", mode="none")], remote=["b"])


def test_placement_defaults_to_contiguous_stages_and_is_checked():
    assert ff.stage_placement(["l0", "l1", "l2"], 2) == {"l0": 0, "l1": 0, "l2": 1}
    assert ff.stage_placement(["l0", "l1", "l2", "l3"], 3) == {"l0": 0, "l1": 0, "l2": 1, "l3": 2}
    cfg = load_config("ff_digits", ["distributed.placement={layer0: 1, layer1: 0, layer2: 1}"])
    assert ff.placement_for(cfg, 2) == {"layer0": 1, "layer1": 0, "layer2": 1}
    with pytest.raises(ConfigError, match="ranks \\[2\\] hold no layer"):
        ff.placement_for(cfg, 3)
    with pytest.raises(ConfigError, match="no rank for layer2"):
        ff.placement_for(load_config("ff_digits", ["distributed.placement={layer0: 0, layer1: 1}"]), 2)
    with pytest.raises(ConfigError, match="distributed.placement.layer9: unknown agent"):
        load_config("ff_digits", ["distributed.placement={layer9: 0}"])


def test_the_launcher_gives_survivors_a_grace_period_then_leaves_no_orphans(tmp_path):
    """Rank 1 fails at once; rank 0 would run for a minute: it is killed after the grace period."""
    script = "import os, sys, time\nif os.environ['RANK'] == '1': sys.exit(3)\ntime.sleep(60)"
    t0 = time.monotonic()
    assert launch([sys.executable, "-c", script], 2, grace=0.5) == 3
    assert time.monotonic() - t0 < 30
    ok = "import os; assert os.environ['MASTER_ADDR'] == '127.0.0.1' and os.environ['WORLD_SIZE'] == '2'"
    assert launch([sys.executable, "-c", ok], 2) == 0


def test_procs_needs_a_driver_that_can_spread_its_agents(capsys):
    assert main(["train", "copy", "--procs", "2"]) == 2
    assert "cannot run on several processes yet" in capsys.readouterr().err
    assert main(["train", "ff_digits", "--procs", "0"]) == 2


SILENT_STAGE = textwrap.dedent("""
    import time
    import torch.distributed as dist
    from dni_agents.core.distributed import init_process_group

    init_process_group(backend="gloo", timeout=10)
    dist.broadcast_object_list([None], src=0)  # joins the run, then never answers
    time.sleep(120)  # (killed by the test once the trainer has given up)
""")


def test_a_training_rank_whose_peer_goes_silent_exits_with_one_line_naming_it(tmp_path):
    port = free_port()
    argv = ["train", "ff_digits", *TINY, "trainer.steps=50", "distributed.timeout=2", f"log.dir={tmp_path}"]
    trainer = subprocess.Popen(cli_command(argv), env=env_for(0, 2, port), cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    silent = subprocess.Popen([sys.executable, "-c", SILENT_STAGE], env=env_for(1, 2, port), cwd=tmp_path)
    try:
        _, err = trainer.communicate(timeout=60)
    finally:
        for p in (trainer, silent):
            p.kill()
            p.wait()
    assert trainer.returncode == 1, err
    assert "rank 0: timed out after 2 s waiting for the targets of layer1->layer2 up to step 0" in err
    assert "from rank 1" in err and "Traceback" not in err


def test_synthetic_inputs_whose_messages_come_late_still_learn():
    """Across processes the real message can come after Î has already been updated for an earlier one; the
    old graph then saw weights changed in place, so the prediction is recomputed (in process, never)."""
    torch.manual_seed(0)
    model = SyntheticInputModel((4,), (3,), kind="mlp", hidden=8)
    iface = Interface("a->b", "a", "b", mode="none", synthetic_input=model,
                      synthetic_input_optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    sources = {step: torch.randn(5, 4) for step in (0, 1)}
    for step in (0, 1):  # the receiver runs ahead of both messages
        iface.receive(step, source=sources[step])
    for step in (0, 1):
        iface.transport.put_message(Message("a->b", step, torch.zeros(5, 3)))
    before = float(model(sources[1]).detach().pow(2).mean())
    iface.collect()  # two updates in a row: the second used to fail (in-place modified weights)
    assert not iface._predicted_inputs
    assert float(model(sources[1]).detach().pow(2).mean()) < before


def merged_state(run: Path) -> dict:
    """The ranks' final checkpoints as one system (each agent and each interface half from its rank)."""
    from dni_agents.runtime.ranks import merge_rank_checkpoints

    return merge_rank_checkpoints(run)["system"]


def test_a_killed_run_resumes_from_the_ranks_common_checkpoint_and_ends_as_if_never_stopped(
    tmp_path, monkeypatch
):
    """Like with like: the killed-and-resumed run and the uninterrupted reference both run on two
    processes of one thread each, so they do the same arithmetic in the same order and must end bit for
    bit equal (against a one-process run they differ in the last bits: float summation order, which 400
    Adam steps amplify to ~1e-5)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for the processes `--procs 2` starts below, as env_for
    overrides = [*TINY, "trainer.steps=400", "trainer.checkpoint_every=10", "distributed.timeout=5",
                 "interface_defaults.mode=dni", f"log.dir={tmp_path}"]
    run = tmp_path / "run"
    port = free_port()
    procs = [
        subprocess.Popen(cli_command(["train", "ff_digits", *overrides, "--run-dir", str(run)]),
                         env=env_for(r, 2, port), cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for r in (0, 1)
    ]
    try:
        deadline = time.monotonic() + 60
        while not (run / "checkpoint.rank1.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(p.poll() is None for p in procs), "finished before it could be killed"
        os.kill(procs[1].pid, signal.SIGKILL)
        _, err = procs[0].communicate(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert procs[0].returncode == 1 and "rank 1 is gone" in err, err
    assert not (run / "metrics.rank0.json").exists()  # it really stopped mid-run

    assert main(["train", "ff_digits", *overrides, "--procs", "2", "--resume", str(run)]) == 0
    ranks = rank_metrics(run)
    assert 0 < ranks[0]["start"] < 400 and ranks[0]["start"] % 10 == 0

    reference = tmp_path / "reference"
    assert main(["train", "ff_digits", *overrides, "--procs", "2", "--run-dir", str(reference)]) == 0
    assert_equal_states(merged_state(run), merged_state(reference))
    assert ranks[1]["test_accuracy"] == rank_metrics(reference)[1]["test_accuracy"]

    # the multi-process folder evaluates in one process, from the ranks' checkpoints put together
    assert ff.evaluate(run)["test_accuracy"] == pytest.approx(ranks[1]["test_accuracy"])
    assert main(["eval", str(run)]) == 0


def test_resume_needs_a_step_every_rank_has(tmp_path):
    from dni_agents.runtime.ranks import common_checkpoint_step

    assert common_checkpoint_step({0: [10, 20, 30], 1: [10, 20]}) == 20
    with pytest.raises(ConfigError, match="no checkpoint step that every rank has.*rank 1: none"):
        common_checkpoint_step({0: [10], 1: []})


def test_the_launcher_gives_each_child_its_share_of_the_cores_unless_told(monkeypatch):
    share = max(1, (os.cpu_count() or 1) // 2)
    check = "import os, sys; sys.exit(os.environ['OMP_NUM_THREADS'] != sys.argv[1])"
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert launch([sys.executable, "-c", check, str(share)], 2) == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's setting wins
    assert launch([sys.executable, "-c", check, "3"], 2) == 0
