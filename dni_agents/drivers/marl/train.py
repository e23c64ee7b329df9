"""The training loop (open or resume a run, play, learn, log, checkpoint) and greedy evaluation, with the
controls (messages shuffled or silenced)."""

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
from .build import CHECKPOINT, EVAL_SEED, Channel, Group, build
from .comm import (
    FidelityHistory,
    calibrate_messages,
    channel_stats,
)
from .env import make_env
from .learn import ppo_update
from .metrics import (
    comm_metrics,
    log_projector,
)
from .rollout import Episode, Player


def episode_metrics(cfg: Config, ep: Episode, groups: list[Group]) -> dict[str, float]:
    """Mean episode return per environment agent, and the success rate (last reward >= success_reward)."""
    out: dict[str, float] = {}
    last_rewards = []
    last = (ep.alive.sum(0) - 1).clamp_min(0)  # index of each copy's last step
    for g in groups:
        r = ep.rewards[g.name] * ep.alive[..., None]
        for i, m in enumerate(g.members):
            out[f"return/{m}"] = float(r[..., i].sum(0).mean())
        last_rewards.append(ep.rewards[g.name][last, torch.arange(len(last))])
    out["return/mean"] = sum(v for k, v in out.items()) / max(len(out), 1)
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
    ``stop``: on SIGINT/SIGTERM checkpoint at the next update boundary and raise Interrupted."""
    stop = stop or StopRequest()
    device = resolve_device(cfg.device)
    mc, tc = cfg.marl, cfg.trainer
    env = make_env(cfg)
    system, groups, channels = build(cfg, env, device)
    player = Player(cfg, groups, channels, device, mc.num_envs)
    with closing(player):  # environment workers (marl.env_workers) end with the run
        start, clock = 0, 0

        def restore(state: dict) -> int:
            nonlocal start, clock
            load_system(system, state["system"])
            start, clock = int(state["update"]), int(state["clock"])
            return start  # updates are logged at ``update``: the crashed run's from here on are dropped

        run_dir, logger = open_run(cfg, run_dir, resume, log, device, CHECKPOINT, restore)
        private_agent = mc.private_info.agent if mc.private_info else None
        env_steps, seconds, recent = 0, 0.0, []
        fidelity, curve = FidelityHistory(), []  # curve: (environment steps, return) on measured updates
        if mc.message_rms is not None and start == 0:  # the frozen control's scale (a resumed run has it)
            calibrate_messages(player, mc.message_rms, seed=cfg.seed * 100_000 * mc.num_envs)

        def save(update: int) -> Path | None:
            if not log:
                return None
            save_checkpoint(Path(run_dir) / CHECKPOINT,
                            {"update": update, "clock": clock, "system": system.state_dict()})
            return Path(run_dir) / CHECKPOINT

        loop = Loop(cfg, start, logger, save, log=log, progress=progress, stop_at=stop_at, stop=stop,
                    unit="update")
        for update in loop:
            t0 = time.perf_counter()
            generator = step_generator(cfg.seed, update)
            ep = player.play(seed=(cfg.seed * 100_000 + update) * mc.num_envs, generator=generator)
            measure = loop.measured(update)
            losses, clock = ppo_update(cfg, system, groups, player, ep, generator, clock, track=measure)
            seconds += time.perf_counter() - t0
            env_steps += ep.steps
            metrics = episode_metrics(cfg, ep, groups)
            recent = (recent + [metrics["return/mean"]])[-20:]
            if measure:
                curve.append(((update + 1) * mc.num_envs * mc.max_steps, metrics["return/mean"]))
                usage = channel_stats(ep, channels)
                fidelity.add(update, usage)  # the messages' scale, for the frozen control
                fidelity.add(update, loop.drain(system, update))  # ĝ's (held-out) fidelity
            if loop.logs(update):
                logger.scalars("episode", metrics, update)
                for name, parts in losses.items():
                    logger.agent(name, parts, update)
                for name, m in comm_metrics(ep, channels, private_agent, mc.mi_resolution).items():
                    logger.scalars(f"comm/{name}", m, update)
                for name, m in usage.items():
                    logger.scalars(f"channel/{name}", m, update)
                logger.scalar("perf/env_steps_per_s", env_steps / max(seconds, 1e-9), update)
                logger.scalar("perf/env_steps", (update + 1) * mc.num_envs * mc.max_steps, update)
                loop.bar.set_postfix(ret=f"{sum(recent) / len(recent):.2f}")
            if log and loop.due(cfg.log.histogram_every, update):
                for name, msgs in ep.messages.items():
                    logger.message_histogram(name, msgs[ep.alive], update)
        if not loop.finished:
            logger.close()
            return {}
        result = evaluate_system(cfg, groups, channels, device, episodes=mc.eval_episodes)
        result.update(updates=tc.steps, env_steps_per_s=env_steps / max(seconds, 1e-9), train_seconds=seconds)
        result.update(fidelity.second_half(tc.steps))  # held-out ĝ fidelity over the second half of training
        if any(c.interface is not None for c in channels):  # the controls: does the receiver use the message?
            for key, how in (("ablated_return", "permute"), ("silenced_return", "zero")):
                controlled = evaluate_system(cfg, groups, channels, device, mc.eval_episodes, how)
                result[key] = controlled["mean_return"]
        result["curve"] = curve
        if log:
            logger.scalars("eval", {k: v for k, v in result.items() if isinstance(v, float)}, tc.steps)
            if cfg.log.embedding_samples and "_episode" in result:
                log_projector(cfg, logger, result["_episode"], channels, tc.steps)
            save(tc.steps)
            result["run_dir"] = str(run_dir)
        result.pop("_episode", None)
        logger.close()
        return result


def evaluate_system(cfg: Config, groups: list[Group], channels: list[Channel], device: torch.device,
                    episodes: int, ablate: str | None = None) -> dict[str, Any]:
    """Greedy play (most likely action, clean channels) for ``episodes`` episodes; ``ablate``: with the
    messages shuffled across copies (``permute``) or silenced (``zero``)."""
    player = Player(cfg, groups, channels, device, min(episodes, 250), env_workers=0)  # short: no workers
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
    out["_episode"] = eps[0]
    return out


def evaluate(run_dir: Path, ablate: str | None = None) -> dict:
    """``dni-agents eval RUN_DIR [--ablate permute|zero]``: replay the trained agents greedily; return,
    success, communication."""
    run_dir, cfg, device = finished_run(run_dir)
    system, groups, channels = build(cfg, make_env(cfg), device)

    def restore(state: dict) -> int:
        load_system(system, state["system"])
        return int(state["update"] if "update" in state else state["step"])  # one process, or its ranks'

    update = restore_finished(run_dir, CHECKPOINT, device, restore)
    result = evaluate_system(cfg, groups, channels, device, episodes=cfg.marl.eval_episodes, ablate=ablate)
    result.pop("_episode", None)
    return {"run_dir": str(run_dir), "update": update, **({"ablate": ablate} if ablate else {}), **result}
