"""From cached logits to calls: each experiment's plate layout, masking to the plate's group, the balanced
assignment per plate and its temperature. Nodes of ``pipelines/postprocess`` and ``pipelines/score``.

Input: a logits table (``id_code`` then one float column per treatment siRNA, named by its id), already
combined over sites. Everything is vectorised over wells; only the assignment loops, once per plate.
"""

import logging
from typing import Any

import numpy as np
import pandas as pd

from rxrx1_pipeline.leak.kernels import (
    LogitsError,
    assign_per_plate,
    group_log_probs,
    mask_to_plate_group,
    row_argmax,
    score_layouts,
    within_group_nll,
)
from rxrx1_pipeline.leak.plates import layout_columns, layout_long, layout_matrix
from rxrx1_pipeline.schema import Assignment, Rotation

log = logging.getLogger(__name__)


def split_logits(logits: pd.DataFrame, wells: pd.DataFrame, sirna_groups: pd.DataFrame
                 ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Validate one logits table and line it up with the wells.

    Returns (well rows in logits order: id_code, experiment, cell_line, plate, sirna; logits as a
    float32 wells x siRNAs array; the siRNA id of each column; the group of each column).
    """
    if logits.columns[0] != "id_code":
        raise LogitsError("logits table must start with an id_code column")
    sirnas = np.array([int(c) for c in logits.columns[1:]], dtype=np.int64)
    group_of = sirna_groups.set_index("sirna")["group"]
    unknown = np.setdiff1d(sirnas, group_of.index.to_numpy())
    absent = np.setdiff1d(group_of.index.to_numpy(), sirnas)
    if len(unknown) or len(absent):
        raise LogitsError(f"logits columns do not match the treatment siRNAs: {len(unknown)} unknown "
                          f"(e.g. {unknown[:3].tolist()}), {len(absent)} missing (e.g. {absent[:3].tolist()})")
    ids = logits["id_code"].astype(str)
    if ids.duplicated().any():
        raise LogitsError(f"id_code {ids[ids.duplicated()].iloc[0]} appears twice in the logits")
    treat = wells[wells["well_type"] == "treatment"]
    pos = pd.Index(treat["id_code"]).get_indexer(ids)  # (Series.isin on arrow strings loops in Python)
    if (pos < 0).any():
        raise LogitsError(f"{int((pos < 0).sum())} logits rows are not treatment wells, "
                          f"e.g. {ids.iloc[np.flatnonzero(pos < 0)[0]]}")
    rows = treat.iloc[pos][["id_code", "experiment", "cell_line", "plate", "sirna"]].reset_index(drop=True)
    x = logits.iloc[:, 1:].to_numpy(dtype=np.float32)
    return rows, x, sirnas, group_of.loc[sirnas].to_numpy(np.int64)


def infer_layouts(logits: pd.DataFrame, wells: pd.DataFrame, sirna_groups: pd.DataFrame,
                  plate_layouts: pd.DataFrame, params: Rotation) -> pd.DataFrame:
    """Choose each experiment's plate layout among the candidates, with a uniform prior.

    One row per experiment: experiment, cell_line, layout, plate_<p> (chosen group per plate),
    confidence (posterior of the chosen layout), margin (log-likelihood lead over the runner-up,
    nats), wells, posterior_<layout> for every candidate.
    """
    rows, x, _, col_group = split_logits(logits, wells, sirna_groups)
    plates, layouts = layout_matrix(plate_layouts)
    bad = ~rows["plate"].isin(plates)
    if bad.any():
        raise LogitsError(f"well {rows.loc[bad, 'id_code'].iloc[0]} is on a plate no layout covers")
    exp_idx, experiments = pd.factorize(rows["experiment"], sort=True)
    plate_pos = np.searchsorted(plates, rows["plate"].to_numpy())
    glp = group_log_probs(x, col_group, int(sirna_groups["group"].max()) + 1)
    scores = score_layouts(glp, exp_idx, plate_pos, layouts)
    post = np.exp(scores - scores.max(axis=1, keepdims=True))
    post /= post.sum(axis=1, keepdims=True)
    best = scores.argmax(axis=1)
    ids = plate_layouts["layout"].to_numpy()
    out = pd.DataFrame({"experiment": np.asarray(experiments),
                        "cell_line": rows.groupby(exp_idx)["cell_line"].first().to_numpy(),
                        "layout": ids[best]})
    out[layout_columns(plates)] = layouts[best]
    out["confidence"] = post[np.arange(len(best)), best]
    top2 = np.sort(scores, axis=1)[:, -2:]
    out["margin"] = top2[:, -1] - top2[:, 0] if scores.shape[1] > 1 else np.inf
    out["wells"] = np.bincount(exp_idx, minlength=len(experiments))
    out[[f"posterior_{i}" for i in ids]] = post
    weak = out[out["confidence"] < params.min_confidence]
    for _, r in weak.iterrows():
        log.warning("Layout of %s is not decisive: layout %d with posterior %.3f (margin %.1f nats)",
                    r["experiment"], r["layout"], r["confidence"], r["margin"])
    log.info("Layouts inferred for %d experiments (%d not decisive): %s", len(out), len(weak),
             ", ".join(f"{e}:{k}" for e, k in zip(out["experiment"], out["layout"])))
    return out


def plate_group_of_wells(rows: pd.DataFrame, plate_groups: pd.DataFrame) -> np.ndarray:
    """The group each well's plate holds, from infer_layouts' table (one row per experiment)."""
    merged = rows[["experiment", "plate"]].merge(layout_long(plate_groups), on=["experiment", "plate"], how="left")
    if merged["group"].isna().any():
        raise LogitsError(f"no plate group for well {rows['id_code'][merged['group'].isna()].iloc[0]}")
    return merged["group"].to_numpy(np.int64)


def fit_temperature(valid_logits: pd.DataFrame, wells: pd.DataFrame, sirna_groups: pd.DataFrame,
                    params: Assignment) -> dict[str, Any]:
    """The assignment temperature: params' value, or (``auto``) the one minimising the NLL of
    the true siRNA within its group on the labelled validation wells."""
    setting = params.temperature
    if setting != "auto":
        return {"temperature": float(setting), "fitted": False}
    rows, x, sirnas, col_group = split_logits(valid_logits, wells, sirna_groups)
    known = rows["sirna"].notna().to_numpy()
    if not known.any():
        raise LogitsError("temperature 'auto' needs labelled validation wells")
    col_of = pd.Series(np.arange(len(sirnas)), index=sirnas)
    truth_col = col_of.loc[rows.loc[known, "sirna"].astype(np.int64).to_numpy()].to_numpy()
    x = x[known]
    blocks = []
    for g in np.unique(col_group):
        cols = np.flatnonzero(col_group == g)
        sel = np.flatnonzero(col_group[truth_col] == g)
        pos = np.searchsorted(cols, truth_col[sel])
        block = x[np.ix_(sel, cols)]
        block -= block.max(axis=1, keepdims=True)
        blocks.append((block, block[np.arange(len(sel)), pos].astype(np.float64)))

    def nll(log_t: float) -> float:
        return within_group_nll(blocks, log_t)

    lo, hi = np.log(params.temperature_bounds[0]), np.log(params.temperature_bounds[1])
    from scipy.optimize import minimize_scalar  # imported when used: see kernels.assign_plate

    fit = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 0.01})
    t = float(np.exp(fit.x))
    log.info("Assignment temperature fitted on %d validation wells: %.3f (within-group NLL %.3f, %.3f at 1)",
             len(truth_col), t, fit.fun, nll(0.0))
    return {"temperature": t, "fitted": True, "wells": int(len(truth_col)), "nll": float(fit.fun)}


def assign_wells(logits: pd.DataFrame, wells: pd.DataFrame, sirna_groups: pd.DataFrame,
                 plate_groups: pd.DataFrame, calibration: dict[str, Any], params: Assignment
                 ) -> pd.DataFrame:
    """Predictions after each stage: sirna_argmax (raw), sirna_masked (argmax within the plate's
    group), sirna_assigned (balanced per plate) and score (its probability within the group)."""
    rows, x, sirnas, col_group = split_logits(logits, wells, sirna_groups)
    well_group = plate_group_of_wells(rows, plate_groups)
    plate_key, plates = pd.factorize(rows["experiment"] + " plate " + rows["plate"].astype(str))
    assigned, score = assign_per_plate(x, col_group, well_group, plate_key, np.asarray(plates),
                                       calibration["temperature"], params.cost,
                                       params.sinkhorn_iterations)
    return pd.DataFrame({"id_code": rows["id_code"], "experiment": rows["experiment"],
                         "plate": rows["plate"], "sirna_argmax": sirnas[row_argmax(x)],
                         "sirna_masked": sirnas[mask_to_plate_group(x, col_group, well_group)],
                         "sirna_assigned": sirnas[assigned], "score": score})
