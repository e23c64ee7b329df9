"""What every driver needs between a config and the core: devices, optimizers, interfaces built from
config, stats logging and atomic checkpoints. Drivers wire agents; the DNI mechanics stay in the core."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config, ConfigError, config_to_yaml, interface_config
from ..core import Interface, SyntheticInputModel, System, Transport, UtilityModel
from ..logging import RunLogger, make_run_dir


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA on a machine without it is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for, but CUDA is not available here (allowed: cpu, auto)")
    return torch.device(name)


def make_optimizer(
    kind: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    if kind == "adam":
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
    source_shape: tuple[int, ...] | None = None,
    transport: Transport | None = None,
) -> Interface:
    """The interface ``sender -> receiver`` as the config describes it (defaults + per-channel override)."""
    icfg = interface_config(cfg, sender, receiver)
    utility = utility_optimizer = None
    if icfg.mode in ("dni", "cdni"):
        u = icfg.utility
        utility = UtilityModel(
            message_shape,
            context_dim=context_dim if icfg.mode == "cdni" else 0,
            kind=u.kind,
            hidden=u.hidden,
            layers=u.layers,
            rank=u.rank,
            normalize=u.normalize,
        ).to(device)
        utility_optimizer = make_optimizer(u.optimizer, utility.parameters(), u.lr or cfg.trainer.lr)
    synthetic_input = synthetic_input_optimizer = None
    if icfg.synthetic_input is not None and source_shape is not None:
        s = icfg.synthetic_input
        synthetic_input = SyntheticInputModel(source_shape, message_shape, s.kind, s.hidden, s.layers)
        synthetic_input = synthetic_input.to(device)
        synthetic_input_optimizer = make_optimizer(
            cfg.trainer.optimizer, synthetic_input.parameters(), s.lr or cfg.trainer.lr
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


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no checkpoint to resume from", str(path))
    return torch.load(path, map_location=device, weights_only=True)


def open_run(
    cfg: Config, run_dir: Path, resume: Path | None, log: bool, device: torch.device, checkpoint: str
) -> tuple[Path, RunLogger, dict | None]:
    """The run folder (new, or ``resume``'s), its logger with the config and hyperparameters, and the
    checkpoint to continue from (None for a new run). Prints where the TensorBoard run is."""
    state = None
    if resume is not None:
        run_dir = make_run_dir(Path(resume).parent, Path(resume).name, resume=True)
        state = load_checkpoint(run_dir / checkpoint, device)
    elif log:
        run_dir = make_run_dir(Path(run_dir).parent, Path(run_dir).name)
    logger = RunLogger(run_dir, config_to_yaml(cfg), flat_hparams(cfg.model_dump()), enabled=log)
    if log:
        print(f"TensorBoard run: {run_dir}  (tensorboard --logdir {Path(run_dir).parent})", flush=True)
    return run_dir, logger, state


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
def local_system(full: System, placement: Mapping[str, int], rank: int, transport: Transport) -> System:
    """This rank's part of ``full`` (built identically on every rank from the seed): its agents, and every
    interface with at least one end here, all on ``transport``."""
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
    run_dir: Path, resume: Path | None, log: bool, rank: int, world: int, placement: Mapping[str, int],
    device: torch.device, hint: str,
) -> tuple[Path, int, dict | None]:
    """The run folder every rank writes into (rank 0 creates it and the others learn its name; or
    ``resume``'s), the step to continue from, and this rank's checkpoint of that step (None for a new
    run). ``hint`` says what must stay the same for a resume."""
    import torch.distributed as dist

    if resume is not None:
        run_path = Path(resume)
        start = agree_resume_step(run_path, rank, world)
        state = load_checkpoint(rank_checkpoint(run_path, rank, start), device)
        if state.get("placement") != placement:
            raise ConfigError(f"--resume: rank {rank} held {state.get('placement')} but now {placement} "
                              f"(resume with the same {hint})")
        return run_path, start, state
    shared = [str(make_run_dir(Path(run_dir).parent, Path(run_dir).name)) if log and rank == 0 else None]
    dist.broadcast_object_list(shared, src=0)  # one string, between the processes of this run
    return (Path(shared[0]) if shared[0] else Path(run_dir)), 0, None


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
