"""The ``marl:`` section of a config: the environment, the networks' size, PPO, the communication metrics."""

from __future__ import annotations

import fnmatch
from typing import Any, Literal

from pydantic import Field, field_validator

from ...config import Config, ConfigError, NonNegFloat, NonNegInt, PosFloat, PosInt, UnitFloat, _Strict
from ...schema import IMPORT_STRING, AgentConfig


class MarlAgentConfig(AgentConfig):
    """One network that controls the environment agents in ``members`` (names or glob patterns; default:
    its own name), which share its parameters."""

    # the environment agents this network controls (names or glob patterns; null: its own name); they share
    # its parameters
    members: list[str] | None = None
    policy: bool = True  # false = no RL policy; its environment action is its message
    candidates: list[PosInt] | None = None  # [n, features]: action i picks input candidate i
    # "package.module:Factory", Factory(in_dim, hidden, **network_kwargs) -> the actor's and the critic's
    # body (a module from (rows, in_dim) to (rows, hidden) features); None: two tanh layers
    network: str | None = None
    # keyword arguments of `network`
    network_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("network")
    @classmethod
    def _network_is_an_import_string(cls, v: str | None) -> str | None:
        if v is not None and not IMPORT_STRING.fullmatch(v):
            raise ValueError(f"{v!r} is not an import string (allowed: package.module:Factory)")
        return v


class PrivateInfoConfig(_Strict):
    """What the sender knows that the receiver needs (for mutual information and projector labels):
    ``info`` names a key of the sender's env info dict, or ``obs_argmax`` = [start, stop) of its obs."""

    # the agent whose private information it is (usually the sender)
    agent: str
    # a key of that agent's env info dict holding an integer per step
    info: str | None = None
    # [start, stop) of its observation whose argmax is the information
    obs_argmax: list[NonNegInt] | None = None
    name: str | None = None  # what it is (goal, digit, ...): the label column and tables (None: info's key)


class MarlConfig(_Strict):
    """Multi-agent RL on a PettingZoo ParallelEnv with PPO; ``trainer.steps`` counts updates, each one
    episode of every environment copy."""

    env: str = "mpe2.simple_speaker_listener_v4"  # a module with parallel_env(), or "module:callable"
    # keyword arguments of the environment (passed to parallel_env, vector_env or the callable)
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    # merged over env_kwargs (a key here replaces the same key there) for every greedy evaluation: during
    # and after training, the controls (ablated / silenced) and ``dni-agents eval`` (``--train-env``: the
    # env_kwargs alone); e.g. {split: test} scores games on pictures the agents never trained on.
    # Evaluation episodes are seeded apart from training ones either way (build.EVAL_SEED)
    eval_env_kwargs: dict[str, Any] = Field(default_factory=dict)
    # environment copies played in lockstep; one update plays one episode in each
    num_envs: PosInt = 64
    max_steps: PosInt = 25  # longest episode; the rollout length
    # components of a message on a channel with no slot in the receiver's observation (with a slot, the slot's
    # width)
    message_size: PosInt = 4
    # tanh keeps messages in [-1, 1]; linear lets them grow (a drifting tanh message can saturate and go dead)
    message_activation: Literal["tanh", "linear"] = "tanh"
    # Message heads start small and random (orthogonal, this gain; 0: every channel starts silent). A
    # utility model that sees only the message needs the goals' messages apart from the start (see
    # docs/benchmarks.md). Mode none keeps this code: noise drowns it, but a receiver on a noiseless
    # channel can learn to read it; with gain 0 and mode none nothing is ever said (docs/communication.md).
    message_init_gain: NonNegFloat = 0.1
    # The frozen control: scale every message head once at the start so that the messages of the first
    # observations have this RMS per component (a fixed random code at the scale trained codes reach)
    message_rms: PosFloat | None = None
    # width of the policy and value networks
    hidden: PosInt = 64
    recurrent: bool = False  # GRU policies
    time_feature: bool = True  # append t / max_steps to every input (time-aware value estimates)
    # discount factor
    gamma: UnitFloat = 0.99
    # GAE's λ
    gae_lambda: UnitFloat = 0.95
    # PPO's clipping range
    clip: PosFloat = 0.2
    epochs: PosInt = 10  # PPO epochs over each batch of episodes
    # minibatches per PPO epoch (split by environment copy)
    minibatches: PosInt = 1
    # The learner's speed-up: networks without memory whose inputs are known in advance replay the whole
    # episode in one forward pass (their channels carry it as one message), and in one process all networks
    # update in one backward pass. false: every network steps through the episode in time and each group of
    # coupled networks has its own backward pass (the reference path; the same results to float rounding)
    batched_replay: bool = True
    # weight of the entropy bonus
    ent_coef: NonNegFloat = 0.01
    # weight of the value loss
    vf_coef: NonNegFloat = 0.5
    # gradients are clipped to this norm, per network
    max_grad_norm: PosFloat = 0.5
    success_reward: float | None = None  # an episode succeeds when its last reward reaches this
    private_info: PrivateInfoConfig | None = None
    mi_resolution: PosFloat = 0.2  # messages closer than this count as one symbol for entropy / MI
    eval_episodes: PosInt = 500  # each greedy evaluation's episodes (every trainer.eval_every updates, end)
    # held-out success rates whose first reaching (updates, games, training seconds) the final JSON reports
    # as time_to_success; checked at every evaluation (unused without success_reward)
    success_thresholds: list[UnitFloat] = Field(default_factory=lambda: [0.8, 0.9])
    # processes that step the environment copies (0: this one); the same results with any number. Not for
    # an environment with its own vector_env (one numpy call for all copies already)
    env_workers: NonNegInt = 0
    # the marl driver's own name for trainer.threads, which it overrides when set (None: trainer.threads);
    # kept so that the configs and commands that set it run as before
    threads: NonNegInt | None = None
    # competitive games: which agents play together, {team: [agent, ...]}; each name a network of
    # ``agents`` (every environment agent it controls) or one environment agent a network controls; an agent
    # plays for one team at most. The evaluation then reports each team's return (``team_returns``, and per
    # control ``ablated_team_returns`` ...) beside ``mean_return``, the mean over every agent. {} or null:
    # no teams (``marl.teams=null`` or ``~marl.teams`` on the command line clears a config's teams:
    # ``marl.teams={...}`` merges into them)
    teams: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("teams", mode="before")
    @classmethod
    def _no_teams(cls, v: Any) -> Any:
        return {} if v is None else v

SECTION = MarlConfig
AGENT_CONFIG = MarlAgentConfig

APPLIES_CHANNELS = True  # the shared schema's channel keys (rial, channel models, message sizes) are marl's


def check_config(cfg: Config) -> None:
    """What pydantic cannot check per field: the agents are listed, the success thresholds are distinct,
    ``private_info`` names an agent, and ``teams`` name agents, each in one team (the environment agents
    they stand for are checked when the networks are built: :func:`~.build.team_members`)."""
    if not cfg.agents:
        raise ConfigError("agents: marl needs its agents listed (e.g. [{name: speaker_0}, "
                          "{name: listener_0}])")
    names = [a.name for a in cfg.agents]
    thresholds = cfg.marl.success_thresholds
    if len(set(thresholds)) != len(thresholds):
        raise ConfigError(f"marl.success_thresholds: {thresholds} repeats a threshold (allowed: distinct "
                          "success rates in [0, 1])")
    private = cfg.marl.private_info
    if private is not None:
        if private.agent not in names:
            raise ConfigError(f"marl.private_info.agent: unknown agent {private.agent!r} "
                              f"(agents: {', '.join(names)})")
        if (private.info is None) == (private.obs_argmax is None):
            raise ConfigError("marl.private_info: give exactly one of info (an env info key) or obs_argmax")
        if private.obs_argmax is not None and (
            len(private.obs_argmax) != 2 or private.obs_argmax[0] >= private.obs_argmax[1]
        ):
            raise ConfigError(f"marl.private_info.obs_argmax: {private.obs_argmax} is not [start, stop)")
    _check_teams(cfg)


def _check_teams(cfg: Config) -> None:
    """``marl.teams``: every name is a network of ``agents`` or matches a network's ``members`` (an
    environment agent it may control), no team is empty, and no name is in two teams."""
    networks = [a.name for a in cfg.agents]
    patterns = [p for a in cfg.agents for p in (a.members or [a.name])]
    seen: dict[str, str] = {}
    for team, names in cfg.marl.teams.items():
        if not team or "/" in team:
            raise ConfigError(f"marl.teams: team name {team!r} must be non-empty and have no '/' (it names "
                              "the scalar return/team/<team>)")
        if not names:
            raise ConfigError(f"marl.teams.{team}: no agents (list at least one of: {', '.join(networks)})")
        for name in names:
            if name not in networks and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
                raise ConfigError(f"marl.teams.{team}: unknown agent {name!r} (allowed: the agents "
                                  f"{', '.join(networks)} or the environment agents their members name)")
            if name in seen:
                where = "twice in this team" if seen[name] == team else f"already in team {seen[name]!r}"
                raise ConfigError(f"marl.teams.{team}: agent {name!r} is {where} (an agent plays for one "
                                  "team)")
            seen[name] = team
