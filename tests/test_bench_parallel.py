"""``dni-agents bench parallel`` at toy size: every method runs in its own processes and writes its record
(speed is not asserted: this machine's timings mean nothing); the projection's arithmetic; overrides."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from dni_agents.benches import parallel as bp
from dni_agents.cli import bench_names, main
from dni_agents.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["width=16", "hidden_layers=2", "split=1", "batch_size=32", "samples=192", "micro_batches=[2]",
        "pipe_trial_steps=2", "curve_points=2", "eval_samples=100", "cost_reps=1", "comm_reps=2",
        "timeout=30"]


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_quick_bench_writes_every_method(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "parallel.json"
    assert main(["bench", "parallel", "--quick", "--out", str(out), *TINY]) == 0
    report = json.loads(out.read_text())
    assert [r["method"] for r in report["records"]] == list(bp.METHODS)
    for r in report["records"]:
        assert set(bp.RECORD_KEYS) <= set(r)
        assert r["samples_per_s"] > 0 and r["wall_s"] > 0 and 0 <= r["accuracy"] <= 1
        assert len(r["curve"]) == 3 and r["curve"][0][0] <= r["curve"][-1][0]
    assert set(report["references"]) == {"dni_full", "dni_lowrank"}
    costs = report["costs"]
    assert len(costs["stages"]) == 2 and costs["comm"]["message_s"] > 0
    assert set(costs["utility"]) == {"full", "lowrank"}
    assert [p["stages"] for p in report["projection"]] == [2, 4, 8, 16]
    assert out.with_suffix(".png").stat().st_size > 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["acceptance"]) == {"dni_full", "dni_lowrank"}


def test_projection_arithmetic() -> None:
    """One unit per forward matmul: a stage of f=1, b=2 (o=0), a same-width utility model (forward 1,
    update 1) and free messages: DNI runs K stages at K·3/5 of one process in lockstep, K·3/6 with a window
    (the late target's fresh prediction); a pipeline with M=4 at K·4/(4+K-1) (micro-batches as efficient
    as the batch)."""
    micro = {"4": {"forward_s": 0.25, "backward_s": 0.5}}
    stage = {"forward_s": 1.0, "backward_s": 2.0, "optimizer_s": 0.0, "micro": micro}
    costs = {"stages": [stage, stage], "utility": {"full": {"forward_s": 1.0, "update_s": 1.0}},
             "comm": {"message_s": 0.0}}
    rows = bp.project(costs, stages=(2, 8), window=0)
    assert bp.project(costs, stages=(2,), window=1)[0]["dni_full_speedup"] == pytest.approx(2 * 3 / 6)
    assert rows[0]["dni_full_speedup"] == pytest.approx(2 * 3 / 5)
    assert rows[1]["dni_full_speedup"] == pytest.approx(8 * 3 / 5)
    assert rows[1]["pipeline_m4_speedup"] == pytest.approx(8 * 4 / 11)
    assert rows[1]["pipeline_idle_fraction"]["4"] == pytest.approx(7 / 11)


def test_overrides_and_names() -> None:
    assert "parallel" in bench_names() and bench_names()[:4] == ["ff", "hier", "marl", "rnn"]
    setup = bp.apply_overrides(bp.QUICK, ["width=32", "micro_batches=[2,4]", "lr=0.01"])
    assert (setup.width, setup.micro_batches, setup.lr) == (32, (2, 4), 0.01)
    with pytest.raises(ConfigError, match="unknown setting 'nope'"):
        bp.apply_overrides(bp.QUICK, ["nope=1"])
    with pytest.raises(ConfigError, match="do not divide"):
        bp.apply_overrides(bp.QUICK, ["micro_batches=[3]"])
    with pytest.raises(ConfigError, match="--only"):
        bp.bench(quick=True, only=["nope"])


def test_time_to_accuracy_reads_the_first_point_at_the_target() -> None:
    """95% of backprop_1thread's last curve accuracy is the target; each method's time is its first curve
    point at or above it; a method that never gets there has no time (and fails the check); the projection
    multiplies speed-ups by the measured sample efficiency."""
    def row(method, curve, samples):
        return {"method": method, "samples_per_s": 1.0, "accuracy": curve[-1][1], "curve": curve,
                "curve_samples": samples}
    records = [
        row("backprop_1thread", [[0, 0.1], [10, 0.8], [20, 0.9], [30, 0.9]], [0, 100, 200, 300]),
        row("backprop_2threads", [[0, 0.1], [6, 0.8], [12, 0.9]], [0, 100, 200]),
        row("pipelining", [[0, 0.1], [8, 0.80], [16, 0.86]], [0, 100, 200]),
        row("dni_full", [[0, 0.1], [5, 0.7], [10, 0.86]], [0, 100, 200]),
        row("dni_lowrank", [[0, 0.1], [5, 0.7], [10, 0.8]], [0, 100, 200]),
    ]
    summary = bp.summarize(records, {}, fraction=0.95)
    reach = summary["time_to_accuracy"]
    assert reach["target"] == pytest.approx(0.855)
    assert reach["seconds"] == {"backprop_1thread": 20, "backprop_2threads": 12, "pipelining": 16,
                                "dni_full": 10, "dni_lowrank": None}
    assert reach["sample_efficiency"]["dni_full"] == 1.0 and reach["sample_efficiency"]["dni_lowrank"] is None
    full, low = summary["acceptance"]["dni_full"], summary["acceptance"]["dni_lowrank"]
    assert full["time_to_accuracy_vs_backprop_2threads"] == pytest.approx(1.2)
    assert full["meets_time_to_accuracy"] and not low["meets_time_to_accuracy"]
    stage = {"forward_s": 1.0, "backward_s": 2.0, "optimizer_s": 0.0,
             "micro": {"2": {"forward_s": 0.5, "backward_s": 1.0}}}
    costs = {"stages": [stage, stage], "utility": {"full": {"forward_s": 1.0, "update_s": 1.0}},
             "comm": {"message_s": 0.0}}
    rows = bp.project(costs, stages=(4,), window=0, efficiency={"dni_full": 0.5, "pipelining": 1.0})
    assert rows[0]["dni_full_time_speedup"] == pytest.approx(0.5 * rows[0]["dni_full_speedup"])
    assert rows[0]["pipeline_best_time_speedup"] == pytest.approx(rows[0]["pipeline_best_speedup"])
