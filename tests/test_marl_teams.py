"""``marl.teams``: in a competitive game (crypto: Alice and Bob against Eve) the driver reports each team's
return beside ``mean_return`` (the mean over every agent, opposing sides together): per update in
TensorBoard, in the final evaluation with its controls, in ``dni-agents eval`` and in ``bench comm``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard_record import read_scalars

from dni_agents.cli import main
from dni_agents.config import ConfigError, load_config
from dni_agents.drivers import marl
from dni_agents.drivers.marl.build import team_members

TINY = ["trainer.steps=2", "marl.num_envs=4", "marl.epochs=1", "marl.eval_episodes=8", "log.every=1",
        "trainer.checkpoint_every=0", "marl.env_workers=0"]


def crypto(tmp_path: Path, *extra: str):
    return load_config("crypto", [f"log.dir={tmp_path}", *TINY, *extra])


def build(cfg):
    return marl.build(cfg, marl.make_env(cfg), torch.device("cpu"))


@pytest.mark.parametrize("teams,message", [
    ("{a: [alice_0], b: [nobody]}",
     "marl.teams.b: unknown agent 'nobody' (allowed: the agents alice_0, bob_0, eve_0 or the environment "
     "agents their members name)"),
    ("{a: [alice_0, bob_0], b: [eve_0, bob_0]}",
     "marl.teams.b: agent 'bob_0' is already in team 'a' (an agent plays for one team)"),
    ("{a: [alice_0, alice_0]}", "marl.teams.a: agent 'alice_0' is twice in this team"),
    ("{a: []}", "marl.teams.a: no agents (list at least one of: alice_0, bob_0, eve_0)"),
    ("{a/b: [alice_0]}", "marl.teams: team name 'a/b' must be non-empty and have no '/'"),
], ids=["unknown", "two_teams", "twice", "empty", "slash"])
def test_bad_teams_fail_at_config_load_naming_the_key_the_value_and_the_allowed_names(tmp_path, teams,
                                                                                      message):
    with pytest.raises(ConfigError) as err:
        crypto(tmp_path, "marl.teams=null", f"marl.teams={teams}")  # null: a mapping override merges
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("teams,message", [
    # a network stands for its members: naming one member again elsewhere puts it in two teams
    ("{adversaries: [adversary], chasers: [adversary_0]}",
     "marl.teams.chasers: environment agent 'adversary_0' is already in team 'adversaries'"),
    ("{chasers: [adversary_0], adversaries: [adversary]}",
     "marl.teams.adversaries: environment agent 'adversary_0' (of agent 'adversary') is already in team "
     "'chasers'"),
    # matches the network's members pattern adversary_*, but this environment has no such agent
    ("{adversaries: [adversary_9]}",
     "marl.teams.adversaries: unknown agent 'adversary_9' (allowed: the agents leadadversary_0, adversary, "
     "good or the environment agents leadadversary_0, adversary_0, adversary_1, adversary_2, agent_0, "
     "agent_1)"),
], ids=["member_of_a_network_in_another_team", "network_of_a_member_in_another_team",
        "no_such_environment_agent"])
def test_teams_are_checked_against_the_environment_agents_when_the_networks_are_built(tmp_path, teams,
                                                                                      message):
    cfg = load_config("world_comm", [f"log.dir={tmp_path}", "marl.teams=null", f"marl.teams={teams}"])
    with pytest.raises(ConfigError) as err:
        build(cfg)
    assert message in str(err.value)


def test_a_network_name_stands_for_every_environment_agent_it_controls(tmp_path):
    cfg = load_config("world_comm", [f"log.dir={tmp_path}"])
    _, groups, _ = build(cfg)
    assert team_members(cfg, groups) == {
        "adversaries": ["leadadversary_0", "adversary_0", "adversary_1", "adversary_2"],
        "good": ["agent_0", "agent_1"]}
    cfg = load_config("world_comm", [f"log.dir={tmp_path}", "marl.teams=null",
                                     "marl.teams={chasers: [adversary_2, adversary_0]}"])
    assert team_members(cfg, groups) == {"chasers": ["adversary_2", "adversary_0"]}  # the others: none


def test_team_returns_are_the_means_of_their_agents_returns_in_training_eval_and_tensorboard(tmp_path,
                                                                                             capsys):
    cfg = crypto(tmp_path)
    assert cfg.marl.teams == {"alice_bob": ["alice_0", "bob_0"], "eve": ["eve_0"]}
    result = marl.train(cfg, tmp_path / "crypto", progress=False)

    def check(out: dict, returns: dict) -> None:  # returns: {team: value} of the evaluation ``out``
        assert returns.keys() == {"alice_bob", "eve"}
        assert returns["alice_bob"] == pytest.approx((out["return/alice_0"] + out["return/bob_0"]) / 2)
        assert returns["eve"] == pytest.approx(out["return/eve_0"])
        assert returns["alice_bob"] != pytest.approx(out["mean_return"])  # opposing sides, averaged apart

    check(result, result["team_returns"])
    assert result["train_team_returns"] == result["team_returns"]  # no eval_env_kwargs: one environment
    for control in ("ablated", "silenced"):
        assert result[f"{control}_team_returns"].keys() == {"alice_bob", "eve"}
    run = Path(result["run_dir"])
    scalars = read_scalars(run)
    for team in ("alice_bob", "eve"):
        assert len(scalars[f"episode/return/team/{team}"]) == 2  # every update
        assert f"eval/return/team/{team}" in scalars
    last = {tag: scalars[f"episode/return/{tag}"][-1][1] for tag in ("team/alice_bob", "alice_0", "bob_0")}
    assert last["team/alice_bob"] == pytest.approx((last["alice_0"] + last["bob_0"]) / 2, rel=1e-5)

    capsys.readouterr()
    assert main(["eval", str(run), "--ablate", "zero"]) == 0  # dni-agents eval: the JSON has them too
    out = json.loads(capsys.readouterr().out)
    check(out, out["team_returns"])
    assert out["team_returns"] == pytest.approx(result["silenced_team_returns"])


def test_episode_metrics_without_teams_are_unchanged(tmp_path):
    cfg = crypto(tmp_path, "marl.teams=null")
    _, groups, channels = build(cfg)
    player = marl.Player(cfg, groups, channels, torch.device("cpu"), 4)
    ep = player.play(0, torch.Generator().manual_seed(0))
    plain = marl.episode_metrics(cfg, ep, groups)
    assert not any(k.startswith("return/team/") for k in plain)
    agents = ("alice_0", "bob_0", "eve_0")
    assert plain["return/mean"] == pytest.approx(sum(plain[f"return/{a}"] for a in agents) / 3)
    with_teams = marl.episode_metrics(crypto(tmp_path), ep, groups)
    assert {k: v for k, v in with_teams.items() if "/team/" not in k} == plain  # mean_return as before
    result = marl.evaluate_system(cfg, groups, channels, torch.device("cpu"), 4, player=player)
    assert "team_returns" not in result


def test_bench_comm_reports_a_task_with_teams_per_team(tmp_path, monkeypatch):
    from dni_agents.benches import comm

    monkeypatch.setitem(comm.TASKS, "crypto", {"config": "crypto", "upper": 0.0, "frozen_rms": 1.0,
                                               "quick_steps": 2})
    out = tmp_path / "comm.json"
    comm.bench(quick=True, out=out, seeds=1, only=["crypto", "none", "dni"],
               overrides=[*TINY[1:], f"log.dir={tmp_path}"])
    report = json.loads(out.read_text())
    for row in report["results"]:
        for key in ("team_returns", "ablated_team_returns", "silenced_team_returns"):
            assert row[key].keys() == {"alice_bob", "eve"}, key
    methods = report["summary"]["crypto"]["methods"]
    for method, row in zip(("none", "dni"), report["results"], strict=True):
        assert methods[method]["team_returns"] == pytest.approx(row["team_returns"])  # one seed: its own
