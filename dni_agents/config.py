"""Experiment configuration: a typed schema, YAML loading, dotted overrides and one-line errors.

A config is a YAML mapping validated against :class:`Config`. Every error a user can make is
reported as a :class:`ConfigError` whose message is one line, ``<key.path>: <problem> (<allowed>)``,
so the CLI can print it without a traceback.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.resources
import pathlib
import re
import types
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pydantic
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import registry
from .core.interface import Mode  # defined once, in the core

ChannelMode = Literal[Mode, "rial"]  # rial: the environment carries the message (marl)
UTILITY_KINDS = ("linear", "mlp", "conv")
_IMPORT_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
Optimizer = Literal["adam", "sgd"]
PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
UnitFloat = Annotated[float, Field(ge=0, le=1)]

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_DEVICE_RE = re.compile(r"cpu|auto|cuda(:\d+)?")


class ConfigError(ValueError):
    """A user mistake in a config; the message is one line so the CLI can print it as-is."""

    user_error = True

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def import_object(spec: str, key: str, default_attr: str | None = None) -> Any:
    """The object an import string ``package.module:name`` names (``package.module`` alone: its
    ``default_attr``), for the config key ``key``; a one-line ConfigError if it cannot be had."""
    module_name, _, attr = spec.partition(":")
    attr = attr or default_attr or ""
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{key}: cannot import {module_name!r} ({exc})") from None
    obj: Any = module
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part, None)
    if not attr or obj is None:
        raise ConfigError(f"{key}: module {module_name!r} has no {attr or 'object named'!r} (from {spec!r})")
    return obj


class _Strict(BaseModel):
    """Unknown keys are errors: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid")


class TrainerConfig(_Strict):
    steps: PosInt = 1000
    batch_size: PosInt = 256
    optimizer: Optimizer = "adam"
    lr: PosFloat = 3e-4
    weight_decay: NonNegFloat = 0.0
    fused: bool = False  # Adam as one kernel for all tensors: faster for small networks, rounds differently
    eval_every: NonNegInt = 0  # 0: evaluate only at the end
    checkpoint_every: NonNegInt = 0  # 0: checkpoint only at the end
    on_nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/Inf loss, ĝ, target or gradient: stop, or skip it


class LogConfig(_Strict):
    dir: str = "runs"
    every: PosInt = 50
    histogram_every: PosInt = 500
    embedding_samples: NonNegInt = 512  # messages written to the projector at the end; 0 = none


class AgentConfig(_Strict):
    """One network with its own optimizer. In ``marl`` it controls the environment agents in ``members``
    (names or glob patterns; default: its own name), which share its parameters."""

    name: str
    period: PosInt = 1
    lr: PosFloat | None = None
    members: list[str] | None = None  # marl only
    policy: bool = True  # marl only: false = no RL policy; its environment action is its message
    candidates: list[PosInt] | None = None  # marl only: [n, features], action i picks input candidate i
    # marl only: "package.module:Factory", Factory(in_dim, hidden, **network_kwargs) -> the actor's and the
    # critic's body (a module from (rows, in_dim) to (rows, hidden) features); None: two tanh layers
    network: str | None = None
    network_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("network")
    @classmethod
    def _network_is_an_import_string(cls, v: str | None) -> str | None:
        if v is not None and not _IMPORT_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not an import string (allowed: package.module:Factory)")
        return v


class UtilityConfig(_Strict):
    """The model that predicts the gradient a receiver will send back (the synthetic gradient)."""

    # one of ours, or "package.module:Class": Class(message_shape, context_dim=, gate=, **kwargs) -> a module
    # whose forward(message, context) returns ĝ shaped like the message (docs: README "Extending")
    kind: str = "linear"
    kwargs: dict[str, Any] = Field(default_factory=dict)  # for a kind given by import string
    hidden: PosInt = 1024
    layers: PosInt = 2
    rank: PosInt | None = None  # low-rank linear utility model
    normalize: bool = False  # layer-norm the message first (RNN states whose scale drifts)
    gate: bool = False  # cdni: ĝ is linear in the context's tail (marl: the receiver's advantage × (e_a − π))
    squash_input: bool = False  # the model sees tanh(message): bounded input for unbounded messages
    horizon: NonNegInt = 0  # marl cdni, recurrent receiver: gate on its next `horizon` decisions too
    optimizer: Optimizer = "adam"
    lr: PosFloat | None = None  # None: trainer.lr

    @field_validator("kind")
    @classmethod
    def _known_kind_or_import_string(cls, v: str) -> str:
        if v in UTILITY_KINDS or _IMPORT_RE.fullmatch(v):
            return v
        close = difflib.get_close_matches(v, UTILITY_KINDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"{v!r} is not allowed ({hint}allowed: {', '.join(UTILITY_KINDS)}, or an import "
                         "string package.module:Class)")


class SyntheticInputConfig(_Strict):
    """Forward unlocking: the receiver predicts its input instead of waiting for the sender."""

    kind: Literal["linear", "mlp"] = "mlp"
    hidden: PosInt = 1024
    layers: PosInt = 2
    lr: PosFloat | None = None


class ChannelConfig(_Strict):
    """What the channel does to a message (DIAL's discretise/regularise unit) and when it is heard."""

    noise: NonNegFloat = 0.0  # std of Gaussian noise on the message in training
    discretize: bool = False  # training: tanh(message + noise); evaluation: one of `levels` values exactly
    levels: Annotated[int, Field(ge=2)] = 2
    delay: Literal[0, 1] = 1  # 0: heard in the step it is sent (the sender acts first); 1: the next step
    # training: probability that the channel is down for a whole episode of one environment copy (the
    # receiver hears silence, the sender gets no gradient), so silence means "no information"
    outage: Annotated[float, Field(ge=0, lt=1)] = 0.0


class InterfaceConfig(_Strict):
    mode: ChannelMode = "dni"
    scale: NonNegFloat = 1.0  # synthetic gradient is multiplied by this before use
    lambda_true: UnitFloat = 0.0  # >0: BP(lambda), lambda*true + (1-lambda)*synthetic
    warmup_steps: NonNegInt = 0  # utility model learns but its gradient is not applied yet
    utility: UtilityConfig = Field(default_factory=UtilityConfig)
    synthetic_input: SyntheticInputConfig | None = None
    channel: ChannelConfig = Field(default_factory=ChannelConfig)  # marl: noise, discretisation, delay


class InterfaceOverride(_Strict):
    """Per-channel overrides; None inherits ``interface_defaults``, dicts deep-merge onto them.

    ``utility`` and ``synthetic_input`` stay partial dicts here and are validated after merging,
    so a channel can change one utility field without restating the rest.
    """

    sender: str
    receiver: str
    mode: ChannelMode | None = None
    size: PosInt | None = None  # marl: message size (default marl.message_size)
    obs_slice: list[NonNegInt] | None = None  # marl: [start, stop) of the receiver's observation it fills
    scale: NonNegFloat | None = None
    lambda_true: UnitFloat | None = None
    warmup_steps: NonNegInt | None = None
    utility: dict[str, Any] | None = None
    synthetic_input: dict[str, Any] | None = None
    channel: dict[str, Any] | None = None












class DistributedConfig(_Strict):
    """Agents on several processes (``dni-agents train CONFIG --procs N`` or ``torchrun``)."""

    placement: dict[str, NonNegInt] | None = None  # agent -> rank; None: stages (ff), A: 0, B: 1 (hier)
    max_staleness: NonNegInt = 0  # a sender runs at most this many steps (hier: blocks) ahead of its targets
    timeout: PosFloat = 30.0  # seconds to wait for a peer before failing with an error naming it
    addr: str = "127.0.0.1"  # rendezvous address (--procs); loopback unless asked
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on CUDA devices, else gloo


class Config(_Strict):
    """The keys every run has. A run's config is :func:`config_class` of its driver: these plus the driver's
    own section, named like the driver (``marl:``), whose schema the driver owns (``SECTION``)."""

    name: str = "run"  # run folder is <log.dir>/<name>
    driver: str
    seed: NonNegInt = 0
    device: str = "cpu"
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    agents: list[AgentConfig] = Field(default_factory=list)
    interface_defaults: InterfaceConfig = Field(default_factory=InterfaceConfig)
    interfaces: list[InterfaceOverride] = Field(default_factory=list)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        # The name becomes a folder: no separators, and never "." or "..".
        if not _NAME_RE.fullmatch(value) or set(value) == {"."}:
            raise ValueError(f"{value!r} is not a valid run name (allowed: letters, digits, _ . -)")
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a device (allowed: cpu, cuda, cuda:N, auto)")
        return value


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
    section = getattr(driver_module(driver), "SECTION", None)
    if section is None:
        return Config
    field = (section, Field(default_factory=section))
    return pydantic.create_model(f"{section.__name__.removesuffix('Config')}RunConfig", __base__=Config,
                                 **{driver: field})


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
    by index, as ``interfaces.0.mode=none`` or ``interfaces[0].mode=none``; an index must exist.
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
    """Merge dotted overrides with OmegaConf, one at a time so an error names its override."""
    try:
        conf = OmegaConf.create(data)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config: unsupported content ({_first_line(exc)})") from None
    for override in overrides:
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
            if (agent.members is not None or not agent.policy or agent.candidates is not None
                    or agent.network is not None or agent.network_kwargs):
                raise ConfigError(f"agents[{i}]: members, policy, candidates and network are marl settings "
                                  f"(driver is {cfg.driver})")
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


_TYPE_WORDS = {
    "int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
    "dict": "a mapping", "model": "a mapping", "list": "a list",
}  # fmt: skip
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _to_config_error(exc: ValidationError, root: type[BaseModel], prefix: tuple = ()) -> ConfigError:
    """Turn pydantic's first error into ``<path>: <problem> (<allowed>)``."""
    err = exc.errors(include_url=False)[0]
    loc, kind, given = tuple(err["loc"]), err["type"], err.get("input")
    ctx = err.get("ctx") or {}
    path = _path(prefix + loc)
    if kind == "extra_forbidden":
        parent = _type_at(root, loc[:-1])
        fields = list(parent.model_fields) if _is_model(parent) else []
        close = difflib.get_close_matches(str(loc[-1]), fields, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "allowed: " + ", ".join(fields)
        return ConfigError(f"{path}: unknown key ({hint})")
    allowed = _literal_values(_type_at(root, loc))
    if kind == "missing":
        return ConfigError(f"{path}: required" + (f" (allowed: {', '.join(allowed)})" if allowed else ""))
    if kind == "literal_error" and allowed:
        close = difflib.get_close_matches(str(given), allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return ConfigError(f"{path}: {given!r} is not allowed ({hint}allowed: {', '.join(allowed)})")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = next(k for k in _BOUNDS if k in ctx)
        return ConfigError(f"{path}: must be {_BOUNDS[bound]} {ctx[bound]:g}, got {given!r}")
    base = kind.split("_")[0]
    if base in _TYPE_WORDS and kind.endswith(("_type", "_parsing", "_from_float", "_attributes_type")):
        return ConfigError(f"{path}: expected {_TYPE_WORDS[base]}, got {_short_repr(given)}")
    if kind == "value_error" and "error" in ctx:
        return ConfigError(f"{path}: {ctx['error']}")
    return ConfigError(f"{path}: {err['msg']}")


def _path(loc: tuple) -> str:
    out = ""
    for key in loc:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out or "config"


def _unwrap(tp: Any) -> Any:
    """Strip Annotated and Optional so the model, list or Literal underneath is visible."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _type_at(root: Any, loc: tuple) -> Any:
    """The schema type at a pydantic error location, or None where the schema has no such key."""
    tp = root
    for key in loc:
        tp = _unwrap(tp)
        if _is_model(tp) and key in tp.model_fields:
            tp = tp.model_fields[key].annotation
        elif get_origin(tp) is list and isinstance(key, int):
            tp = get_args(tp)[0]
        else:
            return None
    return _unwrap(tp)


def _literal_values(tp: Any) -> list[str]:
    return [str(v) for v in get_args(tp)] if get_origin(tp) is Literal else []


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
