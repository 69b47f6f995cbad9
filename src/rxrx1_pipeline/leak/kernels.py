"""Numpy kernels of the plate-aware post-processing: layout scores, group masking, temperature,
Sinkhorn normalisation and the per-plate balanced assignment. Arrays in, arrays out; the pandas
nodes of the postprocess pipeline line tables up and call these, and so does pseudo-labelling during
training (``nn/pseudo.py``).
"""

import numpy as np


class LogitsError(ValueError):
    """The cached logits do not match the wells or siRNA groups."""


def combine_rows(keys: np.ndarray, values: np.ndarray, how: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``values`` sharing a key (e.g. a well's sites) combined into one: (sorted unique keys,
    their mean or sum as float32)."""
    codes, inverse = np.unique(keys, return_inverse=True)
    sums = np.zeros((len(codes), values.shape[1]))
    np.add.at(sums, inverse, values)
    return codes, (sums / np.bincount(inverse)[:, None] if how == "mean" else sums).astype(np.float32)


def row_argmax(x: np.ndarray, chunk: int = 128) -> np.ndarray:
    """x.argmax(axis=1), also fast on column-major arrays (what DataFrame.to_numpy gives for a
    parquet table), where numpy's argmax along rows is about 4x slower: maxima per column chunk
    first, then the argmax inside each row's best chunk."""
    if x.flags.c_contiguous or x.shape[1] <= chunk:
        return x.argmax(axis=1)
    starts = range(0, x.shape[1], chunk)
    best_chunk = np.stack([x[:, s:s + chunk].max(axis=1) for s in starts], axis=1).argmax(axis=1)
    out = np.empty(len(x), dtype=np.int64)
    for j, s in enumerate(starts):
        rows = np.flatnonzero(best_chunk == j)
        out[rows] = s + x[rows, s:s + chunk].argmax(axis=1)
    return out


def group_log_probs(x: np.ndarray, col_group: np.ndarray, n_groups: int) -> np.ndarray:
    """log P(well's siRNA in group g) under softmax(x): wells x groups, float64.

    Floored at log(float32 tiny), about -87: one overconfident well cannot veto a layout alone.
    """
    e = x - x.max(axis=1, keepdims=True)
    np.exp(e, out=e)
    onehot = np.zeros((x.shape[1], n_groups), dtype=x.dtype)
    onehot[np.arange(x.shape[1]), col_group] = 1.0
    sums = (e @ onehot).astype(np.float64)
    return np.log(np.maximum(sums, np.finfo(np.float32).tiny)) - np.log(sums.sum(axis=1, keepdims=True))


def score_layouts(glp: np.ndarray, experiment_idx: np.ndarray, plate_pos: np.ndarray,
                  layouts: np.ndarray) -> np.ndarray:
    """Summed log-likelihood of each experiment's wells under each layout: experiments x layouts.

    ``plate_pos`` is the well's plate as a column index of ``layouts`` (layouts x plates of groups).
    """
    n_exp, n_plates, n_groups = experiment_idx.max() + 1, layouts.shape[1], glp.shape[1]
    key = experiment_idx * n_plates + plate_pos
    per_plate = np.stack([np.bincount(key, weights=glp[:, g], minlength=n_exp * n_plates)
                          for g in range(n_groups)], axis=1)
    per_plate = per_plate.reshape(n_exp, n_plates, n_groups)
    return per_plate[:, np.arange(n_plates)[None, :], layouts].sum(axis=2)


def masked_softmax(block: np.ndarray, temperature: float) -> np.ndarray:
    """Row-wise softmax of block / temperature (float32)."""
    z = (block - block.max(axis=1, keepdims=True)) * np.float32(1.0 / temperature)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def sinkhorn(prob: np.ndarray, iterations: int) -> np.ndarray:
    """Scale rows and columns of a wells x siRNAs matrix towards row sums 1 and column sums
    wells/siRNAs (``iterations`` rounds, as scaling vectors: two matrix-vector products a round)."""
    k = np.maximum(prob, np.finfo(np.float32).tiny, dtype=np.float64)
    target = k.shape[0] / k.shape[1]
    r = np.ones(k.shape[0])
    for _ in range(iterations):
        c = target / (r @ k)
        r = 1.0 / (k @ c)
    return k * r[:, None] * c[None, :] if iterations else k


def assign_plate(block: np.ndarray, temperature: float, cost: str, iterations: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Balanced assignment of one plate's wells (rows) to its group's siRNAs (columns).

    Maximises the summed probability (cost ``prob``: the expected number of correct wells) or
    log-probability (``log_prob``: the most likely assignment) after temperature and optional
    row/column normalisation. With ``log_prob`` on a full plate, temperature and normalisation
    do not change the answer. Returns (column chosen per row, its probability at the temperature).
    """
    prob = masked_softmax(block, temperature)
    weight = sinkhorn(prob, iterations)
    if cost == "log_prob":
        weight = np.log(weight)
    elif cost != "prob":
        raise ValueError(f"unknown assignment cost {cost!r} (expected prob or log_prob)")
    from scipy.optimize import linear_sum_assignment  # imported where used: ~0.3 s that other commands skip

    rows, cols = linear_sum_assignment(weight, maximize=True)
    chosen = np.empty(block.shape[0], dtype=np.int64)
    chosen[rows] = cols
    return chosen, prob[np.arange(len(chosen)), chosen].astype(np.float64)


def mask_to_plate_group(x: np.ndarray, col_group: np.ndarray, well_group: np.ndarray) -> np.ndarray:
    """Column of the best siRNA of each well's plate group."""
    best = np.empty(len(x), dtype=np.int64)
    for g in np.unique(well_group):
        cols, in_g = np.flatnonzero(col_group == g), np.flatnonzero(well_group == g)
        best[in_g] = cols[x[np.ix_(in_g, cols)].argmax(axis=1)]
    return best


def assign_per_plate(x: np.ndarray, col_group: np.ndarray, well_group: np.ndarray, plate_key: np.ndarray,
                     plate_names: np.ndarray, temperature: float, cost: str, iterations: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Balanced assignment on every plate (wells sharing ``plate_key``) among its group's siRNAs.

    Returns (column per well, probability of that siRNA within the group at the temperature).
    """
    chosen = np.empty(len(x), dtype=np.int64)
    score = np.empty(len(x), dtype=np.float64)
    order = np.lexsort((plate_key, well_group))
    starts = np.flatnonzero(np.diff(plate_key[order], prepend=-1))
    for part in np.split(order, starts[1:]):
        g = well_group[part[0]]
        cols = np.flatnonzero(col_group == g)
        if len(part) > len(cols):
            raise LogitsError(f"{plate_names[plate_key[part[0]]]} has {len(part)} treatment wells "
                              f"but its group {g} only {len(cols)} siRNAs")
        pick, score[part] = assign_plate(x[np.ix_(part, cols)], temperature, cost, iterations)
        chosen[part] = cols[pick]
    return chosen, score


def within_group_nll(blocks: list[tuple[np.ndarray, np.ndarray]], log_temperature: float) -> float:
    """Mean negative log-likelihood of the true siRNA under softmax(logits / T) within its group, at
    T = exp(log_temperature); ``blocks`` holds per group (wells x group logits shifted to row max 0,
    true-class logit)."""
    scale = np.float32(np.exp(-log_temperature))
    total, count = 0.0, 0
    for block, true_logit in blocks:
        lse = np.log(np.exp(block * scale).sum(axis=1, dtype=np.float64))
        total += float(np.sum(lse - true_logit * scale))
        count += len(true_logit)
    return total / count
