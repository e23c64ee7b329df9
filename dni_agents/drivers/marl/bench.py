"""``dni-agents bench marl``: speaker–listener with every channel mode, several seeds."""

from __future__ import annotations

from pathlib import Path

from ...config import ConfigError, load_config
from ...runtime.report import Report, timed_run
from .train import train

METHODS: dict[str, list[str]] = {
    m: [f"interface_defaults.mode={m}"] for m in ("none", "rial", "backprop", "dni", "cdni")
}
# In rial the speaker's message is its environment action, so it needs a policy.
METHODS["rial"].append("agents.0.policy=true")


def bench(quick: bool = False, out: Path | None = None, seeds: int | None = None, overrides: list[str] = (),
          only: list[str] | None = None) -> dict:
    """``dni-agents bench marl``: speaker–listener with every channel mode, several seeds; JSON to ``out``."""
    seeds = seeds or (2 if quick else 3)
    methods = [m for m in METHODS if not only or m in only]
    if not methods:
        raise ConfigError(f"--only: {','.join(only)} matches no method (methods: {', '.join(METHODS)})")
    extra = ["trainer.steps=150", "marl.eval_episodes=250"] if quick else []
    report = Report("marl", quick, overrides, out)
    results = report.results

    for method in methods:
        for seed in range(seeds):
            cfg = load_config("speaker_listener", [*METHODS[method], *extra, *overrides, f"seed={seed}"])
            m, wall = timed_run(train, cfg)
            mi = next((v for k, v in m.items() if k.endswith("/mi_bits")), None)
            report.add({
                "method": method, "env": cfg.marl.env, "seed": seed, "mean_return": m["mean_return"],
                "success_rate": m.get("success_rate"), "mi_bits": mi, "env_steps_per_s": m["env_steps_per_s"],
                "wall_s": wall, "updates": cfg.trainer.steps,
                "env_steps": cfg.trainer.steps * cfg.marl.num_envs * cfg.marl.max_steps,
            }, f"{method:>9} seed {seed}: return {m['mean_return']:.2f}, "
               f"success {m.get('success_rate')}, MI {mi}, {m['env_steps_per_s']:.0f} env steps/s")
    summary: dict[str, dict[str, float]] = {}
    for method in methods:
        rows = [r for r in results if r["method"] == method]
        summary[method] = {k: sum(r[k] for r in rows) / len(rows) for k in ("mean_return", "env_steps_per_s")}
        mis = [r["mi_bits"] for r in rows if r["mi_bits"] is not None]
        summary[method]["mi_bits"] = sum(mis) / len(mis) if mis else None
    report.finish(summary=summary)
    return {"summary": summary, "out": str(out) if out else None}
