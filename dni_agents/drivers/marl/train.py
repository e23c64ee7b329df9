"""The training loop (open or resume a run, play, learn, log, checkpoint) and greedy evaluation on the
held-out environment (``marl.eval_env_kwargs``) during and after training, with the controls (messages
shuffled or silenced), the time to a held-out success rate and, for discretised channels, the protocol
(topographic similarity, entropy per position, message → meaning table). What TensorBoard shows of it:
docs/tensorboard.md."""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path
from typing import Any

import torch

from ...config import Config
from ...runtime.checkpoint import load_system, save_checkpoint
from ...runtime.finished import finished_run, restore_finished
from ...runtime.loop import Loop, step_generator
from ...runtime.run import open_run, resolve_device, with_threads
from ...runtime.stop import StopRequest
from .build import CHECKPOINT, EVAL_SEED, build, team_members
from .controls import FidelityHistory, channel_stats
from .env import eval_config, eval_env_kwargs, make_env
from .learn import ppo_update
from .metrics import (
    channel_aliases,
    comm_metrics,
    custom_layout,
    eval_curves,
    log_episode,
    log_histograms,
    log_losses,
    log_projector,
    log_protocol,
    protocol_report,
    results_markdown,
    stat_tag,
)
from .parts import Channel, Episode, Group
from .rollout import Player, calibrate_messages


def episode_metrics(cfg: Config, ep: Episode, groups: list[Group]) -> dict[str, float]:
    """Mean episode return per environment agent (``return/<agent>``), their mean over every agent
    (``return/mean``: opposing teams together in a competitive game), with ``marl.teams`` each team's mean
    over its agents (``return/team/<team>``), and the success rate (last reward >= success_reward)."""
    out: dict[str, float] = {}
    last_rewards = []
    last = (ep.alive.sum(0) - 1).clamp_min(0)  # index of each copy's last step
    for g in groups:
        r = ep.rewards[g.name] * ep.alive[..., None]
        for i, m in enumerate(g.members):
            out[f"return/{m}"] = float(r[..., i].sum(0).mean())
        last_rewards.append(ep.rewards[g.name][last, torch.arange(len(last))])
    out["return/mean"] = sum(v for k, v in out.items()) / max(len(out), 1)
    for team, members in team_members(cfg, groups).items():
        out[f"return/team/{team}"] = sum(out[f"return/{m}"] for m in members) / len(members)
    if cfg.marl.success_reward is not None:
        final = torch.cat(last_rewards, 1).mean(1)
        out["success_rate"] = float((final >= cfg.marl.success_reward).float().mean())
    return out


# ------------------------------------------------------------------------------------------ train / eval
def threads(cfg: Config) -> int:
    """``marl.threads`` when set (the driver's older name for it), else ``trainer.threads``."""
    return cfg.marl.threads if cfg.marl.threads is not None else cfg.trainer.threads


@with_threads(threads)
def train(
    cfg: Config, run_dir: Path, resume: Path | None = None, log: bool = True, progress: bool = True,
    stop_at: int | None = None, stop: StopRequest | None = None,
) -> dict:
    """Train ``cfg``; return the final evaluation. ``stop_at`` ends early (as a crash would), for tests;
    ``stop``: on SIGINT/SIGTERM checkpoint at the next update boundary and raise Interrupted.

    Greedy evaluation (:class:`Evaluator`: the held-out environment and the training one) every
    ``trainer.eval_every`` updates and at the end, logged under ``eval/`` at the number of updates done; it
    draws nothing from training's random generators (the same parameters with any ``eval_every``) and its
    time is not in ``train_seconds``. The final results are also one markdown table (text ``evaluation``),
    with each discretised channel's protocol (text ``protocol/<channel>``, ``protocol`` in the JSON)."""
    stop = stop or StopRequest()
    device = resolve_device(cfg.device)
    mc, tc = cfg.marl, cfg.trainer
    env = make_env(cfg)
    system, groups, channels = build(cfg, env, device)
    evaluator = Evaluator(cfg, groups, channels, device)  # checks marl.eval_env_kwargs before training
    player = Player(cfg, groups, channels, device, mc.num_envs)
    with closing(player), closing(evaluator):  # environment workers (marl.env_workers) end with the run
        start, clock = 0, 0
        # training's clocks (wall and this process's CPU), carried over a resume like the learning itself
        timing = {"train_seconds": 0.0, "train_cpu_seconds": 0.0, "env_steps": 0}
        success = SuccessTimes(cfg)

        def restore(state: dict) -> int:
            nonlocal start, clock
            load_system(system, state["system"])
            start, clock = int(state["update"]), int(state["clock"])
            timing.update(state.get("timing", {}))
            success.load(state.get("success", {}))
            return start  # updates are logged at ``update``: the crashed run's from here on are dropped

        run_dir, logger = open_run(cfg, run_dir, resume, log, device, CHECKPOINT, restore)
        if log:
            logger.custom_scalars(custom_layout(cfg, channels))
            logger.hparam_metrics(hparam_metrics(cfg, channels))
            # resumed: the evaluation logged at ``start`` went with the crashed run's events from there on
            for point in success.curve:  # (purged); its headline numbers come back
                if point["update"] >= start:
                    logger.scalars("eval", eval_curves(point, evaluator.separate), point["update"])
        recent: list[float] = []
        fidelity, curve = FidelityHistory(), []  # curve: (environment steps, return) on measured updates
        if mc.message_rms is not None and start == 0:  # the frozen control's scale (a resumed run has it)
            calibrate_messages(player, mc.message_rms, seed=cfg.seed * 100_000 * mc.num_envs)

        def save(update: int) -> Path | None:
            if not log:
                return None
            save_checkpoint(Path(run_dir) / CHECKPOINT,
                            {"update": update, "clock": clock, "system": system.state_dict(),
                             "timing": dict(timing), "success": success.state()})
            return Path(run_dir) / CHECKPOINT

        def postfix() -> None:  # the progress bar: noisy training return, latest held-out greedy score
            shown = {"train_ret": f"{sum(recent) / len(recent):.2f}"}
            if success.latest is not None:  # its success rate (heldout=), or its return without one
                shown["heldout" if success.scored else "heldout_ret"] = f"{success.latest:.3f}"
            loop.bar.set_postfix(shown)

        loop = Loop(cfg, start, logger, save, log=log, progress=progress, stop_at=stop_at, stop=stop,
                    unit="update", stat_tag=stat_tag(channel_aliases(channels)))
        for update in loop:
            t0, c0 = time.perf_counter(), time.process_time()
            generator = step_generator(cfg.seed, update)
            ep = player.play(seed=(cfg.seed * 100_000 + update) * mc.num_envs, generator=generator)
            measure = loop.measured(update)
            losses, clock = ppo_update(cfg, system, groups, player, ep, generator, clock, track=measure)
            timing["train_seconds"] += time.perf_counter() - t0
            timing["train_cpu_seconds"] += time.process_time() - c0
            timing["env_steps"] += ep.steps
            metrics = episode_metrics(cfg, ep, groups)
            recent = (recent + [metrics["return/mean"]])[-20:]
            if measure:
                curve.append(((update + 1) * mc.num_envs * mc.max_steps, metrics["return/mean"]))
                usage = channel_stats(ep, channels)
                fidelity.add(update, usage)  # the messages' scale, for the frozen control
                fidelity.add(update, loop.drain(system, update))  # ĝ's (held-out) fidelity
            if loop.logs(update):
                log_losses(logger, losses, update)
                log_episode(logger, cfg, ep, channels, metrics, usage, update)
                rate = timing["env_steps"] / max(timing["train_seconds"], 1e-9)
                logger.scalar("perf/env_steps_per_s", rate, update)
                logger.scalar("perf/env_steps", (update + 1) * mc.num_envs * mc.max_steps, update)
                postfix()
            if loop.histograms(update):  # a fifth of the run (log.histogram_every) and its last update
                log_histograms(logger, ep, channels, update)
                if cfg.log.embedding_samples:
                    log_projector(cfg, logger, [ep], channels, update)
            done = update + 1
            if tc.eval_every and done % tc.eval_every == 0 and done < tc.steps:  # the last: below
                result = evaluator.scores(mc.eval_episodes, control=True)
                success.add(done, done * mc.num_envs, timing, result)
                if log:
                    logger.scalars("eval", eval_curves(result, evaluator.separate), done)
                postfix()
        if not loop.finished:
            logger.close()
            return {}
        result = evaluator.final(mc.eval_episodes)
        success.add(tc.steps, tc.steps * mc.num_envs, timing, result)
        result.update(updates=tc.steps, train_seconds=timing["train_seconds"],
                      train_cpu_seconds=timing["train_cpu_seconds"],
                      env_steps_per_s=timing["env_steps"] / max(timing["train_seconds"], 1e-9),
                      eval_seconds=evaluator.seconds)
        result.update(fidelity.second_half(tc.steps))  # held-out ĝ fidelity over the second half of training
        result.update(time_to_success=success.reached, eval_curve=success.curve, curve=curve)
        episodes = result.pop("_episodes", [])
        protocol = protocol_report(cfg, episodes, channels)  # on the held-out games
        if protocol:
            result["protocol"] = protocol
        if log:
            logger.scalars("eval", eval_curves(result, evaluator.separate), tc.steps)
            logger.text("evaluation", results_markdown(result, channels), tc.steps)
            log_protocol(logger, cfg, protocol, channels, tc.steps)
            if cfg.log.embedding_samples and episodes:
                log_projector(cfg, logger, episodes, channels, tc.steps)
            save(tc.steps)
            result["run_dir"] = str(run_dir)
        logger.close()
        return result


class Evaluator:
    """Greedy evaluation of the current networks on the held-out environment (``marl.eval_env_kwargs``
    merged over ``marl.env_kwargs``) and on the training one (``marl.env_kwargs``: the ``train_*`` keys;
    the same numbers, played once, when there are no evaluation kwargs). Its environment copies are built
    once and reset with the evaluation seeds each time; ``seconds``: the wall time it has taken."""

    def __init__(self, cfg: Config, groups: list[Group], channels: list[Channel], device: torch.device,
                 train_env: bool = False) -> None:
        self.cfg, self.groups, self.channels, self.device = cfg, groups, channels, device
        self.heldout = eval_config(cfg, train_env)  # a key the environment refuses fails here, named
        self.separate = eval_env_kwargs(cfg, train_env) != dict(cfg.marl.env_kwargs)
        self.players: dict[tuple[bool, int], Player] = {}
        self.seconds = 0.0

    def run(self, episodes: int, ablate: str | None = None, train_env: bool = False) -> dict[str, Any]:
        """:func:`evaluate_system` on the held-out environment (``train_env``: the training one)."""
        cfg = self.cfg if train_env else self.heldout
        key = (train_env or not self.separate, min(episodes, EVAL_COPIES))
        t0 = time.perf_counter()
        if key not in self.players:
            self.players[key] = Player(cfg, self.groups, self.channels, self.device, key[1], env_workers=0)
        out = evaluate_system(cfg, self.groups, self.channels, self.device, episodes, ablate,
                              player=self.players[key])
        self.seconds += time.perf_counter() - t0
        return out

    def scores(self, episodes: int, control: bool = False) -> dict[str, Any]:
        """The held-out evaluation's metrics, and the training environment's return and success rate as
        ``train_mean_return`` / ``train_success_rate`` (with ``marl.teams`` also ``train_team_returns``);
        ``control``: also the return and success rate with the messages shuffled (``ablated_*``), where a
        channel has an interface."""
        out = self.run(episodes)
        if control and any(c.interface is not None for c in self.channels):
            shuffled = self.run(episodes, "permute")
            out["ablated_return"] = shuffled["mean_return"]
            if "success_rate" in shuffled:
                out["ablated_success_rate"] = shuffled["success_rate"]
        train = self.run(episodes, train_env=True) if self.separate else out
        out["train_mean_return"] = train["mean_return"]
        if "team_returns" in train:
            out["train_team_returns"] = dict(train["team_returns"])
        if "success_rate" in train:
            out["train_success_rate"] = train["success_rate"]
        return out

    def final(self, episodes: int) -> dict[str, Any]:
        """:meth:`scores` and, where a channel has an interface, the controls on the held-out environment:
        the messages shuffled across copies (``ablated_*``) or silenced (``silenced_*``): return, success
        rate and, with ``marl.teams``, each team's return (``ablated_team_returns``, ...)."""
        out = self.scores(episodes)
        if any(c.interface is not None for c in self.channels):  # does the receiver use the message?
            for name, how in (("ablated", "permute"), ("silenced", "zero")):
                controlled = self.run(episodes, how)
                out[f"{name}_return"] = controlled["mean_return"]
                if "team_returns" in controlled:
                    out[f"{name}_team_returns"] = controlled["team_returns"]
                if "success_rate" in controlled:
                    out[f"{name}_success_rate"] = controlled["success_rate"]
        return out

    def close(self) -> None:
        for player in self.players.values():
            player.close()


class SuccessTimes:
    """When the held-out greedy success rate first reached each of ``marl.success_thresholds`` (none
    without ``marl.success_reward``): the updates, games (episodes of every copy: updates × num_envs) and
    training seconds (wall, process CPU) by then; ``curve``: every evaluation's headline numbers."""

    def __init__(self, cfg: Config) -> None:
        marl = cfg.marl
        self.scored = marl.success_reward is not None  # whether there is a success rate
        self.thresholds = sorted(set(marl.success_thresholds)) if self.scored else []
        self.reached: dict[str, dict[str, float] | None] = {f"{t:g}": None for t in self.thresholds}
        self.curve: list[dict[str, float]] = []
        self.latest: float | None = None  # the last held-out success rate (or return, without one)

    def add(self, update: int, games: int, timing: dict, result: dict) -> None:
        point = {"update": update, "games": games, "train_seconds": timing["train_seconds"],
                 "train_cpu_seconds": timing["train_cpu_seconds"]}
        self.curve.append({**point, **{k: result[k] for k in HEADLINE if k in result}})
        self.latest = result.get("success_rate", result["mean_return"])
        for t in self.thresholds:
            if self.reached[f"{t:g}"] is None and result["success_rate"] >= t:
                self.reached[f"{t:g}"] = point

    def state(self) -> dict:
        return {"reached": dict(self.reached), "curve": list(self.curve), "latest": self.latest}

    def load(self, state: dict) -> None:
        """What a checkpoint holds of an earlier run (the thresholds are this config's)."""
        for key, point in state.get("reached", {}).items():
            if key in self.reached:
                self.reached[key] = point
        self.curve = list(state.get("curve", []))
        self.latest = state.get("latest")


HEADLINE = ("success_rate", "mean_return", "train_success_rate", "train_mean_return", "ablated_return",
            "ablated_success_rate")
EVAL_COPIES = 250  # environment copies an evaluation plays at once


def evaluate_system(cfg: Config, groups: list[Group], channels: list[Channel], device: torch.device,
                    episodes: int, ablate: str | None = None, player: Player | None = None) -> dict[str, Any]:
    """Greedy play (most likely action, clean channels) for ``episodes`` episodes in the environment
    ``cfg.marl.env_kwargs`` make (:func:`~dni_agents.drivers.marl.env.eval_config` for the held-out one);
    ``ablate``: with the messages shuffled across copies (``permute``) or silenced (``zero``); ``player``:
    one of ``min(episodes, 250)`` copies of that environment to reuse (None: built here).

    ``mean_return`` averages the return of every environment agent; in a competitive game (opposing teams)
    read ``team_returns`` instead: with ``marl.teams``, ``{team: mean return of its agents}``."""
    if player is None:  # short: no workers
        player = Player(cfg, groups, channels, device, min(episodes, EVAL_COPIES), env_workers=0)
    eps = []
    while sum(e.alive.shape[1] for e in eps) < episodes:
        eps.append(player.play(seed=EVAL_SEED + 1000 * len(eps), generator=None, greedy=True, ablate=ablate))
    metrics: dict[str, list[float]] = {}
    private_agent = cfg.marl.private_info.agent if cfg.marl.private_info else None
    for e in eps:
        for k, v in episode_metrics(cfg, e, groups).items():
            metrics.setdefault(k, []).append(v)
        for ch, m in comm_metrics(e, channels, private_agent, cfg.marl.mi_resolution).items():
            for k, v in m.items():
                metrics.setdefault(f"{ch}/{k}", []).append(v)
    out: dict[str, Any] = {k: sum(v) / len(v) for k, v in metrics.items()}
    out["mean_return"] = out.pop("return/mean")
    teams = cfg.marl.teams
    if teams:
        out["team_returns"] = {team: out[f"return/team/{team}"] for team in teams}
    out["_episodes"] = eps
    return out


def evaluate(run_dir: Path, ablate: str | None = None, train_env: bool = False) -> dict:
    """``dni-agents eval RUN_DIR [--ablate permute|zero] [--train-env]``: replay the trained agents greedily
    on the held-out environment (``marl.eval_env_kwargs`` over ``marl.env_kwargs``; ``train_env``: the
    training one); return, success, communication."""
    run_dir, cfg, device = finished_run(run_dir)
    system, groups, channels = build(cfg, make_env(cfg), device)

    def restore(state: dict) -> int:
        load_system(system, state["system"])
        return int(state["update"] if "update" in state else state["step"])  # one process, or its ranks'

    update = restore_finished(run_dir, CHECKPOINT, device, restore)
    with closing(Evaluator(cfg, groups, channels, device, train_env)) as evaluator:
        result = evaluator.run(cfg.marl.eval_episodes, ablate)
    result.pop("_episodes", None)
    return {"run_dir": str(run_dir), "update": update, **({"ablate": ablate} if ablate else {}),
            "env_kwargs": eval_env_kwargs(cfg, train_env), **result}


def hparam_metrics(cfg: Config, channels: list[Channel]) -> list[str]:
    """The HParams plugin's metric columns: the held-out return and success, the return with the messages
    shuffled, and per channel the mutual information heard and ĝ's cosine (their last values)."""
    aliases = channel_aliases(channels)
    tags = ["eval/mean_return"]
    if cfg.marl.success_reward is not None:
        tags.append("eval/success_rate")
    if any(c.interface is not None for c in channels):
        tags.append("eval/ablated_return")
    if cfg.marl.private_info is not None:
        tags += [f"diagnostics/heard_mi/{aliases[c.name]}" for c in channels
                 if c.sender == cfg.marl.private_info.agent]
    return tags + [f"diagnostics/ghat_cos/{aliases[c.name]}" for c in channels if c.interface is not None]
