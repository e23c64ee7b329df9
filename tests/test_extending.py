"""Extension points: a user's network, utility model, AEC environment, continuous actions and a whole driver,
each plugged in from outside the package (tests/user_plugins.py, tests/user_driver.py) and trained."""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest
import torch
import user_driver
import user_plugins

import dni_agents.drivers
from dni_agents import registry
from dni_agents.cli import bench_names, main
from dni_agents.config import ConfigError, Section, agent_names, config_to_yaml, load_config
from dni_agents.drivers import build_interface, marl

TINY = ["trainer.steps=3", "marl.num_envs=16", "marl.eval_episodes=32", "marl.max_steps=10"]


def speaker_listener(tmp_path: Path, *extra: str):
    return load_config("speaker_listener", [f"log.dir={tmp_path}", *TINY, *extra])


def built(cfg):
    system, groups, channels = marl.build(cfg, marl.make_env(cfg), torch.device("cpu"))
    return system, {g.name: g for g in groups}, channels


def trained_state(cfg, tmp_path: Path) -> dict:
    result = marl.train(cfg, tmp_path / "run", log=True, progress=False)
    assert torch.isfinite(torch.tensor(result["mean_return"]))
    return torch.load(Path(result["run_dir"]) / marl.CHECKPOINT, weights_only=True)["system"]


def agent_params(state: dict, agent: str) -> dict[str, torch.Tensor]:
    return state["agents"][agent]["module"]


def test_an_agent_trains_with_a_network_body_defined_outside_the_package(tmp_path):
    extra = ["agents.1.network=user_plugins:ResidualBody", "agents.1.network_kwargs={width: 8}"]
    cfg = speaker_listener(tmp_path, *extra)
    _, groups, _ = built(cfg)
    listener = groups["listener_0"].net
    assert isinstance(listener.actor_body, user_plugins.ResidualBody)
    assert isinstance(listener.critic_body, user_plugins.ResidualBody)
    assert listener.actor_body.block[0].out_features == 8  # network_kwargs reached the factory
    assert not isinstance(groups["speaker_0"].net.actor_body, user_plugins.ResidualBody)
    before = {k: v.clone() for k, v in listener.state_dict().items()}
    after = agent_params(trained_state(cfg, tmp_path), "listener_0")
    moved = [k for k in before if k.startswith("actor_body.block") and not torch.equal(before[k], after[k])]
    assert moved  # the user's layers learned (same seed: the build above is the run's initial state)


def test_a_network_body_of_the_wrong_width_or_a_missing_one_is_one_line(tmp_path):
    cfg = speaker_listener(tmp_path, "agents.1.network=user_plugins:wrong_width_body")
    with pytest.raises(ConfigError, match=r"agents\[1\].network: user_plugins:wrong_width_body maps inputs "
                                          r"\(2, \d+\) to \(2, 65\); features must be \(2, 64\)"):
        built(cfg)
    cfg = speaker_listener(tmp_path, "agents.1.network=user_plugins:NoSuchBody")
    with pytest.raises(ConfigError, match=r"agents\[1\].network: module 'user_plugins' has no 'NoSuchBody'"):
        built(cfg)
    with pytest.raises(ConfigError, match=r"agents\[1\].network: 'resnet' is not an import string"):
        speaker_listener(tmp_path, "agents.1.network=resnet")


def test_a_utility_model_defined_outside_the_package_predicts_and_learns(tmp_path):
    extra = ["interface_defaults.mode=cdni",
             "interface_defaults.utility.kind=user_plugins:ContextLinearUtility",
             "interface_defaults.utility.kwargs={scale: 0.5}"]
    cfg = speaker_listener(tmp_path, *extra)
    _, _, channels = built(cfg)
    utility = channels[0].interface.utility
    assert isinstance(utility, user_plugins.ContextLinearUtility) and utility.scale == 0.5
    assert utility.built_with["context_dim"] > 0  # cdni: the driver's context reached the user's model
    state = trained_state(cfg, tmp_path)
    learned = state["interfaces"][channels[0].name]["utility"]["map.weight"]
    assert learned.abs().sum() > 0  # it started at zero: it regressed onto the receiver's gradients


def test_a_utility_model_of_the_wrong_shape_or_a_mistyped_kind_is_one_line(tmp_path):
    cfg = speaker_listener(tmp_path, "interface_defaults.utility.kind=user_plugins:FlatUtility")
    with pytest.raises(ConfigError, match=r"utility.kind: user_plugins:FlatUtility returns \(2, 1\) for "
                                          r"messages of shape \(2, 3\)"):
        built(cfg)
    with pytest.raises(ConfigError, match=r"interface_defaults.utility.kind: 'mpl' is not allowed \(did you "
                                          r"mean 'mlp'\? allowed: linear, mlp, conv, or an import string"):
        speaker_listener(tmp_path, "interface_defaults.utility.kind=mpl")
    cfg = speaker_listener(tmp_path, "interface_defaults.utility.kwargs={scale: 2}")
    with pytest.raises(ConfigError, match="utility.kwargs: only for a kind given by import string"):
        built(cfg)


def test_an_aec_environment_is_converted_and_plays_the_same_games_as_its_parallel_twin(tmp_path):
    parallel = marl.train(speaker_listener(tmp_path, "seed=3"), tmp_path / "p", log=False, progress=False)
    aec_cfg = speaker_listener(tmp_path, "seed=3", "marl.env=mpe2.simple_speaker_listener_v4:env")
    assert isinstance(marl.make_env(aec_cfg), marl.DirectParallel)  # PettingZoo's aec_to_parallel, stepped
    aec = marl.train(aec_cfg, tmp_path / "a", log=False, progress=False)
    assert aec["mean_return"] == parallel["mean_return"] and aec["curve"] == parallel["curve"]
    cfg = speaker_listener(tmp_path, "marl.env=user_plugins:turn_based_env")
    with pytest.raises(ConfigError, match="marl.env: user_plugins:turn_based_env is an AEC environment whose "
                                          "metadata does not declare is_parallelizable"):
        marl.make_env(cfg)


def test_continuous_actions_train_and_the_learner_replays_their_probabilities(tmp_path):
    cfg = speaker_listener(tmp_path, "marl.env_kwargs={continuous_actions: true}")
    system, groups, channels = built(cfg)
    listener = groups["listener_0"]
    assert not listener.net.discrete
    player = marl.Player(cfg, list(groups.values()), channels, torch.device("cpu"), cfg.marl.num_envs)
    ep = player.play(0, torch.Generator().manual_seed(0))
    actions = ep.actions["listener_0"]
    assert actions.shape == (cfg.marl.max_steps, cfg.marl.num_envs, 1, 5)  # one 5-d force per step
    features = []
    inbound = [c for c in channels if c.receiver == "listener_0"]
    with torch.no_grad():
        for t in range(ep.length):  # the listener's log-probabilities, recomputed from what it saw
            heard = {c.name: ep.heard[c.name][t] for c in inbound}
            x = player.inputs(listener, ep.obs["listener_0"][t], heard, t)
            features.append(listener.net(x.flatten(0, 1), None)[0])
    dist = listener.net.dist(torch.stack(features))
    logp = dist.log_prob(actions.flatten(1, 2)).sum(-1)
    assert torch.allclose(logp, ep.logp["listener_0"].flatten(1), atol=1e-5)
    result = marl.train(cfg, tmp_path / "c", log=False, progress=False)
    assert torch.isfinite(torch.tensor([result["mean_return"], result["ablated_return"]])).all()


def test_the_example_driver_uses_the_public_api_only():
    """A user's driver needs no private name: its imports from dni_agents carry no leading underscore."""
    tree = ast.parse(Path(user_driver.__file__).read_text(encoding="utf-8"))
    imported = [(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names if (node.module or "").startswith("dni_agents")]
    assert ("dni_agents.config", "Section") in imported
    assert ("dni_agents.drivers", "build_interface") in imported
    assert not [(m, n) for m, n in imported if any(p.startswith("_") for p in [*m.split("."), n])]
    assert user_driver.SECTION.__mro__[1] is Section and "build_interface" in dni_agents.drivers.__all__
    assert build_interface.__doc__ and "context_dim" in build_interface.__doc__  # documented


def registry_driver(name: str):
    return importlib.import_module(registry.drivers()[name])


def installed(tmp_path: Path, monkeypatch, group: str, line: str) -> None:
    """Declare an entry point as an installed package would (a ``*.dist-info`` folder on the path)."""
    info = tmp_path / "site" / "user_driver-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: user-driver\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{line}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def test_a_driver_from_an_installed_package_trains_with_no_edit_of_the_package(tmp_path, monkeypatch, capsys):
    installed(tmp_path, monkeypatch, "dni_agents.drivers", "regression = user_driver")
    assert "regression" in registry.drivers() and "regression" in bench_names()
    config = tmp_path / "reg.yaml"
    config.write_text("driver: regression\ntrainer: {steps: 600, lr: 0.01}\n"
                      "interface_defaults: {mode: cdni}\nregression: {inputs: 6, targets: [2]}\n")
    cfg = load_config(str(config))
    assert cfg.regression.inputs == 6 and agent_names(cfg) == ["encoder", "decoder"]
    assert "regression:" in config_to_yaml(cfg) and "marl:" not in config_to_yaml(cfg)  # its section only
    assert main(["train", str(config), f"log.dir={tmp_path / 'runs'}"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["last_loss"] < 0.05 * result["first_loss"]  # the encoder learned through ĝ ...
    run_dir = Path(result["run_dir"])  # the CLI made the folder and wrote the config; the driver checkpointed
    assert run_dir == tmp_path / "runs" / "run" and (run_dir / user_driver.CHECKPOINT).is_file()
    ran = load_config(str(config), [f"log.dir={tmp_path / 'runs'}"])
    assert load_config(str(run_dir / "config.yaml")) == ran
    assert main(["eval", str(run_dir)]) == 0  # ... and eval finds the driver and its run
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scored["steps"] == 600 and scored["eval_loss"] < 0.05 * result["first_loss"]
    silent = load_config(str(config), ["interface_defaults.mode=none"])
    alone = registry_driver("regression").train(silent, tmp_path / "none", log=False)
    assert alone["last_loss"] > 10 * result["last_loss"]  # ... which it cannot without one
    with pytest.raises(ConfigError, match=r"regression.input: unknown key \(did you mean 'inputs'\?\)"):
        load_config(str(config), ["regression.input=3"])  # the driver's own schema, the same errors
    with pytest.raises(ConfigError, match=r"agents\[0\].name: unknown agent 'listener' \(agents: encoder, "):
        load_config(str(config), ["agents=[{name: listener}]"])
    with pytest.raises(ConfigError, match=r"driver: 'regresion' is not allowed \(did you mean 'regression"):
        load_config(str(config), ["driver=regresion"])
