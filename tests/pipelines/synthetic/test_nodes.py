"""The synthetic RxRx1 generator: layout (hidden plate groups, rotations, controls, missing wells) and rendering."""

import io
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from rxrx1_pipeline.pipelines.ingest.nodes import REQUIRED_COLUMNS, build_wells
from rxrx1_pipeline.pipelines.synthetic.nodes import design_plates, render_sites
from rxrx1_pipeline.leak.plates import PLATES, SITES, WELLS, site_prefix
from tests.conftest import CSVS as FILES
from rxrx1_pipeline.schema import Synthetic

PARAMS = dict(seed=3, image_size=16, cell_lines=["HEPG2", "HUVEC"], experiments={"train": 3, "test": 2},
              sirnas_per_group=5, positive_controls=2, missing_well_rate=0.0, phenotype_strength=1.0,
              cell_line_specificity=0.5, batch_strength=0.5, noise=0.6)
N_TREAT, NEGATIVE = 4 * 5, 4 * 5 + 2


def params(**overrides) -> Synthetic:
    return Synthetic.model_validate({**PARAMS, **overrides})


@pytest.fixture(scope="module")
def design():
    return design_plates(params())


@pytest.fixture(scope="module")
def truth(design):
    return design[4]


def plate_sets(truth: pd.DataFrame) -> pd.Series:
    """(experiment, plate) -> frozenset of the treatment siRNAs on that plate."""
    treat = truth[truth["well_type"] == "treatment"]
    return treat.groupby(["experiment", "plate"])["sirna"].agg(frozenset)


def rotations(truth: pd.DataFrame) -> dict[str, int]:
    """Each experiment's layout as a rotation relative to the first experiment's; fails if not cyclic."""
    sets = plate_sets(truth)
    first = sets.index[0][0]
    label = {sets[(first, p)]: p - 1 for p in PLATES}
    result = {}
    for experiment in sets.index.get_level_values(0).unique():
        groups = [label[sets[(experiment, p)]] for p in PLATES]
        r = groups[0]
        assert groups == [(p - 1 + r) % 4 for p in PLATES], f"{experiment} is no cyclic rotation: {groups}"
        result[experiment] = r
    return result


def test_csvs_have_the_real_columns(design):
    for file, table in zip(FILES, design[:4]):
        assert list(table.columns) == REQUIRED_COLUMNS[file]
        assert len(table) > 0


def test_id_codes_wells_and_experiments(truth):
    assert truth["id_code"].is_unique
    assert (truth["id_code"] == truth["experiment"] + "_" + truth["plate"].astype(str) + "_" + truth["well"]).all()
    assert truth["id_code"].str.fullmatch(r"(HEPG2|HUVEC)-\d\d_[1-4]_[B-O](0[2-9]|1\d|2[0-3])").all()
    assert truth["well"].isin(WELLS).all()
    assert truth.groupby(["experiment", "plate", "well"]).size().max() == 1
    per_line = truth.groupby(["split", "cell_line"])["experiment"].nunique().to_dict()
    assert per_line == {("train", "HEPG2"): 3, ("train", "HUVEC"): 3, ("test", "HEPG2"): 2, ("test", "HUVEC"): 2}
    assert not set(truth.loc[truth["split"] == "train", "experiment"]) & set(
        truth.loc[truth["split"] == "test", "experiment"])


def test_controls_on_every_plate(truth):
    for (_, _), plate in truth.groupby(["experiment", "plate"]):
        neg = plate[plate["well_type"] == "negative_control"]
        assert neg["well"].tolist() == ["B02"] and neg["sirna"].tolist() == [NEGATIVE]
        pos = plate[plate["well_type"] == "positive_control"]
        assert sorted(pos["sirna"]) == [N_TREAT, N_TREAT + 1]
    treat = truth[truth["well_type"] == "treatment"]
    assert treat["sirna"].between(0, N_TREAT - 1).all()
    assert "B02" not in set(treat["well"])


def test_each_plate_holds_exactly_one_group(truth):
    sets = plate_sets(truth)
    assert (sets.map(len) == 5).all()  # every siRNA of the group once (no missing wells here)
    groups = set(sets)
    assert len(groups) == 4
    assert sorted(s for g in groups for s in g) == list(range(N_TREAT))  # disjoint, covering all treatments
    for experiment, plates in sets.groupby(level=0):
        assert len(set(plates)) == 4, f"{experiment} repeats a group"


def test_layouts_are_rotations_and_test_favours_the_unseen_one(truth):
    rot = rotations(truth)
    split = truth.drop_duplicates("experiment").set_index("experiment")["split"]
    train = {rot[e] for e in rot if split[e] == "train"}
    test = Counter(rot[e] for e in rot if split[e] == "test")
    assert len(train) == 3
    favourite, _ = test.most_common(1)[0]
    assert favourite not in train
    # the truth table's own rotation column agrees up to the choice of reference
    own = truth.drop_duplicates("experiment").set_index("experiment")["rotation"]
    assert len({(own[e] - rot[e]) % 4 for e in rot}) == 1


def test_missing_wells(truth):
    assert len(truth) == 10 * 4 * (5 + 2 + 1)  # rate 0: nothing missing
    sparse = design_plates(params(missing_well_rate=0.5))[4]
    counts = sparse.groupby(["experiment", "plate", "well_type"]).size().unstack()
    assert (counts["negative_control"] == 1).all() and (counts["positive_control"] == 2).all()
    missing = 10 * 4 * 5 - counts["treatment"].sum()
    assert 60 < missing < 140
    assert (counts["treatment"] < 5).sum() > 20
    sets = plate_sets(sparse)
    full = set(plate_sets(truth))
    assert all(any(s <= g for g in full) for s in sets)  # still a subset of one group, siRNAs at most once
    assert (sparse[sparse["well_type"] == "treatment"].groupby(["experiment", "plate"])["sirna"]
            .apply(lambda s: s.is_unique).all())


def test_design_is_deterministic_per_seed(design):
    again = design_plates(params())
    for a, b in zip(design, again):
        pd.testing.assert_frame_equal(a, b)
    other = design_plates(params(seed=4))
    assert not design[0].equals(other[0])
    assert set(plate_sets(design[4])) != set(plate_sets(other[4]))


def test_csvs_load_through_build_wells(design, truth):
    tables = [pd.read_csv(io.StringIO(t.to_csv(index=False))) for t in design[:4]]
    wells = build_wells(*tables)
    assert len(wells) == len(truth)
    merged = wells.merge(truth, on="id_code", suffixes=("", "_truth"))
    assert len(merged) == len(truth)
    assert (merged["well_type"] == merged["well_type_truth"]).all()
    assert (merged["cell_line"] == merged["cell_line_truth"]).all()
    known = merged["sirna"].notna()
    assert (merged.loc[known, "sirna"] == merged.loc[known, "sirna_truth"]).all()
    assert (~known == ((merged["split"] == "test") & (merged["well_type"] == "treatment"))).all()


def test_render_shapes_keys_and_determinism(truth):
    renderers = render_sites(truth, params())
    expected = {site_prefix(r.split, r.experiment, r.plate, r.well, s) for r in truth.itertuples() for s in SITES}
    assert set(renderers) == expected
    key = site_prefix("train", "HEPG2-01", 2, truth.query("experiment == 'HEPG2-01'")["well"].iloc[3], 1)
    image = renderers[key]()
    assert image.shape == (6, 16, 16) and image.dtype == np.uint8
    assert image.std() > 0
    np.testing.assert_array_equal(image, renderers[key]())
    np.testing.assert_array_equal(image, render_sites(truth, params())[key]())
    assert not np.array_equal(image, renderers[key.replace("_s1", "_s2")]())
    assert not np.array_equal(image, render_sites(truth, params(seed=4))[key]())
    assert render_sites(truth, params(image_size=24))[key]().shape == (6, 24, 24)


def treatment_sites(strength: float):
    """(well row, rendered 24 px site) for both sites of every treatment well of the small design at
    ``phenotype_strength`` ``strength``."""
    p = params(image_size=24, phenotype_strength=strength)
    truth = design_plates(p)[4]
    renderers = render_sites(truth, p)
    for r in truth[truth["well_type"] == "treatment"].itertuples():
        for s in SITES:
            yield r, renderers[site_prefix(r.split, r.experiment, r.plate, r.well, s)]()


def sirna_f_statistics(strength: float) -> np.ndarray:
    """Per-channel one-way ANOVA F of plate-normalised site brightness across (cell line, siRNA) groups."""
    rows = []
    for r, image in treatment_sites(strength):
        means = image.reshape(6, -1).mean(1)
        rows.append([r.experiment, r.plate, r.cell_line, r.sirna, *np.log(means)])
    df = pd.DataFrame(rows, columns=["experiment", "plate", "cell_line", "sirna", *range(6)])
    feat = df[list(range(6))] - df.groupby(["experiment", "plate"])[list(range(6))].transform("median")
    groups = [df["cell_line"], df["sirna"]]
    k, n = df.groupby(groups).ngroups, len(df)
    between = ((feat.groupby(groups).transform("mean") - feat.mean()) ** 2).sum() / (k - 1)
    within = ((feat - feat.groupby(groups).transform("mean")) ** 2).sum() / (n - k)
    return (between / within).to_numpy()


def test_render_depends_on_the_sirna_beyond_noise():
    f_signal = sirna_f_statistics(1.0)
    f_null = sirna_f_statistics(0.0)
    assert f_null.max() < 2.0  # no phenotype: siRNA groups differ no more than sites of one siRNA
    assert f_signal.mean() > 5.0 and f_signal.min() > 2.5


def standardised_f_statistics(strength: float) -> np.ndarray:
    """One-way ANOVA F across (cell line, siRNA) groups of shape statistics of per-image standardised sites
    (each channel divided by its own mean and spread, as the 1st place did): per channel the 90th and 99th
    percentiles and the mean gradient, and the correlation of each pair of channels."""
    rows = []
    for r, image in treatment_sites(strength):
        x = image.reshape(6, -1).astype(float)
        z = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
        grid = z.reshape(6, 24, 24)
        gradient = np.abs(np.diff(grid, axis=1)).mean((1, 2)) + np.abs(np.diff(grid, axis=2)).mean((1, 2))
        corr = (z @ z.T / z.shape[1])[np.triu_indices(6, 1)]
        rows.append([r.cell_line, r.sirna, *np.percentile(z, [90, 99], axis=1).ravel(), *gradient, *corr])
    df = pd.DataFrame(rows)
    feat, groups = df.iloc[:, 2:], [df[0], df[1]]
    feat = feat - feat.groupby(df[0]).transform("mean")  # cell lines look different: compare siRNAs within one
    k, n = df.groupby(groups).ngroups - df[0].nunique() + 1, len(df)
    between = ((feat.groupby(groups).transform("mean") - feat.mean()) ** 2).sum() / (k - 1)
    within = ((feat - feat.groupby(groups).transform("mean")) ** 2).sum() / (n - k)
    return (between / within).to_numpy()


def test_phenotype_survives_per_image_standardisation():
    """The siRNA shows in the cells' morphology (sizes, shapes, texture, where each stain sits, co-localisation),
    which per-image standardisation keeps; brightness is only a minor part of the phenotype."""
    f_signal = standardised_f_statistics(1.0)
    f_null = standardised_f_statistics(0.0)
    assert f_null.max() < 2.0  # no phenotype: siRNAs of one cell line look alike after standardisation
    assert np.median(f_signal) > 4.0 and f_signal.min() > 2.5


def test_a_planted_copy_repeats_its_source_map_and_is_found_from_its_true_calls():
    """synthetic.copies plants test experiments that repeat a train experiment's map, plates reordered as the real
    HUVEC-18 repeats RPE-03; the post-processing finds it from calls alone (here the true siRNAs)."""
    from rxrx1_pipeline.leak.copies import find_copied_experiments
    from rxrx1_pipeline.schema import Copies

    settings = params(cell_lines=["HEPG2", "HUVEC"], copies=1)
    train, test, train_controls, test_controls, truth = design_plates(settings)
    wells = build_wells(train, test, train_controls, test_controls)
    calls = truth[(truth["split"] == "test") & (truth["well_type"] == "treatment")]
    calls = calls[["id_code", "experiment", "plate"]].assign(sirna_assigned=calls["sirna"].to_numpy())
    found = find_copied_experiments(calls, wells, Copies()).set_index("experiment")
    copied = found.index[found["copied"]].tolist()
    assert len(copied) == 1 and copied[0].startswith("HEPG2") and found.loc[copied[0], "source"].startswith("HUVEC")
    assert found.loc[copied[0], "plate_order"] == "4,1,2,3" and found.loc[copied[0], "agreement"] == 1.0
    layout = truth[truth["experiment"] == copied[0]].groupby("plate")["rotation"].nunique()
    assert (layout == 1).all()  # one rotation per experiment, as every layout is a cyclic rotation


def test_both_layouts_render_the_same_pixels_under_their_own_paths(truth):
    kaggle = render_sites(truth, params())
    release = render_sites(truth, params(layout="rxrx.ai"))
    assert list(release) == ["images/" + p for p in kaggle]
    first = next(iter(kaggle))
    np.testing.assert_array_equal(release["images/" + first](), kaggle[first]())
