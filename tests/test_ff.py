"""The feed-forward driver end to end: it learns, it logs what we promise, it resumes exactly."""

from __future__ import annotations

import ast
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard_record import read_histogram_tags, read_projector, read_scalars, read_texts

from dni_agents.cli import main
from dni_agents.config import load_config
from dni_agents.data import load_dataset
from dni_agents.drivers import ff

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def cfg_for(method: str, tmp_path: Path, *extra: str):
    return ff.method_config(
        "ff_digits", method,
        [f"log.dir={tmp_path}", "trainer.steps=60", "trainer.eval_every=0", "log.every=10",
         "log.histogram_every=20", "log.embedding_samples=50", *extra],
    )


def test_dni_run_learns_and_logs_everything_tensorboard_promises(tmp_path, digits):
    cfg = cfg_for("cdni", tmp_path, "trainer.steps=200")
    metrics = ff.train(cfg, tmp_path / cfg.name, data=digits, progress=False)
    run = Path(metrics["run_dir"])
    assert metrics["test_accuracy"] > 0.85
    scalars = read_scalars(run)
    logged = list(range(0, 200, 10)) + [199]
    # at step 0 ĝ is exactly 0 (no cosine) and layer0->layer1's bootstrapped target too (no error either)
    defined_at_0 = {("layer1->layer2", "grad_rel_error")}
    for iface in ("layer0->layer1", "layer1->layer2"):
        for key in ("utility_loss", "grad_cosine", "grad_rel_error", "message_norm", "synthetic_norm"):
            points = scalars[f"interface/{iface}/{key}"]
            undefined_at_0 = key in ("grad_cosine", "grad_rel_error") and (iface, key) not in defined_at_0
            assert [s for s, _ in points] == (logged[1:] if undefined_at_0 else logged)
    loss = [v for _, v in scalars["agent/layer2/loss"]]
    assert sum(loss[-5:]) / 5 < 0.5 * sum(loss[:2]) / 2  # the learning curve goes down
    assert scalars["interface/layer1->layer2/synthetic_norm"][0] == (0, 0.0)  # ĝ is exactly zero at first
    cos = [v for _, v in scalars["interface/layer1->layer2/grad_cosine"]]
    assert sum(cos[-5:]) / 5 > 0.3  # then it points where the true gradient does
    hist = read_histogram_tags(run)
    assert hist["interface/layer0->layer1/message"] == 10
    assert "config" in read_texts(run) and "hparams" in read_texts(run)
    (proj,) = read_projector(run)
    assert proj["shape"] == (50, 256)
    assert proj["metadata"] == [[str(int(c))] for c in digits.y_test[:50]]
    assert scalars["eval/test_accuracy"][-1] == (200, pytest.approx(metrics["test_accuracy"]))
    assert load_config(str(run / "config.yaml")) == cfg


@pytest.mark.parametrize("method", ["backprop", "unlock", "top-only"])
def test_every_method_trains(tmp_path, digits, method):
    metrics = ff.train(cfg_for(method, tmp_path, "trainer.steps=150"), tmp_path / "r", data=digits,
                       log=False, progress=False)
    assert metrics["test_accuracy"] > 0.6


def test_top_only_never_moves_the_lower_layers(tmp_path, digits):
    cfg = cfg_for("top-only", tmp_path)
    before = ff.build_system(cfg, digits, torch.device("cpu"))
    w0 = before.agents["layer0"].module[1].weight.clone()
    metrics = ff.train(cfg, tmp_path / cfg.name, data=digits, progress=False)
    state = torch.load(Path(metrics["run_dir"]) / ff.CHECKPOINT, weights_only=True)
    assert torch.equal(state["system"]["agents"]["layer0"]["module"]["1.weight"], w0)
    assert not torch.equal(state["system"]["agents"]["layer2"]["module"]["weight"],
                           before.agents["layer2"].module.weight)


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, digits):
    extra = ("trainer.steps=40", "trainer.checkpoint_every=20")
    whole = ff.train(cfg_for("dni", tmp_path, *extra, "name=whole"), tmp_path / "whole", data=digits,
                     progress=False)
    cfg = cfg_for("dni", tmp_path, *extra, "name=cut")
    ff.train(cfg, tmp_path / "cut", data=digits, progress=False, stop_at=30)  # "crash" after step 30
    assert torch.load(tmp_path / "cut" / ff.CHECKPOINT, weights_only=True)["step"] == 20
    resumed = ff.train(cfg, tmp_path / "cut", resume=tmp_path / "cut", data=digits, progress=False)
    a = torch.load(Path(whole["run_dir"]) / ff.CHECKPOINT, weights_only=True)["system"]
    b = torch.load(Path(resumed["run_dir"]) / ff.CHECKPOINT, weights_only=True)["system"]
    flat_a, flat_b = _flatten(a), _flatten(b)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        assert torch.equal(flat_a[key], flat_b[key]), key
    assert resumed["test_accuracy"] == whole["test_accuracy"]


def _flatten(state, prefix=""):
    out = {}
    if isinstance(state, dict):
        for k, v in state.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(state, list | tuple):
        for i, v in enumerate(state):
            out.update(_flatten(v, f"{prefix}{i}."))
    elif state is not None:
        out[prefix] = state if isinstance(state, torch.Tensor) else torch.tensor(state)
    return out


def test_cli_train_then_eval(tmp_path, capsys):
    code = main(["train", "ff_digits", f"log.dir={tmp_path}", "trainer.steps=30", "log.every=10",
                 "log.embedding_samples=0", "interface_defaults.mode=cdni"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("TensorBoard run: ")
    metrics = json.loads(out[-1])
    assert main(["eval", metrics["run_dir"]]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert evaluated["step"] == 30


def test_missing_data_is_one_clear_line(tmp_path, capsys):
    code = main(["train", "ff_digits", "ff.dataset=mnist", f"ff.data_root={tmp_path / 'nope'}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(tmp_path / "nope") in err and "Traceback" not in err


def test_timing_rows_have_the_schema():
    rows = ff.time_methods(["backprop", "dni"], steps=2, repeats=1)
    assert [r["method"] for r in rows] == ["backprop", "dni"]
    for r in rows:
        assert r["dataset"] == "timing" and r["steps_per_s"] > 0
    assert rows[0]["cost_vs_backprop"] == 1.0


def test_a_cost_is_the_median_of_the_rounds_own_ratios():
    """The method takes 1.5× the reference in each round, and the machine halves its speed in round 3,
    between the reference's timing and the method's. The ratio of the two medians reads a fast round of one
    against a slow round of the other (3×); each round's own ratio keeps the 1.5× of every other round."""
    from dni_agents.drivers.ff.timing import paired_cost
    reference = [1.0, 1.0, 1.0, 2.0, 2.0]
    method = [1.5, 1.5, 3.0, 3.0, 3.0]
    assert statistics.median(method) / statistics.median(reference) == 3.0
    assert paired_cost(method, reference) == 1.5
    with pytest.raises(ValueError):  # rounds of the two must pair up
        paired_cost([1.0], [1.0, 2.0])


def test_core_imports_no_driver_env_data_or_cli():
    forbidden = ("dni_agents.drivers", "dni_agents.data", "dni_agents.cli", "dni_agents.config",
                 "dni_agents.logging", "dni_envs", "gymnasium", "pettingzoo", "sklearn")
    for path in (ROOT / "dni_agents" / "core").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = ["." * node.level + (node.module or "")]
                assert node.level <= 1, f"{path.name} imports from above the core: {names}"
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"


def test_bundled_configs_found_by_name_after_a_non_editable_install(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(ROOT)],
        check=True, capture_output=True, cwd=tmp_path,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c",
         "import dni_agents.config as c, dni_envs; print(c.__file__); print(c.find_config('ff_digits')); "
         "print(c.load_config('speaker_listener').marl.env); print(dni_envs.__file__)"],
        check=True, capture_output=True, text=True, cwd=tmp_path, env=env,
    ).stdout.split()
    assert out[0].startswith(str(target)) and out[1].startswith(str(target))
    assert out[2] == "dni_envs.simple_speaker_listener_v4" and out[3].startswith(str(target))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent GPU machine)")
def test_cuda_run_matches_the_cpu_protocol(tmp_path, digits):
    """Every tensor of the system follows device=cuda: a DNI and an unlock run train there."""
    for method in ("cdni", "unlock", "backprop"):
        cfg = cfg_for(method, tmp_path, "device=cuda", "trainer.steps=100", f"name=gpu-{method}")
        metrics = ff.train(cfg, tmp_path / cfg.name, data=digits, progress=False)
        assert metrics["test_accuracy"] > 0.6
        state = torch.load(Path(metrics["run_dir"]) / ff.CHECKPOINT, weights_only=True)
        assert state["system"]["agents"]["layer0"]["module"]["1.weight"].is_cuda


@pytest.mark.parametrize("batch_norm", [True, False])
def test_backprop_mode_trains_exactly_what_plain_pytorch_trains(batch_norm):
    """The timing reference is the same model without the framework: the same layers as one nn.Sequential
    under one Adam and one loss.backward(). Our backprop mode must give the same parameters, step by step
    (Adam is elementwise, so one optimizer per agent is the same as one for all)."""
    from dni_agents.drivers.ff.timing import PLAIN, step_function, timing_data

    data = timing_data(0)
    plain, plain_params = step_function(PLAIN, data, 0, batch_norm)
    ours, our_params = step_function("backprop", data, 0, batch_norm)
    initial = [p.detach().clone() for p in plain_params]
    for i in range(3):
        plain(i)
        ours(i)
    assert len(plain_params) == len(our_params) > 0
    assert not all(torch.equal(p, p0) for p, p0 in zip(plain_params, initial, strict=True))  # it trained
    for p, q in zip(plain_params, our_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    rows = ff.time_methods([PLAIN, "backprop"], steps=1, repeats=1, batch_norm=batch_norm)
    assert rows[0]["cost_vs_plain"] == 1.0 and rows[1]["cost_vs_plain"] > 0
    assert rows[0]["batch_norm"] is batch_norm


@pytest.mark.parametrize("method,reference", [("dni", "plain-dni"), ("cdni", "plain-cdni"),
                                              ("backprop", "plain-layers")])
@pytest.mark.parametrize("hidden,batch,batch_norm", [(256, 256, True), (16, 16, False)])
def test_our_methods_train_exactly_what_their_hand_written_floors_train(method, reference, hidden, batch,
                                                                        batch_norm):
    """The timing floors are the same computation with no framework: DNI written out by hand (a
    zero-initialised linear utility model per interface, its regression onto the next layer's input
    gradient) and plain PyTorch with one Adam per layer. Bit for bit the same parameters, so each ratio
    between a row and its floor is the framework's cost alone (at the timing shape, and at the toy size
    where scripts/ff_overhead.py measures the framework's Python)."""
    from dni_agents.drivers.ff.timing import step_function, timing_data

    data = timing_data(0)
    floor, floor_params = step_function(reference, data, 0, batch_norm, hidden=hidden, batch_size=batch)
    ours, our_params = step_function(method, data, 0, batch_norm, hidden=hidden, batch_size=batch)
    assert floor_params[0].shape == our_params[0].shape == (hidden, 784)
    initial = [p.detach().clone() for p in floor_params]
    for i in range(4):
        floor(i)
        ours(i)
    assert not all(torch.equal(p, p0) for p, p0 in zip(floor_params, initial, strict=True))  # it trained
    for p, q in zip(floor_params, our_params, strict=True):
        assert torch.equal(p, q)


def test_our_steps_do_the_arithmetic_of_their_floors_and_no_more():
    """Counted matrix-product FLOPs of one step: our methods do exactly their hand-written floors' products
    (the framework adds time, never arithmetic), and those are what the shapes give: backprop through
    784-256-256-10 at batch 256, plus per interface the utility model's prediction and weight gradient (a
    regression through autograd would add an input-gradient product and fail this)."""
    from dni_agents.drivers.ff.timing import matmul_flops, step_function, timing_data

    data = timing_data(0)
    flops = {m: matmul_flops(step_function(m, data, 0, True)[0], 0)
             for m in ("plain", "plain-layers", "backprop", "plain-dni", "dni", "plain-cdni", "cdni")}
    B, sizes = 256, [(784, 256), (256, 256), (256, 10)]
    forward = sum(2 * B * i * o for i, o in sizes)
    backprop = 2 * forward + sum(2 * B * i * o for i, o in sizes[1:])  # no input gradient for the images
    utility = {"dni": 2 * 2 * (2 * B * 256 * 256), "cdni": 2 * 2 * (2 * B * 266 * 256)}  # two interfaces
    assert flops["plain"] == flops["plain-layers"] == flops["backprop"] == backprop
    for mode in ("dni", "cdni"):
        assert flops[mode] == flops[f"plain-{mode}"] == backprop + utility[mode]
    assert round(flops["dni"] / flops["plain"], 3) == 1.433
