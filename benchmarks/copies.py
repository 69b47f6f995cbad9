"""Copied experiments on the real RxRx1 metadata (``leak/copies.py``), with simulated calls.

The real test set holds one copy: HUVEC-18 repeats the train experiment RPE-03, its plates 1-4 being RPE-03's
plates 4, 1, 2, 3 (the 1st place's dataset.py). No real predictions are available here, so the calls are
simulated at a given accuracy: HUVEC-18's wells from that map (right with probability ``accuracy``, else
another siRNA of the same plate group), every other test experiment's calls from a random layout of the
plate groups (they copy nothing). The false positives are measured on the 33 train experiments, each
treated in turn as an unlabelled one with calls from its own map at that accuracy against the other 32:
none is a copy, so every declared copy is a false positive.

    python benchmarks/copies.py [--metadata ../shared/rxrx1/metadata]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from rxrx1_pipeline.leak.copies import find_copied_experiments, labelled_maps, same_map
from rxrx1_pipeline.pipelines.ingest.nodes import build_wells
from rxrx1_pipeline.pipelines.plate_groups.nodes import discover_sirna_groups
from rxrx1_pipeline.schema import Copies

ROOT = Path(__file__).resolve().parents[1]
CSVS = ("train.csv", "test.csv", "train_controls.csv", "test_controls.csv")
COPY, SOURCE, ORDER = "HUVEC-18", "RPE-03", {1: 4, 2: 1, 3: 2, 4: 3}


def noisy(right: np.ndarray, group_of: pd.Series, members: dict, accuracy: float, rng) -> np.ndarray:
    """``right`` kept with probability ``accuracy``, else replaced by a random siRNA of its plate group."""
    wrong = np.array([rng.choice(members[g]) for g in group_of.loc[right].to_numpy()])
    return np.where(rng.random(len(right)) < accuracy, right, wrong)


def simulated_calls(wells: pd.DataFrame, groups: pd.DataFrame, accuracy: float, seed: int) -> pd.DataFrame:
    """Calls of every test treatment well: HUVEC-18 from RPE-03's map, the others from a random plate layout."""
    rng = np.random.default_rng(seed)
    group_of = groups.set_index("sirna")["group"]
    members = {g: m["sirna"].to_numpy() for g, m in groups.groupby("group")}
    labelled = wells[wells["sirna"].notna() & (wells["well_type"] == "treatment")]
    source = labelled[labelled["experiment"] == SOURCE].set_index(["plate", "well"])["sirna"].astype(np.int64)
    test = wells[(wells["split"] == "test") & (wells["well_type"] == "treatment")].reset_index(drop=True)
    calls = np.empty(len(test), np.int64)
    for experiment, mine in test.groupby("experiment"):
        if experiment == COPY:
            right = source.reindex(list(zip(mine["plate"].map(ORDER), mine["well"]))).to_numpy()
            known = ~pd.isna(right)
            calls[mine.index[known]] = noisy(right[known].astype(np.int64), group_of, members, accuracy, rng)
            calls[mine.index[~known]] = rng.choice(groups["sirna"], (~known).sum())
        else:
            layout = rng.permutation(len(members))
            calls[mine.index] = [rng.choice(members[layout[p - 1]]) for p in mine["plate"]]
    return test[["id_code", "experiment", "plate"]].assign(sirna_assigned=calls)


def leave_one_out(wells: pd.DataFrame, groups: pd.DataFrame, accuracy: float, seed: int) -> tuple[int, float]:
    """(false copies declared, highest agreement with another map) over the train experiments, each unlabelled
    in turn. HUVEC-07 and RPE-03 share one map in train, so each is rightly found as a copy of the other."""
    rng = np.random.default_rng(seed)
    group_of = groups.set_index("sirna")["group"]
    members = {g: m["sirna"].to_numpy() for g, m in groups.groupby("group")}
    experiments, plates, _, maps = labelled_maps(wells)
    orders = list(itertools.permutations(range(len(plates))))
    declared, best = 0, 0.0
    for experiment in experiments:
        mine = wells[(wells["experiment"] == experiment) & (wells["well_type"] == "treatment")]
        calls = mine[["id_code", "experiment", "plate"]].assign(
            sirna_assigned=noisy(mine["sirna"].astype(np.int64).to_numpy(), group_of, members, accuracy, rng))
        others = wells.assign(split=np.where(wells["experiment"] == experiment, "test", wells["split"]))
        table = find_copied_experiments(calls, others, Copies())
        twins = [experiments[t] for t in same_map(maps, experiments.index(experiment), orders)]  # true copies
        declared += int((table["copied"] & ~table["source"].isin(twins)).sum())
        best = max(best, float(table["runner_up"].max()))
    return declared, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metadata", type=Path, default=ROOT.parent / "shared" / "rxrx1" / "metadata")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    wells = build_wells(*(pd.read_csv(args.metadata / f) for f in CSVS))
    groups = discover_sirna_groups(wells)
    print(f"{'accuracy':>8}  {'HUVEC-18 found as':<33} {'agreement':>9} {'runner-up':>9} {'p-value':>8}  "
          f"{'other test copies':>17}  {'train LOO false copies':>22} {'LOO other map max':>17}  {'s':>4}")
    for accuracy in (0.02, 0.05, 0.1, 0.3, 0.9):
        start = time.perf_counter()
        table = find_copied_experiments(simulated_calls(wells, groups, accuracy, 0), wells, Copies()).set_index(
            "experiment")
        row = table.loc[COPY]
        found = f"{row['source']} ({row['plate_order']})" if row["copied"] else "not found"
        found += f" = {row['same_map']}" if row["copied"] and row["same_map"] else ""
        false, best = leave_one_out(wells, groups, accuracy, 1)
        print(f"{accuracy:>8.0%}  {found:<33} {row['agreement']:>9.1%} {row['runner_up']:>9.1%} "
              f"{row['p_value']:>8.1e}  {int(table['copied'].sum() - row['copied']):>17}  "
              f"{false:>15} of {len(set(wells.loc[wells['split'] == 'train', 'experiment'])):>3} {best:>17.1%}  "
              f"{time.perf_counter() - start:>4.0f}")


if __name__ == "__main__":
    main()
