"""The training of one model (a cell line's, or the shared one): the job, its identity, and the loop each
training process runs (``nn.distributed.run_training`` chooses this process or N DDP processes)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import cached_property

import pandas as pd
import torch

from rxrx1_pipeline.nn import loops
from rxrx1_pipeline.nn.checkpoints import model_checkpoint
from rxrx1_pipeline.nn.data import FitBatches, StoreSites, fit_loader
from rxrx1_pipeline.nn.identity import run_fingerprint
from rxrx1_pipeline.nn.network import build_network, normaliser_from_stats
from rxrx1_pipeline.nn.pseudo import PseudoLabeller
from rxrx1_pipeline.schema import Training
from rxrx1_pipeline.storage.checkpoints import CheckpointStore
from rxrx1_pipeline.storage.images import ImageStore, StoreChain

log = logging.getLogger(__name__)


@dataclass
class TrainJob:
    """Everything a training process needs (picklable: DDP workers are spawned processes)."""

    label: str  # the model's name in logs: its cell line, or "shared" for the model of all cell lines
    training: Training  # the training block, runtime settings included
    settings: dict  # the settings that define the model (saved with it: nn.identity.model_settings)
    fit: pd.DataFrame  # store_row, class_index, plate_index (and line_index for a model of several lines)
    valid: pd.DataFrame
    store: ImageStore | StoreChain  # a StoreChain of every line's store for the shared model
    plate_stats: pd.DataFrame
    n_classes: int
    checkpoints: CheckpointStore
    initial: dict | None = None  # weights to start from (fine-tuning the shared model), else the seed's init
    pseudo: PseudoLabeller | None = None
    start: dict = field(default_factory=dict)  # what the weights start from, for the fingerprint

    @cached_property
    def run_id(self) -> str:
        """The fingerprint of this run: the checkpoint of another run is never resumed."""
        return run_fingerprint(self.settings, self.fit["id_code"].tolist(), self.fit["class_index"].tolist(),
                               self.n_classes, self.store.manifest, self.start)


class TrainStep(torch.nn.Module):
    """The network and its loss as one module, so DDP sees every parameter in ``forward``.

    Returns the training logits of the own labels and the loss; with mixed images (``partner``, ``lam``)
    the labels and the cell-line input are mixed lam x the own + (1 - lam) x the partner's
    (``EmbeddingNet.train_loss``)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, labels: torch.Tensor, lines: torch.Tensor | None = None,
                partner: torch.Tensor | None = None, lam: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.train_loss(x, labels, lines, partner, lam)


def fit(job: TrainJob, rank: int = 0, world: int = 1, dev: torch.device | None = None
        ) -> tuple[dict, list[dict], pd.DataFrame | None] | None:
    """Train (or resume) ``job`` as rank ``rank`` of ``world`` processes (1: no process group).

    All ranks start from the same weights (the seed's, ``job.initial``, or the checkpoint every rank
    reads) and see their share of each global batch; DDP averages the gradients. With ``job.pseudo``,
    rank 0 updates the pseudo-labels before each due epoch and every rank trains on them too. Only rank 0
    validates, writes checkpoints and returns (model checkpoint, history rows, pseudo-labels or None); the
    other ranks return None.
    """
    training, label = job.training, job.label
    epochs, batch, workers, seed = training.epochs, training.batch_size, training.num_workers, training.seed
    by_plate = training.batches == "per_plate"
    dev = dev or loops.device(training.device)
    loops.flush_subnormals()
    net = loops.seeded_network(lambda: build_network(job.settings, job.n_classes, pretrained=job.initial is None),
                               seed).to(dev)
    if job.initial is not None:
        net.load_state_dict(job.initial)
    norm = normaliser_from_stats(training.normalization, job.plate_stats)
    plates = job.fit["plate_index"].to_numpy()
    cap = training.steps_per_epoch
    steps = len(FitBatches(plates, batch, seed, rank, world, by_plate, cap))  # the schedule's batches per epoch
    opt, sched = loops.optimiser(net, training, steps_per_epoch=steps)
    start, history, extra = job.checkpoints.restore(job.run_id, net, opt, sched, label)
    if job.pseudo is not None and "pseudo" in extra:
        job.pseudo.restore(extra["pseudo"])
    if start >= epochs and rank == 0:
        log.info("%s: the checkpoint already holds all %d epochs of these settings and data; reusing it "
                 "(delete it to retrain)", label, start)
    step = TrainStep(net)
    if world > 1:
        step = torch.nn.parallel.DistributedDataParallel(step, device_ids=[dev.index] if dev.type == "cuda" else None)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        if job.pseudo is not None and job.pseudo.due(epoch):
            update_pseudo_labels(job, net, norm, epoch, rank, world)
        sites = job.fit if job.pseudo is None else pd.concat([job.fit, job.pseudo.labelled_sites()], ignore_index=True)
        data = fit_loader(StoreSites(job.store, sites["store_row"].to_numpy(), sites["class_index"].to_numpy()),
                          sites["plate_index"].to_numpy(), batch, workers, seed, rank, world, by_plate, cap)
        data.batch_sampler.set_epoch(epoch)
        views = torch.Generator().manual_seed(seed * 100_003 + epoch)
        lines = torch.from_numpy(sites["line_index"].to_numpy(copy=True)) if "line_index" in sites else None
        try:
            loss, accuracy = loops.run_epoch(step, norm, opt, sched, data,
                                             torch.from_numpy(sites["plate_index"].to_numpy(copy=True)), views,
                                             f"{label} epoch {epoch + 1}/{epochs}", training, rank, world, lines,
                                             epoch)
        except FloatingPointError as exc:
            raise FloatingPointError(f"{exc}; training stopped: the model is not saved and the last checkpoint "
                                     f"({job.checkpoints.path}) is untouched; lower training.lr or check the "
                                     "inputs") from exc
        if rank:
            continue
        row = {"epoch": epoch + 1, "loss": loss, "fit_accuracy": accuracy,
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        if job.pseudo is not None:
            row["pseudo_labels"] = len(job.pseudo.labelled)
        every = training.validate_every
        if len(job.valid) and every and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
            row["valid_site_accuracy"] = loops.site_accuracy(net, norm, job.store, job.valid, batch, workers)
        history.append(row)
        log.info("%s epoch %d/%d: loss %.3f, fit acc %.3f%s (%.1fs)", label, epoch + 1, epochs,
                 row["loss"], row["fit_accuracy"],
                 f", valid site acc {row['valid_site_accuracy']:.3f}" if "valid_site_accuracy" in row else "",
                 row["seconds"])
        pseudo = {} if job.pseudo is None else {"pseudo": job.pseudo.state()}
        job.checkpoints.save(job.run_id, epoch + 1, net, opt, sched, history, pseudo)
    if rank:
        return None
    labelled = None if job.pseudo is None else job.pseudo.labelled
    return model_checkpoint(net, job.settings, job.n_classes, job.run_id), history, labelled


def update_pseudo_labels(job: TrainJob, net, norm, epoch: int, rank: int, world: int) -> None:
    """Rank 0 predicts the candidate wells and adds pseudo-labels; every rank then holds the same ones."""
    import torch.distributed as dist

    if rank == 0:
        embeddings = loops.embed_sites(net, norm, job.store, job.pseudo.sites, job.training.batch_size,
                                       job.training.num_workers, tta=1)
        job.pseudo.update(loops.class_logits(net, embeddings)[:, job.pseudo.class_index], epoch)
    if world > 1:
        shared = [job.pseudo.state()]
        dist.broadcast_object_list(shared, src=0)
        job.pseudo.restore(shared[0])
