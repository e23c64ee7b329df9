"""Checkpoints: written atomically, read with ``weights_only=True``, and refused with one line when they
do not fit the system a config builds (which part, which shapes)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..config import ConfigError
from ..core import System

T = TypeVar("T")


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically (temp file + rename): a crash mid-write never leaves a broken checkpoint."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


class CheckpointError(Exception):
    """A checkpoint that cannot be read, or that does not fit the system this config builds: a user error
    (the CLI prints the one-line message and exits 2), raised before anything is written to the run."""

    user_error = True

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ReportedByPeer(Exception):
    """A user error that another rank of the run reports: this rank exits with the same status without
    printing it again (one line on stderr for the whole run)."""

    user_error = True
    quiet = True


class StateMismatch(ValueError):
    """A part of a checkpoint that does not fit what the config built (raised inside a ``restore``;
    :func:`apply_checkpoint` names the file)."""


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """The checkpoint at ``path``; a file that is not one (cut short, corrupted, another kind of torch
    file) is a :class:`CheckpointError` naming it, not an unpickling traceback."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no checkpoint to resume from", str(path))
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load of a bad file raises almost anything
        raise CheckpointError(
            f"{path}: not a dni-agents checkpoint (truncated or corrupted: {_load_failure(exc)})"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a dni-agents checkpoint (it holds a {type(state).__name__}, "
                              "not a dict of run state)")
    return state


def _load_failure(exc: BaseException) -> str:
    """A few words on why torch.load failed (its weights-only message is a page long)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip()
        return "unreadable data: " + detail.split(" was not an allowed", 1)[0].splitlines()[0][:80]
    if isinstance(exc, EOFError):
        return "the file ends early"
    lines = text.strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:80]}" if lines else type(exc).__name__


def state_mismatch(expected: Any, found: Any, where: str = "") -> str | None:
    """The first way ``found`` (from a checkpoint) does not fit ``expected`` (the fresh object's
    ``state_dict()``): a missing or extra key, or a tensor of another shape; None when it fits.
    Optimizers are compared by their parameter groups (their per-parameter state is empty until they
    step); plain values (counters, positions) fit whatever they hold."""
    at = where or "the state"
    if isinstance(expected, torch.Tensor):
        if not isinstance(found, torch.Tensor):
            return f"{at} is a {type(found).__name__} in the checkpoint, a tensor in the config"
        if found.shape != expected.shape:
            return (f"{at} has shape {list(found.shape)} in the checkpoint, {list(expected.shape)} "
                    "in the config")
        return None
    if not isinstance(expected, Mapping):
        return None
    if not isinstance(found, Mapping):
        return f"{at} is a {type(found).__name__} in the checkpoint, a dict in the config"
    if set(expected) == {"state", "param_groups"}:
        return _optimizer_mismatch(expected, found, at)
    prefix = f"{where}." if where else ""
    for key in expected:
        if key not in found:
            return f"{prefix}{key} is not in the checkpoint"
    for key in found:
        if key not in expected:
            return f"the checkpoint has {prefix}{key}, which this config does not"
    for key in expected:
        if (problem := state_mismatch(expected[key], found[key], f"{prefix}{key}")) is not None:
            return problem
    return None


def _optimizer_mismatch(expected: Mapping, found: Mapping, at: str) -> str | None:
    """Parameter groups of another size or kind (adam vs sgd) would load and then fail at the first step.
    Settings a newer torch fills in itself (flags: bools and None) may be absent from the checkpoint."""
    groups, saved = expected["param_groups"], found.get("param_groups")
    if not isinstance(saved, list) or len(saved) != len(groups):
        return f"{at} has other parameter groups in the checkpoint"
    for group, old in zip(groups, saved, strict=True):
        if not isinstance(old, Mapping) or len(old.get("params", ())) != len(group["params"]):
            n = len(old.get("params", ())) if isinstance(old, Mapping) else "?"
            return f"{at} steps {n} parameters in the checkpoint, {len(group['params'])} in the config"
        for key, value in group.items():
            if key not in old and not (value is None or isinstance(value, bool)):
                return f"{at} has no {key!r} setting in the checkpoint (another optimizer?)"
    return None


def check_like(part: str, expected: Any, found: Any) -> None:
    """Raise :class:`StateMismatch` when ``found`` does not fit ``expected`` (see :func:`state_mismatch`)."""
    if (problem := state_mismatch(expected, found)) is not None:
        raise StateMismatch(f"{part}: {problem}")


def system_mismatch(system: System, state: Any) -> str | None:
    """The first agent or interface of ``system`` the checkpoint's system state lacks, has in excess, or
    holds in another shape; None when it fits."""
    if not isinstance(state, Mapping) or not isinstance(state.get("agents"), Mapping) or not isinstance(
        state.get("interfaces"), Mapping
    ):
        return "it holds no system state (agents and interfaces)"
    expected = system.state_dict()
    parts = (("agents", "agent"), ("interfaces", "interface"))
    for kind, label in parts:
        want, have = expected[kind], state[kind]
        for name in want:
            if name not in have:
                return f"{label} {name} is not in the checkpoint (it has {', '.join(have) or 'none'})"
        for name in have:
            if name not in want:
                builds = ", ".join(want)
                return f"the checkpoint has {label} {name}, which this config does not (it builds {builds})"
    for kind, label in parts:
        for name, part in expected[kind].items():
            if (problem := state_mismatch(part, state[kind][name])) is not None:
                return f"{label} {name}: {problem}"
    return None


def load_system(system: System, state: Any) -> None:
    """Load a checkpoint's system state after checking that it fits: a checkpoint of another config is
    named by its first differing part instead of failing half-way through the load."""
    if (problem := system_mismatch(system, state)) is not None:
        raise StateMismatch(problem)
    system.load_state_dict(state)


RESTORE_ERRORS = (StateMismatch, KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError)


def apply_checkpoint(path: Path, state: dict, restore: Callable[[dict], T], hint: str) -> T:
    """Run ``restore(state)``; a checkpoint that does not fit (a missing entry, a part of another shape) is
    a one-line :class:`CheckpointError` naming ``path`` and ending with ``hint`` (what to do)."""
    try:
        return restore(state)
    except (ConfigError, CheckpointError):
        raise
    except RESTORE_ERRORS as exc:
        if isinstance(exc, KeyError):
            reason = f"it has no {exc.args[0]!r} entry" if exc.args else "an entry is missing"
        else:
            lines = str(exc).strip().splitlines()
            reason = lines[0][:200] if lines else type(exc).__name__
        raise CheckpointError(f"{path} does not match this config: {reason} ({hint})") from exc
