"""Copied experiments: a test experiment whose plates repeat a labelled experiment's well-to-siRNA map.

RxRx1 has one: the test experiment HUVEC-18 repeats the train experiment RPE-03 with its plates reordered
(the 1st place trained on it with RPE-03's labels); in train, HUVEC-07 holds that map too. It is found here
from the calls alone, not from names: for every test experiment, every labelled experiment and every order
of the plates, how many of its wells have the call (after the balanced assignment) that the labelled
experiment has at that plate and well. A non-copy agrees by chance, once in a plate group's size (a plate's
treatments: the balanced assignment calls each siRNA of the group once); a copy agrees as often as the calls
are right. The best match is
the candidate least likely by chance; it is a copy when its binomial tail, Bonferroni-corrected for the
candidates tried, is below ``copies.max_p_value``; its wells are then answered from the labelled map.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pandas as pd

from rxrx1_pipeline.schema import Copies

log = logging.getLogger(__name__)

COLUMNS = ["experiment", "source", "same_map", "plate_order", "wells", "agreement", "runner_up", "chance", "p_value",
           "copied"]


def labelled_maps(wells: pd.DataFrame) -> tuple[list[str], list[int], list[str], np.ndarray]:
    """(labelled experiments, plates, wells, experiments x plates x wells array of siRNA ids, -1 where none)
    of the labelled treatment wells."""
    known = wells[(wells["split"] == "train") & (wells["well_type"] == "treatment") & wells["sirna"].notna()]
    experiments = sorted(known["experiment"].unique())
    plates = sorted(int(p) for p in wells["plate"].unique())
    names = sorted(wells["well"].unique())
    maps = np.full((len(experiments), len(plates), len(names)), -1, np.int64)
    maps[pd.Index(experiments).get_indexer(known["experiment"]), pd.Index(plates).get_indexer(known["plate"]),
         pd.Index(names).get_indexer(known["well"])] = known["sirna"].astype(np.int64).to_numpy()
    return experiments, plates, names, maps


def same_order(mine: np.ndarray, theirs: np.ndarray, orders: list[tuple[int, ...]]) -> tuple[int, ...] | None:
    """The plate order under which two plates x wells maps hold the same siRNA on every well both hold (and
    share most wells), or None."""
    for order in orders:
        reordered = mine[list(order)]
        both = (reordered >= 0) & (theirs >= 0)
        if both.sum() > 0.5 * (theirs >= 0).sum() and (reordered[both] == theirs[both]).all():
            return order
    return None


def same_map(maps: np.ndarray, source: int, orders: list[tuple[int, ...]]) -> list[int]:
    """The other labelled experiments whose map is ``source``'s under some plate order (RxRx1: HUVEC-07, RPE-03)."""
    return [other for other in range(len(maps))
            if other != source and same_order(maps[source], maps[other], orders) is not None]


def surprise(matches: np.ndarray, compared: np.ndarray, chance: float) -> np.ndarray:
    """How far above chance each candidate agrees, in nats: the log-likelihood ratio of its agreement rate
    against ``chance`` over its compared wells (0 at or below chance). It ranks candidates as their binomial
    tails do, without the tails' underflow to 0 for strong copies."""
    rate = np.clip(matches / np.maximum(compared, 1), 1e-12, 1 - 1e-12)
    ratio = matches * np.log(rate / chance) + (compared - matches) * np.log((1 - rate) / (1 - chance))
    return np.where(rate > chance, ratio, 0.0)


def find_copied_experiments(test_predictions: pd.DataFrame, wells: pd.DataFrame, copies: Copies) -> pd.DataFrame:
    """One row per test experiment: the labelled experiment (``source``) and plate order (``plate_order``: the
    source plate of each of its plates, in plate order) that its calls agree with most, the labelled experiments
    that share the source's map (``same_map``), that ``agreement`` (share of its ``wells``), the agreement of the
    best match among experiments of other maps (``runner_up``), the ``chance`` rate, the Bonferroni-corrected
    ``p_value`` and whether it is ``copied``. Empty when ``copies.detect`` is off."""
    from scipy.stats import binom  # imported when used: kedro commands do not pay for scipy.stats

    if not copies.detect or test_predictions.empty:
        return pd.DataFrame(columns=COLUMNS)
    experiments, plates, names, maps = labelled_maps(wells)
    calls = test_predictions.merge(wells[["id_code", "well"]], on="id_code")
    orders = list(itertools.permutations(range(len(plates))))
    per_plate = max(int((maps >= 0).sum(2).max()), 1)  # treatment wells of the fullest labelled plate
    chance = 1 / per_plate  # a well of another map holds the called siRNA once in a plate group's size
    rows = []
    for experiment, mine in calls.groupby("experiment", sort=True):
        plate_pos = pd.Index(plates).get_indexer(mine["plate"].astype(int))
        well_pos = pd.Index(names).get_indexer(mine["well"])
        call = mine["sirna_assigned"].to_numpy(np.int64)
        matches = np.empty((len(experiments), len(orders)))
        compared = np.empty_like(matches)
        for k, order in enumerate(orders):
            source = maps[:, np.asarray(order)[plate_pos], well_pos]  # labelled experiments x this one's wells
            matches[:, k] = (source == call).sum(1)
            compared[:, k] = (source >= 0).sum(1)
        agreement = matches / np.maximum(compared, 1)
        evidence = surprise(matches, compared, chance)
        s, k = np.unravel_index(np.argmax(evidence), evidence.shape)
        twins = same_map(maps, s, orders)
        others = np.delete(evidence, [s, *twins], axis=0)
        runner_up = np.delete(agreement, [s, *twins], axis=0).flat[np.argmax(others)] if others.size else 0.0
        p_value = min(1.0, float(binom.sf(matches[s, k] - 1, compared[s, k], chance)) * evidence.size)
        rows.append({"experiment": experiment, "source": experiments[s],
                     "same_map": ",".join(experiments[t] for t in twins),
                     "plate_order": ",".join(str(plates[i]) for i in orders[k]), "wells": int(compared[s, k]),
                     "agreement": float(agreement[s, k]), "runner_up": float(runner_up),
                     "chance": chance, "p_value": p_value, "copied": p_value < copies.max_p_value})
    table = pd.DataFrame(rows, columns=COLUMNS)
    for _, r in table[table["copied"]].iterrows():
        twins = f" (as do {r['same_map']})" if r["same_map"] else ""
        log.info("Copied experiment: %s repeats %s's map%s, its plates %s being %s's plates %s: %.1f%% of its %d "
                 "calls agree (another map: at most %.1f%%; chance %.2f%%; p = %.1e); its wells are answered "
                 "from that map", r["experiment"], r["source"], twins, ",".join(map(str, plates)), r["source"],
                 r["plate_order"], 100 * r["agreement"], r["wells"], 100 * r["runner_up"], 100 * r["chance"],
                 r["p_value"])
    log.info("Copied experiments: %d of %d test experiments (p < %g)", int(table["copied"].sum()), len(table),
             copies.max_p_value)
    return table


def copied_only(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a :func:`find_copied_experiments` table that are copies (a table with no rows as it is)."""
    return table[table["copied"].astype(bool)] if len(table) else table


def answer_from_copies(test_predictions: pd.DataFrame, copied: pd.DataFrame, wells: pd.DataFrame) -> pd.Series:
    """``sirna_assigned`` of each test well, taken from the labelled map for the wells of copied experiments
    (the source's, or where it lacks the well, an experiment of the same map's), aligned with ``test_predictions``."""
    answer = test_predictions["sirna_assigned"].astype(np.int64).copy()
    copied = copied_only(copied)
    if copied.empty:
        return answer
    experiments, plates, names, maps = labelled_maps(wells)
    orders = list(itertools.permutations(range(len(plates))))
    well_of = test_predictions[["id_code"]].merge(wells[["id_code", "well"]], on="id_code", how="left")["well"]
    for _, r in copied.iterrows():
        mine = np.flatnonzero(test_predictions["experiment"].to_numpy() == r["experiment"])
        plate_pos = pd.Index(plates).get_indexer(test_predictions["plate"].iloc[mine].astype(int))
        well_pos = pd.Index(names).get_indexer(well_of.iloc[mine])
        order = np.array([plates.index(int(p)) for p in str(r["plate_order"]).split(",")])
        s = experiments.index(r["source"])
        source = maps[s, order[plate_pos], well_pos]
        for twin in same_map(maps, s, orders):
            gaps = source < 0
            twin_order = np.asarray(same_order(maps[s], maps[twin], orders))
            # the twin's plate q holds the source's plate twin_order[q]
            source[gaps] = maps[twin, np.argsort(twin_order)[order[plate_pos[gaps]]], well_pos[gaps]]
        known = source >= 0
        answer.iloc[mine[known]] = source[known]
        log.info("%s: %d of %d wells answered from %s's map", r["experiment"], int(known.sum()), len(mine),
                 r["source"])
    return answer


def copied_well_labels(copied: pd.DataFrame, wells: pd.DataFrame) -> pd.DataFrame:
    """The test treatment wells of the copied experiments in ``copied`` (a :func:`find_copied_experiments` table,
    e.g. a held-out run's) with the siRNA their copied map gives them: ``id_code``, ``sirna``. A final fit trains
    on them as labelled wells, as the 1st place trained on HUVEC-18 with RPE-03's labels."""
    copied = copied_only(copied)
    test = wells[(wells["split"] == "test") & (wells["well_type"] == "treatment")
                 & wells["experiment"].isin(copied["experiment"] if len(copied) else [])]
    calls = pd.DataFrame({"id_code": test["id_code"].to_numpy(), "experiment": test["experiment"].to_numpy(),
                          "plate": test["plate"].to_numpy(), "sirna_assigned": -1})
    sirna = answer_from_copies(calls, copied, wells).to_numpy()
    known = sirna >= 0
    return pd.DataFrame({"id_code": calls["id_code"].to_numpy()[known], "sirna": sirna[known].astype(np.int64)})
