"""``dni-agents bench comm``: does a channel's learning teach a sender what to say? Tasks × methods × seeds.

Every task is a game in which a fixed random code fails (a narrow noisy channel), so a good number can
only come from a sender that learned its code. Methods (each a set of config overrides):

==============  ==========================================================================================
``none``        no gradient crosses; the message heads stay faint and random (on these noisy channels the
                noise drowns the faint code, and the receiver learns to ignore it; on a noiseless channel
                a receiver may read it: the no-communication reference is the ablated return)
``frozen``      no gradient crosses, but the head is scaled once so its messages have the RMS trained
                codes reach (``marl.message_rms``: the mean RMS of the messages of this bench's
                ``backprop`` runs over their second half, run before it; the task's ``frozen_rms`` if
                backprop is not in the run): a loud fixed random code, the honest "no learning through
                the channel" control
``backprop``    the true gradient through the channel (DIAL: the noise is passed, the two agents update in
                one tick)
``dni``         a synthetic gradient from a utility model that sees the message alone
``cdni``        a synthetic gradient from a utility model that sees what the receiver had when it heard the
                message (observation, heard symbol, memory) times the receiver's −∂loss/∂logits and the ĝ
                of what it sends itself (``utility.gate``; a recurrent receiver's later decisions too,
                ``utility.horizon``)
==============  ==========================================================================================

Each record: ``task, method, seed, mean_return, success_rate, mi_bits`` (greedy evaluation; MI between the
sender's private information and what the receiver *heard*), ``ablated_return`` (the same evaluation with
messages shuffled across environment copies), ``silenced_return`` (with every channel silent: what a receiver
does when it hears nothing, the state ``channel.outage`` trains it for), ``grad_cosine`` / ``grad_r2``
(held-out fidelity of ĝ, mean / median over the second half of training), ``env_steps_per_s`` (training,
learning included), ``wall_s``, ``curve`` (return against environment steps); for a task whose config has
``marl.teams`` (a competitive game, where ``mean_return`` averages opposing sides) also ``team_returns``,
``ablated_team_returns`` and ``silenced_team_returns`` ({team: return}). The summary gives, per task, each
method's means (per team too, where the records have teams) and the fractions that say whether a channel
learned: the part of the reference gap backprop wins over frozen, the part of the frozen→backprop gap each
synthetic mode closes, and the ablated return against the no-communication one. The no-communication
reference is the ``none`` runs' ablated return: their receivers with the channel shuffled, i.e. with no
information about the sender's (the unablated ``none`` return can sit a little above it: the faint code's
clean signs at evaluation say something the receiver half-learned to read).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import ConfigError, load_config
from ..drivers import marl
from ..runtime.report import Report, timed_run

# upper: the return of a receiver that is told the private information (speaker-listener: measured in
# DESIGN.md, a listener told the goal; the games: every pick right). frozen_rms: the per-component RMS of
# the pre-squash messages that backprop runs reach on the task (see docs/benchmarks.md for the command).
TASKS: dict[str, dict[str, Any]] = {
    "digits_referential": {"config": "digits_referential", "upper": 1.0, "frozen_rms": 6.0,
                           "quick_steps": 60},
    # upper: SwitchRiddle(3).optimal_return(), P(all three visited within 6 days) = 540/729, exactly
    "switch_riddle_noisy": {"config": "switch_riddle_noisy", "upper": 540 / 729, "frozen_rms": 3.0,
                            "quick_steps": 8},
    # upper: scripted movers that steer to their own goal, the mean of both agents' returns
    # (scripts/reference_bounds.py, docs/results/reference_bounds.json; steering to the landmarks' centre,
    # the no-communication mover: -17.45). steps: the suite's budget, about 5 CPU-minutes a run (the config
    # trains 1,000 updates)
    "reference": {"config": "reference", "upper": -7.41, "frozen_rms": 0.84, "quick_steps": 3,
                  "steps": 400},
    # competitive (marl.teams): reported per team; no upper (mean_return averages the opposing teams)
    "crypto": {"config": "crypto", "upper": None, "frozen_rms": 1.0, "quick_steps": 3, "steps": 500},
    # on mpe2 itself (not batched: its copies step one by one, ~600 env steps/s): a short budget
    "world_comm": {"config": "world_comm", "upper": None, "frozen_rms": 1.0, "quick_steps": 2, "steps": 100,
                   "overrides": ["marl.eval_episodes=200"]},
}
# Not in the suite yet: reference_2bit (simple_reference both ways through 2 noisy bits,
# dni_envs.reference_narrow): in 600 updates an agent told its own goal did no better than one told
# nothing, so there is no gap for a channel yet (docs/benchmarks.md).
# Not in the suite: speaker_listener_2bit (configs/, upper -7.9): on seed 0 backprop learned one bit (-11.7)
# and a frozen random code did about as well (-13.1), so it is not a communication task as configured
# (docs/communication.md); a task is added here once backprop beats frozen on it.
METHODS: dict[str, list[str]] = {  # backprop first: the frozen control is matched to its messages' scale
    "none": ["interface_defaults.mode=none"],
    "backprop": ["interface_defaults.mode=backprop"],
    "frozen": ["interface_defaults.mode=none"],  # + marl.message_rms
    "dni": ["interface_defaults.mode=dni", "interface_defaults.utility.gate=false"],
    "cdni": ["interface_defaults.mode=cdni", "interface_defaults.utility.gate=true"],
}
SYNTHETIC = ("dni", "cdni")
TEAM_KEYS = ("team_returns", "ablated_team_returns", "silenced_team_returns")  # with marl.teams


def run_one(task: str, method: str, seed: int, quick: bool, overrides: list[str] = (),
            frozen_rms: float | None = None) -> dict[str, Any]:
    """Train one (task, method, seed) without a run folder; its record."""
    spec = TASKS[task]
    steps = spec["quick_steps"] if quick else spec.get("steps")
    extra = [f"trainer.steps={steps}"] if steps else []
    if method == "frozen":
        extra.append(f"marl.message_rms={frozen_rms or spec['frozen_rms']}")
    cfg = load_config(spec["config"], [*METHODS[method], *spec.get("overrides", []), *extra, *overrides,
                                       f"seed={seed}"])
    m, wall = timed_run(marl.train, cfg)
    channel = next(k.rsplit("/", 1)[0] for k in m if k.endswith("/message_entropy_bits"))
    teams = {key: m.get(key) for key in TEAM_KEYS} if cfg.marl.teams else {}
    return {
        "task": task, "method": method, "seed": seed, "mean_return": m["mean_return"],
        "success_rate": m.get("success_rate"), "train_success_rate": m.get("train_success_rate"),
        "time_to_success": m.get("time_to_success"), "mi_bits": m.get(f"{channel}/mi_bits"),
        "ablated_return": m.get("ablated_return"), "silenced_return": m.get("silenced_return"),
        "grad_cosine": m.get(f"{channel}/grad_cosine"),
        "grad_r2": m.get(f"{channel}/grad_r2"), "message_rms": m.get(f"{channel}/message_rms"),
        "frozen_rms": cfg.marl.message_rms, "env_steps_per_s": m["env_steps_per_s"],
        "wall_s": wall, "updates": cfg.trainer.steps,
        "env_steps": cfg.trainer.steps * cfg.marl.num_envs * cfg.marl.max_steps, "curve": m["curve"],
        **teams,
    }


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def _team_means(rows: list[dict], key: str) -> dict[str, float] | None:
    """Each team's mean over the rows of ``key`` ({team: return}); None when no row has it."""
    dicts = [r[key] for r in rows if r.get(key)]
    if not dicts:
        return None
    teams = dict.fromkeys(t for d in dicts for t in d)
    return {t: sum(d[t] for d in dicts if t in d) / sum(t in d for d in dicts) for t in teams}


def summarize(results: list[dict]) -> dict[str, Any]:
    """Per task: each method's means, and the fractions that say whether a channel learned (module
    docstring)."""
    summary: dict[str, Any] = {}
    for task in dict.fromkeys(r["task"] for r in results):
        rows = [r for r in results if r["task"] == task]
        per = {}
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == method]
            per[method] = {k: _mean(mine, k) for k in ("mean_return", "success_rate", "mi_bits",
                                                       "ablated_return", "silenced_return", "grad_cosine",
                                                       "grad_r2",
                                                       "env_steps_per_s")}
            for key in TEAM_KEYS:  # competitive tasks (marl.teams): each side's return
                means = _team_means(mine, key)
                if means is not None:
                    per[method][key] = means
            per[method]["seeds"] = len(mine)
        out: dict[str, Any] = {"methods": per, "upper_reference": TASKS[task]["upper"]}
        ret = {m: v["mean_return"] for m, v in per.items()}
        no_comm = per.get("none", {}).get("ablated_return")  # what a receiver gets out of no information
        if no_comm is not None:
            out["no_comm_reference"] = no_comm
        if no_comm is not None and TASKS[task]["upper"] is not None and {"frozen", "backprop"} <= ret.keys():
            gap = TASKS[task]["upper"] - no_comm
            out["backprop_over_frozen_of_reference_gap"] = (ret["backprop"] - ret["frozen"]) / gap
        if {"frozen", "backprop"} <= ret.keys():
            span = ret["backprop"] - ret["frozen"]
            for s in SYNTHETIC:
                if s in ret:
                    closes = (ret[s] - ret["frozen"]) / span if span else None
                    out[f"{s}_closes_of_frozen_to_backprop"] = closes
        if no_comm:
            for s in SYNTHETIC:
                for key, name in (("ablated_return", "ablated"), ("silenced_return", "silenced")):
                    abl = per.get(s, {}).get(key)
                    if abl is not None:
                        out[f"{s}_{name}_vs_no_comm"] = abs(abl - no_comm) / abs(no_comm)
        summary[task] = out
    return summary


def plot(results: list[dict], path: Path) -> None:
    """One panel per task: mean return against environment steps, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in results))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for method in dict.fromkeys(r["method"] for r in results if r["task"] == task):
            curves = [r["curve"] for r in results if r["task"] == task and r["method"] == method]
            n = min(len(c) for c in curves)
            xs = [curves[0][i][0] for i in range(n)]
            ys = [sum(c[i][1] for c in curves) / len(curves) for i in range(n)]
            ax.plot(xs, ys, label=method)
        ax.set_title(task)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("training return")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bench(quick: bool = False, out: Path | None = None, seeds: int | None = None, overrides: list[str] = (),
          only: list[str] | None = None) -> dict:
    """``dni-agents bench comm [--quick] [--only TASK,METHOD,…]``: JSON to ``out``, a PNG beside it."""
    seeds = seeds or (1 if quick else 3)
    names = set(only or [])
    unknown = names - set(TASKS) - set(METHODS)
    if unknown:
        raise ConfigError(f"--only: {', '.join(sorted(unknown))} is no task or method (tasks: "
                          f"{', '.join(TASKS)}; methods: {', '.join(METHODS)})")
    tasks = [t for t in TASKS if not names & set(TASKS) or t in names]
    methods = [m for m in METHODS if not names & set(METHODS) or m in names]
    report = Report("comm", quick, overrides, out)
    results = report.results
    for task in tasks:
        for method in methods:
            scales = [r["message_rms"] for r in results if r["task"] == task and r["method"] == "backprop"
                      and r["message_rms"]]
            frozen_rms = sum(scales) / len(scales) if scales else None
            for seed in range(seeds):
                row = run_one(task, method, seed, quick, list(overrides), frozen_rms)
                mi = "n/a" if row["mi_bits"] is None else f"{row['mi_bits']:.2f}"  # n/a: no private_info
                sides = "".join(f", {t} {v:.3f}" for t, v in (row.get("team_returns") or {}).items())
                report.add(row, f"{task} {method:>8} seed {seed}: return {row['mean_return']:.3f}{sides}, "
                                f"ablated {row['ablated_return']:.3f}, MI {mi}, "
                                f"cos {row['grad_cosine']}, {row['env_steps_per_s']:.0f} env steps/s")
    report.finish(summary=summarize(results))
    if out is not None:
        plot(results, Path(out).with_suffix(".png"))
    return {"summary": report.data["summary"], "out": str(out) if out else None}
