"""Training and inference loops: seeding, the optimiser schedule, one epoch, site embedding with TTA."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from rxrx1_pipeline.images import ImageStore
from rxrx1_pipeline.nn.data import StoreSites, dihedral, loader, random_dihedral


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed the global RNGs (augmentation draws from torch's) and return a generator for data order."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    if not torch.cuda.is_available():
        torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def fingerprint(obj) -> str:
    """Short stable hash of a JSON-able object (training settings and data)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_version() -> str:
    """Fingerprint of the training code (the nn package and the train nodes), part of a run's identity."""
    package = Path(__file__).resolve().parents[1]
    files = sorted((package / "nn").glob("*.py")) + [package / "pipelines" / "train" / "nodes.py"]
    return hashlib.sha1(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]


def cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def optimiser(net: torch.nn.Module, settings: dict, steps_per_epoch: int):
    """AdamW with linear warm-up over half an epoch, then cosine decay to 0 at the last epoch."""
    total = settings["epochs"] * steps_per_epoch
    opt = torch.optim.AdamW(net.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, total, max(1, steps_per_epoch // 2)))
    return opt, sched


def run_epoch(net, norm, opt, sched, data, plates: torch.Tensor, desc: str) -> tuple[float, float]:
    """One pass over the fit sites with random dihedral views (bf16 autocast on CUDA).

    Returns mean loss and site accuracy. A non-finite loss stops the pass (FloatingPointError) before
    the weights take that step.
    """
    dev = next(net.parameters()).device
    net.train()
    loss_sum = correct = seen = 0
    bar = tqdm(data, desc=desc, unit="batch", leave=False, mininterval=1, disable=None)
    for batch, (images, idx, labels) in enumerate(bar, start=1):
        x = norm(random_dihedral(images).to(dev, non_blocking=True), plates[idx])
        labels = labels.to(dev)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits = net.logits(net(x).float(), labels)
            loss = torch.nn.functional.cross_entropy(logits, labels)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"{desc}: the loss became {value} at batch {batch} of {len(data)}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += value * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    return loss_sum / seen, correct / seen


def embed_sites(net, norm, store: ImageStore, sites: pd.DataFrame, batch_size: int, workers: int,
                tta: int) -> tuple[np.ndarray, np.ndarray]:
    """(logits over all classes, embeddings) per site row of ``sites``, averaged over ``tta`` dihedral views."""
    dev = next(net.parameters()).device
    plates = torch.from_numpy(sites["plate_index"].to_numpy(copy=True))
    data = loader(StoreSites(store, sites["store_row"].to_numpy()), batch_size, workers)
    logits, embeddings = [], []
    was_training = net.training
    net.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        for images, idx, _ in tqdm(data, desc="embedding sites", unit="batch", leave=False, mininterval=1,
                                   disable=None):
            x = norm(images.to(dev), plates[idx])
            emb = torch.stack([net(dihedral(x, k)).float() for k in range(tta)]).mean(0)
            logits.append(net.logits(emb).float().cpu().numpy())
            embeddings.append(emb.cpu().numpy())
    net.train(was_training)
    return np.concatenate(logits), np.concatenate(embeddings)


def site_accuracy(net, norm, store: ImageStore, sites: pd.DataFrame, batch_size: int, workers: int) -> float:
    """Raw argmax accuracy over sites, one view (a cheap per-epoch validation signal)."""
    logits, _ = embed_sites(net, norm, store, sites, batch_size, workers, tta=1)
    return float((logits.argmax(1) == sites["class_index"].to_numpy()).mean())
