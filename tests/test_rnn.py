"""The recurrent driver: DNI at the truncation boundary is the core interface; with an oracle utility model
two windows give exactly the gradients of full BPTT; plain truncation cuts them; runs resume exactly."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest
import torch

from dni_agents.cli import main
from dni_agents.config import ConfigError, load_config
from dni_agents.core import Interface
from dni_agents.drivers import rnn

SMALL = ["rnn.hidden=16", "trainer.batch_size=4", "rnn.truncation=3", "log.every=20"]


def small(tmp_path: Path, *extra: str):
    return load_config("copy", [f"log.dir={tmp_path}", *SMALL, *extra])


class Oracle(torch.nn.Module):
    """A utility model that returns a given gradient (per-example units, as the interface expects)."""

    def __init__(self, gradient: torch.Tensor) -> None:
        super().__init__()
        self.gradient = gradient

    def forward(self, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.gradient


def captured_gradients(core: rnn.Core) -> list[list[torch.Tensor]]:
    """Record the gradient at every optimizer step and do not move the parameters."""
    steps: list[list[torch.Tensor]] = []
    optimizer = core_optimizer(core)
    optimizer.step = lambda *a, **k: steps.append(  # type: ignore[method-assign]
        [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in core.parameters()])
    return steps


def core_optimizer(core: rnn.Core) -> torch.optim.Optimizer:
    return core._optimizer  # set in build_small


def build_small(cfg):
    task = rnn._task(cfg)
    torch.manual_seed(0)
    system, core, iface = rnn.build(cfg, task.in_dim, task.out_dim, None, torch.device("cpu"))
    core._optimizer = system.agents[rnn.AGENT].optimizer
    return task, system, core, iface


def run_windows(system, core, iface, task, seq, T: int, aux_weight: float = 0.0) -> None:
    """The driver's ticks over one batch of sequences: windows of ``T``, the first from a zero state, the
    last sending nothing (the sequence ends there)."""
    B, L = seq.inputs.shape[:2]
    norm = float(seq.mask.sum())
    state = core.initial_state(B, torch.device("cpu"))
    windows = math.ceil(L / T)
    for w in range(windows):
        lo, hi = w * T, min(L, (w + 1) * T)
        _, state, _ = rnn.window(system, core, iface, w, seq.inputs[:, lo:hi],
                                 lambda out, lo=lo, hi=hi: task.loss_sum(out, seq, lo, hi) / norm, state,
                                 first=w == 0, last=w == windows - 1, aux_weight=aux_weight)


def losses_of(task, core, seq, T, cut: bool):
    """Window losses by plain autograd; ``cut`` detaches the state at the boundary (plain truncation)."""
    B, L = seq.inputs.shape[:2]
    norm = float(seq.mask.sum())
    state = core.initial_state(B, torch.device("cpu"))
    total = 0.0
    for lo in range(0, L, T):
        hi = min(L, lo + T)
        out, _, state = core(seq.inputs[:, lo:hi], state.detach() if cut else state)
        total = total + task.loss_sum(out, seq, lo, hi) / norm
    return total


def test_oracle_utility_makes_two_dni_windows_equal_full_bptt(tmp_path):
    cfg = small(tmp_path, "interface_defaults.scale=1.0")
    task, system, core, iface = build_small(cfg)
    assert isinstance(iface, Interface) and iface.mode == "dni" and iface.sender == iface.receiver == "rnn"
    seq = task.sample(4, 2, 1, torch.Generator().manual_seed(1))  # length 5: windows [0:3] and [3:5]
    # the oracle: the true gradient of window 2's loss with respect to the state window 1 ends with
    _, _, h1 = core(seq.inputs[:, :3], core.initial_state(4, torch.device("cpu")))
    h1 = h1.detach().requires_grad_(True)
    out2, _, _ = core(seq.inputs[:, 3:5], h1)
    (g1,) = torch.autograd.grad(task.loss_sum(out2, seq, 3, 5) / float(seq.mask.sum()), h1)
    iface.utility = Oracle(g1 * 4)  # per-example units: ×B
    expected = torch.autograd.grad(losses_of(task, core, seq, 3, cut=False), list(core.parameters()))
    steps = captured_gradients(core)
    run_windows(system, core, iface, task, seq, 3)
    assert len(steps) == 2
    for got1, got2, want in zip(*steps, expected):
        torch.testing.assert_close(got1 + got2, want)


def test_bptt_cuts_the_gradient_at_the_boundary(tmp_path):
    cfg = small(tmp_path, "interface_defaults.mode=none")
    task, system, core, iface = build_small(cfg)
    seq = task.sample(4, 2, 1, torch.Generator().manual_seed(1))
    truncated = torch.autograd.grad(losses_of(task, core, seq, 3, cut=True), list(core.parameters()))
    full = torch.autograd.grad(losses_of(task, core, seq, 3, cut=False), list(core.parameters()))
    steps = captured_gradients(core)
    run_windows(system, core, iface, task, seq, 3)
    for got1, got2, want in zip(*steps, truncated):
        torch.testing.assert_close(got1 + got2, want)
    assert any(not torch.allclose(a, b) for a, b in zip(truncated, full))


def test_dni_target_is_the_next_windows_gradient_including_its_synthetic_gradient(tmp_path):
    """Bootstrapping: window k's boundary target contains window k+1's ĝ (three windows, linear U)."""
    cfg = small(tmp_path)
    task, system, core, iface = build_small(cfg)
    with torch.no_grad():
        iface.utility.net[-1].bias.fill_(0.5)  # a utility model that says something
    iface.learn = False  # and stays the same, so ĝ can be recomputed below
    seq = task.sample(4, 4, 1, torch.Generator().manual_seed(2))  # length 9: three windows
    targets = []
    original = iface._learn_utility

    def spy(ready, *args):
        targets.extend(r.target.clone() for _, r in ready)
        return original(ready, *args)

    iface._learn_utility = spy  # type: ignore[method-assign]
    steps = captured_gradients(core)
    run_windows(system, core, iface, task, seq, 3)
    assert len(steps) == 3 and len(targets) == 2
    # window 2 again, from the state window 1 sent, with its ĝ at the end: its input gradient is the target
    state = core.initial_state(4, torch.device("cpu"))
    _, _, h1 = core(seq.inputs[:, :3], state)
    h1 = h1.detach().requires_grad_(True)
    out2, _, h2 = core(seq.inputs[:, 3:6], h1)
    with torch.no_grad():
        g2 = iface.utility(h2.detach(), None)
    loss2 = task.loss_sum(out2, seq, 3, 6) / float(seq.mask.sum())
    torch.autograd.backward([loss2, h2], [None, g2 * cfg.interface_defaults.scale / 4])
    assert torch.count_nonzero(g2) > 0
    torch.testing.assert_close(targets[0], h1.grad)


def test_copy_is_learned_and_the_curriculum_grows(tmp_path):
    """With windows longer than the sequences the task is plain BPTT-learnable: the length must grow."""
    cfg = load_config("copy", [f"log.dir={tmp_path}", "rnn.hidden=64", "trainer.steps=1500",
                               "trainer.batch_size=32", "log.every=100", "rnn.truncation=20",
                               "interface_defaults.mode=none"])
    result = rnn.train(cfg, Path(tmp_path) / "run", progress=False)
    assert result["solved_length"] >= 3, result


def test_repeat_copy_sequences_repeat_the_data_and_end_with_a_marker():
    task = rnn.CopyTask(repeat=True, bits=4, max_repeats=10)
    seq = task.sample(2, 3, 2, torch.Generator().manual_seed(0))  # n=3, r=2: 3 in, delimiter, 6 out, end
    assert seq.inputs.shape == (2, 3 + 1 + 6 + 1, 6) and seq.targets.shape == (2, 11, 5)
    data = seq.inputs[:, :3, :4]
    torch.testing.assert_close(seq.targets[:, 4:10, :4], data.repeat(1, 2, 1))
    assert torch.all(seq.inputs[:, 3, 5] == 0.2) and torch.all(seq.targets[:, 10, 4] == 1)
    assert seq.mask[:, :4].sum() == 0 and torch.all(seq.mask[:, 4:] == 1)


def test_the_stream_cuts_sequences_into_windows_wherever_they_fall():
    task = rnn.CopyTask(repeat=False, bits=4)
    stream = rnn.CopyStream(task, batch=2)
    gen = torch.Generator().manual_seed(0)
    windows = [stream.window(3, 2, 1, gen) for _ in range(5)]  # sequences of 5 steps, windows of 3
    inputs = torch.cat([w.inputs for w in windows], 1)
    delimiters = inputs[0, :, 4].nonzero().flatten().tolist()
    assert delimiters == [2, 7, 12]  # every 5 steps, across window boundaries


def test_resume_continues_exactly(tmp_path):
    args = ["trainer.steps=120", "trainer.checkpoint_every=30"]
    straight = rnn.train(small(tmp_path, "name=a", *args), Path(tmp_path) / "a", progress=False)
    rnn.train(small(tmp_path, "name=b", *args), Path(tmp_path) / "b", progress=False, stop_at=60)
    resumed = rnn.train(small(tmp_path, "name=b", *args), Path(tmp_path) / "b", resume=Path(tmp_path) / "b",
                        progress=False)
    a = torch.load(Path(tmp_path) / "a" / rnn.CHECKPOINT, weights_only=True)
    b = torch.load(Path(tmp_path) / "b" / rnn.CHECKPOINT, weights_only=True)
    assert straight["windows"] == resumed["windows"]
    for k, v in a["system"]["agents"]["rnn"]["module"].items():
        assert torch.equal(v, b["system"]["agents"]["rnn"]["module"][k]), k


def test_bad_rnn_settings_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="rnn.task"):
        load_config("copy", ["rnn.task=sort"])
    assert main(["train", "copy", "rnn.cell=rnn", f"log.dir={tmp_path}"]) == 2
    assert "rnn.cell" in capsys.readouterr().err


def test_error_in_bits_is_cross_entropy_per_scored_step():
    task = rnn.CopyTask(repeat=False, bits=8)
    seq = task.sample(2, 3, 1, torch.Generator().manual_seed(0))
    out = torch.zeros(2, seq.inputs.shape[1], 8)  # p = 0.5 on every bit: 8 bits per step
    bits = float(task.loss_sum(out, seq, 0, seq.inputs.shape[1]) / seq.mask.sum()) / math.log(2)
    assert bits == pytest.approx(8.0)


# ------------------------------------------------------------------------------------------ language model
LM = ["rnn.hidden=32", "rnn.embed=16", "trainer.batch_size=8", "rnn.eval_chars=3000", "log.every=50"]


def test_char_lm_learns_on_the_default_corpus(tmp_path):
    cfg = load_config("charlm", [f"log.dir={tmp_path}", *LM, "trainer.steps=300", "trainer.eval_every=100"])
    result = rnn.train(cfg, Path(tmp_path) / "lm", progress=False)
    curve = [p["valid_bpc"] for p in result["curve"]]
    assert len(curve) == 3 and curve[-1] < curve[0] - 0.3, curve
    assert result["test_bpc"] < 4.5 and result["chars_per_s"] > 0
    assert main(["eval", str(Path(tmp_path) / "lm")]) == 0


def test_char_lm_resumes_exactly(tmp_path):
    args = [f"log.dir={tmp_path}", *LM, "trainer.steps=60", "trainer.eval_every=30",
            "trainer.checkpoint_every=20"]
    straight = rnn.train(load_config("charlm", [*args, "name=a"]), Path(tmp_path) / "a", progress=False)
    rnn.train(load_config("charlm", [*args, "name=b"]), Path(tmp_path) / "b", progress=False, stop_at=40)
    resumed = rnn.train(load_config("charlm", [*args, "name=b"]), Path(tmp_path) / "b",
                        resume=Path(tmp_path) / "b", progress=False)
    assert resumed["test_bpc"] == straight["test_bpc"]
    assert [p["valid_bpc"] for p in resumed["curve"]] == [p["valid_bpc"] for p in straight["curve"]]


def test_ptb_needs_its_files_and_reads_them(tmp_path, capsys):
    argv = ["train", "charlm", "rnn.corpus=ptb", f"rnn.data_root={tmp_path}", f"log.dir={tmp_path}"]
    assert main(argv) == 2
    assert "ptb.char.train.txt" in capsys.readouterr().err
    for name in ("train", "valid", "test"):
        (tmp_path / f"ptb.char.{name}.txt").write_text("a _ c a t\nt h e _ d o g\n")
    from dni_agents.data import load_text

    corpus = load_text("ptb", tmp_path)
    assert "".join(corpus.vocab[i] for i in corpus.train) == "a cat\nthe dog\n"


def test_wallclock_plot_is_written(tmp_path):
    curve = [{"windows": 1, "chars": 100, "seconds": 1.0, "valid_bpc": 3.0},
             {"windows": 2, "chars": 200, "seconds": 2.0, "valid_bpc": 2.5}]
    records = [{"study": "wallclock", "method": m, "T": 8, "curve": curve} for m in ("bptt", "dni")]
    rnn.plot_wallclock(records, tmp_path / "rnn.png")
    assert (tmp_path / "rnn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dni_aux_trains_a_head_to_predict_the_windows_synthetic_gradient(tmp_path):
    cfg = small(tmp_path, "rnn.aux=true")
    task, system, core, iface = build_small(cfg)
    with torch.no_grad():
        iface.utility.net[-1].bias.fill_(0.5)  # so the target of the aux head is not zero
    seq = task.sample(4, 4, 1, torch.Generator().manual_seed(2))
    aux_before = [p.detach().clone() for p in core.aux.parameters()]
    steps = captured_gradients(core)
    run_windows(system, core, iface, task, seq, 3, aux_weight=1.0)
    names = [n for n, _ in core.named_parameters()]
    aux_grads = [g for n, g in zip(names, steps[0]) if n.startswith("aux.")]
    assert aux_grads and all(g.abs().sum() > 0 for g in aux_grads)
    assert all(torch.equal(a, p) for a, p in zip(aux_before, core.aux.parameters()))  # optimizer was stubbed


def test_bench_only_selects_tasks_and_methods_together(monkeypatch, tmp_path):
    """``--only repeat_copy,dni`` runs Repeat Copy's dni column and nothing else; unknown names fail."""
    ran: list[tuple[str, str]] = []

    def fake_run(base: str, method: str, extra: list[str]) -> dict:
        task = next((e.split("=")[1] for e in extra if e.startswith("rnn.task=")), base)
        ran.append((task, method))
        return {"solved_length": 1, "test_bpc": 2.0, "valid_bpc": 2.0, "chars_per_s": 1.0, "wall_s": 0.0,
                "curve": []}

    monkeypatch.setattr(importlib.import_module("dni_agents.drivers.rnn.bench"), "_run", fake_run)
    rnn.bench(only=["repeat_copy", "dni"], out=tmp_path / "r.json")
    assert ran == [("repeat_copy", "dni")] * 5  # T = 2, 3, 4, 5, 8
    ran.clear()
    rnn.bench(only=["wallclock", "dni"])
    assert ran == [("charlm", "dni")]
    with pytest.raises(ConfigError, match="--only: dnii is neither a task"):
        rnn.bench(only=["dnii"])
