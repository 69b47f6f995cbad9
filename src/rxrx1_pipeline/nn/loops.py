"""Training and inference loops: seeding, the optimiser schedule, one epoch, site embedding with TTA."""

from __future__ import annotations

import contextlib
import logging
import math
import threading

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from rxrx1_pipeline.nn.data import StoreSites, dihedral, loader, random_dihedral, statistics_loader, views_of_step
from rxrx1_pipeline.schema import Training
from rxrx1_pipeline.storage.images import ImageStore

log = logging.getLogger(__name__)


def device(name: str | None = None) -> torch.device:
    """The named device (e.g. ``cuda:1``), else the first GPU when there is one, else the CPU."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def flush_subnormals() -> None:
    """Flush subnormal floats (below 1.2e-38) to zero on this thread, and on the worker threads it starts from
    now on (they inherit it). Weights that weight decay drives towards zero become subnormal after some epochs,
    and an x86 CPU computes each operation on one ~100x slower: on the preset, epochs of the 1st place's
    recipe grew from 111 s to over 190 s by the 14th, and a train step of that checkpoint runs at 992 sites/s
    with flushing against 480 without (2 threads). The values flushed are far below anything that moves a
    weight; on a GPU this changes nothing. Called before a training's or inference's first tensor operation."""
    torch.set_flush_denormal(True)


_GLOBAL_RNG = threading.Lock()


def seeded_network(build, seed: int):
    """``build()`` with the global torch RNG seeded (weights are initialised from it), holding a lock so
    trainings in parallel threads (ThreadRunner) each get their own seed's weights."""
    with _GLOBAL_RNG:
        torch.manual_seed(seed)
        np.random.seed(seed)
        if not torch.cuda.is_available():
            torch.use_deterministic_algorithms(True, warn_only=True)
        return build()


def cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def cycles_lr(epoch: float, cycles) -> float:
    """The learning rate at (fractional) ``epoch`` of cosine cycles: each falls from its ``lr`` towards 0
    at its ``until_epoch`` and the next starts where it ends (a restart)."""
    start = 0
    for cycle in cycles:
        if epoch < cycle.until_epoch:
            return cycle.lr * 0.5 * (1 + math.cos(math.pi * (epoch - start) / (cycle.until_epoch - start)))
        start = cycle.until_epoch
    return 0.0


class EpochSchedule:
    """The learning rate as a function of the (fractional) epoch, set before each batch: batch i of an epoch of
    n batches trains at ``rate(epoch + i / n)``, as the 1st place's ``get_learning_rate(args, epoch + i /
    len(train_loader))``, so an epoch that grows (pseudo-labelled sites) keeps the schedule in epochs."""

    def __init__(self, opt: torch.optim.Optimizer, rate):
        self.opt, self.rate, self.position = opt, rate, 0.0
        self.skipped_in_row = 0  # optimiser steps skipped in a row for a non-finite loss or gradient
        self.at(0.0)

    def at(self, epoch: float) -> float:
        """Set every parameter group's rate to that of fractional ``epoch``; returns it."""
        self.position = float(epoch)
        lr = self.rate(self.position)
        for group in self.opt.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"position": self.position, "skipped_in_row": self.skipped_in_row}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_in_row = int(state.get("skipped_in_row", 0))
        self.at(state["position"])


def optimiser(net: torch.nn.Module, training: Training, steps_per_epoch: int):
    """The optimiser (AdamW, or Adam with L2 weight decay) and its schedule (:class:`EpochSchedule`): with
    ``lr_cycles`` the cosine cycles of :func:`cycles_lr`, else a linear warm-up over half an epoch to ``lr``,
    then cosine decay to 0 at the last epoch (``steps_per_epoch``: the batches of an epoch of the labelled
    sites, which the warm-up and decay count in). Its fused form updates every tensor in one kernel: on this
    2-core CPU an Adam step over the 1st place's 3.9 M weights takes 1.6 ms instead of 9.8 ms
    (benchmarks/throughput.py), the same arithmetic."""
    kind = torch.optim.AdamW if training.optimizer == "adamw" else torch.optim.Adam
    params = list(net.parameters())
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    opt = kind(params, lr=training.lr, weight_decay=training.weight_decay, fused=fused or None)
    if training.lr_cycles:
        cycles = training.lr_cycles
        return opt, EpochSchedule(opt, lambda epoch: cycles_lr(epoch, cycles))
    total, warmup = training.epochs * steps_per_epoch, max(1, steps_per_epoch // 2)
    return opt, EpochSchedule(opt, lambda epoch: training.lr * cosine_lr(epoch * steps_per_epoch, total, warmup))


def _finite_gradients(module: torch.nn.Module) -> bool:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return not grads or bool(torch.stack([g.isfinite().all() for g in grads]).all())


def run_epoch(step, norm, opt, sched, data, plates: torch.Tensor, views: torch.Generator, desc: str,
              training: Training, rank: int = 0, world: int = 1, lines: torch.Tensor | None = None,
              epoch: int | None = None) -> tuple[float, float]:
    """One pass over this rank's share of the fit sites, each in its drawn dihedral view (bf16 autocast
    on CUDA with ``training.mixed_precision``). ``step(x, labels, lines, partner, lam)`` returns (logits,
    loss); with ``world`` > 1 it is the DDP-wrapped model. ``plates`` and ``lines`` (cell line per site, or
    None) are indexed by dataset position. ``training.augment`` adds zooms (before normalisation), random
    resized crops, intensity jitter and mixup / CutMix (:mod:`rxrx1_pipeline.nn.augment`). The weights take
    a step every ``training.accumulate_steps`` batches (and after the last), on the mean of their gradients
    (DDP all-reduces them then only). Batch i of n trains at the rate of ``epoch + i / n`` (``sched``: an
    :class:`EpochSchedule`; ``epoch`` defaults to the batch sampler's); a step takes the rate of its group's
    last batch, as the 1st place's loop.

    A non-finite loss (on any rank) or gradient skips that step (its group's gradients are dropped) and says
    so; more than ``training.max_skipped_steps`` skipped steps in a row stop every rank (FloatingPointError)
    before the weights take a non-finite step. Returns mean loss and site accuracy over all ranks (of the
    batches with a finite loss).
    """
    import torch.distributed as dist

    from rxrx1_pipeline.nn.augment import jitter_intensity, mix, resized_crop, zoom

    augment, accumulate = training.augment, training.accumulate_steps
    limit = training.max_skipped_steps
    by_epoch = isinstance(sched, EpochSchedule)
    if epoch is None:
        epoch = getattr(data.batch_sampler, "epoch", 0)
    dev = next(step.parameters()).device
    step.train()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, seen
    bar = tqdm(data, desc=desc, unit="batch", leave=False, mininterval=1, disable=True if rank else None)
    opt.zero_grad(set_to_none=True)
    pending, poisoned, skipped = 0, None, 0  # batches waiting for the next step; why that step is skipped
    in_row = sched.skipped_in_row if by_epoch else 0
    for batch, (images, idx, labels) in enumerate(bar, start=1):
        if by_epoch:
            sched.at(epoch + (batch - 1) / len(data))
        x = random_dihedral(images, views_of_step(views, len(images), rank, world)).to(dev, non_blocking=True)
        x = norm(zoom(x.float(), augment.zoom_min_edge, views), plates[idx])
        x = resized_crop(x, augment.crop_min_area, views)
        x = jitter_intensity(x, augment.intensity_gain_std, augment.intensity_bias_std, views)
        x, partner, lam = mix(x, augment.mixup, augment.cutmix, views)
        labels = labels.to(dev)
        line = None if lines is None else lines[idx].to(dev)
        stepping = batch % accumulate == 0 or batch == len(data)
        # DDP all-reduces the gradients only on the batch the weights step on
        sync = step.no_sync() if world > 1 and not stepping else contextlib.nullcontext()
        with sync:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda" and training.mixed_precision):
                logits, loss = step(x, labels, line, partner, lam)
            value = loss.item()
            finite = math.isfinite(value)
            if world > 1:  # every rank must skip together, or the others would wait in the all-reduce forever
                flag = torch.tensor([float(finite)], device=dev)  # on the device: NCCL reduces only CUDA tensors
                dist.all_reduce(flag, op=dist.ReduceOp.MIN)
                finite = bool(flag.item())
            if not finite and poisoned is None:
                poisoned = f"the loss became {value if not math.isfinite(value) else 'non-finite on another rank'}"
            if poisoned is None:  # a poisoned group's step is dropped: no more backward (nor all-reduce) in it
                (loss / accumulate if accumulate > 1 else loss).backward()
        pending += 1
        if stepping:
            if poisoned is None and not _finite_gradients(step):  # the same on every rank (all-reduced)
                poisoned = "a gradient became non-finite"
            if poisoned is None:
                opt.step()
                in_row = 0
            else:
                skipped, in_row = skipped + 1, in_row + 1
                if in_row > limit:
                    if limit:
                        log.error("%s: %d steps skipped in a row, more than training.max_skipped_steps (%d)", desc,
                                  in_row, limit)
                    raise FloatingPointError(f"{desc}: {poisoned} at batch {batch} of {len(data)}")
                if rank == 0:
                    log.warning("%s: %s at batch %d of %d: that step is skipped (%d in a row; the training stops "
                                "after %d, training.max_skipped_steps)", desc, poisoned, batch, len(data), in_row,
                                limit)
            opt.zero_grad(set_to_none=True)
            if not by_epoch:
                for _ in range(pending):  # a per-batch scheduler: one step per batch since the last
                    sched.step()
            pending, poisoned = 0, None
        if finite:
            totals += torch.tensor([value * len(labels), (logits.argmax(1) == labels).sum().item(), len(labels)],
                                   dtype=torch.float64)
        bar.set_postfix(loss=f"{totals[0] / max(totals[2], 1):.3f}", acc=f"{totals[1] / max(totals[2], 1):.3f}")
    if by_epoch:
        sched.skipped_in_row = in_row
    if skipped and rank == 0:
        log.warning("%s: %d of its optimiser steps skipped for a non-finite loss or gradient", desc, skipped)
    if world > 1:
        totals = totals.to(dev)
        dist.all_reduce(totals)
    return float(totals[0] / max(totals[2], 1)), float(totals[1] / max(totals[2], 1))


def embed_sites(net, norm, store: ImageStore, sites: pd.DataFrame, batch_size: int, workers: int,
                tta: int) -> np.ndarray:
    """The embedding of each site row of ``sites``, averaged over ``tta`` dihedral views (a ``line_index``
    column gives a model of several cell lines each site's line; else its own line)."""
    dev = next(net.parameters()).device
    plates = torch.from_numpy(sites["plate_index"].to_numpy(copy=True))
    lines = torch.from_numpy(sites["line_index"].to_numpy(copy=True)) if "line_index" in sites else None
    data = loader(StoreSites(store, sites["store_row"].to_numpy()), batch_size, workers)
    embeddings = []
    was_training = net.training
    net.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        for images, idx, _ in tqdm(data, desc="embedding sites", unit="batch", leave=False, mininterval=1,
                                   disable=None):
            x = norm(images.to(dev), plates[idx])
            line = None if lines is None else lines[idx].to(dev)
            views = torch.stack([net(dihedral(x, k), line).float() for k in range(tta)])
            embeddings.append(views.mean(0).cpu().numpy())
    net.train(was_training)
    return np.concatenate(embeddings)


def class_logits(net, embeddings: np.ndarray) -> np.ndarray:
    """The head's logits over all classes (no margin) for embeddings from :func:`embed_sites`."""
    with torch.no_grad():
        return net.logits(torch.from_numpy(embeddings).to(next(net.parameters()).device)).float().cpu().numpy()


def adapt_batchnorm(net, norm, store: ImageStore, sites: pd.DataFrame, batch_size: int, workers: int) -> None:
    """Re-estimate every BatchNorm layer's statistics on ``sites`` (AdaBN: Li et al. 2016), e.g. one plate's
    own images, so the network normalises that plate's batch effect away. Weights are unchanged. A last batch
    of one site joins the batch before it; fewer than 2 sites in all raise a ValueError (no statistics)."""
    if len(sites) < 2:
        raise ValueError(f"BatchNorm statistics need at least 2 sites, got {len(sites)}")
    layers = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a plain average over all batches
    dev = next(net.parameters()).device
    plates = torch.from_numpy(sites["plate_index"].to_numpy(copy=True))
    was_training = net.training
    net.eval()
    for layer in layers:
        layer.train()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        for images, idx, _ in statistics_loader(StoreSites(store, sites["store_row"].to_numpy()), batch_size,
                                                workers):
            net(norm(images.to(dev), plates[idx]))
    net.train(was_training)


def site_accuracy(net, norm, store: ImageStore, sites: pd.DataFrame, batch_size: int, workers: int) -> float:
    """Raw argmax accuracy over sites, one view (a cheap per-epoch validation signal)."""
    logits = class_logits(net, embed_sites(net, norm, store, sites, batch_size, workers, tta=1))
    return float((logits.argmax(1) == sites["class_index"].to_numpy()).mean())
