"""``dni-agents bench speed``: the report's shape, and that the plain-PyTorch floor computes what it says."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from dni_agents.benches import speed
from dni_agents.benches.floor import floor_update, make_floor
from dni_agents.config import ConfigError, load_config

NUMBERS = ("ours_env_steps_per_cpu_s", "floor_env_steps_per_cpu_s", "ours_learn_ms", "floor_learn_ms",
           "learn_ratio", "ours_play_ms", "env_steps_per_update")
CPU = torch.device("cpu")


def test_quick_bench_writes_finite_positive_numbers(tmp_path, capsys) -> None:
    out = tmp_path / "speed.json"
    speed.bench(quick=True, out=out)
    data = json.loads(out.read_text())
    assert data["benchmark"] == "speed" and data["quick"] is True
    assert data["time_to_success"] is None  # a full training run: not in --quick
    rows = data["results"]
    assert [r["config"] for r in rows] == list(speed.QUICK_CONFIGS)
    for r in rows:
        for key in NUMBERS:
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (r["config"], key)
        assert r["learn_ratio"] == pytest.approx(r["ours_learn_ms"] / r["floor_learn_ms"])
        assert r["threads"] == 1 and r["torch"] == torch.__version__ and r["machine"]
        assert r["floor_device"] == "cpu" and r["floor_clock"] == "process"
        for key in ("mode", "num_envs", "max_steps", "epochs"):
            assert r[key]
    table = capsys.readouterr().out
    assert "floor ms" in table and all(name in table for name in speed.QUICK_CONFIGS)


def test_only_names_marl_jobs() -> None:
    with pytest.raises(ConfigError, match="no marl job"):
        speed.bench(quick=True, only=["nope"])


@pytest.mark.parametrize("name", ["speaker_listener", "digits_referential"])
def test_floor_replays_the_played_policy_and_its_loss_falls(name: str) -> None:
    cfg = load_config(name, ["marl.num_envs=16"])
    ours = speed.build_ours(cfg)
    floor = make_floor(cfg, ours.groups, ours.channels, CPU)
    stats = floor_update(floor, ours.play())
    # the floor starts from our weights: its replay of the episode gives the log-probabilities that played
    assert stats["first_ratio_dev"] < 1e-5
    assert stats["loss"][-1] < stats["loss"][0]


def test_floor_closed_form_utility_gradient_is_autograds() -> None:
    """The floor regresses a linear utility model by a hand-written gradient: the same as autograd's."""
    cfg = load_config("speaker_listener", ["marl.num_envs=8", "marl.epochs=1"])
    ours = speed.build_ours(cfg)
    episode = ours.play()
    floors = [make_floor(cfg, ours.groups, ours.channels, CPU) for _ in range(2)]
    by_hand, autograd = (f.channels[0].utility for f in floors)
    assert by_hand.closed_form
    torch.manual_seed(0)
    nn.init.normal_(by_hand.net[0].weight, std=0.1)  # a nonzero ĝ, so the sender gets it too
    autograd.load_state_dict(by_hand.state_dict())
    autograd.closed_form = False
    for f in floors:
        floor_update(f, episode)
    for a, b in zip(by_hand.parameters(), autograd.parameters(), strict=True):
        assert a.grad.abs().sum() > 0
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)
    sender_by_hand, sender_autograd = (f.groups[0].net for f in floors)
    for a, b in zip(sender_by_hand.parameters(), sender_autograd.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_a_row_on_mpe2_is_the_bundled_job_on_mpe2s_own_environment() -> None:
    """``NAME@mpe2`` rows: the bundled config, its environment swapped for mpe2's (the batched port is
    the default); every such row names a bundled job whose default is the batched port."""
    assert speed.row_config("speaker_listener", ["a=1"]) == ("speaker_listener", ["a=1"])
    for row in (r for r in speed.CONFIGS if "@" in r):
        name, overrides = speed.row_config(row, [])
        assert load_config(name).marl.env.startswith("dni_envs.")
        assert load_config(name, overrides).marl.env == speed.ON_MPE2[name].replace("dni_envs.", "")
        assert load_config(name, overrides).marl.env.startswith("mpe2.")
