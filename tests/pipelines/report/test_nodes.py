"""The report: training curves overlaid, colour composites, and a self-contained report.html."""

import re

import numpy as np
import pandas as pd

from rxrx1_pipeline.pipelines.ingest.nodes import build_sites
from rxrx1_pipeline.pipelines.report.nodes import (
    CHANNEL_RGB,
    build_report,
    composite,
    example_wells,
    plot_training_curves,
)
from rxrx1_pipeline.leak.plates import CELL_LINES
from tests.pipelines.postprocess.test_pipeline import run_postprocess, small_case


def history(offset: float) -> pd.DataFrame:
    return pd.DataFrame({"epoch": [1, 2, 3], "loss": [3.0 + offset, 2.0, 1.0],
                         "valid_site_accuracy": [np.nan, np.nan, 0.4 + offset]})


def test_training_curves_give_each_model_its_own_column():
    untrained = pd.DataFrame({"epoch": pd.Series(dtype="int64")})
    fig = plot_training_curves(untrained, *(history(i / 10) for i in range(len(CELL_LINES))))
    names = [t.name for t in fig.data]
    assert names.count("HEPG2") == 2 and names[::2] == list(CELL_LINES)  # no shared model trained: no column
    assert list(fig.data[-1].y) == [0.4 + 0.3]  # validation points only where measured
    # one column per model, loss above accuracy: no two models' curves share a panel
    panels = [(t.xaxis, t.yaxis) for t in fig.data]
    assert len(set(panels)) == len(panels) == 2 * len(CELL_LINES)
    assert [a.text for a in fig.layout.annotations] == list(CELL_LINES)
    fig = plot_training_curves(history(0.5), untrained, *(history(0) for _ in CELL_LINES[1:]))
    assert [a.text for a in fig.layout.annotations] == ["shared model", *CELL_LINES[1:]]  # HEPG2 used it as it is
    assert fig.layout.yaxis.title.text == "fit loss" and fig.layout.yaxis5.title.text == "validation site accuracy"
    assert "single validation sites" in fig.layout.title.text


def test_example_composites_come_from_every_cell_line():
    truth = pd.DataFrame({"id_code": [f"{cl}-01_1_B{w:02d}" for cl in CELL_LINES for w in range(10)],
                          "cell_line": [cl for cl in CELL_LINES for _ in range(10)],
                          "correct": [w % 3 != 0 for _ in CELL_LINES for w in range(10)]})
    picks = example_wells(truth, 8)
    assert picks.groupby("cell_line").size().to_dict() == dict.fromkeys(CELL_LINES, 2)
    assert picks.groupby("cell_line")["correct"].sum().to_dict() == dict.fromkeys(CELL_LINES, 1)


def test_composite_maps_each_channel_to_its_colour():
    image = np.zeros((6, 4, 4), np.uint8)
    image[0, :2] = 200  # nuclei in the top half only
    rgb = composite(image)
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    np.testing.assert_allclose(rgb[0, 0] / 255, CHANNEL_RGB[0] / CHANNEL_RGB[0].max(), atol=0.01)
    assert (rgb[3] == 0).all()


class FakeSites:
    def read(self, prefix, size=None):
        return np.random.default_rng(len(prefix)).integers(0, 255, (6, 16, 16), np.uint8)


def test_report_is_one_self_contained_html_file():
    inputs, wells, _ = small_case()
    out = run_postprocess(inputs)
    curves = plot_training_curves(*(history(0) for _ in ("shared", *CELL_LINES)))
    identity = {"run": "abc123", "started": "2026-12-05 08:00 UTC", "environment": "local", "pipeline": "full",
                "commit": "0123abcd", "dirty": True, "settings": {"HEPG2.training": {"epochs": 2}, "inference": {}}}
    page = build_report(identity, out["postprocess_metrics"], curves, out["postprocess_chart"], out["valid_plate_groups"],
                        out["test_plate_groups"], out["copied_experiments"], out["test_metrics"], out["valid_predictions"], wells, build_sites(wells), FakeSites())
    assert page.startswith("<!doctype html>") and page.endswith("</html>")
    assert not re.search(r"<script[^>]+src=", page)  # plotly is inlined: opens offline
    assert page.count("<img src=\"data:image/png;base64,") == 8
    assert "Plate layout posterior per experiment" in page
    assert "Counted over <b>wells</b>" in page and "Counted over single <b>sites</b>" in page and "posterior_0" in page
    assert "Run <b>abc123</b>, started 2026-12-05 08:00 UTC, environment <b>local</b>" in page
    assert "<code>0123abcd</code> (with uncommitted changes)" in page and "<td>HEPG2.training</td><td>epochs: 2" in page
    for experiment in out["valid_plate_groups"]["experiment"]:
        assert experiment in page
