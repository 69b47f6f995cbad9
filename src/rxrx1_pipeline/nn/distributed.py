"""Data-parallel training: N worker processes started by torch's elastic launcher (the engine of
``torchrun``), each running :func:`rxrx1_pipeline.nn.training.fit` on its shard under DDP.

NCCL on GPUs (one per worker, ``cuda:<local rank>``), gloo on CPU. ``training.batch_size`` is the global
batch (each worker takes ``batch_size / world``) and ``training.lr`` belongs to it, so a recipe gives
the same optimisation on any number of processes; to use more devices for speed rather than for
the same recipe, raise both (linear scaling: Goyal et al. 2017, "Accurate, large minibatch SGD").
"""

from __future__ import annotations

import logging
import os
import uuid

import pandas as pd
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record

from rxrx1_pipeline.nn.training import TrainJob, fit

log = logging.getLogger(__name__)


def processes(setting: int | str) -> int:
    """Worker processes per node for ``distributed.nproc_per_node``: a number, or ``auto`` (every visible
    GPU; 1 on a machine without one)."""
    if setting == "auto":
        return max(1, torch.cuda.device_count())
    return int(setting)


def run_training(job: TrainJob) -> tuple[dict, list[dict], pd.DataFrame | None]:
    """Train ``job`` in this process, or on ``training.distributed`` DDP processes; returns (model checkpoint,
    history rows, pseudo-labels or None)."""
    spread = job.training.distributed
    nproc = processes(spread.nproc_per_node)
    if nproc == 1 and spread.nnodes == 1:
        return fit(job)
    return train(job, nproc, spread.nnodes, spread.rdzv_endpoint)


def train(job: TrainJob, nproc: int, nnodes: int = 1, rdzv_endpoint: str | None = None
          ) -> tuple[dict, list[dict], pd.DataFrame]:
    """Run ``fit(job)`` on ``nproc`` local processes (``nnodes`` machines meeting at ``rdzv_endpoint``)
    and return rank 0's (model checkpoint, history, pseudo-labels).

    A failure in any worker stops all of them and is raised here with the worker's own message.
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=nproc,
                          run_id=f"{job.label}-{uuid.uuid4().hex[:8]}" if nnodes == 1 else job.run_id,
                          rdzv_backend="c10d", rdzv_endpoint=rdzv_endpoint or "localhost:0",
                          max_restarts=0, start_method="spawn", monitor_interval=0.1)
    log.info("%s: training on %d process(es) x %d node(s) with DDP (%s)", job.label, nproc, nnodes,
             "nccl" if torch.cuda.is_available() else "gloo")
    try:
        results = elastic_launch(config, _worker)(job)
    except ChildFailedError as exc:
        first = min(exc.failures.items())[1]
        message = first.message if isinstance(first.message, str) else first.message.get("message", "")
        raise RuntimeError(f"{job.label}: DDP training failed on rank {first.local_rank}: "
                           f"{message.strip().splitlines()[-1] if message else exc}") from None
    mine = results.get(0)  # keyed by global rank: only the first node holds rank 0
    if mine is None:
        raise RuntimeError(f"{job.label}: this node holds no rank 0; its outputs come from the first node")
    return mine


@record
def _worker(job: TrainJob) -> tuple[dict, list[dict], pd.DataFrame] | None:
    """One DDP process: join the process group the launcher described in the environment, then train."""
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    cuda = torch.cuda.is_available()
    dev = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    else:  # the node's cores shared between its workers, not each worker using all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"])))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        result = fit(job, rank, world, dev)
        dist.barrier()
        return result
    finally:
        dist.destroy_process_group()
