"""Experiment configuration: a typed schema, YAML loading, dotted overrides and one-line errors.

A config is a YAML mapping validated against :class:`Config`. Every error a user can make is
reported as a :class:`ConfigError` whose message is one line, ``<key.path>: <problem> (<allowed>)``,
so the CLI can print it without a traceback.

A driver's own settings live under its name (``marl:``) in a model derived from :data:`Section`, the strict
base every section of ours uses (an unknown key is an error naming the closest one); the driver hands the
class to the registry as ``SECTION`` (:mod:`dni_agents.registry`).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.resources
import pathlib
import types
from collections.abc import Sequence
from typing import Any

import pydantic
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import Field, ValidationError

from . import registry
from .config_errors import _first_line, _to_config_error
from .schema import (
    UTILITY_KINDS,
    AgentConfig,
    ChannelConfig,
    Config,
    ConfigError,
    DistributedConfig,
    InterfaceConfig,
    InterfaceOverride,
    LogConfig,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    TrainerConfig,
    UnitFloat,
    UtilityConfig,
    _Strict,
    import_object,
)

Section = _Strict
"""The base class of a config section (a driver's ``SECTION``, and any mapping inside one): a pydantic
model that refuses unknown keys, so a typo is a one-line error instead of a silent default. Fields use
pydantic's types and the bounded ones here (``PosInt``, ``UnitFloat``, ...)."""

__all__ = [  # and the schema's names, where drivers (a user's too) have always imported them from
    "UTILITY_KINDS", "AgentConfig", "ChannelConfig", "Config", "ConfigError", "DistributedConfig",
    "InterfaceConfig", "InterfaceOverride", "LogConfig", "NonNegFloat", "NonNegInt", "PosFloat", "PosInt",
    "Section", "TrainerConfig", "UnitFloat", "UtilityConfig", "_Strict", "agent_names", "bundled_configs",
    "config_class", "config_to_yaml", "driver_module", "find_config", "import_object", "interface_config",
    "load_config", "parse_config",
]

# --------------------------------------------------------------------------------------------
# Public helpers


def driver_module(name: str, table: dict[str, str] | None = None) -> types.ModuleType:
    """The driver ``name`` (:mod:`dni_agents.registry`, or the ``table`` read from it), imported; one line
    naming the drivers there are if it is unknown."""
    table = registry.drivers() if table is None else table
    if name not in table:
        close = difflib.get_close_matches(name, sorted(table), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"driver: unknown driver {name!r} ({hint}allowed: {', '.join(sorted(table))})")
    return importlib.import_module(table[name])


@functools.cache
def config_class(driver: str) -> type[Config]:
    """The config model of a run of ``driver``: the shared keys and the driver's ``SECTION`` under its name
    (cached: a pydantic model is built once per driver and never changes)."""
    module = driver_module(driver)
    section, agent = getattr(module, "SECTION", None), getattr(module, "AGENT_CONFIG", None)
    fields: dict[str, Any] = {}
    if section is not None:
        fields[driver] = (section, Field(default_factory=section))
    if agent is not None:  # the driver's agents have settings of their own (marl: members, policy, network)
        if not (isinstance(agent, type) and issubclass(agent, AgentConfig)):
            raise TypeError(f"driver {driver}: AGENT_CONFIG must be a subclass of AgentConfig, got {agent!r}")
        fields["agents"] = (list[agent], Field(default_factory=list))
    if not fields:
        return Config
    name = section.__name__.removesuffix("Config") if section is not None else driver.title()
    return pydantic.create_model(f"{name}RunConfig", __base__=Config, **fields)


def agent_names(cfg: Config, module: types.ModuleType | None = None) -> list[str]:
    """The agents a run has: the driver's ``agent_names`` (ff derives one per layer), else the config's."""
    names = getattr(module or driver_module(cfg.driver), "agent_names", None)
    return names(cfg) if names is not None else [agent.name for agent in cfg.agents]


def interface_config(cfg: Config, sender: str, receiver: str) -> InterfaceConfig:
    """The settings of one channel: ``interface_defaults`` with the matching override merged in."""
    for override in cfg.interfaces:
        if (override.sender, override.receiver) == (sender, receiver):
            return _merge_interface(cfg.interface_defaults, override)
    return cfg.interface_defaults.model_copy(deep=True)


def bundled_configs() -> list[str]:
    """Names of the configs shipped in ``dni_agents.configs``, usable wherever a path is."""
    return sorted(
        entry.name[: -len(".yaml")] for entry in _bundled_dir().iterdir() if entry.name.endswith(".yaml")
    )


def find_config(name_or_path: str) -> pathlib.Path:
    """Resolve an existing file, else a bundled config name (``.yaml`` optional)."""
    path = pathlib.Path(name_or_path)
    if path.is_file():
        return path
    stem = name_or_path[: -len(".yaml")] if name_or_path.endswith(".yaml") else name_or_path
    if stem in bundled_configs():
        return pathlib.Path(str(_bundled_dir() / f"{stem}.yaml"))
    bundled = ", ".join(bundled_configs()) or "none"
    raise ConfigError(f"{name_or_path}: no such config file (bundled configs: {bundled})")


def load_config(name_or_path: str, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config, apply dotted overrides, validate; see :func:`parse_config`."""
    path = find_config(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot parse"
        raise ConfigError(f"{path}: invalid YAML{where} ({problem})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return parse_config(data, overrides)


def parse_config(data: dict[str, Any], overrides: Sequence[str] = ()) -> Config:
    """Validate a config mapping after applying ``key.sub=value`` overrides.

    Overrides go through OmegaConf (``DictConfig.merge_with_dotlist``); values are YAML scalars
    (``trainer.lr=1e-3`` is a float, ``x=null`` is None) or YAML flow collections
    (``interfaces=[{sender: layer0, receiver: layer1, mode: none}]``). List items are addressed
    by index, as ``interfaces.0.mode=none`` or ``interfaces[0].mode=none``; an index must exist. A
    mapping value merges into the mapping it replaces (``marl.env_kwargs={split: test}`` keeps the file's
    other keys); ``~key`` deletes a key of the file (Hydra's syntax), so the schema's default applies, and
    ``~marl.env_kwargs marl.env_kwargs={split: test}`` replaces a mapping. Overrides apply in order.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"config: top level must be a mapping of keys, got {type(data).__name__}")
    data = _apply_overrides(data, overrides)
    table = registry.drivers()  # read once: each read scans the installed packages' metadata
    names = sorted(table)
    driver = data.get("driver")
    if driver is None:
        raise ConfigError(f"driver: required (allowed: {', '.join(names)})")
    if not isinstance(driver, str) or driver not in table:
        close = difflib.get_close_matches(str(driver), names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"driver: {driver!r} is not allowed ({hint}allowed: {', '.join(names)})")
    module = driver_module(driver, table)
    data = _without_other_sections(data, driver, table)
    cls = config_class(driver)
    try:
        cfg = cls.model_validate(data)
    except ValidationError as exc:
        raise _to_config_error(exc, cls) from None
    _check_cross_fields(cfg, module)
    check = getattr(module, "check_config", None)
    if check is not None:
        check(cfg)
    cfg._overrides = tuple(overrides)
    return cfg


def _without_other_sections(data: dict[str, Any], driver: str, drivers: dict[str, str]) -> dict[str, Any]:
    """``data`` without the sections of other drivers that only restate their defaults (the config.yaml of
    a run recorded before each driver owned its section carries them all); any other is an error."""
    out = dict(data)
    for other in drivers:
        if other == driver or other not in out:
            continue
        section = getattr(driver_module(other, drivers), "SECTION", None)
        defaults = section().model_dump(mode="json") if section is not None else None
        if out[other] not in ({}, None, defaults):
            raise ConfigError(f"{other}: a section of driver {other} (this config's driver is {driver}; "
                              "leave it out)")
        del out[other]
    return out


def config_to_yaml(cfg: Config) -> str:
    """The resolved config (every default filled in), as a run records it next to its results."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------------------------
# Internals


def _bundled_dir() -> Any:
    """The bundled configs folder (an importlib Traversable); a function so tests can redirect it."""
    return importlib.resources.files("dni_agents.configs")


def _apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Merge dotted overrides with OmegaConf, one at a time so an error names its override; ``~key``
    deletes ``key``."""
    try:
        conf = OmegaConf.create(data)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config: unsupported content ({_first_line(exc)})") from None
    for override in overrides:
        if override.startswith("~"):
            _delete(conf, override)
            continue
        key, sep, _ = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r}: expected key=value (e.g. trainer.lr=1e-3)")
        _check_list_index(conf, key.strip())
        try:
            conf.merge_with_dotlist([override])
        except (OmegaConfBaseException, ValueError, TypeError) as exc:
            raise ConfigError(f"{key}: cannot apply override {override!r} ({_first_line(exc)})") from None
    try:
        return OmegaConf.to_container(conf, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config: cannot resolve interpolation ({_first_line(exc)})") from None


def _delete(conf: Any, override: str) -> None:
    """``~a.b.c``: remove key ``c`` of the mapping ``a.b`` (or item ``c`` of a list), which must exist."""
    key = override[1:].strip()
    if not key or "=" in key:
        raise ConfigError(f"override {override!r}: expected ~key, which deletes that key (e.g. "
                          "~marl.eval_env_kwargs.split)")
    parts = key.replace("[", ".").replace("]", "").split(".")
    parent_key, last = ".".join(parts[:-1]), parts[-1]
    parent = OmegaConf.select(conf, parent_key, default=None) if parent_key else conf
    if OmegaConf.is_dict(parent) and last in parent:
        del parent[last]
    elif OmegaConf.is_list(parent) and last.isdigit() and int(last) < len(parent):
        del parent[int(last)]
    elif parent is None or not (OmegaConf.is_dict(parent) or OmegaConf.is_list(parent)):
        what = "is not in the config: nothing to delete"
        if parent is not None:
            what = f"is {parent!r}, not a mapping"
        raise ConfigError(f"{key}: cannot delete ({parent_key} {what})")
    elif OmegaConf.is_list(parent):
        raise ConfigError(f"{key}: cannot delete ({parent_key} has {len(parent)} items; no item {last})")
    else:
        where = f"{parent_key} has no key {last!r}" if parent_key else f"the config has no key {last!r}"
        present = list(parent.keys())
        close = difflib.get_close_matches(last, [str(k) for k in present], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        keys = f"{hint}keys there: {', '.join(str(k) for k in present)}" if present else "nothing to delete"
        raise ConfigError(f"{key}: cannot delete ({where}; {keys})")


def _check_list_index(conf: Any, key: str) -> None:
    """``interfaces.0.mode=x`` needs an item 0 already: say so, and how to add items, instead of letting
    OmegaConf turn the list into a mapping with key '0'."""
    parts = key.replace("[", ".").replace("]", "").split(".")
    for i, part in enumerate(parts[1:], start=1):
        if not part.isdigit():
            continue
        prefix = ".".join(parts[:i])
        items = OmegaConf.select(conf, prefix, default=None)
        count = len(items) if OmegaConf.is_list(items) else 0
        if int(part) >= count:
            raise ConfigError(
                f"{prefix}[{part}]: no such item ({prefix} has {count}); to set the whole list write "
                f"{prefix}=[{{...}}, ...]"
            )


def _check_cross_fields(cfg: Config, module: types.ModuleType) -> None:
    """Checks pydantic cannot express per field: names must refer to agents that exist."""
    seen: set[str] = set()
    for i, agent in enumerate(cfg.agents):
        if agent.name in seen:
            raise ConfigError(f"agents[{i}].name: duplicate agent {agent.name!r} (names must be unique)")
        seen.add(agent.name)
    names = agent_names(cfg, module)
    known = ", ".join(names) or "none"
    channels = getattr(module, "APPLIES_CHANNELS", False)  # marl: rial, channel models, message sizes
    if hasattr(module, "agent_names"):  # the driver derives its agents; `agents` entries may only tune them
        for i, agent in enumerate(cfg.agents):
            if agent.name not in names:
                raise ConfigError(f"agents[{i}].name: unknown agent {agent.name!r} (agents: {known})")
    for agent in (cfg.distributed.placement or {}):
        if agent not in names:
            raise ConfigError(f"distributed.placement.{agent}: unknown agent {agent!r} (agents: {known})")
    if not channels:
        if cfg.interface_defaults.mode == "rial":
            raise ConfigError(f"interface_defaults.mode: 'rial' needs driver marl (driver is {cfg.driver})")
        if cfg.interface_defaults.channel != ChannelConfig():
            raise ConfigError(f"interface_defaults.channel: only the marl driver applies channels (driver is "
                              f"{cfg.driver}; leave it out)")
    pairs: set[tuple[str, str]] = set()
    for i, override in enumerate(cfg.interfaces):
        for role in ("sender", "receiver"):
            name = getattr(override, role)
            if name not in names:
                raise ConfigError(f"interfaces[{i}].{role}: unknown agent {name!r} (agents: {known})")
        pair = (override.sender, override.receiver)
        if pair in pairs:
            raise ConfigError(f"interfaces[{i}]: duplicate channel {pair[0]} -> {pair[1]} (one entry each)")
        pairs.add(pair)
        if not channels:
            for key in ("size", "obs_slice", "channel"):
                if getattr(override, key) is not None:
                    raise ConfigError(f"interfaces[{i}].{key}: a marl setting (driver is {cfg.driver})")
            if override.mode == "rial":
                raise ConfigError(f"interfaces[{i}].mode: 'rial' needs driver marl (driver is {cfg.driver})")
        if override.obs_slice is not None and (
            len(override.obs_slice) != 2 or override.obs_slice[0] >= override.obs_slice[1]
        ):
            raise ConfigError(f"interfaces[{i}].obs_slice: {override.obs_slice} is not [start, stop)")
        try:
            _merge_interface(cfg.interface_defaults, override)
        except ValidationError as exc:
            raise _to_config_error(exc, InterfaceConfig, ("interfaces", i)) from None


def _merge_interface(defaults: InterfaceConfig, override: InterfaceOverride) -> InterfaceConfig:
    merged = defaults.model_dump()
    skip = {"sender", "receiver", "size", "obs_slice"}
    given = {k: v for k, v in override.model_dump(exclude=skip).items() if v is not None}
    return InterfaceConfig.model_validate(_deep_merge(merged, given))


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
