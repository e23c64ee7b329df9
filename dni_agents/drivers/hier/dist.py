"""The hierarchical driver on two processes: A on one rank, B on the other, ``A -> B`` over
:class:`TorchDistributed`; the temporal channels ``A -> A`` and ``B -> B`` stay in process on their rank.

Both ranks regenerate the same digit stream from the seed, so labels never travel; only A's messages go
forward and B's true gradients for them come back. The staleness window (``distributed.max_staleness``)
counts *blocks* here (B's updates): B replies to a whole block's messages at once, so a window of steps
would make A wait for a target that B cannot give yet.

==========  ============================================================================================
dni, cdni   A updates at the end of every window with ĝ and goes on; it waits only when the window is
            full (the targets of block ``k - N - 1`` not back when it starts block ``k``). With N = 0 each
            block begins once the last one's targets are back and learned from: the in-process run.
backprop    A's windows of a block form one tick that keeps the graph; it updates once B's true
            gradients for all the block's messages are back, together with its own losses (the in-process
            joint tick, split at the process boundary): A waits for B.
none        no gradient crosses; B acknowledges each message so the window bounds A all the same.
==========  ============================================================================================
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ...config import Config, ConfigError, config_to_yaml
from ...core.distributed import Route, TorchDistributed
from ...launch import cli_command, launch
from ...logging import RunLogger
from ...runtime.checkpoint import load_system
from ...runtime.loop import Loop, step_generator
from ...runtime.ranks import (
    join_process_group,
    local_system,
    open_distributed_run,
    rank_checkpoint,
    save_rank_checkpoint,
)
from ...runtime.report import write_report
from ...runtime.run import with_threads
from ...runtime.stop import StopRequest
from .model import A_SELF, B_SELF, MESSAGE, A, B, Hier, build
from .step import Carry, a_window, b_unroll, block_metrics, tick_step
from .stream import Block
from .train import _streams, check_carried


def placement_for(cfg: Config, world_size: int) -> dict[str, int]:
    """``distributed.placement`` (default A on rank 0, B on rank 1): one agent per rank, two ranks."""
    if world_size != 2:
        raise ConfigError(f"--procs: hier runs A and B on 2 processes, got {world_size} (allowed: 2)")
    placement = dict(cfg.distributed.placement or {A: 0, B: 1})
    missing = [n for n in (A, B) if n not in placement]
    if missing:
        raise ConfigError(f"distributed.placement: no rank for {', '.join(missing)} (give A and B one)")
    if sorted(placement.values()) != [0, 1]:
        raise ConfigError(f"distributed.placement: {placement} (allowed: A and B on ranks 0 and 1, one each)")
    return placement


def train_block_rank(
    hier: Hier, transport: TorchDistributed, block: Block, first_window: int, carry: Carry, T: int,
    delay_s: float = 0.0,
) -> dict:
    """This rank's part of one block (``hier.system`` holds this rank's agent only)."""
    system = hier.system
    U = block.x.shape[1]
    steps = [tick_step(first_window + j, T) for j in range(U)]
    stats: dict = {}
    if A in system.agents:
        transport.throttle(steps[0], [MESSAGE])  # the window: the targets of old blocks are back...
        system.settle()  # ...and learned from (in process: as B's update ends)
        if hier.message.locked:  # backprop: one tick keeps the block's graph until B's gradients are back
            with system.tick(A, steps[-1]) as tick:
                for j in range(U):
                    a_window(hier, tick, block, steps, j, first_window, carry, stats, T)
            for step in steps:
                transport.wait_target(MESSAGE, step)
            system.settle()
        else:  # A updates at the end of every window, waiting for nobody
            for j in range(U):
                with system.tick(A, steps[j]) as tick:
                    a_window(hier, tick, block, steps, j, first_window, carry, stats, T)
    if B in system.agents:
        for step in steps:
            transport.wait_message(MESSAGE, step)
        with system.tick(B, steps[-1]) as tick:
            b_unroll(hier, tick, block, steps, first_window, carry, stats, T, delay_s)
    system.check_settled()
    return block_metrics(stats, U)


def drain(hier: Hier, transport: TorchDistributed, blocks: int, T: int, U: int) -> None:
    """Wait until every target of the first ``blocks`` blocks is back (on A's rank) and learn from them:
    nothing is then in flight across the process boundary, so a checkpoint holds all a resume needs.
    With ``max_staleness=0`` the next block would do just this first, so it changes nothing."""
    if blocks and A in hier.system.agents:
        transport.throttle(tick_step((blocks + transport.max_staleness) * U, T), [MESSAGE])
    hier.system.settle()


@with_threads()
def train_distributed(
    cfg: Config, run_dir: Path, log: bool = True, progress: bool = True, resume: Path | None = None,
    stop: StopRequest | None = None,
) -> dict:
    """This process's share of a hier run on two ranks (``dni-agents train hier --procs 2`` or
    ``torchrun``). Rank r writes ``checkpoint.rank{r}.pt`` (every ``trainer.checkpoint_every`` blocks,
    after a :func:`drain`, and at the end) and ``metrics.rank{r}.json``. A's rank reports A's updates and
    windows per second, timed until its last window (not the final wait for B). No evaluation during
    the run: ``dni-agents eval RUN_DIR`` evaluates the ranks' checkpoints put together."""
    dc, h, tc = cfg.distributed, cfg.hier, cfg.trainer
    rank, world, device, backend = join_process_group(cfg)
    placement = placement_for(cfg, world)
    torch.manual_seed(cfg.seed)  # as hier.train: the same parameters on both ranks and in process
    data, stream, _ = _streams(cfg)
    full = build(cfg, data.input_dim, device)
    T, U = h.period, h.b_truncation
    routes = [Route(MESSAGE, A, B, replies=full.message.mode != "none", block=T * U),
              Route(A_SELF, A, A), Route(B_SELF, B, B)]
    capacity = max(1024, 2 * U * (dc.max_staleness + 2))  # B's buffer holds the whole window's messages
    seconds, prediction = 0.0, None
    carry = Carry(torch.zeros(tc.batch_size, h.a_hidden, device=device),
                  torch.zeros(tc.batch_size, h.b_hidden, device=device))

    def restore(ckpt: dict) -> None:  # before the transport exists; the state in flight goes back below
        nonlocal seconds, carry, prediction
        load_system(local_system(full.system, placement, rank, None), ckpt["system"])
        check_carried(cfg, stream, ckpt, device)
        stream.load_state_dict(ckpt["stream"])
        seconds, carry = float(ckpt["seconds"]), Carry(ckpt["a_state"], ckpt["b_state"])
        prediction = ckpt["prediction"]

    run_path, start, _ = open_distributed_run(cfg, run_dir, resume, log, rank, world, placement, device,
                                              "distributed.placement", restore)
    transport = TorchDistributed(placement, routes, max_staleness=dc.max_staleness, timeout=dc.timeout,
                                 capacity=capacity, device=device if backend == "nccl" else "cpu",
                                 deliver_to=device)
    system = local_system(full.system, placement, rank, transport)
    hier = Hier(system, full.a, full.b, full.message, full.a_self, full.b_self)
    mine = next(iter(system.agents))
    own_self = hier.a_self if mine == A else hier.b_self
    if resume is not None and start:  # the state this rank's agent sent to its own next block (as hier.train)
        own_self.restore_in_flight(carry.a_state if mine == A else carry.b_state, tick_step(start * U - 1, T),
                                   prediction=prediction)
    log_dir = run_path if rank == 0 else run_path / f"rank{rank}"
    logger = RunLogger(log_dir, config_to_yaml(cfg) if rank == 0 else None, enabled=log,
                       purge_step=start + 1 if resume is not None else None)  # logged at ``step + 1``

    def save(step: int) -> None:
        save_rank_checkpoint(run_path, rank, step, {
            "placement": placement, "system": system.state_dict(), "stream": stream.state_dict(),
            "seconds": seconds, "a_state": carry.a_state, "b_state": carry.b_state,
            "prediction": own_self.in_flight(tick_step(step * U - 1, T)),
        }, keep=world + 1)

    first: dict = {}
    last: dict = {}

    def finish(step: int) -> Path | None:  # stopped by a signal at this boundary, on both ranks
        nonlocal seconds
        drain(hier, transport, step, T, U)
        seconds += time.perf_counter() - t0
        loop.bar.close()
        if not log:
            return None
        save(step)
        return rank_checkpoint(run_path, rank)

    def checkpoint(step: int) -> None:  # on the cadence: the targets in flight first, and not the last
        nonlocal seconds, t0
        if log and step < tc.steps:
            drain(hier, transport, step, T, U)
            seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            save(step)

    stop = stop or StopRequest()
    loop = Loop(cfg, start, logger, checkpoint, log=log, progress=progress, stop=stop, rank=rank,
                unit="block", count_from=1,
                check=lambda step, bar: stop.check_ranks(step, transport, finish, logger))
    t0 = time.perf_counter()
    for step in loop:
        block = stream.block(step_generator(cfg.seed, step))
        block = Block(*(t.to(device) for t in (block.x, block.odd, block.count, block.window_count)))
        system.track_stats = loop.logs(step)
        last = train_block_rank(hier, transport, block, step * U, carry, T, h.b_delay_s)
        first = first or last
        if loop.logs(step):
            if "a_loss" in last:
                logger.agent(A, {"loss": last["a_loss"], "accuracy": last["a_accuracy"]}, step + 1)
            if "b_loss" in last:
                logger.agent(B, {"loss": last["b_loss"], "accuracy": last["b_accuracy"]}, step + 1)
        loop.drain(system, step)
    own_seconds = seconds + time.perf_counter() - t0  # until this rank's last tick: A never waits at the end
    drain(hier, transport, tc.steps, T, U)
    seconds += time.perf_counter() - t0
    blocks = tc.steps - start
    updates = blocks * (1 if mine == B or hier.message.locked else U)
    metrics: dict = {"rank": rank, "agents": [mine], "method": hier.message.mode, "steps": tc.steps,
                     "start": start, "seconds": own_seconds, "blocks_per_s": blocks / max(own_seconds, 1e-9),
                     "updates": updates, "updates_per_s": updates / max(own_seconds, 1e-9),
                     "max_in_flight": transport.max_in_flight}
    if mine == A:
        metrics["windows_per_s"] = blocks * U / max(own_seconds, 1e-9)
    for key in ("a_loss", "a_accuracy", "b_loss", "b_accuracy"):
        if key in last:
            metrics[f"train_{key}_first"], metrics[f"train_{key}_last"] = first[key], last[key]
    if log:
        save(tc.steps)
        metrics["run_dir"] = str(run_path)
        write_report(run_path / f"metrics.rank{rank}.json", metrics)
    logger.close()
    transport.close()
    dist.destroy_process_group()
    return metrics


def measure_slow_b(
    mode: str,
    b_delay_s: float,
    blocks: int = 40,
    max_staleness: int | None = None,
    overrides: list[str] = (),
    timeout: float = 60.0,
) -> dict:
    """Run hier on 2 processes (A on rank 0, B on rank 1) with B sleeping ``b_delay_s`` per tick, and
    return A's rate: ``updates_per_s`` (A's optimizer steps: one per window with dni, one per block with
    backprop), ``windows_per_s`` (digits A gets through / T: the comparable throughput) and
    ``blocks_per_s``, with B's ``b_blocks_per_s``. Under ``backprop`` A waits for B every block; under
    ``dni`` only when ``max_staleness`` (in blocks; None: never, the window spans the run) is full.
    ``mode``: none, backprop, dni or cdni on ``A -> B``; ``overrides``: more ``KEY=VALUE`` (sizes)."""
    window = blocks if max_staleness is None else max_staleness
    with tempfile.TemporaryDirectory(prefix="dni-slow-b-") as tmp:
        argv = ["train", "hier", f"interfaces.0.mode={mode}", f"hier.b_delay_s={b_delay_s}",
                f"trainer.steps={blocks}", "trainer.eval_every=0", "trainer.checkpoint_every=0",
                f"distributed.max_staleness={window}", f"distributed.timeout={timeout}",
                "log.embedding_samples=0", f"log.every={max(blocks, 1)}", f"log.dir={tmp}", "name=slow_b",
                *overrides, "--run-dir", str(Path(tmp) / "slow_b")]
        status = launch(cli_command(argv), 2, grace=timeout + 10)
        if status != 0:
            raise RuntimeError(f"measure_slow_b({mode!r}): the 2-process run failed (exit status {status})")
        ranks = [json.loads((Path(tmp) / "slow_b" / f"metrics.rank{r}.json").read_text()) for r in (0, 1)]
    a = next(m for m in ranks if m["agents"] == [A])
    b = next(m for m in ranks if m["agents"] == [B])
    return {"mode": mode, "b_delay_s": b_delay_s, "blocks": blocks, "max_staleness": window,
            "updates_per_s": a["updates_per_s"], "windows_per_s": a["windows_per_s"],
            "blocks_per_s": a["blocks_per_s"], "b_blocks_per_s": b["blocks_per_s"], "a_seconds": a["seconds"]}
