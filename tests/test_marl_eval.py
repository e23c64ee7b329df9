"""Held-out evaluation in the multi-agent driver: ``marl.eval_env_kwargs`` reaches every greedy evaluation
(during and after training, the controls, ``dni-agents eval``), periodic evaluations log curves, the time
to a success threshold is recorded, and evaluating never changes what training learns."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from exact import assert_equal_states
from tensorboard_record import read_histogram_tags, read_scalars, read_texts

from dni_agents.cli import main
from dni_agents.config import ConfigError, load_config
from dni_agents.drivers import marl

marl_train = importlib.import_module("dni_agents.drivers.marl.train")  # the module (marl.train: its function)

TINY = ["trainer.steps=4", "marl.num_envs=16", "marl.eval_episodes=32", "log.every=1",
        "log.histogram_every=100", "log.embedding_samples=0", "trainer.checkpoint_every=2"]


def digits(tmp_path: Path, *extra: str):
    """The main job, tiny; its config evaluates on the test pictures (eval_env_kwargs: {split: test})."""
    return load_config("digits_referential", [f"log.dir={tmp_path}", *TINY, *extra])


def test_every_evaluation_plays_the_held_out_environment(tmp_path, monkeypatch, capsys):
    cfg = digits(tmp_path, "trainer.eval_every=2")
    assert cfg.marl.eval_env_kwargs == {"split": "test"} and "split" not in cfg.marl.env_kwargs
    played = []  # (split, ablate) of every greedy evaluation
    evaluate_system = marl_train.evaluate_system

    def spy(cfg, *args, **kwargs):
        played.append((cfg.marl.env_kwargs.get("split", "train"), args[4] if len(args) > 4 else None))
        return evaluate_system(cfg, *args, **kwargs)

    monkeypatch.setattr(marl_train, "evaluate_system", spy)
    result = marl.train(cfg, tmp_path / "run", progress=False)
    # update 2: held-out (and with the messages shuffled) and training split; the end: held-out and
    # training split, then the controls on the held-out split
    assert played == [("test", None), ("test", "permute"), ("train", None), ("test", None), ("train", None),
                      ("test", "permute"), ("test", "zero")]
    for key in ("success_rate", "mean_return", "train_success_rate", "train_mean_return", "ablated_return",
                "silenced_return", "ablated_success_rate", "silenced_success_rate"):
        assert isinstance(result[key], float), key
    assert result["train_cpu_seconds"] > 0 and result["eval_seconds"] > 0

    monkeypatch.setattr(marl_train, "evaluate_system", evaluate_system)
    capsys.readouterr()
    assert main(["eval", result["run_dir"]]) == 0
    heldout = json.loads(capsys.readouterr().out)
    assert heldout["env_kwargs"]["split"] == "test"
    assert heldout["success_rate"] == result["success_rate"]  # the same games as training's last evaluation
    assert main(["eval", result["run_dir"], "--train-env"]) == 0
    trained_on = json.loads(capsys.readouterr().out)
    assert "split" not in trained_on["env_kwargs"]
    assert trained_on["success_rate"] == result["train_success_rate"]


def test_the_evaluation_environment_is_built_with_the_merged_kwargs(tmp_path):
    cfg = digits(tmp_path, "marl.env_kwargs.split=train", "marl.eval_env_kwargs={split: all}")
    system, groups, channels = marl.build(cfg, marl.make_env(cfg), torch.device("cpu"))
    evaluator = marl.Evaluator(cfg, groups, channels, torch.device("cpu"))
    assert marl.eval_env_kwargs(cfg) == {"n_candidates": 5, "message_size": 4, "split": "all"}
    assert evaluator.heldout.marl.env_kwargs == marl.eval_env_kwargs(cfg)
    assert cfg.marl.env_kwargs == {"n_candidates": 5, "message_size": 4, "split": "train"}  # untouched
    with pytest.raises(ConfigError, match=r"marl.eval_env_kwargs.n_candidates=3: the evaluation environment "
                                          r"has receiver's observation space .*\(training: Box"):
        marl.Evaluator(digits(tmp_path, "marl.eval_env_kwargs={n_candidates: 3}"), groups, channels,
                       torch.device("cpu"))  # another game's shape: the trained networks cannot play it


def test_periodic_evaluation_logs_curves_and_the_time_to_success(tmp_path, monkeypatch):
    cfg = digits(tmp_path, "trainer.steps=6", "trainer.eval_every=2", "marl.success_thresholds=[0.0, 1.0]")
    loops = []

    class Loop(marl_train.Loop):  # to read the progress bar's last words
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            loops.append(self)

    monkeypatch.setattr(marl_train, "Loop", Loop)
    result = marl.train(cfg, tmp_path / "run", progress=False)
    assert loops[0].bar.postfix.startswith("train_ret=") and ", heldout=" in loops[0].bar.postfix
    scalars = read_scalars(Path(result["run_dir"]))
    for tag in ("eval/success_rate", "eval/mean_return", "eval/train_success_rate", "eval/train_mean_return"):
        assert [step for step, _ in scalars[tag]] == [2, 4, 6], tag
    assert [p["update"] for p in result["eval_curve"]] == [2, 4, 6]
    assert [p["games"] for p in result["eval_curve"]] == [32, 64, 96]
    assert result["eval_curve"][-1]["success_rate"] == result["success_rate"]
    reached = result["time_to_success"]
    assert set(reached) == {"0", "1"} and reached["1"] is None  # 32 greedy games all won: not in 6 updates
    assert reached["0"]["update"] == 2 and reached["0"]["games"] == 32
    assert 0 < reached["0"]["train_seconds"] < result["train_seconds"]
    assert 0 < reached["0"]["train_cpu_seconds"] < result["train_cpu_seconds"]
    assert [step for step, _ in scalars["eval/ablated_return"]] == [2, 4, 6]  # the control on every curve
    assert "eval/silenced_return" not in scalars and "eval/eval_seconds" not in scalars  # in the table
    protocol = result["protocol"]["sender->receiver"]  # a discretised channel: its protocol, held out
    assert sum(row["count"] for row in protocol["messages"]) == 32  # one row per one-step game
    assert len(protocol["position_entropy_bits"]) == cfg.marl.message_size
    texts = read_texts(Path(result["run_dir"]))
    assert "topographic similarity" in texts["protocol/sender"][0]
    assert "| mean_return |" in texts["evaluation"][0]
    assert read_histogram_tags(Path(result["run_dir"]))["heard/sender/symbols"] == 1  # the last update
    json.dumps(result)  # the final JSON


def test_time_to_success_survives_a_resume(tmp_path):
    extra = ["trainer.eval_every=1", "marl.success_thresholds=[0.0]"]
    full = marl.train(digits(tmp_path / "a", *extra), tmp_path / "a" / "run", progress=False)
    marl.train(digits(tmp_path / "b", *extra), tmp_path / "b" / "run", progress=False, stop_at=2)
    resumed = marl.train(digits(tmp_path / "b", *extra), tmp_path / "b" / "run",
                         resume=tmp_path / "b" / "run", progress=False)
    assert resumed["time_to_success"]["0"]["update"] == full["time_to_success"]["0"]["update"] == 1
    curve = [{k: v for k, v in p.items() if "seconds" not in k} for p in resumed["eval_curve"]]
    assert curve == [{k: v for k, v in p.items() if "seconds" not in k} for p in full["eval_curve"]]
    logged = read_scalars(Path(resumed["run_dir"]))["eval/success_rate"]
    assert logged == read_scalars(Path(full["run_dir"]))["eval/success_rate"]
    assert [step for step, _ in logged] == [1, 2, 3, 4]


def test_without_a_success_reward_there_is_nothing_to_reach(tmp_path):
    cfg = digits(tmp_path, "trainer.steps=2", "trainer.eval_every=1", "marl.success_reward=null")
    result = marl.train(cfg, tmp_path / "run", progress=False, log=False)
    assert result["time_to_success"] == {} and "success_rate" not in result
    assert [p["update"] for p in result["eval_curve"]] == [1, 2]


@pytest.mark.parametrize("config", ["digits_referential", "switch_riddle"])
def test_evaluating_during_training_does_not_change_what_is_learned(tmp_path, config):
    """The same parameters, optimizer states and training returns with eval_every 0 and 1."""
    states, curves = [], []
    for every in (0, 1):
        cfg = load_config(config, [f"log.dir={tmp_path}", *TINY, f"trainer.eval_every={every}",
                                   f"name=every{every}"])
        result = marl.train(cfg, tmp_path / f"every{every}", progress=False)
        states.append(torch.load(Path(result["run_dir"]) / marl.CHECKPOINT, weights_only=True)["system"])
        curves.append(result["curve"])
        assert len(result["eval_curve"]) == (4 if every else 1)
    assert_equal_states(states[1], states[0])
    assert curves[1] == curves[0]


def test_success_thresholds_are_success_rates():
    assert load_config("digits_referential", ["marl.success_thresholds=[0.0, 1.0]"]).marl.success_thresholds
    with pytest.raises(ConfigError, match=r"marl\.success_thresholds"):
        load_config("digits_referential", ["marl.success_thresholds=[0.8, 1.1]"])
    with pytest.raises(ConfigError, match=r"marl\.success_thresholds: \[0\.8, 0\.8\] repeats"):
        load_config("digits_referential", ["marl.success_thresholds=[0.8, 0.8]"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("marl.eval_env_kwargs={bogus: 1}",
         "marl.eval_env_kwargs.bogus=1: dni_envs.digits_referential refuses it (Digits"),
        ("marl.eval_env_kwargs={split: tset}",
         "marl.eval_env_kwargs.split='tset': dni_envs.digits_referential refuses it (split must be one of"),
        ("marl.env_kwargs.n_candidates=-1", "marl.env_kwargs.n_candidates=-1: dni_envs.digits_referential"),
    ],
)
def test_an_environment_refusing_its_kwargs_fails_with_one_line_naming_the_key(tmp_path, capsys, override,
                                                                               message):
    assert main(["train", "digits_referential", f"log.dir={tmp_path}", override]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
