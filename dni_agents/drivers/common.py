"""What every driver needs between a config and the core: devices, optimizers, interfaces built from
config, stats logging and atomic checkpoints. Drivers wire agents; the DNI mechanics stay in the core."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from ..config import UTILITY_KINDS, Config, ConfigError, config_to_yaml, import_object, interface_config
from ..core import Interface, SyntheticInputModel, System, Transport, UtilityModel
from ..logging import RunDirError, RunLogger, make_run_dir

T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA on a machine without it is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for, but CUDA is not available here (allowed: cpu, auto)")
    return torch.device(name)


def make_optimizer(
    kind: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0, fused: bool = False
) -> torch.optim.Optimizer:
    """``fused`` (``trainer.fused``): Adam as one kernel for all tensors, 4x faster a step than the per-tensor
    loop on a CPU for a small network; its rounding differs (1e-7 a step), so a run is reproducible with the
    same setting only, and it is off by default to keep every number measured without it reproducible."""
    if kind == "adam":
        params = list(params)
        if fused:
            try:
                return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
            except (RuntimeError, ValueError):  # a device or dtype the fused kernel does not support
                pass
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {kind!r} (allowed: adam, sgd)")


def build_interface(
    cfg: Config,
    sender: str,
    receiver: str,
    message_shape: tuple[int, ...],
    device: torch.device,
    context_dim: int = 0,
    gate_dims: int = 0,
    candidates: tuple[int, int] | None = None,
    source_shape: tuple[int, ...] | None = None,
    transport: Transport | None = None,
) -> Interface:
    """The interface ``sender -> receiver`` as the config describes it (defaults + per-channel override)."""
    icfg = interface_config(cfg, sender, receiver)
    utility = utility_optimizer = None
    if icfg.mode in ("dni", "cdni"):
        u = icfg.utility
        if u.gate and (icfg.mode != "cdni" or gate_dims == 0 or context_dim <= gate_dims):
            raise ConfigError(
                f"interfaces: {sender}->{receiver}.utility.gate needs mode cdni and a receiver whose "
                f"sensitivity the driver hands over (marl: a receiver with a policy; mode {icfg.mode}, "
                f"{gate_dims} gate entries)"
            )
        if u.kwargs and u.kind in UTILITY_KINDS:
            raise ConfigError(f"interfaces: {sender}->{receiver}.utility.kwargs: only for a kind given by "
                              f"import string (kind is {u.kind}; set hidden, layers, rank instead)")
        if u.kind not in UTILITY_KINDS:  # the user's own class, by import string
            key = f"interfaces: {sender}->{receiver}.utility.kind"
            utility = user_utility_model(u, key, message_shape, context_dim if icfg.mode == "cdni" else 0,
                                         gate_dims if u.gate else 0)
        else:
            utility = UtilityModel(
                message_shape,
                context_dim=context_dim if icfg.mode == "cdni" else 0,
                kind=u.kind,
                hidden=u.hidden,
                layers=u.layers,
                rank=u.rank,
                normalize=u.normalize,
                gate=gate_dims if u.gate else 0,
                squash_input=u.squash_input,
                candidates=candidates if u.gate and u.kind == "mlp" else None,
            )
        utility = utility.to(device)
        utility_optimizer = make_optimizer(u.optimizer, utility.parameters(), u.lr or cfg.trainer.lr,
                                           fused=cfg.trainer.fused)
    synthetic_input = synthetic_input_optimizer = None
    if icfg.synthetic_input is not None and source_shape is not None:
        s = icfg.synthetic_input
        synthetic_input = SyntheticInputModel(source_shape, message_shape, s.kind, s.hidden, s.layers)
        synthetic_input = synthetic_input.to(device)
        synthetic_input_optimizer = make_optimizer(
            cfg.trainer.optimizer, synthetic_input.parameters(), s.lr or cfg.trainer.lr,
            fused=cfg.trainer.fused,
        )
    return Interface(
        f"{sender}->{receiver}",
        sender,
        receiver,
        icfg.mode,
        utility,
        utility_optimizer,
        scale=icfg.scale,
        lambda_true=icfg.lambda_true,
        warmup_steps=icfg.warmup_steps,
        synthetic_input=synthetic_input,
        synthetic_input_optimizer=synthetic_input_optimizer,
        transport=transport,
    )


def user_utility_model(u: Any, key: str, message_shape: tuple[int, ...], context_dim: int,
                       gate: int) -> nn.Module:
    """A utility model of the user's class ``u.kind`` (``package.module:Class``), built as
    ``Class(message_shape, context_dim=, gate=, **u.kwargs)``; it must be an ``nn.Module`` whose
    ``forward(message, context)`` returns ĝ shaped like the message (checked here on a zero message)."""
    cls = import_object(u.kind, key)
    try:
        model = cls(message_shape, context_dim=context_dim, gate=gate, **u.kwargs)
    except TypeError as exc:
        raise ConfigError(f"{key}: {u.kind}{message_shape} rejects its arguments ({exc})") from None
    if not isinstance(model, nn.Module) or not any(True for _ in model.parameters()):
        raise ConfigError(f"{key}: {u.kind} must build a torch.nn.Module with parameters")
    with torch.no_grad():
        probe = model(torch.zeros(2, *message_shape), torch.zeros(2, context_dim) if context_dim else None)
    if not isinstance(probe, torch.Tensor) or probe.shape != (2, *message_shape):
        got = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise ConfigError(f"{key}: {u.kind} returns {got} for messages of shape {(2, *message_shape)} "
                          "(ĝ must have the message's shape)")
    return model


def mean_stats(records: list[Mapping[str, Any]]) -> dict[str, float]:
    """Average each stat over the records that carry it (fidelity is measured only on logging steps; the
    utility loss on every step)."""
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for r in records for k in r if k != "step"):
        values = [float(r[key]) for r in records if key in r]
        out[key] = sum(values) / len(values)
    return out


def log_interfaces(logger: RunLogger, system: System, step: int) -> dict[str, dict[str, float]]:
    """Drain the system's fidelity stats and log their means under ``interface/<name>/…``, and what
    ``trainer.on_nonfinite=skip`` skipped so far under ``skipped/<agent or interface>``."""
    out = {}
    for name, records in system.drain_stats().items():
        out[name] = mean_stats(records)
        logger.interface(name, out[name], step)
    logger.scalars("skipped", system.skipped, step)
    return out


def flat_hparams(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for the hyperparameter table (``trainer.lr: 0.001``)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_hparams(value, path + "."))
        else:
            out[path] = value
    return out


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


def run_dir_key(cfg: Config, run_dir: Path) -> str:
    """The setting that chose ``run_dir``, for error messages: ``log.dir`` or the CLI's ``--run-dir``."""
    return "log.dir" if Path(run_dir).parent == Path(cfg.log.dir) else "--run-dir"


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
    elif log:
        run_dir = make_run_dir(Path(run_dir).parent, Path(run_dir).name, key=run_dir_key(cfg, run_dir))
    logger = RunLogger(run_dir, config_to_yaml(cfg), flat_hparams(cfg.model_dump()), enabled=log,
                       purge_step=purge_step)
    if log:
        print(f"TensorBoard run: {run_dir}  (tensorboard --logdir {Path(run_dir).parent})", flush=True)
    return run_dir, logger


def eval_hint(run_dir: Path) -> str:
    """What to check when a finished run's checkpoint does not fit its own config."""
    return f"was {Path(run_dir) / 'config.yaml'} edited?"


def write_report(out: Path | None, report: dict) -> None:
    """Write a benchmark's JSON atomically; called after every run, so a long benchmark that is cut short
    keeps what it measured."""
    if out is None:
        return
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out)


# ------------------------------------------------------------------------------ several processes (ranks)
def local_system(
    full: System, placement: Mapping[str, int], rank: int, transport: Transport | None
) -> System:
    """This rank's part of ``full`` (built identically on every rank from the seed): its agents, and every
    interface with at least one end here, all on ``transport`` (None: a view of the same agents and
    interfaces, to load a checkpoint into before the transport exists)."""
    mine = [a for name, a in full.agents.items() if placement[name] == rank]
    names = {a.name for a in mine}
    ifaces = [i for i in full.interfaces.values() if i.sender in names or i.receiver in names]
    return System(mine, ifaces, transport, remote=[n for n in full.agents if n not in names],
                  on_nonfinite=full.on_nonfinite)


def rank_checkpoint(run_dir: Path, rank: int, step: int | None = None) -> Path:
    """``checkpoint.rank{r}.pt`` (the newest), or the kept one of ``step``."""
    name = f"checkpoint.rank{rank}.pt" if step is None else f"checkpoint.rank{rank}.step{step}.pt"
    return Path(run_dir) / name


def save_rank_checkpoint(run_dir: Path, rank: int, step: int, state: dict, keep: int) -> None:
    """Write rank ``rank``'s checkpoint of ``step`` atomically and keep its ``keep`` newest ones.

    Why several: the ranks write their checkpoints of a step at different moments, so a rank killed
    between two may leave the others one checkpoint ahead (a checkpoint drains only a rank's own
    neighbours, so up to one interval per rank in between). A resume takes the newest step that every rank
    has (:func:`common_checkpoint_step`). ``checkpoint.rank{r}.pt`` is always the newest (a hard link, or a
    copy where links are not supported)."""
    kept = rank_checkpoint(run_dir, rank, step)
    save_checkpoint(kept, {**state, "step": step})
    latest = rank_checkpoint(run_dir, rank)
    tmp = latest.with_name(f".{latest.name}.tmp-{os.getpid()}")
    try:
        os.link(kept, tmp)
    except OSError:
        save_checkpoint(tmp, {**state, "step": step})
    os.replace(tmp, latest)
    for old in checkpoint_steps(run_dir, rank)[:-keep]:
        rank_checkpoint(run_dir, rank, old).unlink(missing_ok=True)


def checkpoint_steps(run_dir: Path, rank: int) -> list[int]:
    """The steps of rank ``rank``'s kept checkpoints, oldest first."""
    prefix = f"checkpoint.rank{rank}.step"
    steps = [p.name[len(prefix):-3] for p in Path(run_dir).glob(f"{prefix}*.pt")]
    return sorted(int(s) for s in steps if s.isdigit())


def common_checkpoint_step(steps_by_rank: Mapping[int, list[int]]) -> int:
    """The newest step every rank has a checkpoint of (a one-line error if there is none)."""
    common = set.intersection(*(set(s) for s in steps_by_rank.values())) if steps_by_rank else set()
    if not common:
        have = "; ".join(f"rank {r}: {s or 'none'}" for r, s in sorted(steps_by_rank.items()))
        raise ConfigError(f"--resume: no checkpoint step that every rank has ({have})")
    return max(common)


def rank_files(run_dir: Path) -> dict[int, Path]:
    """The newest checkpoint of every rank of a multi-process run folder (empty for a one-process run)."""
    out: dict[int, Path] = {}
    for path in Path(run_dir).glob("checkpoint.rank*.pt"):
        r = path.name[len("checkpoint.rank"):-3]
        if r.isdigit():
            out[int(r)] = path
    return dict(sorted(out.items()))


SENDER_KEYS = ("messages_sent", "utility", "utility_optimizer")  # learned where the message is sent


def merge_rank_checkpoints(run_dir: Path, device: torch.device | str = "cpu") -> dict:
    """One process's checkpoint (``{"step", "system"}``) put together from the ranks' newest ones: each
    agent from its own rank; each interface's sender half (utility model) from the sender's rank and its
    receiver half (synthetic input) from the receiver's. All ranks must be at the same step."""
    files = rank_files(run_dir)
    if not files:
        raise FileNotFoundError(2, "no checkpoint (checkpoint.pt or checkpoint.rank*.pt)", str(run_dir))
    states = {r: load_checkpoint(p, device) for r, p in files.items()}
    for r, s in states.items():
        system = s.get("system")
        if "step" not in s or not isinstance(system, Mapping) or not all(
            isinstance(system.get(k), Mapping) for k in ("agents", "interfaces")
        ):
            raise CheckpointError(f"{files[r]}: not a dni-agents checkpoint of a run on several processes "
                                  "(it has no step or no system state)")
    steps = {r: int(s["step"]) for r, s in states.items()}
    if len(set(steps.values())) != 1:
        raise ConfigError(f"eval: the ranks' checkpoints are of different steps {steps} (finish the run "
                          f"with `dni-agents train CONFIG --procs {len(files)} --resume {run_dir}`)")
    agents: dict = {}
    for s in states.values():
        agents.update(s["system"]["agents"])
    interfaces: dict = {}
    for s in states.values():
        mine = s["system"]["agents"]
        for name, iface in s["system"]["interfaces"].items():
            sender, receiver = name.split("->")
            merged = interfaces.setdefault(name, {})
            for key, value in iface.items():
                here = (sender if key in SENDER_KEYS else receiver) in mine
                if here or key not in merged:
                    merged[key] = value
    return {"step": next(iter(steps.values())), "system": {"agents": agents, "interfaces": interfaces}}


def agree_resume_step(run_dir: Path, rank: int, world_size: int) -> int:
    """Every rank says which checkpoints it kept; all continue from the newest step they all have. A
    collective at start-up, before any point-to-point traffic (as the run folder's broadcast is)."""
    import torch.distributed as dist

    mine = checkpoint_steps(run_dir, rank)
    everyone: list = [None] * world_size
    dist.all_gather_object(everyone, mine)
    return common_checkpoint_step(dict(enumerate(everyone)))


def join_process_group(cfg: Config) -> tuple[int, int, torch.device, str]:
    """This process's rank, the world size, its device (a CUDA device per local rank under torchrun) and
    the backend (``distributed.backend``; auto: nccl for CUDA, gloo otherwise)."""
    from ..core.distributed import init_process_group

    dc = cfg.distributed
    device = resolve_device(cfg.device)
    backend = dc.backend if dc.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    rank, world = init_process_group(backend=backend, timeout=dc.timeout)
    return rank, world, device, backend


def open_distributed_run(
    cfg: Config, run_dir: Path, resume: Path | None, log: bool, rank: int, world: int,
    placement: Mapping[str, int], device: torch.device, hint: str, restore: Callable[[dict], None],
) -> tuple[Path, int, dict | None]:
    """The run folder every rank writes into (rank 0 creates it and the others learn its name; or
    ``resume``'s), the step to continue from, and this rank's checkpoint of that step (None for a new
    run). ``hint`` says what must stay the same for a resume.

    On a resume every rank loads its checkpoint and applies it with ``restore`` before anything is
    written; the ranks then tell each other whether that worked, so a bad checkpoint on any rank ends
    every rank (one line, from the rank that found it) and leaves the run folder as it was. Likewise a
    run folder rank 0 cannot create."""
    import torch.distributed as dist

    if resume is not None:
        run_path = Path(resume)
        start = agree_resume_step(run_path, rank, world)
        path = rank_checkpoint(run_path, rank, start)
        state, problem = None, None
        try:
            state = load_checkpoint(path, device)
            if state.get("placement") != placement:
                raise ConfigError(f"--resume: rank {rank} held {state.get('placement')} but now {placement} "
                                  f"(resume with the same {hint})")
            apply_checkpoint(path, state, restore, f"resume with the run's own config and the same {hint}")
        except (CheckpointError, ConfigError, FileNotFoundError) as exc:
            problem = exc
        _agree(problem, rank, world)
        return run_path, start, state
    shared: list = [None]  # the run folder's name, or the error that says why rank 0 could not make it
    if log and rank == 0:
        try:
            shared[0] = str(make_run_dir(Path(run_dir).parent, Path(run_dir).name,
                                         key=run_dir_key(cfg, run_dir)))
        except RunDirError as exc:
            shared[0] = exc
    dist.broadcast_object_list(shared, src=0)  # one object, between the processes of this run
    if isinstance(shared[0], RunDirError):
        raise shared[0] if rank == 0 else ReportedByPeer(str(shared[0]))
    return (Path(shared[0]) if shared[0] else Path(run_dir)), 0, None


def _agree(problem: Exception | None, rank: int, world: int) -> None:
    """All ranks learn whether any rank failed to restore its checkpoint (a collective, before any
    point-to-point traffic); the lowest such rank raises its error, the others end quietly with it."""
    import torch.distributed as dist

    everyone: list = [None] * world
    dist.all_gather_object(everyone, None if problem is None else str(problem))
    first = next((r for r, p in enumerate(everyone) if p is not None), None)
    if first == rank and problem is not None:
        raise problem
    if first is not None:
        raise ReportedByPeer(everyone[first])


def plot_against_data_and_time(
    path: Path, lines: list[tuple[str, list[float], list[float], list[float]]], data_label: str, y_label: str,
) -> None:
    """Two panels, one curve per ``(label, data_x, seconds_x, y)``: the metric against how much data was
    seen and against training seconds (the two ways a method can be faster). PNG, headless."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, data_x, seconds_x, y in lines:
        axes[0].plot(data_x, y, label=label)
        axes[1].plot(seconds_x, y, label=label)
    axes[0].set_xlabel(data_label)
    axes[1].set_xlabel("training seconds")
    for ax in axes:
        ax.set_ylabel(y_label)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
