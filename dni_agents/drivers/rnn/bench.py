"""``dni-agents bench rnn``: tasks × methods × truncations, and the wall-clock race on text."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from ...config import ConfigError, load_config
from ...runtime.report import Report, plot_against_data_and_time, timed_run
from .model import METHODS
from .train import train


def _run(base: str, method: str, extra: list[str]) -> dict:
    result, wall = timed_run(train, load_config(base, [*METHODS[method], *extra]))
    return {**result, "wall_s": wall}


def _split_only(only: list[str] | None) -> tuple[set[str], set[str]]:
    """``--only`` names as (tasks, methods); an unknown name is a user error that lists the known ones."""
    tasks = {"copy", "repeat_copy", "charlm", "wallclock"}
    unknown = [n for n in only or [] if n not in tasks and n not in METHODS]
    if unknown:
        raise ConfigError(f"--only: {','.join(unknown)} is neither a task ({', '.join(sorted(tasks))}) "
                          f"nor a method ({', '.join(METHODS)})")
    return {n for n in only or [] if n in tasks}, {n for n in only or [] if n in METHODS}


def bench(quick: bool = False, out: Path | None = None, seeds: int | None = None, overrides: list[str] = (),
          only: list[str] | None = None) -> dict:
    """``dni-agents bench rnn``: the paper's Table 1 shape — Copy and Repeat Copy (longest length solved
    within the same window budget) and the char-LM (test BPC), for bptt / dni / dni_aux at several T — and
    the wall-clock study: bptt at T = 8, 20, 40 against dni at T = 8 on the char-LM, validation BPC against
    characters seen and seconds (JSON, and a PNG beside it). ``only`` names tasks (``copy``,
    ``repeat_copy``, ``charlm``, ``wallclock``: the wall-clock study) and/or methods (``bptt``, ``dni``,
    ``dni_aux``): a run is kept when its task and its method are both named, or their kind is not named at
    all (``--only repeat_copy,dni``: Repeat Copy's dni column only)."""
    seeds = seeds or 1
    Ts = [3, 5] if quick else [2, 3, 4, 5, 8]
    copy_steps = 2000 if quick else 20000
    lm_steps = 300 if quick else 6000
    lm_eval = ["trainer.eval_every=100" if quick else "trainer.eval_every=500",
               "rnn.eval_chars=20000" if quick else "rnn.eval_chars=100000"]
    tasks = ["copy"] if quick else ["copy", "repeat_copy", "charlm"]
    only_tasks, only_methods = _split_only(only)
    keep = lambda task, method=None: (not only_tasks or task in only_tasks) and (  # noqa: E731
        method is None or not only_methods or method in only_methods)
    report = Report("rnn", quick, overrides, out)
    records = report.results
    bar = tqdm(desc="bench rnn", unit="run", leave=False)
    for seed in range(seeds):
        for task in tasks:
            for T in Ts if task != "charlm" else [t for t in Ts if t >= 3]:
                for method in METHODS:
                    if not keep(task, method):
                        continue
                    if task == "charlm":
                        extra = [f"rnn.truncation={T}", f"trainer.steps={lm_steps}", *lm_eval]
                        base = "charlm"
                    else:
                        extra = [f"rnn.task={task}", f"rnn.truncation={T}", f"trainer.steps={copy_steps}"]
                        base = "copy"
                    res = _run(base, method, [*extra, *overrides, f"seed={seed}", f"name=bench_{task}"])
                    metric = "test_bpc" if task == "charlm" else "solved_length"
                    report.add({
                        "study": "table1", "method": method, "task": task, "T": T, "seed": seed,
                        "metric": metric, "value": res[metric],
                        "chars_per_s": res.get("chars_per_s"), "wall_s": res["wall_s"],
                        "curve": res.get("curve"),
                    }, f"{task:>11} T={T} {method:>7}: {metric} {res[metric]:.3f} ({res['wall_s']:.0f} s)")
                    bar.update(1)
        # wall-clock study: the same characters for every run, so the curves are comparable in data and time
        if keep("wallclock"):
            per_row = lm_steps * 8  # characters each of the batch's streams reads, the same for every run
            for method, T in (("bptt", 8), ("bptt", 20), ("bptt", 40), ("dni", 8)):
                if not keep("wallclock", method):
                    continue
                extra = [f"rnn.truncation={T}", f"trainer.steps={per_row // T}", *lm_eval,
                         f"trainer.eval_every={max(1, (per_row // T) // (3 if quick else 12))}"]
                res = _run("charlm", method, [*extra, *overrides, f"seed={seed}", "name=bench_wallclock"])
                report.add({
                    "study": "wallclock", "method": method, "task": "charlm", "T": T, "seed": seed,
                    "metric": "valid_bpc", "value": res["valid_bpc"], "chars_per_s": res["chars_per_s"],
                    "wall_s": res["wall_s"], "curve": res["curve"],
                }, f"  wallclock {method} T={T}: best valid BPC {res['valid_bpc']:.3f}, "
                   f"{res['chars_per_s']:.0f} chars/s")
                bar.update(1)
    bar.close()
    if out is not None:
        plot_wallclock(records, Path(out).with_suffix(".png"))
    return {"results": [{k: v for k, v in r.items() if k != "curve"} for r in records],
            "out": str(out) if out else None}


def plot_wallclock(records: list[dict], path: Path) -> None:
    """Validation BPC against characters seen and against seconds, one line per (method, T)."""
    rows = [r for r in records if r["study"] == "wallclock" and r["curve"]]
    if not rows:
        return
    lines = [(f"{r['method']} T={r['T']}", [p["chars"] for p in r["curve"]],
              [p["seconds"] for p in r["curve"]], [p["valid_bpc"] for p in r["curve"]]) for r in rows]
    plot_against_data_and_time(path, lines, "characters seen", "validation bits per character")
