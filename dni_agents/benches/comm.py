"""``dni-agents bench comm``: does a channel's learning teach a sender what to say? Tasks × methods × seeds.

Every task is a game in which a fixed random code fails (a narrow noisy channel), so a good number can
only come from a sender that learned its code. Methods (each a set of config overrides):

==============  ==========================================================================================
``none``        no gradient crosses; the message heads stay faint and random (the no-communication
                reference: noise drowns the faint code in training, and the receiver learns to ignore it)
``frozen``      no gradient crosses, but the head is scaled once so its messages have the RMS trained
                codes reach (``marl.message_rms``, measured from this task's ``backprop`` runs): a loud fixed
                random code, the honest "no learning through the channel" control
``backprop``    the true gradient through the channel (DIAL: the noise is passed, the two agents update in
                one tick)
``dni``         a synthetic gradient from a utility model that sees the message alone
``cdni``        a synthetic gradient from a utility model that sees what the receiver had when it heard the
                message (observation, heard symbol, action) times its advantage (``utility.gate``)
==============  ==========================================================================================

Each record: ``task, method, seed, mean_return, success_rate, mi_bits`` (greedy evaluation; MI between the
sender's private information and what the receiver *heard*), ``ablated_return`` (the same evaluation with
messages shuffled across environment copies), ``grad_cosine`` / ``grad_r2`` (held-out fidelity of ĝ, mean
over the second half of training), ``env_steps_per_s`` (training, learning included), ``wall_s``,
``curve`` (return against environment steps). The summary gives, per task, the fractions the acceptance
of issue 14 reads: the part of the reference gap backprop wins over frozen, the part of the
frozen→backprop gap each synthetic mode closes, and the ablated return against the no-communication one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..config import ConfigError, load_config
from ..drivers import marl
from ..drivers.common import write_report

# upper: the return of a receiver that is told the private information (speaker-listener: measured in
# DESIGN.md, a listener told the goal; the games: every pick right). frozen_rms: the per-component RMS of
# the pre-squash messages that backprop runs reach on the task (see docs/benchmarks.md for the command).
TASKS: dict[str, dict[str, Any]] = {
    "speaker_listener_2bit": {"config": "speaker_listener_2bit", "upper": -7.9, "frozen_rms": 4.0,
                              "quick_steps": 60},
    "digits_referential": {"config": "digits_referential", "upper": 1.0, "frozen_rms": 4.0,
                           "quick_steps": 60},
}
METHODS: dict[str, list[str]] = {
    "none": ["interface_defaults.mode=none"],
    "frozen": ["interface_defaults.mode=none"],  # + marl.message_rms (per task)
    "backprop": ["interface_defaults.mode=backprop"],
    "dni": ["interface_defaults.mode=dni", "interface_defaults.utility.gate=false"],
    "cdni": ["interface_defaults.mode=cdni", "interface_defaults.utility.gate=true"],
}
SYNTHETIC = ("dni", "cdni")


def method_overrides(task: str, method: str) -> list[str]:
    extra = [f"marl.message_rms={TASKS[task]['frozen_rms']}"] if method == "frozen" else []
    return [*METHODS[method], *extra]


def run_one(task: str, method: str, seed: int, quick: bool, overrides: list[str] = ()) -> dict[str, Any]:
    """Train one (task, method, seed) without a run folder; its record."""
    spec = TASKS[task]
    extra = [f"trainer.steps={spec['quick_steps']}"] if quick else []
    cfg = load_config(spec["config"], [*method_overrides(task, method), *extra, *overrides, f"seed={seed}"])
    t0 = time.perf_counter()
    m = marl.train(cfg, Path("runs") / cfg.name, log=False, progress=False)
    channel = next(k.rsplit("/", 1)[0] for k in m if k.endswith("/message_entropy_bits"))
    return {
        "task": task, "method": method, "seed": seed, "mean_return": m["mean_return"],
        "success_rate": m.get("success_rate"), "mi_bits": m.get(f"{channel}/mi_bits"),
        "ablated_return": m.get("ablated_return"), "grad_cosine": m.get(f"{channel}/grad_cosine"),
        "grad_r2": m.get(f"{channel}/grad_r2"), "env_steps_per_s": m["env_steps_per_s"],
        "wall_s": time.perf_counter() - t0, "updates": cfg.trainer.steps,
        "env_steps": cfg.trainer.steps * cfg.marl.num_envs * cfg.marl.max_steps, "curve": m["curve"],
    }


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def summarize(results: list[dict]) -> dict[str, Any]:
    """Per task: each method's means, and the fractions issue 14's acceptance reads."""
    summary: dict[str, Any] = {}
    for task in dict.fromkeys(r["task"] for r in results):
        rows = [r for r in results if r["task"] == task]
        per = {}
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == method]
            per[method] = {k: _mean(mine, k) for k in ("mean_return", "success_rate", "mi_bits",
                                                       "ablated_return", "grad_cosine", "grad_r2",
                                                       "env_steps_per_s")}
            per[method]["seeds"] = len(mine)
        out: dict[str, Any] = {"methods": per, "upper_reference": TASKS[task]["upper"]}
        ret = {m: v["mean_return"] for m, v in per.items()}
        if "none" in ret:
            out["no_comm_reference"] = ret["none"]
        if {"none", "frozen", "backprop"} <= ret.keys():
            gap = TASKS[task]["upper"] - ret["none"]
            out["backprop_over_frozen_of_reference_gap"] = (ret["backprop"] - ret["frozen"]) / gap
        if {"frozen", "backprop"} <= ret.keys():
            span = ret["backprop"] - ret["frozen"]
            for s in SYNTHETIC:
                if s in ret:
                    closes = (ret[s] - ret["frozen"]) / span if span else None
                    out[f"{s}_closes_of_frozen_to_backprop"] = closes
        if "none" in ret:
            for s in SYNTHETIC:
                abl = per.get(s, {}).get("ablated_return")
                if abl is not None and ret["none"]:
                    out[f"{s}_ablated_vs_no_comm"] = abs(abl - ret["none"]) / abs(ret["none"])
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
    results: list[dict] = []
    report = {"benchmark": "comm", "quick": quick, "overrides": list(overrides), "results": results}
    for task in tasks:
        for method in methods:
            for seed in range(seeds):
                row = run_one(task, method, seed, quick, list(overrides))
                results.append(row)
                tqdm.write(f"{task} {method:>8} seed {seed}: return {row['mean_return']:.3f}, ablated "
                           f"{row['ablated_return']:.3f}, MI {row['mi_bits']:.2f}, cos {row['grad_cosine']}, "
                           f"{row['env_steps_per_s']:.0f} env steps/s")
                write_report(out, report)
    report["summary"] = summarize(results)
    write_report(out, report)
    if out is not None:
        plot(results, Path(out).with_suffix(".png"))
    return {"summary": report["summary"], "out": str(out) if out else None}
