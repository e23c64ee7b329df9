"""A run folder: new or resumed (restored before anything is written), its logger with the config and the
hyperparameters as text.

The CLI opens a new run's folder for every driver before it calls the driver's ``train``
(:func:`claim_run_dir`: the folder, with the resolved ``config.yaml`` in it), so a driver from another
package writes its checkpoint there and ``dni-agents eval`` finds its config; ours take that folder over in
:func:`open_run`, and make one themselves when called directly (tests, benches)."""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..config import Config, ConfigError, config_to_yaml
from ..logging import RunLogger, make_run_dir, run_hparams
from .blas import reproducible_products
from .checkpoint import apply_checkpoint, load_checkpoint

F = TypeVar("F", bound=Callable[..., Any])


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA on a machine without it is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for, but CUDA is not available here (allowed: cpu, auto)")
    return torch.device(name)


def run_dir_key(cfg: Config, run_dir: Path) -> str:
    """The setting that chose ``run_dir``, for error messages: ``log.dir`` or the CLI's ``--run-dir``."""
    return "log.dir" if Path(run_dir).parent == Path(cfg.log.dir) else "--run-dir"


CONFIG_FILE = "config.yaml"


def claim_run_dir(cfg: Config, run_dir: Path) -> Path:
    """A new folder for a run of ``cfg``: ``run_dir``, or ``run_dir-2``, ``-3``, ... when that exists (never
    another run's), holding the resolved config as ``config.yaml``. A folder that cannot be made is a
    one-line error naming the setting that chose it (``log.dir`` or ``--run-dir``)."""
    run_dir = make_run_dir(Path(run_dir).parent, Path(run_dir).name, key=run_dir_key(cfg, run_dir))
    write_config(cfg, run_dir)
    return run_dir


def write_config(cfg: Config, run_dir: Path) -> None:
    """``run_dir/config.yaml``, the resolved config (written atomically: a crash leaves the old one)."""
    path = Path(run_dir) / CONFIG_FILE
    tmp = path.with_name(f".{CONFIG_FILE}.tmp-{os.getpid()}")
    tmp.write_text(config_to_yaml(cfg), encoding="utf-8")
    os.replace(tmp, path)


def unused_claim(cfg: Config, run_dir: Path) -> bool:
    """Whether ``run_dir`` is a folder :func:`claim_run_dir` made for ``cfg`` that nothing has written to
    since: its only file is ``config.yaml``, with this config."""
    run_dir = Path(run_dir)
    try:
        if [p.name for p in run_dir.iterdir()] != [CONFIG_FILE]:
            return False
        return (run_dir / CONFIG_FILE).read_text(encoding="utf-8") == config_to_yaml(cfg)
    except OSError:
        return False


def release_run_dir(cfg: Config, run_dir: Path, parent_too: bool = False) -> None:
    """Remove a claimed folder that nothing was written to (a run that failed before it started), so the
    next try gets the same name; ``parent_too``: its parent as well if that is left empty (the claim made
    it)."""
    if unused_claim(cfg, run_dir):
        (Path(run_dir) / CONFIG_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            Path(run_dir).rmdir()
            if parent_too:
                Path(run_dir).parent.rmdir()


def open_run(
    cfg: Config, run_dir: Path, resume: Path | None, log: bool, device: torch.device, checkpoint: str,
    restore: Callable[[dict], int],
) -> tuple[Path, RunLogger]:
    """The run folder (new, or ``resume``'s) and its logger with the config and hyperparameters. Prints
    where the TensorBoard run is.

    On a resume, ``restore`` puts the checkpoint into the driver's system and returns the first step the
    continued run logs at; it runs before anything is written, so a checkpoint that cannot be read or
    does not fit this config (:class:`CheckpointError`) leaves the run folder exactly as it was."""
    purge_step = None
    if resume is not None:
        run_dir = make_run_dir(Path(resume).parent, Path(resume).name, resume=True)
        path = run_dir / checkpoint
        state = load_checkpoint(path, device)
        hint = f"resume with the run's own config, {run_dir / 'config.yaml'}"
        purge_step = apply_checkpoint(path, state, restore, hint)
    elif log and unused_claim(cfg, run_dir):  # the CLI opened it for this run: take it over
        run_dir = Path(run_dir)
    elif log:
        run_dir = make_run_dir(Path(run_dir).parent, Path(run_dir).name, key=run_dir_key(cfg, run_dir))
    logger = RunLogger(run_dir, config_to_yaml(cfg), run_hparams(cfg), enabled=log,
                       purge_step=purge_step)
    if log:
        print(f"TensorBoard run: {run_dir}  (tensorboard --logdir {Path(run_dir).parent})", flush=True)
    return run_dir, logger


def eval_hint(run_dir: Path) -> str:
    """What to check when a finished run's checkpoint does not fit its own config."""
    return f"was {Path(run_dir) / 'config.yaml'} edited?"



@contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` (0: left as they are) inside, the caller's after."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def with_threads(resolve: Callable[[Config], int] = lambda cfg: cfg.trainer.threads) -> Callable[[F], F]:
    """Run a driver's ``train(cfg, ...)`` with the threads its config asks for (``trainer.threads``, or what
    ``resolve`` reads), whoever calls it: the CLI, a bench or a test."""
    def decorate(train: F) -> F:
        @functools.wraps(train)
        def run(cfg: Config, *args: Any, **kwargs: Any) -> Any:
            with intra_op_threads(resolve(cfg)):
                if torch.get_num_threads() > 1 and reproducible_products() is False:
                    warnings.warn(
                        f"{torch.get_num_threads()} threads without MKL's strict mode (MKL_CBWR="
                        f"{os.environ.get('MKL_CBWR', '')!r}): results may differ from one thread's in the "
                        "last bits and then further; leave MKL_CBWR unset (or AUTO,STRICT) and import "
                        "dni_agents before torch's first matrix product", RuntimeWarning, stacklevel=2)
                return train(cfg, *args, **kwargs)
        return run  # type: ignore[return-value]
    return decorate
