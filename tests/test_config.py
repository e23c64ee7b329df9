"""Config schema, loading, overrides, and the one-line error messages users see."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from dni_agents import config as config_mod
from dni_agents.config import (
    Config,
    ConfigError,
    InterfaceConfig,
    InterfaceOverride,
    agent_names,
    bundled_configs,
    config_to_yaml,
    find_config,
    interface_config,
    load_config,
    parse_config,
)

BASE = {"driver": "ff"}


def error_of(data: dict, overrides: tuple[str, ...] = ()) -> str:
    """The message of the ConfigError parse_config raises; asserts it is one line."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- bad input, one test per kind


def test_unknown_key_suggests_close_match() -> None:
    message = error_of({**BASE, "trainer": {"lrr": 0.1}})
    assert message == "trainer.lrr: unknown key (did you mean 'lr'?)"


def test_unknown_key_without_close_match_lists_allowed_keys() -> None:
    message = error_of({**BASE, "log": {"zzzzzz": 1}})
    assert message.startswith("log.zzzzzz: unknown key (allowed: ")
    assert "dir, every, histogram_every, embedding_samples" in message


def test_unknown_key_inside_list_item_uses_index_path() -> None:
    message = error_of({**BASE, "interfaces": [{"sender": "layer0", "receiver": "layer1", "moed": "none"}]})
    assert message == "interfaces[0].moed: unknown key (did you mean 'mode'?)"


def test_wrong_type() -> None:
    assert error_of(BASE, ("trainer.steps=abc",)) == "trainer.steps: expected an integer, got 'abc'"
    assert error_of({**BASE, "trainer": 5}) == "trainer: expected a mapping, got 5"


def test_value_out_of_range() -> None:
    assert error_of({**BASE, "trainer": {"lr": -1.0}}) == "trainer.lr: must be > 0, got -1.0"
    message = error_of({**BASE, "interface_defaults": {"lambda_true": 2.0}})
    assert message == "interface_defaults.lambda_true: must be <= 1, got 2.0"


def test_unknown_enum_value() -> None:
    message = error_of({**BASE, "interface_defaults": {"mode": "dnn"}})
    assert message.startswith("interface_defaults.mode: 'dnn' is not allowed")
    assert "did you mean 'dni'?" in message
    assert "allowed: dni, cdni, backprop, none" in message


def test_interface_naming_unknown_agent() -> None:
    message = error_of({**BASE, "interfaces": [{"sender": "layer9", "receiver": "layer1"}]})
    assert message == "interfaces[0].sender: unknown agent 'layer9' (agents: layer0, layer1, layer2)"
    message = error_of({**BASE, "interfaces": [{"sender": "layer0", "receiver": "out"}]})
    assert message.startswith("interfaces[0].receiver: unknown agent 'out'")


def test_partial_utility_override_is_validated_with_its_path() -> None:
    entry = {"sender": "layer0", "receiver": "layer1", "utility": {"kidn": "mlp"}}
    assert (
        error_of({**BASE, "interfaces": [entry]})
        == "interfaces[0].utility.kidn: unknown key (did you mean 'kind'?)"
    )
    entry = {"sender": "layer0", "receiver": "layer1", "utility": {"hidden": 0}}
    assert error_of({**BASE, "interfaces": [entry]}) == "interfaces[0].utility.hidden: must be >= 1, got 0"


def test_duplicate_agent_names() -> None:
    message = error_of({**BASE, "agents": [{"name": "layer0"}, {"name": "layer0"}]})
    assert message.startswith("agents[1].name: duplicate agent 'layer0'")


def test_missing_file(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(str(missing))
    message = str(info.value)
    assert str(missing) in message and "bundled configs:" in message and "\n" not in message


def test_missing_required_key() -> None:
    assert error_of({}) == "driver: required (allowed: ff, hier, marl, rnn)"


def test_malformed_override() -> None:
    assert error_of(BASE, ("trainer.lr",)).startswith("override 'trainer.lr': expected key=value")
    assert error_of(BASE, ("=3",)).startswith("override '=3': expected key=value")


def test_override_of_unknown_key() -> None:
    assert error_of(BASE, ("trainer.lrr=1e-3",)) == "trainer.lrr: unknown key (did you mean 'lr'?)"


def test_override_of_missing_list_index() -> None:
    message = error_of({**BASE, "interfaces": []}, ("interfaces.0.mode=none",))
    assert message == (
        "interfaces[0]: no such item (interfaces has 0); to set the whole list write interfaces=[{...}, ...]"
    )
    # also when the list is absent altogether (OmegaConf would silently make a mapping {'0': ...})
    assert error_of(BASE, ("interfaces.1.sender=layer9",)).startswith("interfaces[1]: no such item")


MARL = {"driver": "marl", "agents": [{"name": "speaker_0"}, {"name": "listener_0"}],
        "marl": {"env_kwargs": {"max_cycles": 7, "continuous_actions": True}}}


def test_a_mapping_override_merges_and_a_tilde_deletes_the_key_first() -> None:
    merged = parse_config(MARL, ("marl.env_kwargs={max_cycles: 9}",))
    assert merged.marl.env_kwargs == {"max_cycles": 9, "continuous_actions": True}  # merged, not replaced
    cleared = parse_config(MARL, ("~marl.env_kwargs",))
    assert cleared.marl.env_kwargs == {}  # the schema's default
    replaced = parse_config(MARL, ("~marl.env_kwargs", "marl.env_kwargs={max_cycles: 9}"))
    assert replaced.marl.env_kwargs == {"max_cycles": 9}
    assert parse_config(MARL, ("~marl.env_kwargs.continuous_actions",)).marl.env_kwargs == {"max_cycles": 7}
    assert parse_config(MARL, ("~agents[1]", "agents.0.name=x")).agents[0].name == "x"  # a list item too
    assert len(parse_config(MARL, ("~agents.1",)).agents) == 1
    assert parse_config(BASE, ("trainer.lr=0.5", "~trainer.lr")).trainer.lr == 3e-4  # in the order given
    assert MARL["marl"]["env_kwargs"] == {"max_cycles": 7, "continuous_actions": True}  # the data untouched


def test_deleting_a_key_that_is_not_there_is_one_line() -> None:
    assert error_of(MARL, ("~marl.env_kwargs.max_cycle",)) == (
        "marl.env_kwargs.max_cycle: cannot delete (marl.env_kwargs has no key 'max_cycle'; did you mean "
        "'max_cycles'? keys there: max_cycles, continuous_actions)")
    assert error_of(BASE, ("~trainer.lr",)) == (
        "trainer.lr: cannot delete (trainer is not in the config: nothing to delete)")
    assert error_of(MARL, ("~agents.5",)) == "agents.5: cannot delete (agents has 2 items; no item 5)"
    assert error_of(MARL, ("~marl.env_kwargs.max_cycles.x",)) == (
        "marl.env_kwargs.max_cycles.x: cannot delete (marl.env_kwargs.max_cycles is 7, not a mapping)")
    assert error_of(BASE, ("~",)).startswith("override '~': expected ~key")
    assert error_of(BASE, ("~trainer.lr=1",)).startswith("override '~trainer.lr=1': expected ~key")


def test_bad_name_and_device() -> None:
    assert error_of({**BASE, "name": "../x"}).startswith("name: '../x' is not a valid run name (allowed:")
    assert error_of({**BASE, "name": ".."}).startswith("name: '..' is not a valid run name")
    message = error_of({**BASE, "device": "gpu"})
    assert message == "device: 'gpu' is not a device (allowed: cpu, cuda, cuda:N, auto)"


def test_yaml_not_a_mapping(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- driver: ff\n")
    with pytest.raises(ConfigError, match="list.yaml: top level must be a mapping"):
        load_config(str(path))


def test_yaml_syntax_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("driver: ff\ntrainer: {lr: [1,\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"{path}: invalid YAML at line")
    assert "\n" not in str(info.value)


def test_non_mapping_data() -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config(["driver", "ff"])  # type: ignore[arg-type]


# ---------------------------------------------------------------- positive cases


def test_defaults() -> None:
    cfg = parse_config(BASE)
    assert cfg.name == "run" and cfg.seed == 0 and cfg.device == "cpu"
    assert cfg.trainer.steps == 1000 and cfg.trainer.lr == 3e-4 and cfg.trainer.optimizer == "adam"
    assert cfg.log.every == 50 and cfg.log.embedding_samples == 512
    assert cfg.interface_defaults.mode == "dni" and cfg.interface_defaults.utility.kind == "linear"
    assert cfg.interface_defaults.synthetic_input is None
    assert cfg.ff.layers == 3 and cfg.ff.dataset == "digits"
    assert agent_names(cfg) == ["layer0", "layer1", "layer2"]
    assert agent_names(parse_config(BASE, ("ff.layers=5",)))[-1] == "layer4"


def test_overrides_are_typed() -> None:
    cfg = parse_config(BASE, ("trainer.lr=1e-3", "trainer.steps=20", "ff.batch_norm=false", "name=exp.1"))
    assert cfg.trainer.lr == 0.001 and isinstance(cfg.trainer.lr, float)
    assert cfg.trainer.steps == 20 and isinstance(cfg.trainer.steps, int)
    assert cfg.ff.batch_norm is False and cfg.name == "exp.1"
    cfg = parse_config(BASE, ("interface_defaults.utility.kind=mlp", "interface_defaults.utility.rank=null"))
    assert cfg.interface_defaults.utility.kind == "mlp" and cfg.interface_defaults.utility.rank is None


def test_list_item_overrides() -> None:
    data = {**BASE, "interfaces": [{"sender": "layer0", "receiver": "layer1"}]}
    cfg = parse_config(data, ("interfaces.0.mode=none", "interfaces[0].scale=0.5"))
    assert cfg.interfaces[0].mode == "none" and cfg.interfaces[0].scale == 0.5
    cfg = parse_config(BASE, ("interfaces=[{sender: layer1, receiver: layer2, mode: backprop}]",))
    assert interface_config(cfg, "layer1", "layer2").mode == "backprop"


def test_yaml_file_float_spelling(tmp_path: pathlib.Path) -> None:
    # PyYAML reads 1e-3 (no dot) as a string; the schema must still make it a float.
    path = tmp_path / "exp.yaml"
    path.write_text("driver: ff\ntrainer:\n  lr: 1e-3\n")
    cfg = load_config(str(path), ["trainer.steps=7"])
    assert cfg.trainer.lr == 0.001 and isinstance(cfg.trainer.lr, float) and cfg.trainer.steps == 7


def test_interface_override_deep_merges() -> None:
    data = {
        **BASE,
        "interface_defaults": {"scale": 0.1, "utility": {"kind": "mlp", "hidden": 64, "lr": 1e-4}},
        "interfaces": [
            {"sender": "layer1", "receiver": "layer2", "mode": "cdni", "utility": {"hidden": 8}},
            {"sender": "layer0", "receiver": "layer1", "synthetic_input": {"hidden": 16}},
        ],
    }
    cfg = parse_config(data)
    merged = interface_config(cfg, "layer1", "layer2")
    assert merged.mode == "cdni" and merged.scale == 0.1
    assert (merged.utility.kind, merged.utility.hidden, merged.utility.lr) == ("mlp", 8, 1e-4)
    forward = interface_config(cfg, "layer0", "layer1")
    assert forward.synthetic_input is not None and forward.synthetic_input.hidden == 16
    assert forward.synthetic_input.kind == "mlp"  # filled from SyntheticInputConfig defaults
    plain = interface_config(cfg, "layer2", "layer0")
    assert plain == cfg.interface_defaults and plain is not cfg.interface_defaults
    assert cfg.interface_defaults.utility.hidden == 64  # merging left the defaults alone


def test_override_model_mirrors_interface_config() -> None:
    # Guards against adding a field to InterfaceConfig and forgetting the per-channel override.
    channel_only = {"sender", "receiver", "size", "obs_slice"}  # what a channel is, not how it learns
    assert set(InterfaceOverride.model_fields) == set(InterfaceConfig.model_fields) | channel_only


def test_config_to_yaml_round_trips() -> None:
    data = {
        **BASE,
        "name": "rt",
        "trainer": {"lr": 1e-3},
        "interface_defaults": {"synthetic_input": {"layers": 3}},
        "interfaces": [{"sender": "layer0", "receiver": "layer1", "utility": {"rank": 4}}],
    }
    cfg = parse_config(data)
    text = config_to_yaml(cfg)
    loaded = yaml.safe_load(text)
    assert loaded["trainer"]["steps"] == 1000 and loaded["ff"]["layers"] == 3  # defaults written out
    assert parse_config(loaded) == cfg
    assert config_to_yaml(parse_config(loaded)) == text


def test_bundled_configs_resolve() -> None:
    names = bundled_configs()
    assert names == sorted(names)
    for name in names:
        assert find_config(name) == find_config(f"{name}.yaml")
        assert find_config(name).is_file()


@pytest.mark.parametrize("name", bundled_configs())
def test_bundled_configs_validate(name: str) -> None:
    assert isinstance(load_config(name), Config)


def test_bundled_lookup(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "b_exp.yaml").write_text("# second\ndriver: ff\nname: b\n")
    (tmp_path / "a_exp.yaml").write_text("driver: ff\nname: a\n")
    (tmp_path / "notes.txt").write_text("not a config")
    monkeypatch.setattr(config_mod, "_bundled_dir", lambda: tmp_path)
    assert bundled_configs() == ["a_exp", "b_exp"]
    assert find_config("b_exp") == tmp_path / "b_exp.yaml"
    assert load_config("a_exp.yaml").name == "a"
    with pytest.raises(ConfigError, match=r"^c_exp: no such config file \(bundled configs: a_exp, b_exp\)$"):
        find_config("c_exp")


def test_existing_path_wins(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("driver: ff\n")
    assert find_config(str(path)) == path


def test_every_driver_gives_an_agent_its_own_learning_rate_and_the_trainers_weight_decay() -> None:
    """One lookup (drivers.common.agent_optimizer): an ``agents`` entry's lr, else trainer.lr; the rnn
    driver used to ignore both an agent's lr and trainer.weight_decay, hier the weight decay."""
    import torch

    from dni_agents.data import load_dataset
    from dni_agents.drivers import ff, hier, marl, rnn

    def group(system, name):
        return system.agents[name].optimizer.param_groups[0]

    extra = ["trainer.weight_decay=0.01"]
    cfg = load_config("ff_digits", [*extra, "agents=[{name: layer1, lr: 0.5}]"])
    system = ff.build_system(cfg, load_dataset("digits"), torch.device("cpu"))
    assert group(system, "layer1")["lr"] == 0.5 and group(system, "layer0")["lr"] == cfg.trainer.lr
    assert group(system, "layer0")["weight_decay"] == 0.01
    cfg = load_config("copy", [*extra, "agents=[{name: rnn, lr: 0.5}]"])
    system, _, _ = rnn.build(cfg, 10, 10, None, torch.device("cpu"))
    assert group(system, "rnn")["lr"] == 0.5 and group(system, "rnn")["weight_decay"] == 0.01
    cfg = load_config("hier", [*extra, "agents=[{name: B, lr: 0.5}]"])
    h = hier.build(cfg, 64, torch.device("cpu"))
    assert group(h.system, "B")["lr"] == 0.5 and group(h.system, "A")["lr"] == cfg.trainer.lr
    assert group(h.system, "A")["weight_decay"] == 0.01
    cfg = load_config("referential", [*extra, "agents.0.lr=0.5"])
    system, _, _ = marl.build(cfg, marl.make_env(cfg), torch.device("cpu"))
    assert group(system, cfg.agents[0].name)["lr"] == 0.5
    assert group(system, cfg.agents[1].name)["lr"] == cfg.trainer.lr


def test_configs_compare_by_their_settings_not_by_how_they_were_typed() -> None:
    typed = load_config("speaker_listener", ["trainer.lr=0.003"])  # the file's own value, set again
    assert typed.overrides == ("trainer.lr=0.003",) and load_config("speaker_listener").overrides == ()
    assert typed == load_config("speaker_listener")
    assert load_config("speaker_listener", ["trainer.lr=0.002"]) != load_config("speaker_listener")
    assert load_config("speaker_listener") != load_config("speaker_listener", ["marl.hidden=32"])
