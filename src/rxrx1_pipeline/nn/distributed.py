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
# What a machine that lost a peer of a training on several machines says to do.
RESTART = "start `kedro run` again on every machine: training resumes from the last checkpoint"


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


class WorkerMachineDone(SystemExit):
    """This machine trained as a worker of a training on several machines: the machine holding rank 0 writes
    the model, the checkpoints and every output, so this machine's `kedro run` stops here, successfully."""

    def __init__(self, label: str, node_rank: int, nnodes: int):
        super().__init__(0)
        self.label, self.node_rank, self.nnodes = label, node_rank, nnodes


def train(job: TrainJob, nproc: int, nnodes: int = 1, rdzv_endpoint: str | None = None
          ) -> tuple[dict, list[dict], pd.DataFrame]:
    """Run ``fit(job)`` on ``nproc`` local processes (``nnodes`` machines meeting at ``rdzv_endpoint``)
    and return rank 0's (model checkpoint, history, pseudo-labels). On a machine without rank 0, raise
    :class:`WorkerMachineDone` once the training is over.

    A failure in any worker stops all of them and is raised here with the worker's own message; a machine
    that leaves mid-training is named as the lost peer.
    """
    from torch.distributed.elastic.rendezvous.api import RendezvousError
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
        last = message.strip().splitlines()[-1] if message else str(exc)
        raise RuntimeError(f"{job.label}: DDP training failed on rank {first.local_rank}: {last}"
                           f"{lost_peer_hint(last, nnodes, rdzv_endpoint)}") from None
    except RendezvousError as exc:  # the machine hosting the rendezvous store left, or a machine never came
        if nnodes == 1:
            raise RuntimeError(f"{job.label}: DDP training could not start: {type(exc).__name__}: {exc}") from None
        raise RuntimeError(f"{job.label}: the {nnodes}-machine DDP training lost its rendezvous at {rdzv_endpoint} "
                           f"({type(exc).__name__}: {exc}): the machine at {rdzv_endpoint} left or a machine never "
                           f"joined; {RESTART}") from None
    if 0 not in results:  # keyed by global rank: one machine holds rank 0
        node = min(results) // nproc  # with the same number of processes on every machine
        log.info("%s: this machine trained as node %d of %d (ranks %s); the machine holding rank 0 writes the "
                 "model, the checkpoints and the outputs, so this run stops here", job.label, node, nnodes,
                 ", ".join(map(str, sorted(results))))
        raise WorkerMachineDone(job.label, node, nnodes)
    return results[0]


def lost_peer_hint(message: str, nnodes: int, rdzv_endpoint: str | None) -> str:
    """What to add to a worker's failure message when it means another machine left the training."""
    gone = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "closed by remote peer")
    if nnodes == 1 or not any(text in message for text in gone):
        return ""
    return f" (a peer of this {nnodes}-machine training, meeting at {rdzv_endpoint}, was lost; {RESTART})"


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
    else:  # OMP_NUM_THREADS when set; else the machine's cores shared between its workers
        threads = os.environ.get("OMP_NUM_THREADS", "").split(",")[0]  # e.g. "4" or "4,2" (nested levels)
        torch.set_num_threads(int(threads) if threads.isdigit() else max(1, (os.cpu_count() or 1)
                                                                          // int(os.environ["LOCAL_WORLD_SIZE"])))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        result = fit(job, rank, world, dev)
        dist.barrier()
        return result
    finally:
        dist.destroy_process_group()
