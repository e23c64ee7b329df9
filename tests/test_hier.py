"""The hierarchical driver: A (fast) and B (slow) on a digit stream. A updates at every one of its ticks in
dni mode before B has run its backward pass; backprop couples them into one tick; the targets span
blocks; runs resume exactly; the messages reach TensorBoard with their labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard_record import read_projector, read_scalars

from dni_agents.cli import main
from dni_agents.config import ConfigError, load_config
from dni_agents.core import Interface
from dni_agents.drivers import hier

SMALL = ["hier.a_hidden=16", "hier.b_hidden=16", "hier.message_size=8", "trainer.batch_size=8",
         "hier.eval_streams=16", "hier.eval_blocks=2", "log.every=5", "trainer.eval_every=0"]


def small(tmp_path: Path, *extra: str):
    return load_config("hier", [f"log.dir={tmp_path}", *SMALL, *extra])


def built(cfg):
    data, stream, _ = hier._streams(cfg)
    torch.manual_seed(0)
    return hier.build(cfg, data.input_dim, torch.device("cpu")), stream


def record_updates(h: hier.Hier) -> list[tuple[str, int]]:
    """Log each optimizer step as (agent, targets B has replied on A -> B so far)."""
    events: list[tuple[str, int]] = []
    replied = {"n": 0}
    original_reply = h.message.reply

    def reply(step: int) -> None:
        replied["n"] += 1
        original_reply(step)

    h.message.reply = reply  # type: ignore[method-assign]
    for name, agent in h.system.agents.items():
        step = agent.optimizer.step

        def logged(*a, name=name, step=step, **k):
            events.append((name, replied["n"]))
            return step(*a, **k)

        agent.optimizer.step = logged  # type: ignore[method-assign]
    return events


def test_dni_updates_a_at_every_tick_before_b_has_run_its_backward_pass(tmp_path):
    cfg = small(tmp_path, "hier.b_truncation=3")
    h, stream = built(cfg)
    assert isinstance(h.message, Interface) and h.message.mode == "dni" and not h.joint
    with torch.no_grad():
        h.message.utility.net[-1].bias.fill_(0.5)  # a utility model that says something from the start
    events = record_updates(h)
    carry = hier.Carry(torch.zeros(8, 16), torch.zeros(8, 16))
    a_before = [p.detach().clone() for p in h.a.parameters()]
    block = stream.block(torch.Generator().manual_seed(0))
    hier.train_block(h, block, 0, carry, cfg.hier.period)
    # three A ticks, each before B replied a single target; then B's one update
    assert events == [("A", 0), ("A", 0), ("A", 0), ("B", 0)]
    assert any(not torch.equal(a, p) for a, p in zip(a_before, h.a.parameters()))
    # ĝ reached A's message head (its only gradient: A's own loss does not touch it) before B replied
    assert h.a.message.bias.grad is not None
    torch.testing.assert_close(h.a.message.bias.grad, torch.full((8,), 0.5 * 3.0 * 4))  # read at 4 steps
    # and after B's update every message's target has come back and trained the utility model
    assert not h.message._sent


def test_backprop_makes_a_wait_for_b(tmp_path):
    cfg = small(tmp_path, "interfaces.0.mode=backprop", "hier.b_truncation=3")
    h, stream = built(cfg)
    assert h.joint
    events = record_updates(h)
    carry = hier.Carry(torch.zeros(8, 16), torch.zeros(8, 16))
    hier.train_block(h, stream.block(torch.Generator().manual_seed(0)), 0, carry, cfg.hier.period)
    assert sorted(events) == [("A", 0), ("B", 0)]  # one joint update for the whole block


def test_backprop_gives_a_the_true_gradient_of_both_losses_and_none_only_its_own(tmp_path):
    grads = {}
    for mode in ("backprop", "none"):
        cfg = small(tmp_path, f"interfaces.0.mode={mode}", "hier.b_truncation=2")
        h, stream = built(cfg)
        block = stream.block(torch.Generator().manual_seed(0))
        # the same block by plain autograd, A's state cut between windows
        state, messages, loss_a = torch.zeros(8, 16), [], 0.0
        for j in range(2):
            logits, state, m = h.a(block.x[:, j], state.detach())
            loss_a = loss_a + torch.nn.functional.cross_entropy(logits, block.odd[:, j])
            messages.append(m if mode == "backprop" else m.detach())
        out, _, _ = h.b(torch.stack(messages, 1), torch.zeros(8, 16))
        loss_b = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), block.count.reshape(-1))
        params = list(h.a.parameters())
        want = torch.autograd.grad(loss_a + loss_b, params, allow_unused=True)
        want = [w if w is not None else torch.zeros_like(p) for w, p in zip(want, params)]
        captured: list[list[torch.Tensor]] = []

        def capture(*a, params=params, captured=captured, **k) -> None:
            captured.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params])

        h.system.agents["A"].optimizer.step = capture  # type: ignore[method-assign]
        hier.train_block(h, block, 0, hier.Carry(torch.zeros(8, 16), torch.zeros(8, 16)), cfg.hier.period)
        got = [sum(g) for g in zip(*captured)]  # summed over A's updates (one in backprop, two in none)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
        grads[mode] = got
    assert not torch.allclose(grads["backprop"][-2], grads["none"][-2])  # the message head learns from B


@pytest.mark.parametrize("context", ["label", "window"])
def test_cdni_utility_model_sees_b_label_or_the_window_count(tmp_path, context):
    cfg = small(tmp_path, "interfaces.0.mode=cdni", f"hier.cdni_context={context}", "hier.b_truncation=2")
    h, stream = built(cfg)
    seen: list[torch.Tensor] = []
    linear_input = h.message.utility.linear_input  # what a linear model's ĝ (and forward) reads

    def spy(message, ctx=None):
        seen.append(ctx.clone())
        return linear_input(message, ctx)

    h.message.utility.linear_input = spy  # type: ignore[method-assign]
    block = stream.block(torch.Generator().manual_seed(1))
    hier.train_block(h, block, 0, hier.Carry(torch.zeros(8, 16), torch.zeros(8, 16)), cfg.hier.period)
    labels = block.count if context == "label" else block.window_count
    classes = cfg.hier.period * cfg.hier.memory + 1
    for j in range(2):  # one send per window (the regression reuses the send-time prediction)
        assert torch.equal(seen[j], torch.nn.functional.one_hot(labels[:, j], classes).float())
    assert not torch.equal(block.count, block.window_count)  # the two contexts differ on this block


def test_b_target_counts_the_digit_over_the_last_t_times_k_digits_across_blocks(tmp_path):
    cfg = small(tmp_path, "hier.period=3", "hier.memory=3", "hier.b_truncation=2")
    _, stream = built(cfg)
    gen = torch.Generator().manual_seed(5)
    generated = torch.Generator().manual_seed(5)
    labels = []
    for _ in range(4):  # replay the draws to know every digit of the stream
        idx = torch.randint(0, len(stream.y), (8, 6), generator=generated)
        labels.append(stream.y[idx])
    digits = torch.cat(labels, 1)  # (8, 24)
    counts = [stream.block(gen).count for _ in range(4)]
    count = torch.cat(counts, 1)  # (8, 8): one per window of 3 digits
    for w in range(8):
        lo = max(0, (w + 1) * 3 - 9)
        want = (digits[:, lo:(w + 1) * 3] == 3).sum(1)
        assert torch.equal(count[:, w], want), w


def test_temporal_channels_accept_only_none_or_dni(tmp_path, capsys):
    with pytest.raises(ConfigError, match="A->A.*allowed: none, dni"):
        built(small(tmp_path, "interfaces.1.mode=backprop"))
    assert main(["train", "hier", f"log.dir={tmp_path}", "interfaces.2.mode=cdni"]) == 2
    assert "B->B" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="hier.period"):
        load_config("hier", ["hier.period=1"])
    assert main(["train", "hier", f"log.dir={tmp_path}", "hier.dataset=mnist"]) == 2
    assert "hier.data_root" in capsys.readouterr().err
    mnist = ["train", "hier", f"log.dir={tmp_path}", "hier.dataset=mnist", f"hier.data_root={tmp_path}"]
    assert main(mnist) == 2
    assert str(tmp_path) in capsys.readouterr().err  # the missing files, with their path


def test_resume_continues_exactly_with_temporal_dni(tmp_path):
    args = ["trainer.steps=12", "trainer.checkpoint_every=3", "interfaces.1.mode=dni",
            "interfaces.2.mode=dni"]
    hier.train(small(tmp_path, "name=a", *args), Path(tmp_path) / "a", progress=False)
    hier.train(small(tmp_path, "name=b", *args), Path(tmp_path) / "b", progress=False, stop_at=7)
    hier.train(small(tmp_path, "name=b", *args), Path(tmp_path) / "b", resume=Path(tmp_path) / "b",
               progress=False)
    a = torch.load(Path(tmp_path) / "a" / hier.CHECKPOINT, weights_only=True)
    b = torch.load(Path(tmp_path) / "b" / hier.CHECKPOINT, weights_only=True)
    for agent in ("A", "B"):
        for k, v in a["system"]["agents"][agent]["module"].items():
            assert torch.equal(v, b["system"]["agents"][agent]["module"][k]), (agent, k)
    for name in ("A->B", "A->A", "B->B"):
        for k, v in a["system"]["interfaces"][name].get("utility", {}).items():
            assert torch.equal(v, b["system"]["interfaces"][name]["utility"][k]), (name, k)


def test_training_logs_messages_with_labels_and_b_learns(tmp_path):
    cfg = small(tmp_path, "name=run", "trainer.steps=200", "log.histogram_every=100",
                "log.embedding_samples=40")
    result = hier.train(cfg, Path(tmp_path) / "run", progress=False)
    scalars = read_scalars(Path(result["run_dir"]))
    loss = [v for _, v in scalars["agent/B/loss"]]
    assert sum(loss[-5:]) / 5 < sum(loss[:5]) / 5  # B's loss goes down
    assert "interface/A->B/grad_cosine" in scalars and "test/b_accuracy" in scalars
    (projector,) = read_projector(Path(result["run_dir"]))
    assert projector["metadata"][0] == ["digit_3_in_window", "digit_3_count", "odd_in_window"]
    assert len(projector["metadata"]) == 41 and projector["shape"] == (40, 8)
    assert main(["eval", result["run_dir"]]) == 0


# ------------------------------------------------------------------------------------------ two processes
needs_gloo = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)
TWO = [*SMALL, "log.embedding_samples=0", "distributed.timeout=20"]


def without_counters(system: dict) -> dict:
    """``messages_sent`` is bookkeeping: an in-process backprop edge is live and never counted as sent."""
    return {**system, "interfaces": {n: {k: v for k, v in i.items() if k != "messages_sent"}
                                     for n, i in system["interfaces"].items()}}


@needs_gloo
@pytest.mark.parametrize("mode", ["dni", "backprop"])
def test_two_processes_in_lockstep_equal_the_in_process_run(tmp_path, mode):
    from dni_agents.runtime.ranks import merge_rank_checkpoints

    extra = [*TWO, f"log.dir={tmp_path}", "trainer.steps=12", f"interfaces.0.mode={mode}"]
    if mode == "dni":
        extra += ["interfaces.1.mode=dni", "interfaces.2.mode=dni"]  # temporal DNI stays on each rank
    run = tmp_path / "dist"
    assert main(["train", "hier", *extra, "--procs", "2", "--run-dir", str(run)]) == 0
    reference = hier.train(load_config("hier", extra), tmp_path / "single", progress=False)
    expected = torch.load(Path(reference["run_dir"]) / hier.CHECKPOINT, weights_only=True)["system"]
    got = merge_rank_checkpoints(run)["system"]
    torch.testing.assert_close(without_counters(got), without_counters(expected), rtol=1e-6, atol=1e-7)
    # the run folder evaluates in one process, from both ranks' checkpoints
    assert hier.evaluate(run)["b_accuracy"] == pytest.approx(reference["b_accuracy"])


@needs_gloo
def test_two_processes_resume_from_the_newest_common_checkpoint(tmp_path):
    from dni_agents.runtime.ranks import checkpoint_steps, merge_rank_checkpoints

    extra = [*TWO, f"log.dir={tmp_path}", "trainer.steps=9", "trainer.checkpoint_every=3",
             "interfaces.0.mode=cdni", "interfaces.1.mode=dni", "interfaces.2.mode=dni"]
    run = tmp_path / "dist"
    assert main(["train", "hier", *extra, "--procs", "2", "--run-dir", str(run)]) == 0
    assert checkpoint_steps(run, 0) == checkpoint_steps(run, 1) == [3, 6, 9]
    (run / "checkpoint.rank0.step9.pt").unlink()  # as if rank 0 died after 6, rank 1 after 9
    assert main(["train", "hier", *extra, "--procs", "2", "--resume", str(run)]) == 0
    reference = hier.train(load_config("hier", extra), tmp_path / "single", progress=False)
    expected = torch.load(Path(reference["run_dir"]) / hier.CHECKPOINT, weights_only=True)["system"]
    torch.testing.assert_close(merge_rank_checkpoints(run)["system"], expected, rtol=1e-6, atol=1e-7)


@needs_gloo
def test_with_a_slow_b_dni_keeps_a_going_and_backprop_makes_it_wait(tmp_path):
    from dni_agents.drivers.hier.dist import measure_slow_b

    sizes = ["hier.a_hidden=16", "hier.b_hidden=16", "hier.message_size=8", "trainer.batch_size=8"]
    rates = {mode: measure_slow_b(mode, b_delay_s=0.1, blocks=8, max_staleness=1, overrides=sizes)
             for mode in ("backprop", "dni")}
    # B sleeps >= 200 ms a block (its two ticks), far more than the tiny models compute even on a busy
    # machine (each rank has one thread: the launcher's default): backprop A waits for it every block;
    # dni A makes its U = 2 updates a block meanwhile
    assert rates["backprop"]["blocks_per_s"] < 1 / 0.2
    assert rates["dni"]["updates_per_s"] >= 1.5 * rates["backprop"]["updates_per_s"]


def test_two_process_placement_is_one_agent_per_rank(tmp_path):
    from dni_agents.drivers.hier.dist import placement_for

    assert placement_for(small(tmp_path), 2) == {"A": 0, "B": 1}
    assert placement_for(small(tmp_path, "distributed.placement={A: 1, B: 0}"), 2) == {"A": 1, "B": 0}
    with pytest.raises(ConfigError, match="allowed: 2"):
        placement_for(small(tmp_path), 3)
    with pytest.raises(ConfigError, match="one each"):
        placement_for(small(tmp_path, "distributed.placement={A: 0, B: 0}"), 2)


def test_quick_bench_runs_every_method_and_writes_records(tmp_path):
    out = Path(tmp_path) / "hier.json"
    tiny = [*SMALL, "trainer.steps=4", "trainer.eval_every=2", f"log.dir={tmp_path}"]
    result = hier.bench(quick=True, out=out, seeds=1, overrides=tiny)
    report = json.loads(out.read_text())
    labels = {(r["method"], r["temporal_dni"]) for r in report["results"]}
    assert labels == {("none", False), ("backprop", False), ("dni", False), ("cdni", False),
                      ("cdni_window", False), ("dni", True)}
    for r in report["results"]:
        assert {"method", "T", "K", "a_accuracy", "b_accuracy", "steps", "wall_s"} <= set(r)
        assert 0.0 <= r["b_accuracy"] <= 1.0
    assert len(result["summary"]) == 6 and out.with_suffix(".png").is_file()
