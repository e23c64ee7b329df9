"""``dni-agents bench speed``: how fast the marl driver learns, against a plain-PyTorch floor.

For every bundled marl job (:data:`CONFIGS`; a row ``NAME@mpe2`` is the job on mpe2's own environment,
stepped one copy at a time, instead of its batched port in ``dni_envs``), on one thread, in process CPU
time (``time.process_time``; wall time with CUDA synchronisation for a floor on a GPU), the methods
alternating in rounds:

``ours_env_steps_per_cpu_s``
    environment steps per CPU-second of training, playing and learning (``Player.play`` + ``ppo_update``,
    built exactly as ``train.py`` builds them, no logging), after a few warm-up updates.
``ours_learn_ms``
    CPU milliseconds of one ``ppo_update`` (all epochs and minibatches) on one fixed played episode.
``floor_learn_ms``
    the same update of a plain-PyTorch *floor* (:func:`floor_update`) on the same episode: no System,
    Interface or Tick, networks of the config's sizes (PolicyNet's layers under PolicyNet's names,
    starting from our networks' weights), PPO with the config's epochs, minibatches, clip and
    coefficients. ``learn_ratio`` = ours / floor: the framework's cost.
``floor_env_steps_per_cpu_s``
    environment steps per CPU-second of the floor's learning plus *our* rollout (``Player.play``, timed in
    the same rounds): the floor has no rollout of its own, so this isolates learning.

What the floor does per minibatch (the whole update is :func:`floor_update`, top to bottom):

* one batched forward over every step of the episode per network, in the order the channels allow
  (a sender before its receivers); a network with memory (GRU) or on a loop of channels (each hears the
  other: ``reference``; one network that hears itself: ``switch_riddle``) steps in time, one call a step;
* every channel by hand: the message through the channel's noise (the rollout's ε), squash and outage;
  ``backprop`` hands the receiver the message itself (one graph); ``none`` a detached copy; ``dni`` /
  ``cdni`` a fresh leaf ``z``, and the sender gets ĝ = U(message[, context]) through the surrogate
  ``Σ message·ĝ`` in the same backward. U is a linear map (zero-initialised) or an MLP, gated and
  candidate-wise as the config's utility model is. The cDNI context is what the receiving member had
  (its observation, what it heard, its memory) and the gate: the receiver's −∂loss/∂logits taken from its
  loss by ``torch.autograd.grad`` (a pass from the loss to the logits only; ours computes the same
  sensitivity in closed form at ratio 1 from the rollout's probabilities), and — where the receiver sends
  on a synthetic channel itself — the ĝ of its own message from *one pass* of U with a zero gate (ours
  makes it step by step from the end of the episode: a simplification of the floor's);
* one backward for all networks and every ĝ; then each utility model regressed onto ``z.grad`` (per-
  example units, as the core's Interface): a plain linear U by its closed-form gradient (no graph), an
  MLP by a second backward through U alone; one gradient clip per network and one Adam step for all
  (``torch.optim.Adam(fused=True)``, param groups per network and utility model: the fused kernel was
  the fastest on this CPU for these sizes, 3.5 ms an epoch of speaker_listener's layers against 4.1 ms
  with ``foreach``, as ``trainer.fused`` notes). With one minibatch the copies are not shuffled (no
  gather; PPO's loss does not depend on their order).

``dni-agents bench speed device=cuda`` runs the floor on the GPU (wall clock); ours stays on the CPU
(the marl driver is CPU-only). ``--seeds N`` sets the number of alternating rounds.

``time_to_success`` (digits_referential, not in ``--quick``): one full ``train(cfg, log=False)`` run and
the result's ``time_to_success`` (the driver's held-out greedy evaluation every ``trainer.eval_every``
updates): ``games`` and ``train_cpu_s`` at success rate 0.9 (null if not reached), every threshold's
point, and the run's own CPU seconds (evaluations included).
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Config, ConfigError, load_config
from ..drivers.marl.build import build
from ..drivers.marl.env import make_env
from ..drivers.marl.learn import ppo_update
from ..drivers.marl.parts import Episode
from ..drivers.marl.rollout import Player
from ..runtime.loop import step_generator
from ..runtime.report import Report
from ..runtime.run import resolve_device
from .floor import floor_update, make_floor

CONFIGS = ("digits_referential", "speaker_listener", "speaker_listener@mpe2", "speaker_listener_2bit",
           "referential", "reference", "reference@mpe2", "reference_2bit", "crypto", "crypto@mpe2",
           "switch_riddle", "switch_riddle_noisy")
# a row NAME@mpe2: the bundled config NAME on mpe2's own environment (one Python call per copy and step)
# instead of its batched port in dni_envs (the default: the same game, equal step by step)
ON_MPE2 = {"speaker_listener": "mpe2.simple_speaker_listener_v4", "reference": "mpe2.simple_reference_v3",
           "crypto": "mpe2.simple_crypto_v3"}
QUICK_CONFIGS = ("speaker_listener", "digits_referential")
SUCCESS_CONFIG, SUCCESS_AT = "digits_referential", 0.9  # part (d): time and games to held-out success
# (warm-up updates, alternating rounds, updates per method and round)
FULL, QUICK = (3, 3, 10), (1, 2, 2)


# ------------------------------------------------------------------------------------------ measuring
@dataclass
class Ours:
    """Our driver, built as ``train.py`` builds it."""

    cfg: Config
    system: Any
    groups: list
    channels: list
    player: Player
    update: int = 0
    clock: int = 0
    generator: torch.Generator | None = None  # this update's (train.py: one for playing and learning)

    def play(self) -> Episode:
        self.generator = step_generator(self.cfg.seed, self.update)
        return self.player.play(seed=(self.cfg.seed * 100_000 + self.update) * self.cfg.marl.num_envs,
                                generator=self.generator)

    def learn(self, ep: Episode) -> None:
        if self.generator is None:
            self.generator = step_generator(self.cfg.seed, self.update)
        _, self.clock = ppo_update(self.cfg, self.system, self.groups, self.player, ep, self.generator,
                                   self.clock)
        self.update, self.generator = self.update + 1, None


def build_ours(cfg: Config) -> Ours:
    env = make_env(cfg)
    system, groups, channels = build(cfg, env, torch.device("cpu"))
    return Ours(cfg, system, groups, channels, Player(cfg, groups, channels, torch.device("cpu"),
                                                       cfg.marl.num_envs))


def clock_for(device: torch.device) -> Callable[[], float]:
    """Process CPU time on the CPU; wall time after a synchronisation on a GPU."""
    if device.type == "cuda":
        def wall() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return wall
    return time.process_time


def machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def row_config(row: str, overrides: list[str]) -> tuple[str, list[str]]:
    """The bundled config of a row and its overrides (``NAME@mpe2``: on mpe2's environment)."""
    name, _, env = row.partition("@")
    return name, ([f"marl.env={ON_MPE2[name]}"] if env else []) + list(overrides)


def measure(name: str, quick: bool, overrides: list[str], rounds: int | None) -> dict[str, Any]:
    """Part (a)-(c) of one config: the methods alternating in rounds; medians over the rounds."""
    warmup, n_rounds, n = QUICK if quick else FULL
    n_rounds = rounds or n_rounds
    config, overrides = row_config(name, overrides)
    cfg = load_config(config, [*overrides, "device=cpu"])  # ours: the marl driver is CPU-only
    floor_device = resolve_device(load_config(config, list(overrides)).device)
    ours = build_ours(cfg)
    floor = make_floor(cfg, ours.groups, ours.channels, floor_device)
    fixed = ours.play()  # the episode both learners learn from in (b) and (c)
    for _ in range(warmup):
        ours.learn(ours.play())
        ours.learn(fixed)
        floor_update(floor, fixed)
    tick, floor_tick = time.process_time, clock_for(floor_device)
    full, play, learn, floor_learn, steps = [], [], [], [], []
    for _ in range(n_rounds):
        t_play = t_learn = 0.0
        round_steps = 0
        for _ in range(n):  # (a) ours: play + learn
            t0 = tick()
            ep = ours.play()
            t1 = tick()
            ours.learn(ep)
            t_play, t_learn = t_play + t1 - t0, t_learn + tick() - t1
            round_steps += ep.steps
        full.append(round_steps / (t_play + t_learn))
        play.append(t_play / n)
        steps.append(round_steps / n)
        t0 = tick()
        for _ in range(n):  # (b) ours: learning alone, on the fixed episode
            ours.learn(fixed)
        learn.append((tick() - t0) / n)
        t0 = floor_tick()
        for _ in range(n):  # (c) the floor, on the same episode
            floor_update(floor, fixed)
        floor_learn.append((floor_tick() - t0) / n)
    mc = cfg.marl
    ours_ms, floor_ms = 1000 * statistics.median(learn), 1000 * statistics.median(floor_learn)
    play_s, episode_steps = statistics.median(play), statistics.median(steps)
    return {
        "config": name, "env": cfg.marl.env,
        "mode": ",".join(sorted({c.mode for c in ours.channels})) or "none",
        "num_envs": mc.num_envs, "max_steps": mc.max_steps, "epochs": mc.epochs,
        "minibatches": mc.minibatches,
        "env_steps_per_update": episode_steps,
        "ours_env_steps_per_cpu_s": statistics.median(full),
        "floor_env_steps_per_cpu_s": episode_steps / (play_s + floor_ms / 1000),
        "ours_play_ms": 1000 * play_s, "ours_learn_ms": ours_ms, "floor_learn_ms": floor_ms,
        "learn_ratio": ours_ms / floor_ms, "rounds": n_rounds, "updates_per_round": n,
        "per_round": {"ours_env_steps_per_cpu_s": full, "ours_learn_ms": [1000 * x for x in learn],
                      "floor_learn_ms": [1000 * x for x in floor_learn]},  # the spread the medians hide
        "floor_device": str(floor_device),
        "floor_clock": "wall" if floor_device.type == "cuda" else "process",
        "floor_adam": "torch.optim.Adam(fused=True)",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": machine(),
    }


def time_to_success(overrides: list[str]) -> dict[str, Any]:
    """Part (d): one full training run of :data:`SUCCESS_CONFIG` as ``train`` runs it (its held-out greedy
    evaluations included); the driver's ``time_to_success`` per threshold (null where not reached, or
    while the driver does not report it), the point at :data:`SUCCESS_AT`, and the run's CPU seconds."""
    from ..drivers.marl.train import train

    cfg = load_config(SUCCESS_CONFIG, [*overrides, "device=cpu"])
    t0 = time.process_time()
    result = train(cfg, Path("runs") / cfg.name, log=False, progress=False)
    reached = result.get("time_to_success")
    at = reached.get(f"{SUCCESS_AT:g}") if isinstance(reached, dict) else None
    return {"config": SUCCESS_CONFIG, "updates": cfg.trainer.steps, "threshold": SUCCESS_AT,
            "games": at and at.get("games"), "train_cpu_s": at and at.get("train_cpu_seconds"),
            "time_to_success": reached, "final_success_rate": result.get("success_rate"),
            "run_cpu_s": time.process_time() - t0, "train_seconds": result.get("train_seconds")}


def table(rows: list[dict]) -> str:
    head = (f"{'config':<22} {'mode':<8} {'E':>4} {'T':>3} {'ep':>3} {'ours st/s':>10} {'floor st/s':>10} "
            f"{'ours ms':>9} {'floor ms':>9} {'ratio':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['config']:<22} {r['mode']:<8} {r['num_envs']:>4} {r['max_steps']:>3} "
                     f"{r['epochs']:>3} {r['ours_env_steps_per_cpu_s']:>10.0f} "
                     f"{r['floor_env_steps_per_cpu_s']:>10.0f} "
                     f"{r['ours_learn_ms']:>9.1f} {r['floor_learn_ms']:>9.1f} {r['learn_ratio']:>6.2f}")
    return "\n".join(lines)


def bench(quick: bool = False, out: Path | None = None, seeds: int | None = None, overrides: list[str] = (),
          only: list[str] | None = None) -> dict:
    """``dni-agents bench speed [--quick] [--only CONFIG,…] [--seeds ROUNDS] [device=cuda]``: JSON to ``out``,
    a table on stdout."""
    unknown = set(only or []) - set(CONFIGS)
    if unknown:
        raise ConfigError(f"--only: {', '.join(sorted(unknown))} is no marl job (jobs: {', '.join(CONFIGS)})")
    names = [c for c in CONFIGS if c in only] if only else list(QUICK_CONFIGS if quick else CONFIGS)
    report = Report("speed", quick, overrides, out)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in names:
            row = measure(name, quick, list(overrides), seeds)
            report.add(row, f"{name}: ours {row['ours_env_steps_per_cpu_s']:.0f} env steps/CPU-s, learning "
                            f"{row['ours_learn_ms']:.1f} ms vs floor {row['floor_learn_ms']:.1f} ms "
                            f"(x{row['learn_ratio']:.2f})")
        success = None
        if SUCCESS_CONFIG in names and not quick:
            success = time_to_success(list(overrides))
    finally:
        torch.set_num_threads(before)
    print(table(report.results))
    if success is not None:
        print(f"{SUCCESS_CONFIG}: held-out greedy success {SUCCESS_AT:g} after {success['games']} games, "
              f"{success['train_cpu_s']} training CPU-s (the run: {success['run_cpu_s']:.0f} CPU-s, "
              "evaluations included)")
    report.finish(time_to_success=success)
    return {"results": report.results, "time_to_success": success, "out": str(out) if out else None}
