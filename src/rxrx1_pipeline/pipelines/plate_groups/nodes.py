"""Discover the plate-group structure from the labelled train treatment wells.

Each experiment puts one group of siRNAs on each plate; experiments differ only by which group sits
on which plate. Everything here is learnt from train.csv: the number of groups, their members, the
plates and the layouts, so the same code serves screens with other sizes.
"""

import logging

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from rxrx1_pipeline.leak.plates import layout_columns

log = logging.getLogger(__name__)


class PlateStructureError(ValueError):
    """The train wells contradict the one-group-per-plate structure; the message names the plate."""


def train_treatments(wells: pd.DataFrame) -> pd.DataFrame:
    """The labelled train treatment wells: experiment, plate, sirna (int64)."""
    t = wells.loc[(wells["split"] == "train") & (wells["well_type"] == "treatment")
                  & wells["sirna"].notna(), ["experiment", "plate", "sirna"]]
    if t.empty:
        raise PlateStructureError("no labelled train treatment wells to learn plate groups from")
    return t.astype({"sirna": "int64", "plate": "int64"}).reset_index(drop=True)


def discover_sirna_groups(wells: pd.DataFrame) -> pd.DataFrame:
    """Partition the treatment siRNAs into plate groups.

    Two siRNAs are linked when they share a plate in more than half of the plates holding the rarer
    of the two; groups are the connected components of these links. Plain co-occurrence would let
    one misplaced well merge two groups; the majority rule keeps the groups and leaves the faulty
    plate to be reported by ``assign_train_plate_groups``. Groups are numbered 0.. by smallest siRNA.
    """
    t = train_treatments(wells)
    sirnas, s_idx = np.unique(t["sirna"].to_numpy(), return_inverse=True)
    plate_idx = t.groupby(["experiment", "plate"], sort=True).ngroup().to_numpy()
    incidence = coo_matrix((np.ones(len(t), np.float32), (plate_idx, s_idx)),
                           shape=(plate_idx.max() + 1, len(sirnas))).tocsr()
    incidence.data[:] = 1.0  # a siRNA listed twice on a plate still counts once
    shared = (incidence.T @ incidence).toarray()
    seen = np.diag(shared)
    linked = 2 * shared > np.minimum.outer(seen, seen)
    _, label = connected_components(coo_matrix(linked), directed=False)
    # connected_components numbers components in order of their first node, i.e. by smallest siRNA
    groups = pd.DataFrame({"sirna": sirnas.astype("int64"), "group": label.astype("int64")})
    sizes = groups["group"].value_counts().sort_index()
    shape = (f"{len(sizes)} groups x {sizes.iloc[0]} siRNAs" if sizes.nunique() == 1
             else f"{len(sizes)} groups of {'/'.join(map(str, sizes))} siRNAs")
    log.info("Plate groups: %s (%d treatment siRNAs on %d train plates)", shape, len(sirnas),
             incidence.shape[0])
    return groups


def assign_train_plate_groups(wells: pd.DataFrame, sirna_groups: pd.DataFrame) -> pd.DataFrame:
    """The group of every train (experiment, plate); columns experiment, plate, group.

    Raises PlateStructureError naming the experiment and plate when a plate holds siRNAs of two
    groups, or when one group sits on two plates of an experiment. Missing wells are fine.
    """
    t = train_treatments(wells).merge(sirna_groups, on="sirna", how="left", validate="many_to_one")
    per_plate = t.groupby(["experiment", "plate"], sort=True)["group"].agg(["nunique", "min", "max"])
    mixed = per_plate[per_plate["nunique"] > 1]
    if len(mixed):
        (exp, plate), row = next(iter(mixed.iterrows()))
        counts = t[(t["experiment"] == exp) & (t["plate"] == plate)]["group"].value_counts()
        detail = ", ".join(f"{n} wells of group {g}" for g, n in counts.sort_index().items())
        more = f" ({len(mixed) - 1} more plates likewise)" if len(mixed) > 1 else ""
        raise PlateStructureError(
            f"train experiment {exp} plate {plate} holds siRNAs of several plate groups: {detail}{more}")
    plates = per_plate["min"].rename("group").reset_index()
    twice = plates[plates.duplicated(["experiment", "group"], keep=False)]
    if len(twice):
        exp, group = twice.iloc[0][["experiment", "group"]]
        on = twice[(twice["experiment"] == exp) & (twice["group"] == group)]["plate"].tolist()
        raise PlateStructureError(
            f"train experiment {exp} plates {' and '.join(map(str, on))} hold the same plate group {group}")
    return plates.astype({"plate": "int64", "group": "int64"})


def tabulate_plate_layouts(train_plate_groups: pd.DataFrame) -> pd.DataFrame:
    """The candidate layouts: every cyclic rotation of every layout seen in train.

    Columns: layout (id), plate_<p> (group on plate p), train_experiments (how many train
    experiments use it), in_train. Ordered by train use, then by the groups; ids follow that order.
    Train experiments lacking a plate are counted only when the missing group is unambiguous.
    """
    plates = np.sort(train_plate_groups["plate"].unique())
    groups = np.sort(train_plate_groups["group"].unique())
    wide = train_plate_groups.pivot(index="experiment", columns="plate", values="group").reindex(columns=plates)
    seen = []
    for exp, row in wide.iterrows():
        missing = row.isna().to_numpy()
        if missing.sum() == 1 and len(groups) == len(plates):
            row[missing] = np.setdiff1d(groups, row[~missing].to_numpy())[0]
        elif missing.any():
            log.warning("Train experiment %s lacks plates %s; its layout is left out", exp,
                        plates[missing].tolist())
            continue
        seen.append(tuple(int(g) for g in row))
    counts = pd.Series(seen, dtype=object).value_counts()
    candidates = {tuple(np.roll(layout, -r).tolist()) for layout in counts.index for r in range(len(plates))}
    table = pd.DataFrame(sorted(candidates), columns=layout_columns(plates))
    table["train_experiments"] = [int(counts.get(c, 0)) for c in sorted(candidates)]
    table = table.sort_values("train_experiments", ascending=False, kind="stable", ignore_index=True)
    table.insert(0, "layout", np.arange(len(table), dtype=np.int64))
    table["in_train"] = table["train_experiments"] > 0
    log.info("Plate layouts (group on plates %s): %s; %d of %d candidates used in train, by %s experiments",
             "/".join(map(str, plates)),
             ", ".join(f"{'-'.join(map(str, r[layout_columns(plates)]))} x{r['train_experiments']}"
                       for _, r in table.iterrows()),
             int(table["in_train"].sum()), len(table),
             "/".join(str(n) for n in table.loc[table["in_train"], "train_experiments"]))
    return table
