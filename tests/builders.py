"""Builders of small test inputs: wells tables with a known plate-group structure and simulated logits.
Throw-away copies of the project live in ``tests.tiny_project`` (shared with benchmarks/)."""

import numpy as np
import pandas as pd

from rxrx1_pipeline.leak.plates import WELLS, id_code

CELL_LINES = ("HEPG2", "HUVEC")


def make_wells(per_group: int = 5, train_layouts: tuple = ((1, 2, 3, 0),) * 3 + ((2, 3, 0, 1),) * 2,
               test_layouts: tuple = ((0, 1, 2, 3), (3, 0, 1, 2)), missing: tuple = (), seed: int = 0
               ) -> tuple[pd.DataFrame, dict[int, list[int]], pd.Series]:
    """Wells of experiments HEPG2-01, HUVEC-01, HEPG2-02, ... (train first, then test) with the
    given group-per-plate layouts.

    Groups hold shuffled siRNA ids; each plate has one negative control in B02 and its group's
    siRNAs in random order. ``missing`` lists id_codes to leave out. Returns (wells as built by
    ingest, group -> members, true siRNA per id_code including test wells).
    """
    rng = np.random.default_rng(seed)
    n_groups = len(train_layouts[0])
    ids = rng.permutation(n_groups * per_group)
    members = {g: sorted(ids[g * per_group:(g + 1) * per_group].tolist()) for g in range(n_groups)}
    control = n_groups * per_group
    rows, truth, n = [], {}, 0
    for split, layouts in (("train", train_layouts), ("test", test_layouts)):
        for layout in layouts:
            cell_line = CELL_LINES[n % 2]
            exp = f"{cell_line}-{n // 2 + 1:02d}"
            n += 1
            for plate, group in enumerate(layout, start=1):
                sirnas = [control, *rng.permutation(members[group]).tolist()]
                for well, sirna in zip(WELLS, sirnas):
                    code = id_code(exp, plate, well)
                    if code in missing:
                        continue
                    kind = "negative_control" if sirna == control else "treatment"
                    truth[code] = sirna
                    rows.append({"id_code": code, "experiment": exp, "cell_line": cell_line,
                                 "plate": plate, "well": well, "split": split, "well_type": kind,
                                 "sirna": sirna if split == "train" or kind != "treatment" else None})
    wells = pd.DataFrame(rows).astype({"plate": "int64", "sirna": "Int64"})
    return wells, members, pd.Series(truth, name="sirna")


def simulated_logits(wells: pd.DataFrame, truth: pd.Series, split: str, strength: float, seed: int = 0
                     ) -> pd.DataFrame:
    """Logits of a split's treatment wells: N(0, 1) plus ``strength`` on the true siRNA."""
    treat = wells[(wells["split"] == split) & (wells["well_type"] == "treatment")]
    sirnas = np.sort(truth[wells.loc[wells["well_type"] == "treatment", "id_code"]].unique())
    x = np.random.default_rng(seed).standard_normal((len(treat), len(sirnas))).astype(np.float32)
    x[np.arange(len(treat)), np.searchsorted(sirnas, truth[treat["id_code"]].to_numpy())] += strength
    table = pd.DataFrame(x, columns=[str(s) for s in sirnas])
    table.insert(0, "id_code", treat["id_code"].to_numpy())
    return table
