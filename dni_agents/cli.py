"""The ``dni-agents`` command: train, bench, eval and list configs.

User mistakes (bad config, missing path, a driver's data error) end as one line on stderr and exit
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pathlib
import shlex
import signal
import sys
import traceback
from types import ModuleType
from typing import Any, NoReturn

import torch
import yaml
from tqdm import tqdm

from dni_agents import __version__, registry
from dni_agents.config import ConfigError, bundled_configs, driver_module, find_config, load_config
from dni_agents.core import NonFiniteError
from dni_agents.core.distributed import PeerError
from dni_agents.launch import cli_command, launch
from dni_agents.runtime.run import claim_run_dir, release_run_dir, write_config
from dni_agents.runtime.stop import Interrupted, StopRequest

PROG = "dni-agents"


def load_driver(name: str) -> ModuleType:
    """The driver ``name`` from the registry (:mod:`dni_agents.registry`), imported only when needed, so
    listing configs stays fast."""
    return driver_module(name)


def bench_names() -> list[str]:
    """Benches a user may ask for: every driver's (the registry's), then the benches that span drivers."""
    return [*sorted(registry.drivers()), *registry.benches()]


def is_user_error(exc: BaseException) -> bool:
    """User errors get one line and exit 2; drivers opt in by setting ``user_error = True``."""
    return isinstance(exc, FileNotFoundError) or getattr(exc, "user_error", False) is True


def user_message(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError) and exc.filename is not None:
        message = f"{(exc.strerror or 'no such file or directory').lower()}: {exc.filename}"
    else:
        message = str(exc) or type(exc).__name__
    return " ".join(message.split())


OVERRIDES_HELP = """\
overrides, applied to the config file's keys in the order given:
  KEY=VALUE   set KEY (dotted: marl.env_kwargs.split=test; list items by index:
              interfaces.0.mode=none). VALUE is YAML: 1e-3, null, [8, 11], {a: 1}.
              A mapping VALUE merges into the file's mapping: marl.env_kwargs={a: 1}
              keeps the file's other env_kwargs.
  ~KEY        delete KEY from the file's config, so its default applies
              (~marl.eval_env_kwargs.split). To replace a mapping, delete it first:
              '~marl.env_kwargs' 'marl.env_kwargs={a: 1}'. Quote it where the
              shell would expand ~NAME to a home folder.
"""


def is_override(arg: str) -> bool:
    """``KEY=VALUE`` or ``~KEY`` (an argument that is no option)."""
    return not arg.startswith("-") and ("=" in arg or arg.startswith("~"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train from a config file or bundled config name",
                           epilog=OVERRIDES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("config", metavar="CONFIG", help="a YAML path or a bundled name (see `configs`)")
    train.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE|~KEY",
                       help="set a key (trainer.lr=1e-3) or delete one (~marl.eval_env_kwargs.split); see "
                            "below")
    train.add_argument("--resume", type=pathlib.Path, metavar="RUN_DIR", help="continue this run")
    train.add_argument("--run-dir", type=pathlib.Path, metavar="DIR", help="default: <log.dir>/<name>")
    train.add_argument("--procs", type=int, default=1, metavar="N",
                       help="spread the agents over N processes on this machine (torch.distributed)")
    train.set_defaults(handler=_cmd_train)

    bench = sub.add_parser("bench", help="run a benchmark suite and write its results")
    bench.add_argument("name", metavar="NAME", help=f"one of: {', '.join(bench_names())}")
    bench.add_argument("--quick", action="store_true", help="a few steps, for smoke tests")
    bench.add_argument("--out", type=pathlib.Path, metavar="FILE", help="where to write the results")
    bench.add_argument("--seeds", type=int, default=None, metavar="N", help="number of seeds")
    bench.add_argument("--only", type=lambda v: [x for x in v.split(",") if x], default=None, metavar="A,B",
                       help="run only these rows of the suite (models or methods, e.g. mlp6,cnn3)")
    bench.add_argument("--cpu", type=int, default=None, metavar="N",
                       help="time on CPU core N alone, one thread (how docs/benchmarks.md times)")
    bench.add_argument("overrides", nargs="*", metavar="KEY=VALUE|~KEY",
                       help="applied to every run (device=cuda), as train's")
    bench.set_defaults(handler=_cmd_bench)

    configs = sub.add_parser("configs", help="list bundled configs")
    configs.set_defaults(handler=_cmd_configs)

    ev = sub.add_parser("eval", help="evaluate a finished run")
    ev.add_argument("run_dir", type=pathlib.Path, metavar="RUN_DIR")
    ev.add_argument("--ablate", choices=("permute", "zero"), default=None,
                    help="marl: replay with every channel's messages shuffled across environment copies "
                         "(permute) or silenced (zero): the no-communication reference (a mode none run "
                         "still hears its sender's untrained code)")
    ev.add_argument("--train-env", action="store_true",
                    help="marl: play on the training environment (marl.env_kwargs) instead of the held-out "
                         "one (marl.eval_env_kwargs merged over marl.env_kwargs, e.g. split: test)")
    ev.set_defaults(handler=_cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status instead of exiting."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # overrides may also follow the options (``bench ff --quick device=cuda``)
        stray = [a for a in extra if not is_override(a)]
        if stray or (extra and not hasattr(args, "overrides")):
            parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
        if extra:
            args.overrides = [*(args.overrides or []), *extra]
    except SystemExit as exc:  # argparse already printed usage or --version
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return _run(args)
    except PeerError as exc:  # a peer process died or went silent: not a bug here, and not the user's
        print(f"{PROG}: error: {user_message(exc)}", file=sys.stderr)
        return 1
    except NonFiniteError as exc:  # the run diverged (trainer.on_nonfinite=stop): say where and when
        print(_diverged(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (bench, eval): a bench has kept its JSON
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not is_user_error(exc):
            raise
        print(f"{PROG}: error: {user_message(exc)}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    """The command; if it ends in an error, close the progress bars it left open first, so the error's
    one line stands on a line of its own."""
    try:
        return args.handler(args)
    except BaseException:
        _close_progress_bars()
        raise


def _close_progress_bars() -> None:
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.resume is not None and not args.resume.is_dir():
        raise FileNotFoundError(2, "no such run directory", str(args.resume))
    run_dir = args.run_dir or args.resume or pathlib.Path(cfg.log.dir) / cfg.name
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.procs < 1:
        raise ConfigError(f"--procs: must be >= 1, got {args.procs}")
    if args.procs > 1 or world > 1:
        driver = load_driver(cfg.driver)
        if not hasattr(driver, "train_distributed"):
            raise ConfigError(f"--procs: driver {cfg.driver!r} cannot run on several processes yet")
    if args.procs > 1 and world == 1:  # launch: the children run this same command with RANK/WORLD_SIZE set
        where = ["--resume", str(args.resume)] if args.resume is not None else ["--run-dir", str(run_dir)]
        argv = ["train", args.config, *args.overrides, *where]
        dc = cfg.distributed
        return launch(cli_command(argv), args.procs, dc.addr, grace=dc.timeout + 10)
    with StopRequest() as stop:  # Ctrl-C / SIGTERM: a checkpoint at the next step boundary, then exit
        if world > 1:  # a child of --procs, or started by torchrun
            try:
                metrics = driver.train_distributed(cfg, run_dir=run_dir, resume=args.resume, stop=stop)
            except BaseException as exc:  # noqa: BLE001 - reported here, then a hard exit (below)
                _exit_now(exc, args, cfg)
            _print_json(metrics)
            return 0
        driver = load_driver(cfg.driver)
        new_parent = not pathlib.Path(run_dir).parent.exists()
        if args.resume is None:  # every driver gets its folder with config.yaml (``eval`` reads it)
            run_dir = claim_run_dir(cfg, run_dir)
        try:
            metrics = driver.train(cfg, run_dir=run_dir, resume=args.resume, stop=stop)
        except Interrupted as exc:
            print(_stopped(exc, args, cfg), file=sys.stderr)
            return exc.exit_status
        except BaseException:
            if args.resume is None:  # failed before it wrote anything: the next try gets the same folder
                release_run_dir(cfg, run_dir, parent_too=new_parent)
            raise
    if args.resume is not None:  # the run went on with this config (a driver of ours has written it)
        write_config(cfg, run_dir)
    if isinstance(metrics, dict):
        metrics.pop("curve", None)  # the learning curve is in TensorBoard (and for benches); not one line
        metrics.setdefault("run_dir", str(run_dir))
    _print_json(metrics)
    return 0


def _diverged(exc: NonFiniteError) -> str:
    return f"{PROG}: error: {exc} (trainer.on_nonfinite=stop; the last checkpoint is kept)"


def _stopped(exc: Interrupted, args: argparse.Namespace, cfg: Any) -> str:
    """The one line a stopped run prints: where it stopped, its checkpoint and the command to go on."""
    name = signal.Signals(exc.signum).name
    where = f"checkpoint {exc.checkpoint}" if exc.checkpoint is not None else "no checkpoint (logging is off)"
    line = f"{PROG}: stopped by {name} at step {exc.step} of {cfg.trainer.steps}; {where}"
    if exc.checkpoint is not None:
        procs = ["--procs", str(args.procs)] if args.procs > 1 else []
        again = [PROG, "train", args.config, *args.overrides, *procs, "--resume", str(exc.checkpoint.parent)]
        line += f"; resume with: {shlex.join(again)}"
    return line


def _exit_now(exc: BaseException, args: argparse.Namespace, cfg: Any) -> NoReturn:
    """Report a failed or stopped distributed child and end it at once: its receiving threads may still be
    inside torch.distributed, waiting on a live peer, and tearing the process group down then aborts or
    hangs. A stopped run is reported once, by rank 0; a user error another rank reports (``quiet``) is not
    printed again."""
    _close_progress_bars()
    if isinstance(exc, Interrupted):
        if int(os.environ.get("RANK", "0")) == 0:
            args.procs = int(os.environ.get("WORLD_SIZE", "1")) if args.procs == 1 else args.procs
            print(_stopped(exc, args, cfg), file=sys.stderr)
    elif getattr(exc, "quiet", False) is True and is_user_error(exc):
        pass
    elif isinstance(exc, NonFiniteError):
        print(_diverged(exc), file=sys.stderr)
    elif isinstance(exc, PeerError) or is_user_error(exc):
        print(f"{PROG}: error: {user_message(exc)}", file=sys.stderr)
    else:
        traceback.print_exception(exc)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exc.exit_status if isinstance(exc, Interrupted) else 2 if is_user_error(exc) else 1)


def pin_to_core(core: int) -> None:
    """Run this process (and the processes it starts) on CPU core ``core`` with one thread: timings taken
    this way compare methods run one after the other, undisturbed by a second thread or a core switch."""
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if core not in available:
        raise ConfigError(f"--cpu: core {core} is not available to this process (allowed: "
                          f"{', '.join(map(str, available)) or 'none: this system cannot pin a process'})")
    os.sched_setaffinity(0, {core})
    os.environ["OMP_NUM_THREADS"] = "1"  # for the processes a bench starts
    torch.set_num_threads(1)


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.name not in bench_names():
        raise ConfigError(f"bench: unknown bench {args.name!r} (available: {', '.join(bench_names())})")
    if args.seeds is not None and args.seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {args.seeds}")
    if args.cpu is not None:
        pin_to_core(args.cpu)
    if args.name in registry.benches():
        driver = importlib.import_module(registry.benches()[args.name])
    else:
        driver = load_driver(args.name)
    if not hasattr(driver, "bench"):
        raise ConfigError(f"bench: driver {args.name!r} has no bench yet")
    result = driver.bench(quick=args.quick, out=args.out, seeds=args.seeds, overrides=args.overrides,
                          only=args.only)
    if result is not None:
        _print_json(result)
    return 0


def _cmd_configs(args: argparse.Namespace) -> int:
    for name in bundled_configs():
        text = find_config(name).read_text(encoding="utf-8")
        first = text.lstrip().splitlines()[0] if text.strip() else ""
        description = first.lstrip("#").strip() if first.startswith("#") else ""
        try:
            data = yaml.safe_load(text)
            driver = str(data.get("driver", "?")) if isinstance(data, dict) else "?"
        except yaml.YAMLError:
            driver = "?"
        print(f"{name:<24} {driver:<6} {description}".rstrip())
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    run_dir: pathlib.Path = args.run_dir
    if not run_dir.is_dir():
        raise FileNotFoundError(2, "no such run directory", str(run_dir))
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(2, "run has no config.yaml", str(config_file))
    cfg = load_config(str(config_file))
    marl_only = {"ablate": args.ablate} if args.ablate is not None else {}
    if args.train_env:
        marl_only["train_env"] = True
    if args.ablate is not None and cfg.driver != "marl":
        raise ConfigError(f"eval --ablate: only marl runs ablate messages (this run: {cfg.driver})")
    if args.train_env and cfg.driver != "marl":
        raise ConfigError(f"eval --train-env: only marl runs have evaluation environments (this run: "
                          f"{cfg.driver})")
    result = load_driver(cfg.driver).evaluate(run_dir, **marl_only)
    if result is not None:
        _print_json(result)
    return 0


def _print_json(result: Any) -> None:
    """One JSON line, so scripts can parse it; numpy/torch scalars become plain numbers."""
    print(json.dumps(result, default=_jsonable, sort_keys=True))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, pathlib.Path):
        return str(value)
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
