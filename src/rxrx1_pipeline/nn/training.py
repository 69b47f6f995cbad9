"""The training loop of one cell line's model, in the Kedro process or in each of N DDP processes."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import pandas as pd
import torch

from rxrx1_pipeline.images import ImageStore
from rxrx1_pipeline.nn import loops
from rxrx1_pipeline.nn.checkpoints import CheckpointStore, model_checkpoint
from rxrx1_pipeline.nn.data import StoreSites, fit_loader
from rxrx1_pipeline.nn.network import build_network, normaliser_from_stats

log = logging.getLogger(__name__)


@dataclass
class TrainJob:
    """Everything a training process needs (picklable: DDP workers are spawned processes)."""

    cell_line: str
    run_id: str  # fingerprint of settings, data and code; the checkpoint of another run is not resumed
    training: dict  # the training block, runtime settings included
    settings: dict  # the settings that define the model (saved with it)
    fit: pd.DataFrame
    valid: pd.DataFrame
    store: ImageStore
    plate_stats: pd.DataFrame
    n_classes: int
    checkpoints: CheckpointStore


class TrainStep(torch.nn.Module):
    """The network and its margin head as one module, so DDP sees every parameter in ``forward``."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.net.logits(self.net(x).float(), labels)


def fit(job: TrainJob, rank: int = 0, world: int = 1, dev: torch.device | None = None
        ) -> tuple[dict, list[dict]] | None:
    """Train (or resume) ``job`` as rank ``rank`` of ``world`` processes (1: no process group).

    All ranks start from the same weights (the seed, or the checkpoint every rank reads) and see their
    share of each global batch; DDP averages the gradients. Only rank 0 validates, writes checkpoints
    and returns (model checkpoint, history rows); the other ranks return None.
    """
    training, label = job.training, job.cell_line
    epochs, batch, workers, seed = training["epochs"], training["batch_size"], training["num_workers"], training["seed"]
    dev = dev or loops.device(training.get("device"))
    net = loops.seeded_network(lambda: build_network(job.settings, job.n_classes), seed).to(dev)
    norm = normaliser_from_stats(training["normalization"], job.plate_stats)
    data = fit_loader(StoreSites(job.store, job.fit["store_row"].to_numpy(), job.fit["class_index"].to_numpy()),
                      batch, workers, seed, rank, world)
    opt, sched = loops.optimiser(net, training, steps_per_epoch=len(data))
    start, history = job.checkpoints.restore(job.run_id, net, opt, sched, label)
    if start >= epochs and rank == 0:
        log.info("%s: the checkpoint already holds all %d epochs of these settings and data; reusing it "
                 "(delete it to retrain)", label, start)
    step = TrainStep(net)
    if world > 1:
        step = torch.nn.parallel.DistributedDataParallel(step, device_ids=[dev.index] if dev.type == "cuda" else None)
    fit_plates = torch.from_numpy(job.fit["plate_index"].to_numpy(copy=True))
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        data.sampler.set_epoch(epoch)
        views = torch.Generator().manual_seed(seed * 100_003 + epoch)
        try:
            loss, accuracy = loops.run_epoch(step, norm, opt, sched, data, fit_plates, views,
                                             f"{label} epoch {epoch + 1}/{epochs}", rank, world)
        except FloatingPointError as exc:
            raise FloatingPointError(f"{exc}; training stopped: the model is not saved and the last checkpoint "
                                     f"({job.checkpoints.path}) is untouched; lower training.lr or check the "
                                     "inputs") from exc
        if rank:
            continue
        row = {"epoch": epoch + 1, "loss": loss, "fit_accuracy": accuracy,
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        every = training["validate_every"]
        if len(job.valid) and every and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
            row["valid_site_accuracy"] = loops.site_accuracy(net, norm, job.store, job.valid, batch, workers)
        history.append(row)
        log.info("%s epoch %d/%d: loss %.3f, fit acc %.3f%s (%.1fs)", label, epoch + 1, epochs,
                 row["loss"], row["fit_accuracy"],
                 f", valid site acc {row['valid_site_accuracy']:.3f}" if "valid_site_accuracy" in row else "",
                 row["seconds"])
        job.checkpoints.save(job.run_id, epoch + 1, net, opt, sched, history)
    if rank:
        return None
    return model_checkpoint(net, job.settings, job.n_classes), history
