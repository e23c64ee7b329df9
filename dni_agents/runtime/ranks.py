"""A run on several processes (ranks): each rank's part of the system, its checkpoints (kept per step, so a
resume takes the newest step every rank has), merging them for ``eval``, and opening the run together."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from ..config import Config, ConfigError, agent_names
from ..core import System, Transport
from ..logging import RunDirError, make_run_dir
from .checkpoint import CheckpointError, ReportedByPeer, apply_checkpoint, load_checkpoint, save_checkpoint
from .run import resolve_device, run_dir_key


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


def stage_placement(names: list[str], world_size: int, what: str = "layer") -> dict[str, int]:
    """Split the agents (a chain of layers) into ``world_size`` contiguous stages as evenly as possible
    (agent i on rank ``i * world_size // agents``)."""
    if world_size > len(names):
        raise ConfigError(
            f"--procs: {world_size} processes for {len(names)} {what}s (at most one per {what})"
        )
    return {name: i * world_size // len(names) for i, name in enumerate(names)}


def placement_for(cfg: Config, world_size: int, what: str = "layer") -> dict[str, int]:
    """``distributed.placement`` (every agent must be placed, every rank must hold one) or stages."""
    names = agent_names(cfg)
    placement = cfg.distributed.placement
    if placement is None:
        return stage_placement(names, world_size, what)
    missing = [n for n in names if n not in placement]
    if missing:
        raise ConfigError(f"distributed.placement: no rank for {', '.join(missing)} (give every {what} one)")
    bad = {n: r for n, r in placement.items() if r >= world_size}
    if bad:
        raise ConfigError(
            f"distributed.placement: ranks {bad} but only {world_size} processes (0..{world_size - 1})"
        )
    idle = sorted(set(range(world_size)) - set(placement.values()))
    if idle:
        raise ConfigError(f"distributed.placement: ranks {idle} hold no {what} (use fewer processes)")
    return dict(placement)


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
