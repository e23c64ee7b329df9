"""The config schema: the keys every run shares (:class:`Config`, pydantic models that refuse unknown keys),
the types a driver's own section is built from, and :class:`ConfigError`, the one-line user error.

A driver adds its section (``SECTION``) under its own name; :func:`dni_agents.config.config_class` builds
the model of a run of that driver."""

from __future__ import annotations

import difflib
import importlib
import importlib.resources
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from .core.interface import Mode  # defined once, in the core

ChannelMode = Literal[Mode, "rial"]  # rial: the environment carries the message (marl)
UTILITY_KINDS = ("linear", "mlp", "conv")
IMPORT_STRING = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
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
    # how long to train: minibatches (ff), PPO updates (marl), windows (rnn), B's updates (hier)
    steps: PosInt = 1000
    # examples per minibatch (ff), sequences per window (rnn), digit streams (hier); marl's batch is
    # marl.num_envs
    batch_size: PosInt = 256
    # every agent's optimizer
    optimizer: Optimizer = "adam"
    # every agent's learning rate, unless the agent sets its own (agents[].lr)
    lr: PosFloat = 3e-4
    # the optimizers' weight decay
    weight_decay: NonNegFloat = 0.0
    fused: bool = False  # Adam as one kernel for all tensors: faster for small networks, rounds differently
    eval_every: NonNegInt = 0  # 0: evaluate only at the end
    checkpoint_every: NonNegInt = 0  # 0: checkpoint only at the end
    on_nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/Inf loss, ĝ, target or gradient: stop, or skip it
    # torch intra-op threads while training (0: torch's default, one per core). One by default: these
    # networks gain little from more, and threads beyond the free cores spin beside another CPU-bound
    # process (docs/benchmarks.md measures both)
    threads: NonNegInt = 1


class LogConfig(_Strict):
    # where run folders go: <log.dir>/<name>
    dir: str = "runs"
    # steps between two logged points of the scalars (and the statistics of ĝ)
    every: PosInt = 50
    # histograms (and marl's projector snapshots) every that many steps, never at the untrained step 0,
    # always at the last; "auto": trainer.steps // 5, so any run shows about five
    histogram_every: PosInt | Literal["auto"] = "auto"
    embedding_samples: NonNegInt = 512  # messages written to each projector snapshot; 0 = none


class AgentConfig(_Strict):
    """One network with its own optimizer, ticking every ``period`` steps. A driver whose agents have more
    settings extends this (its ``AGENT_CONFIG``: marl's agents have members, a policy, a network)."""

    # the agent's name, used by interfaces and distributed.placement
    name: str
    # the agent ticks every `period` steps of the clock
    period: PosInt = 1
    # this agent's learning rate (null: trainer.lr)
    lr: PosFloat | None = None


class UtilityConfig(_Strict):
    """The model that predicts the gradient a receiver will send back (the synthetic gradient)."""

    # one of ours, or "package.module:Class": Class(message_shape, context_dim=, gate=, **kwargs) -> a module
    # whose forward(message, context) returns ĝ shaped like the message (docs/extending.md)
    kind: str = "linear"
    kwargs: dict[str, Any] = Field(default_factory=dict)  # for a kind given by import string
    # width of an mlp / conv utility model's hidden layers
    hidden: PosInt = 1024
    # layers of an mlp / conv utility model
    layers: PosInt = 2
    rank: PosInt | None = None  # low-rank linear utility model
    normalize: bool = False  # layer-norm the message first (RNN states whose scale drifts)
    gate: bool = False  # cdni: ĝ is linear in the context's tail (marl: the receiver's advantage × (e_a − π))
    squash_input: bool = False  # the model sees tanh(message): bounded input for unbounded messages
    horizon: NonNegInt = 0  # marl cdni, recurrent receiver: gate on its next `horizon` decisions too
    # the utility model's own optimizer
    optimizer: Optimizer = "adam"
    lr: PosFloat | None = None  # None: trainer.lr

    @field_validator("kind")
    @classmethod
    def _known_kind_or_import_string(cls, v: str) -> str:
        if v in UTILITY_KINDS or IMPORT_STRING.fullmatch(v):
            return v
        close = difflib.get_close_matches(v, UTILITY_KINDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"{v!r} is not allowed ({hint}allowed: {', '.join(UTILITY_KINDS)}, or an import "
                         "string package.module:Class)")


class SyntheticInputConfig(_Strict):
    """Forward unlocking: the receiver predicts its input instead of waiting for the sender."""

    # the model that predicts the message from the sender's input
    kind: Literal["linear", "mlp"] = "mlp"
    # width of its hidden layers (mlp)
    hidden: PosInt = 1024
    # its layers (mlp)
    layers: PosInt = 2
    # its learning rate (null: trainer.lr)
    lr: PosFloat | None = None


class ChannelConfig(_Strict):
    """What the channel does to a message (DIAL's discretise/regularise unit) and when it is heard."""

    noise: NonNegFloat = 0.0  # std of Gaussian noise on the message in training
    discretize: bool = False  # training: tanh(message + noise); evaluation: one of `levels` values exactly
    # values per component of a discretised message in evaluation
    levels: Annotated[int, Field(ge=2)] = 2
    delay: Literal[0, 1] = 1  # 0: heard in the step it is sent (the sender acts first); 1: the next step
    # training: probability that the channel is down for a whole episode of one environment copy (the
    # receiver hears silence, the sender gets no gradient), so silence means "no information"
    outage: Annotated[float, Field(ge=0, lt=1)] = 0.0


class InterfaceConfig(_Strict):
    # how the gradient crosses a channel: dni (synthetic gradient ĝ from a utility model of the message), cdni
    # (the utility model also sees context), backprop (the true gradient: the coupled baseline), none (no
    # gradient), rial (marl: the message is the sender's discrete action, learned by RL alone)
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

    # the agent that sends the message
    sender: str
    # the agent that receives it (and whose true gradient trains the utility model)
    receiver: str
    # this channel's mode (null: interface_defaults.mode)
    mode: ChannelMode | None = None
    size: PosInt | None = None  # marl: message size (default marl.message_size)
    obs_slice: list[NonNegInt] | None = None  # marl: [start, stop) of the receiver's observation it fills
    # null: interface_defaults.scale
    scale: NonNegFloat | None = None
    # null: interface_defaults.lambda_true
    lambda_true: UnitFloat | None = None
    # null: interface_defaults.warmup_steps
    warmup_steps: NonNegInt | None = None
    # keys of interface_defaults.utility to change on this channel, merged over them
    utility: dict[str, Any] | None = None
    # keys of interface_defaults.synthetic_input to change on this channel
    synthetic_input: dict[str, Any] | None = None
    # keys of interface_defaults.channel to change on this channel (marl)
    channel: dict[str, Any] | None = None


class DistributedConfig(_Strict):
    """Agents on several processes (``dni-agents train CONFIG --procs N`` or ``torchrun``)."""

    placement: dict[str, NonNegInt] | None = None  # agent -> rank; None: stages (ff, marl), A: 0, B: 1 (hier)
    max_staleness: NonNegInt = 0  # steps (hier: blocks, marl: minibatches) a sender runs ahead of its targets
    timeout: PosFloat = 30.0  # seconds to wait for a peer before failing with an error naming it
    addr: str = "127.0.0.1"  # rendezvous address (--procs); loopback unless asked
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on CUDA devices, else gloo


class Config(_Strict):
    """The keys every run has. A run's config is :func:`config_class` of its driver: these plus the driver's
    own section, named like the driver (``marl:``), whose schema the driver owns (``SECTION``)."""

    name: str = "run"  # run folder is <log.dir>/<name>
    # which driver trains the run: ff, hier, marl, rnn, or one an installed package declares
    driver: str
    # seeds every random draw of the run (initialisation, data order, environments)
    seed: NonNegInt = 0
    # cpu, cuda, cuda:N, or auto (cuda when there is one)
    device: str = "cpu"
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    agents: list[AgentConfig] = Field(default_factory=list)
    interface_defaults: InterfaceConfig = Field(default_factory=InterfaceConfig)
    interfaces: list[InterfaceOverride] = Field(default_factory=list)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    _overrides: tuple[str, ...] = PrivateAttr(default=())  # set by parse_config

    def __eq__(self, other: object) -> bool:
        """Equal settings make equal configs, however they were typed (``overrides`` does not count: a
        run's ``config.yaml`` loads back equal to the config it was started with)."""
        if not isinstance(other, Config):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable, as pydantic's models are

    @property
    def overrides(self) -> tuple[str, ...]:
        """The command line's ``KEY=VALUE`` / ``~KEY`` overrides this config was loaded with, in order:
        what the user changed, which the HParams table compares runs by."""
        return self._overrides

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
