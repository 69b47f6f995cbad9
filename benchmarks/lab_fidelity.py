"""Does the synthetic lab agree with the real data on what matters? On the RxRx1-shaped preset's generator
(conf/rxrx1_shaped: its image size and phenotype strength), a few siRNAs of one cell line are rendered in
several experiments; models fit on the first experiments are scored on the last ones, per well, after each
stage of the leak (raw argmax, masked to the plate's group with the layout inferred, balanced assignment).

- probe: a generic-feature probe that knows nothing of the generator (per channel intensity quantiles,
  gradient and Laplacian energy, a radial power spectrum, autocorrelation, cross-channel correlations; a
  shrinkage LDA on them), under no normalisation, per-plate and per-image channel standardisation;
- cnn: timm's ``test_resnet`` trained from scratch with a softmax head, per-plate and per-image.

Targets (real top solutions used both normalisations): per-image raw accuracy >= 0.8 x per-plate raw, for
the probe and the CNN; masked > raw and assigned > masked.

    .venv/bin/python benchmarks/lab_fidelity.py [--smoke] [--sirnas 80] [--fit 10] [--held-out 2]
        [--cell-line HUVEC] [--epochs 30] [--image-size N] [--seed 0]

``--smoke``: a tiny run (seconds) that checks the machinery, not the targets (the test suite runs it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def preset_params(cell_line: str, sirnas: int, experiments: int, image_size: int | None,
                  env: str = "rxrx1_shaped"):
    """The preset's (``env``'s) generator settings for ``sirnas`` treatment siRNAs (4 plate groups) of one cell line."""
    from kedro.config import OmegaConfigLoader

    from rxrx1_pipeline.schema import Synthetic
    from rxrx1_pipeline.settings import CONFIG_LOADER_ARGS

    params = dict(OmegaConfigLoader(str(ROOT / "conf"), env=env, **CONFIG_LOADER_ARGS)
                  ["parameters"]["synthetic"])
    params.update(cell_lines=[cell_line], experiments={"train": experiments, "test": 0},
                  sirnas_per_group=max(1, sirnas // 4), positive_controls=0, missing_well_rate=0.0, copies=0)
    if image_size:
        params["image_size"] = image_size
    return Synthetic.model_validate(params)


def render(params) -> tuple[pd.DataFrame, np.ndarray]:
    """(one row per treatment site: experiment, plate, well, sirna, group, site; their images (n, 6, S, S))."""
    from rxrx1_pipeline.pipelines.synthetic.nodes import design_plates, render_sites
    from rxrx1_pipeline.leak.plates import SITES, site_prefix

    truth = design_plates(params)[4]
    renderers = render_sites(truth, params)
    rows, images = [], []
    for r in truth[truth["well_type"] == "treatment"].itertuples(index=False):
        for s in SITES:
            rows.append((r.experiment, r.plate, r.well, r.sirna, r.group, s))
            images.append(renderers[site_prefix(r.split, r.experiment, r.plate, r.well, s)]())
    sites = pd.DataFrame(rows, columns=["experiment", "plate", "well", "sirna", "group", "site"])
    return sites, np.stack(images).astype(np.float32)


def normalise(sites: pd.DataFrame, images: np.ndarray, mode: str) -> np.ndarray:
    """``none``: pixels / 255; ``plate``: each channel standardised by its plate's pixels; ``image``: by its own."""
    if mode == "none":
        return images / 255.0
    if mode == "image":
        mean = images.mean(axis=(2, 3), keepdims=True)
        std = images.std(axis=(2, 3), keepdims=True)
        return (images - mean) / np.maximum(std, 1e-3)
    out = np.empty_like(images)
    for _, idx in sites.groupby(["experiment", "plate"]).indices.items():
        block = images[idx]
        mean = block.mean(axis=(0, 2, 3), keepdims=True)
        std = block.std(axis=(0, 2, 3), keepdims=True)
        out[idx] = (block - mean) / np.maximum(std, 1e-3)
    return out


def features(x: np.ndarray) -> np.ndarray:
    """Generic image features per site (n, F) of normalised images (n, 6, S, S)."""
    n, c, s, _ = x.shape
    flat = x.reshape(n, c, -1)
    feats = [np.percentile(flat, [5, 25, 50, 75, 95, 99], axis=2).transpose(1, 2, 0).reshape(n, -1),
             flat.mean(2), flat.std(2)]
    gy, gx = np.diff(x, axis=2), np.diff(x, axis=3)
    feats += [np.abs(gy).mean((2, 3)) + np.abs(gx).mean((2, 3))]
    lap = x[:, :, 1:-1, 1:-1] * 4 - x[:, :, :-2, 1:-1] - x[:, :, 2:, 1:-1] - x[:, :, 1:-1, :-2] - x[:, :, 1:-1, 2:]
    feats += [np.abs(lap).mean((2, 3))]
    centred = x - x.mean(axis=(2, 3), keepdims=True)
    power = np.abs(np.fft.rfft2(centred)) ** 2
    fy = np.fft.fftfreq(s)[:, None]
    fx = np.fft.rfftfreq(s)[None, :]
    radius = np.sqrt(fy**2 + fx**2)
    bands = [(0, 0.06), (0.06, 0.12), (0.12, 0.2), (0.2, 0.3), (0.3, 0.75)]
    total = power.sum((2, 3)) + 1e-9
    feats += [np.log(power[:, :, (radius >= lo) & (radius < hi)].sum(2) / total + 1e-6) for lo, hi in bands]
    var = (centred**2).mean((2, 3)) + 1e-9
    for lag in (1, 2, 4):
        auto = (centred[:, :, lag:, :] * centred[:, :, :-lag, :]).mean((2, 3)) + \
            (centred[:, :, :, lag:] * centred[:, :, :, :-lag]).mean((2, 3))
        feats.append(auto / (2 * var))
    z = centred.reshape(n, c, -1) / np.sqrt(var)[:, :, None]
    corr = np.einsum("ncp,ndp->ncd", z, z) / z.shape[2]
    iu = np.triu_indices(c, 1)
    feats.append(corr[:, iu[0], iu[1]])
    return np.concatenate(feats, axis=1)


def lda_logits(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, n_classes: int,
               shrinkage: float = 0.3) -> np.ndarray:
    """Shrinkage LDA: class means, a pooled within-class covariance shrunk towards its diagonal."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mu) / sd, (test_x - mu) / sd
    means = np.stack([a[train_y == k].mean(0) for k in range(n_classes)])
    within = a - means[train_y]
    cov = within.T @ within / max(len(a) - n_classes, 1)
    cov = (1 - shrinkage) * cov + shrinkage * np.diag(np.diag(cov)) + 1e-3 * np.eye(len(cov))
    w = np.linalg.solve(cov, means.T)  # (F, K)
    return b @ w - 0.5 * np.sum(means.T * w, axis=0)


def per_well(sites: pd.DataFrame, site_logits: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Wells (experiment, plate, well, sirna, group) and their logits: the mean of their sites'."""
    keys = ["experiment", "plate", "well"]
    codes, wells = pd.factorize(pd.MultiIndex.from_frame(sites[keys]))
    logits = np.zeros((len(wells), site_logits.shape[1]))
    np.add.at(logits, codes, site_logits)
    logits /= np.bincount(codes)[:, None]
    first = sites.groupby(codes).first()
    return first[[*keys, "sirna", "group"]].reset_index(drop=True), logits


def leak_stages(wells: pd.DataFrame, logits: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Accuracy raw / masked (the plate's group, the experiment's layout inferred by summed log-probabilities
    over the 4 cyclic rotations) / assigned (one well per siRNA per plate, linear_sum_assignment)."""
    from scipy.optimize import linear_sum_assignment
    from scipy.special import log_softmax

    logp = log_softmax(logits, axis=1)
    truth = wells["sirna"].to_numpy()
    raw = (logits.argmax(1) == truth).mean()
    masked_hit, assigned_hit = np.zeros(len(wells), bool), np.zeros(len(wells), bool)
    n_groups = groups.shape[0]
    for _, exp in wells.groupby("experiment"):
        scores = []
        for r in range(n_groups):
            score = 0.0
            for plate, idx in exp.groupby("plate").indices.items():
                rows = exp.index[idx]
                members = groups[(plate - 1 + r) % n_groups]
                score += np.logaddexp.reduce(logp[np.ix_(rows, members)], axis=1).sum()
            scores.append(score)
        r = int(np.argmax(scores))
        for plate, idx in exp.groupby("plate").indices.items():
            rows = exp.index[idx]
            members = groups[(plate - 1 + r) % n_groups]
            block = logp[np.ix_(rows, members)]
            masked_hit[rows] = members[block.argmax(1)] == truth[rows]
            w, s = linear_sum_assignment(-block)
            assigned_hit[rows[w]] = members[s] == truth[rows[w]]
    return {"raw": raw, "masked": masked_hit.mean(), "assigned": assigned_hit.mean()}


def sirna_groups(sites: pd.DataFrame) -> np.ndarray:
    """(4, per group) siRNA ids of each plate group, ordered by the group number of the generator's truth."""
    g = sites.drop_duplicates("sirna").sort_values(["group", "sirna"])
    return np.stack([grp["sirna"].to_numpy() for _, grp in g.groupby("group")])


def probe(sites, images, fit, held, mode):
    x = normalise(sites, images, mode)
    f = features(x)
    n_classes = int(sites["sirna"].max()) + 1
    logits = np.zeros((len(sites), n_classes))
    logits[held] = lda_logits(f[fit], sites.loc[fit, "sirna"].to_numpy(), f[held], n_classes)
    return logits


def cnn(sites, images, fit, held, mode, epochs: int, seed: int, batch_size: int = 64):
    """test_resnet from scratch, softmax head, Adam with a cosine schedule, a random dihedral view per site;
    held-out sites scored over the 8 dihedral views."""
    import timm
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    x = torch.from_numpy(normalise(sites, images, mode))
    y = torch.from_numpy(sites["sirna"].to_numpy().copy())
    n_classes = int(sites["sirna"].max()) + 1
    model = timm.create_model("test_resnet", pretrained=False, in_chans=6, num_classes=n_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    fit_idx = np.flatnonzero(fit)
    steps = epochs * int(np.ceil(len(fit_idx) / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=max(steps, 1), pct_start=0.15)
    gen = np.random.default_rng(seed)

    def view(batch, k):
        batch = torch.rot90(batch, k % 4, dims=(2, 3))
        return torch.flip(batch, dims=(3,)) if k >= 4 else batch

    model.train()
    for _ in range(epochs):
        order = gen.permutation(fit_idx)
        for start in range(0, len(order), batch_size):
            idx = torch.from_numpy(order[start:start + batch_size])
            loss = F.cross_entropy(model(view(x[idx], int(gen.integers(8)))), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    logits = np.zeros((len(sites), n_classes))
    held_idx = torch.from_numpy(np.flatnonzero(held))
    with torch.no_grad():
        for start in range(0, len(held_idx), 256):
            idx = held_idx[start:start + 256]
            logits[idx.numpy()] = sum(F.log_softmax(model(view(x[idx], k)), 1) for k in range(8)).numpy() / 8
    return logits


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the machinery in seconds")
    parser.add_argument("--cell-line", default="HUVEC")
    parser.add_argument("--sirnas", type=int, default=80, help="treatment siRNAs (4 plate groups)")
    parser.add_argument("--fit", type=int, default=10, help="experiments the models are fitted on")
    parser.add_argument("--held-out", type=int, default=2, help="experiments they are scored on")
    parser.add_argument("--epochs", type=int, default=30, help="CNN epochs")
    parser.add_argument("--image-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--seed", type=int, default=0, help="CNN training seed")
    parser.add_argument("--env", default="rxrx1_shaped", help="whose generator settings (local: the toy's)")
    parser.add_argument("--skip-cnn", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sirnas, args.fit, args.held_out, args.epochs, args.image_size = 8, 3, 1, 1, 16
    start = time.time()
    params = preset_params(args.cell_line, args.sirnas, args.fit + args.held_out, args.image_size, args.env)
    sites, images = render(params)
    experiments = sorted(sites["experiment"].unique())
    held = sites["experiment"].isin(experiments[args.fit:]).to_numpy()
    fit = ~held
    groups = sirna_groups(sites)
    print(f"{args.cell_line}: {len(groups.ravel())} siRNAs, {params.image_size} px, phenotype_strength "
          f"{params.phenotype_strength}, batch_strength {params.batch_strength}; fit on {args.fit} experiments "
          f"({fit.sum()} sites), scored on {args.held_out} ({held.sum()} sites); rendered in {time.time() - start:.0f} s")
    rows = []
    runs = [("probe", m) for m in ("none", "plate", "image")]
    if not args.skip_cnn:
        runs += [("cnn", m) for m in ("plate", "image")]
    for model, mode in runs:
        t = time.time()
        site_logits = (probe(sites, images, fit, held, mode) if model == "probe"
                       else cnn(sites, images, fit, held, mode, args.epochs, args.seed))
        wells, logits = per_well(sites[held].reset_index(drop=True), site_logits[held])
        rows.append({"model": model, "normalisation": mode, **leak_stages(wells, logits, groups),
                     "seconds": time.time() - t})
    table = pd.DataFrame(rows)
    chance = 1 / len(groups.ravel())
    print(f"Held-out well accuracy (chance {chance:.1%}):")
    print(f"{'model':<6} {'normalisation':<14} {'raw':>7} {'masked':>7} {'assigned':>9} {'seconds':>8}")
    for r in table.itertuples():
        print(f"{r.model:<6} {r.normalisation:<14} {r.raw:7.1%} {r.masked:7.1%} {r.assigned:9.1%} {r.seconds:8.0f}")
    print("Targets:")
    for model in table["model"].unique():
        t = table[table["model"] == model].set_index("normalisation")
        ratio = t.loc["image", "raw"] / max(t.loc["plate", "raw"], 1e-9)
        print(f"  {model}: image raw / plate raw = {ratio:.2f} (>= 0.8: {'yes' if ratio >= 0.8 else 'NO'})")
    for r in table.itertuples():
        adds = r.masked > r.raw and r.assigned > r.masked
        print(f"  {r.model} {r.normalisation}: masked > raw and assigned > masked: {'yes' if adds else 'NO'}")
    print(f"total {time.time() - start:.0f} s")
    return table


if __name__ == "__main__":
    main()
