"""Per-cell-line embedding training: splits, decoded images, plate statistics, training, curves."""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

STAT_COLUMNS = [f"{s}_w{c}" for s in ("mean", "std") for c in range(1, 7)]
# Settings that do not change the trained model, left out of the checkpoint fingerprint.
RUNTIME_ONLY = ("num_workers", "decoded_cache", "decoded_cache_max_gib")


def select_sites(wells: pd.DataFrame, sites: pd.DataFrame, classes: pd.DataFrame, cell_line: str,
                 model: dict) -> pd.DataFrame:
    """This cell line's sites with their role: ``fit``, ``valid`` (held-out experiments) or ``test``.

    ``model["valid_experiments"]`` is a number (the last N labelled experiments) or a list of names.
    """
    mine = wells[wells["cell_line"] == cell_line]
    if mine.empty:
        raise ValueError(f"no wells of cell line {cell_line} in wells.parquet")
    train_exps = sorted(mine.loc[mine["split"] == "train", "experiment"].unique())
    held = model["valid_experiments"]
    valid = train_exps[len(train_exps) - held:] if isinstance(held, int) else list(held)
    unknown = sorted(set(valid) - set(train_exps))
    if unknown:
        raise ValueError(f"{cell_line}: valid_experiments {unknown} are not labelled train experiments")
    if len(valid) >= len(train_exps):
        raise ValueError(f"{cell_line}: holding out {len(valid)} of {len(train_exps)} train experiments "
                         "leaves nothing to fit")
    table = sites.drop(columns="split").merge(mine, on="id_code", how="inner")
    table["role"] = np.where(table["split"] == "test", "test",
                             np.where(table["experiment"].isin(valid), "valid", "fit"))
    table = table.merge(classes[["sirna", "class_index"]], on="sirna", how="left")
    table["class_index"] = table["class_index"].fillna(-1).astype("int64")
    plates = table[["experiment", "plate"]].drop_duplicates().reset_index(drop=True)
    plates["plate_index"] = np.arange(len(plates))
    table = table.merge(plates, on=["experiment", "plate"]).sort_values(["role", "id_code", "site"],
                                                                        ignore_index=True)
    table["cache_row"] = np.arange(len(table))
    log.info("%s: %d fit, %d valid, %d test sites; valid experiments %s", cell_line,
             *(int((table["role"] == r).sum()) for r in ("fit", "valid", "test")), ", ".join(valid))
    return table


def decode_sites(model_sites: pd.DataFrame, data_root: str, model: dict) -> np.ndarray:
    """Decoded (N, 6, S, S) uint8 images at training resolution, row = ``cache_row``.

    With ``decoded_cache: false``, or when the cache would exceed ``decoded_cache_max_gib``, returns an
    empty array and the loaders read the PNGs instead.
    """
    from tqdm.auto import tqdm

    from rxrx1_pipeline.model import SiteImages, loader

    size = model["image_size"]
    empty = np.zeros((0, 6, size, size), np.uint8)
    if not model["decoded_cache"]:
        return empty
    gib = len(model_sites) * 6 * size * size / 2**30
    if gib > model["decoded_cache_max_gib"]:
        log.warning("Decoded cache would take %.1f GiB (> decoded_cache_max_gib %s): reading PNGs instead",
                    gib, model["decoded_cache_max_gib"])
        return empty
    out = np.empty((len(model_sites), 6, size, size), np.uint8)
    data = loader(SiteImages(model_sites, data_root, size), model["batch_size"], model["num_workers"])
    for images, idx, _ in tqdm(data, desc="decoding sites", unit="batch", mininterval=2, disable=None):
        out[idx.numpy()] = images.numpy()
    return out


def plate_statistics(model_sites: pd.DataFrame, site_images: np.ndarray, data_root: str,
                     model: dict) -> pd.DataFrame:
    """Per-plate channel mean and std over all of the plate's own sites (no labels used)."""
    from rxrx1_pipeline.model import SiteImages, loader

    n_plates = int(model_sites["plate_index"].max()) + 1
    total = np.zeros((n_plates, 6))
    squares = np.zeros((n_plates, 6))
    count = np.zeros(n_plates)
    plate_of = model_sites["plate_index"].to_numpy()
    data = loader(SiteImages(model_sites, data_root, model["image_size"], site_images),
                  model["batch_size"], model["num_workers"])
    for images, idx, _ in data:
        x = images.double().numpy()
        plates = plate_of[idx.numpy()]
        np.add.at(total, plates, x.mean(axis=(2, 3)))
        np.add.at(squares, plates, (x**2).mean(axis=(2, 3)))
        np.add.at(count, plates, 1)
    mean = total / count[:, None]
    std = np.sqrt(np.maximum(squares / count[:, None] - mean**2, 0))
    stats = model_sites[["experiment", "plate", "plate_index"]].drop_duplicates().sort_values("plate_index")
    stats = stats.reset_index(drop=True)
    stats[STAT_COLUMNS] = np.hstack([mean, std])
    return stats


def train_model(model_sites: pd.DataFrame, site_images: np.ndarray, plate_stats: pd.DataFrame,
                classes: pd.DataFrame, checkpoints, data_root: str, cell_line: str,
                model: dict) -> tuple[dict, pd.DataFrame]:
    """Train the embedding model on the fit sites; resumes from the last checkpoint of the same setup.

    Returns the final checkpoint (settings + weights) and the per-epoch history.
    """
    import torch

    from rxrx1_pipeline.model import EmbeddingNet, SiteImages, cosine_lr, device, fingerprint, loader, seed_everything

    dev = device()
    generator = seed_everything(model["seed"])
    fit = model_sites[model_sites["role"] == "fit"]
    valid = model_sites[(model_sites["role"] == "valid") & (model_sites["well_type"] == "treatment")]
    settings = {k: v for k, v in model.items() if k not in RUNTIME_ONLY}
    run_id = fingerprint({"settings": settings, "fit": fit["id_code"].tolist(), "classes": len(classes)})

    net = EmbeddingNet(model["arch"], len(classes), model["embedding_dim"], model["head"], model["margin"],
                       model["scale"], model.get("pretrained_weights")).to(dev)
    norm = make_normaliser(model["normalization"], plate_stats)
    steps_per_epoch = -(-len(fit) // model["batch_size"])
    total_steps = model["epochs"] * steps_per_epoch
    opt = torch.optim.AdamW(net.parameters(), lr=model["lr"], weight_decay=model["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_lr(s, total_steps, max(1, steps_per_epoch // 2)))
    history: list[dict] = []
    start = 0
    state = checkpoints.latest()
    if state is not None and state.get("run_id") == run_id:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history, start = state["history"], state["epoch"]
        if start < model["epochs"]:
            log.info("%s: resuming from checkpoint after epoch %d of %d", cell_line, start, model["epochs"])
        else:
            log.info("%s: the checkpoint already holds all %d epochs of these settings and data; reusing it "
                     "(delete it to retrain)", cell_line, start)
    elif state is not None:
        log.info("%s: checkpoint belongs to other settings or data; training from scratch", cell_line)

    fit_data = loader(SiteImages(fit, data_root, model["image_size"], site_images,
                                 fit["class_index"].to_numpy(), augment=True),
                      model["batch_size"], model["num_workers"], shuffle=True, generator=generator)
    fit_plates = torch.from_numpy(fit["plate_index"].to_numpy(copy=True))
    for epoch in range(start, model["epochs"]):
        t0 = time.perf_counter()
        loss, accuracy = run_epoch(net, norm, opt, sched, fit_data, fit_plates,
                                   f"{cell_line} epoch {epoch + 1}/{model['epochs']}")
        row = {"epoch": epoch + 1, "loss": loss, "fit_accuracy": accuracy,
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        if len(valid) and (model["validate_every"] and ((epoch + 1) % model["validate_every"] == 0
                                                        or epoch + 1 == model["epochs"])):
            row["valid_site_accuracy"] = site_accuracy(net, norm, valid, site_images, data_root, model)
        history.append(row)
        log.info("%s epoch %d/%d: loss %.3f, fit acc %.3f%s (%.1fs)", cell_line, epoch + 1, model["epochs"],
                 row["loss"], row["fit_accuracy"],
                 f", valid site acc {row['valid_site_accuracy']:.3f}" if "valid_site_accuracy" in row else "",
                 row["seconds"])
        checkpoints.save({"run_id": run_id, "epoch": epoch + 1, "model": net.state_dict(),
                          "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                          "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                          "history": history})
    final = {"arch": model["arch"], "n_classes": len(classes), "settings": settings,
             "state_dict": {k: v.cpu() for k, v in net.state_dict().items()}}
    return final, pd.DataFrame(history)


def run_epoch(net, norm, opt, sched, data, plates, desc: str) -> tuple[float, float]:
    """One pass over the fit sites (bf16 autocast on CUDA); returns mean loss and site accuracy."""
    import torch
    from tqdm.auto import tqdm

    dev = next(net.parameters()).device
    net.train()
    loss_sum = correct = seen = 0
    bar = tqdm(data, desc=desc, unit="batch", leave=False, mininterval=1, disable=None)
    for images, idx, labels in bar:
        x = norm(images.to(dev, non_blocking=True), plates[idx])
        labels = labels.to(dev)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits = net.logits(net(x).float(), labels)
            loss = torch.nn.functional.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    return loss_sum / seen, correct / seen


def plot_history(history: pd.DataFrame, cell_line: str):
    """Loss and accuracies per epoch as a plotly figure (shown by ``kedro viz``)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    fig.add_trace(go.Scatter(x=history["epoch"], y=history["loss"], name="fit loss"), row=1, col=1)
    fig.add_trace(go.Scatter(x=history["epoch"], y=history["fit_accuracy"], name="fit (sites)"), row=1, col=2)
    if "valid_site_accuracy" in history:
        valid = history.dropna(subset=["valid_site_accuracy"])
        fig.add_trace(go.Scatter(x=valid["epoch"], y=valid["valid_site_accuracy"], name="valid (sites)",
                                 mode="lines+markers"), row=1, col=2)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title=f"{cell_line} training", template="plotly_white")
    return fig


def make_normaliser(mode: str, plate_stats: pd.DataFrame):
    from rxrx1_pipeline.model import Normaliser

    stats = plate_stats.sort_values("plate_index")
    return Normaliser(mode, stats[STAT_COLUMNS[:6]].to_numpy(np.float32),
                      stats[STAT_COLUMNS[6:]].to_numpy(np.float32))


def site_accuracy(net, norm, sites: pd.DataFrame, site_images: np.ndarray, data_root: str,
                  model: dict) -> float:
    """Raw argmax accuracy over sites (a cheap per-epoch validation signal)."""
    logits, _ = embed_sites(net, norm, sites, site_images, data_root, model, tta=1)
    return float((logits.argmax(1) == sites["class_index"].to_numpy()).mean())


def embed_sites(net, norm, sites: pd.DataFrame, site_images: np.ndarray, data_root: str, model: dict,
                tta: int) -> tuple[np.ndarray, np.ndarray]:
    """(logits over all classes, embeddings) per site, averaged over ``tta`` dihedral views."""
    import torch
    from tqdm.auto import tqdm

    from rxrx1_pipeline.model import SiteImages, device, dihedral, loader

    dev = device()
    plates = torch.from_numpy(sites["plate_index"].to_numpy(copy=True))
    data = loader(SiteImages(sites, data_root, model["image_size"], site_images), model["batch_size"],
                  model["num_workers"])
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
