"""``dni-agents bench parallel``: does decoupling buy wall-clock speed when stages run in parallel?

One wide MLP (784 → W → … → W → 10, batch-norm, ReLU), cut into two stages, trained on real data by
five methods, side by side, each on the same number of samples (the same batches in the same order), each
process on one core unless said otherwise:

=====================  ===============================================================================
``backprop_2threads``  one process, plain backprop, ``torch.set_num_threads(2)``: what two cores give
                       without any parallel training scheme
``backprop_1thread``   one process, plain backprop, one thread: the reference for speed-ups
``pipelining``         ``torch.distributed.pipelining`` (a ``PipelineStage`` per process, GPipe or 1F1B)
                       over two processes; every micro-batch count of ``micro_batches`` is timed on a
                       short trial and the fastest trains
``dni_full``           DNI over two processes: the ff driver's distributed step on our
                       ``TorchDistributed`` transport, a same-width linear utility model at the cut
                       (conditioned on the label, cDNI, unless ``mode=dni``)
``dni_lowrank``        the same with a rank-``rank`` linear utility model
=====================  ===============================================================================

Every method runs in fresh processes (``launch``), so none inherits another's allocator or thread pool.
Each worker snapshots its stage's parameters at ``curve_points`` evenly spaced steps (the copy's time is
taken off its clock); after training, this process evaluates every snapshot on the test set, so the curve
of accuracy against wall-clock seconds costs the timed loop nothing and is measured alike for all. The
in-process DNI runs (same model, same utility models, one process) give the accuracy the distributed runs
must match. A cost worker times each stage's forward, backward and optimizer step (whole batch and
micro-batches), the utility models' forward and update, and the one-way time of a message between two
processes: :func:`project` turns those into the speed-ups K = 2, 4, 8, 16 stages would give.
"""

from .bench import bench, project, summarize
from .setup import METHODS, QUICK, RECORD_KEYS, Setup, apply_overrides, default_setup

__all__ = ["METHODS", "QUICK", "RECORD_KEYS", "Setup", "apply_overrides", "bench", "default_setup", "project",
           "summarize"]
