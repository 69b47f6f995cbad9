"""Progressive pseudo-labelling: unlabelled treatment wells (validation and test) become training sites.

From ``start_epoch`` on, before each epoch the model predicts every well not yet labelled (both sites,
one view), each experiment's plate layout is inferred from those predictions, and each well is
restricted to its plate's group and to the siRNAs not yet taken on its plate (an experiment's layout is
kept from the first update that labels one of its wells, so its labels never disagree). Wells are ranked by
margin (best minus second-best probability within what is allowed) and the most confident are added
until a share of all candidate wells is labelled that grows linearly from ``initial_share`` (after the
first update) to ``final_share`` (at the last epoch); one well per (plate, siRNA). Added labels are kept for the rest of the training.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from rxrx1_pipeline.leak.kernels import combine_rows, group_log_probs, score_layouts
from rxrx1_pipeline.leak.plates import layout_matrix
from rxrx1_pipeline.schema import PseudoLabels

log = logging.getLogger(__name__)

COLUMNS = ["id_code", "class_index", "sirna", "epoch"]
TYPES = {"id_code": object} | {c: "int64" for c in COLUMNS[1:]}


def no_pseudo_labels() -> pd.DataFrame:
    """The pseudo-label table with no rows (a training without pseudo-labels writes it)."""
    return pd.DataFrame(columns=COLUMNS).astype(TYPES)


class PseudoLabeller:
    """The pseudo-labels of one training run: which candidate wells are labelled, as what, since when."""

    def __init__(self, candidates: pd.DataFrame, classes: pd.DataFrame, sirna_groups: pd.DataFrame,
                 plate_layouts: pd.DataFrame, options: PseudoLabels, epochs: int):
        """``candidates``: the unlabelled treatment sites (id_code, experiment, plate, plate_index,
        store_row); ``classes``: the model's classes (sirna, class_index, well_type)."""
        self.sites = candidates.reset_index(drop=True)
        self.start, self.epochs = options.start_epoch, epochs
        self.initial, self.final = options.initial_share, options.final_share
        treatment = classes[classes["well_type"] == "treatment"].sort_values("sirna")
        self.class_index = treatment["class_index"].to_numpy()
        self.sirna = treatment["sirna"].to_numpy()
        self.col_group = sirna_groups.set_index("sirna").loc[self.sirna, "group"].to_numpy(np.int64)
        self.n_groups = int(sirna_groups["group"].max()) + 1
        self.plates, self.layouts = layout_matrix(plate_layouts)
        self.wells = self.sites.drop_duplicates("id_code")[["id_code", "experiment", "plate"]].reset_index(drop=True)
        self.labelled = no_pseudo_labels()
        self.layout_of: dict[str, int] = {}  # experiment -> row of the layout its labels follow

    def due(self, epoch: int) -> bool:
        """Whether pseudo-labels are (re)computed before 0-based ``epoch``."""
        return self.start > 0 and epoch + 1 >= self.start and len(self.wells) > 0

    def target(self, epoch: int) -> int:
        """How many wells are labelled after the update before 0-based ``epoch``."""
        progress = (epoch + 2 - self.start) / (self.epochs + 1 - self.start)
        share = self.initial + (self.final - self.initial) * min(1.0, progress)
        return int(round(share * len(self.wells)))

    def update(self, site_logits: np.ndarray, epoch: int) -> pd.DataFrame:
        """Add the most confident wells from the treatment-class logits of every candidate site (rows of
        ``self.sites``); returns the rows added."""
        codes, x = combine_rows(self.sites["id_code"].to_numpy(), site_logits)
        wells = self.wells.set_index("id_code").loc[codes].reset_index()
        exp_idx, _ = pd.factorize(wells["experiment"], sort=True)
        plate_pos = np.searchsorted(self.plates, wells["plate"].to_numpy())
        scores = score_layouts(group_log_probs(x, self.col_group, self.n_groups), exp_idx, plate_pos, self.layouts)
        experiments = np.unique(wells["experiment"])
        layout = np.array([self.layout_of.get(e, best) for e, best in zip(experiments, scores.argmax(axis=1))])
        well_group = self.layouts[layout[exp_idx], plate_pos]
        plate_key = pd.factorize(wells["experiment"] + "_" + wells["plate"].astype(str))[0]

        taken = np.zeros((plate_key.max() + 1, x.shape[1]), dtype=bool)
        done = wells["id_code"].isin(self.labelled["id_code"]).to_numpy()
        col_of = pd.Series(np.arange(len(self.sirna)), index=self.sirna)
        old = wells.reset_index().merge(self.labelled, on="id_code")
        taken[plate_key[old["index"].to_numpy()], col_of.loc[old["sirna"]].to_numpy()] = True

        allowed = (self.col_group[None, :] == well_group[:, None]) & ~taken[plate_key]
        with np.errstate(invalid="ignore"):  # a well with nothing left allowed gets a NaN margin
            z = np.where(allowed, x, -np.inf)
            z = np.exp(z - z.max(axis=1, keepdims=True))
            prob = z / z.sum(axis=1, keepdims=True)
            top2 = -np.partition(-prob, 1, axis=1)[:, :2]
            margin = top2[:, 0] - top2[:, 1]
        best = np.nan_to_num(prob, nan=-1.0).argmax(axis=1)

        wanted = self.target(epoch) - int(done.sum())
        added = []
        for i in np.argsort(-margin, kind="stable"):
            if len(added) >= wanted:
                break
            if done[i] or taken[plate_key[i], best[i]] or not np.isfinite(margin[i]):
                continue
            taken[plate_key[i], best[i]] = True
            added.append(i)
        new = pd.DataFrame({"id_code": wells["id_code"].to_numpy()[added],
                            "class_index": self.class_index[best[added]].astype(np.int64),
                            "sirna": self.sirna[best[added]].astype(np.int64), "epoch": epoch + 1})
        self.labelled = pd.concat([self.labelled, new], ignore_index=True)
        for e in wells.loc[added, "experiment"].unique():
            self.layout_of.setdefault(e, int(layout[np.searchsorted(experiments, e)]))
        log.info("pseudo-labels before epoch %d: +%d wells (margin >= %.3f), %d of %d labelled", epoch + 1,
                 len(new), float(margin[added[-1]]) if added else float("nan"), len(self.labelled), len(wells))
        return new

    def state(self) -> dict:
        """What a checkpoint keeps (plain types): the labels and the layouts they follow."""
        return {"labelled": self.labelled.to_dict("list"), "layout_of": dict(self.layout_of)}

    def restore(self, state: dict) -> None:
        self.labelled = pd.DataFrame(state["labelled"], columns=COLUMNS).astype(TYPES)
        self.layout_of = dict(state["layout_of"])

    def labelled_sites(self) -> pd.DataFrame:
        """The candidate sites that carry a pseudo-label, with it as ``class_index``."""
        sites = self.sites.drop(columns=["class_index"], errors="ignore")
        return sites.merge(self.labelled[["id_code", "class_index"]], on="id_code", how="inner")
