"""Reporting: training curves of all cell lines in one chart, and a self-contained HTML report."""

from __future__ import annotations

import base64
import html
import io
import logging

import numpy as np
import pandas as pd

from rxrx1_pipeline.leak.plates import CELL_LINES
from rxrx1_pipeline.storage.images import PngSites

log = logging.getLogger(__name__)

# Colour of each channel (w1..w6) in RGB composites, the convention of Recursion's rxrx1 utilities:
# nuclei blue, ER green, actin red, nucleoli/RNA cyan, mitochondria magenta, Golgi/membrane yellow.
CHANNEL_RGB = np.array([[19, 0, 249], [42, 255, 31], [255, 0, 25], [45, 255, 252], [250, 0, 253], [254, 255, 40]],
                       dtype=np.float64) / 255


def plot_training_curves(shared_history: pd.DataFrame, *histories: pd.DataFrame):
    """Fit loss (top row) and validation site accuracy (bottom row) per epoch, one column per model: the shared
    model of every cell line first, then each cell line's own training (from scratch, or fine-tuning that starts
    where the shared model ended). Side by side rather than overlaid, so that no curve hides another; a model not
    trained in this recipe (an empty history) has no column."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    models = [(name, history, colour) for name, history, colour in
              zip(("shared", *CELL_LINES), (shared_history, *histories),
                  ("#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")) if not history.empty]
    columns = max(1, len(models))
    fig = make_subplots(rows=2, cols=columns, shared_yaxes="rows", horizontal_spacing=0.03, vertical_spacing=0.12,
                        subplot_titles=[("shared model" if name == "shared" else name) for name, _, _ in models])
    for col, (name, history, colour) in enumerate(models, start=1):
        fig.add_trace(go.Scatter(x=history["epoch"], y=history["loss"], name=name, legendgroup=name,
                                 mode="lines+markers", line={"color": colour}), row=1, col=col)
        if "valid_site_accuracy" in history:
            valid = history.dropna(subset=["valid_site_accuracy"])
            fig.add_trace(go.Scatter(x=valid["epoch"], y=valid["valid_site_accuracy"], name=name, legendgroup=name,
                                     showlegend=False, mode="lines+markers", line={"color": colour}), row=2, col=col)
        fig.update_xaxes(title_text="epoch", row=2, col=col)
    fig.update_yaxes(title_text="fit loss", row=1, col=1)
    fig.update_yaxes(title_text="validation site accuracy", row=2, col=1)
    fig.update_yaxes(tickformat=".0%", row=2)
    fig.update_layout(title="Training per model: fit loss, and the share of single validation sites (one view, all "
                            "classes) whose argmax is right", template="plotly_white", height=600, showlegend=False)
    return fig


def composite(image: np.ndarray) -> np.ndarray:
    """(6, H, W) uint8 site -> (H, W, 3) uint8 RGB, each channel scaled to its 99.5th percentile."""
    x = image.astype(np.float64)
    top = np.maximum(np.percentile(x, 99.5, axis=(1, 2)), 1.0)[:, None, None]
    rgb = np.einsum("chw,ck->hwk", np.clip(x / top, 0, 1), CHANNEL_RGB)
    return (np.clip(rgb / rgb.max(initial=1e-9), 0, 1) * 255).astype(np.uint8)


def _png(rgb: np.ndarray, size: int = 160) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).resize((size, size), Image.NEAREST).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def example_wells(truth: pd.DataFrame, examples: int) -> pd.DataFrame:
    """Up to ``examples`` validation wells spread over the cell lines: in each, up to half wrong ones, the rest
    right."""
    lines = sorted(truth["cell_line"].unique())
    per_line = max(1, examples // max(1, len(lines)))
    picks = []
    for cell_line in lines:
        mine = truth[truth["cell_line"] == cell_line]
        wrong = mine[~mine["correct"]].head(per_line // 2)
        picks += [mine[mine["correct"]].head(per_line - len(wrong)), wrong]
    return pd.concat(picks).head(examples)


def run_header(identity: dict) -> str:
    """The report's first lines: which run made it, when, in which environment, at which commit, and the settings
    it changed of the schema's defaults (the base recipe), per block."""
    dirty = {True: " (with uncommitted changes)", False: "", None: ""}[identity.get("dirty")]
    said = {key: html.escape(str(identity.get(key))) for key in ("run", "started", "environment", "pipeline", "commit")}
    rows = "".join(f"<tr><td>{html.escape(block)}</td><td>"
                   f"{html.escape(', '.join(f'{k}: {v}' for k, v in changed.items()))}</td></tr>"
                   for block, changed in identity.get("settings", {}).items() if changed)
    return (f"<p>Run <b>{said['run']}</b>, started {said['started']}, environment <b>{said['environment']}</b>, "
            f"pipeline {said['pipeline']}, code at commit <code>{said['commit']}</code>{dirty}.</p>"
            f"<details><summary>Settings changed from the base recipe (schema.py)</summary>"
            f"<table><tr><th>block</th><th>settings</th></tr>{rows or '<tr><td>none</td><td></td></tr>'}</table>"
            "</details>")


def build_report(run_identity: dict, postprocess_metrics: pd.DataFrame, training_curves, postprocess_chart,
                 valid_plate_groups: pd.DataFrame, test_plate_groups: pd.DataFrame, copied_experiments: pd.DataFrame,
                 test_metrics: pd.DataFrame,
                 valid_predictions: pd.DataFrame, wells: pd.DataFrame, sites: pd.DataFrame,
                 raw_site_images: PngSites, examples: int = 8) -> str:
    """One HTML file that opens in any browser: the stage table, the charts, the layout posteriors, the copied
    experiments, per-plate accuracy after assignment and a few validation sites as colour composites."""
    import plotly.io as pio

    stages = postprocess_metrics[postprocess_metrics["level"] != "experiment"][
        ["name", "wells", "raw", "masked", "assigned", "layout_correct"]]
    posterior = pd.concat([valid_plate_groups.assign(split="valid"), test_plate_groups.assign(split="test")])
    post_cols = [c for c in posterior.columns if c.startswith("posterior_")]
    posterior = posterior[["split", "experiment", "layout", "confidence", "margin", *post_cols]]
    truth = valid_predictions.merge(wells[["id_code", "sirna"]], on="id_code")
    truth["correct"] = truth["sirna_assigned"] == truth["sirna"]
    per_plate = truth.pivot_table(index="experiment", columns="plate", values="correct", aggfunc="mean")
    per_plate.columns = [f"plate {p}" for p in per_plate.columns]

    picks = example_wells(truth.merge(wells[["id_code", "cell_line"]], on="id_code"), examples)
    tiles = []
    for _, row in picks.iterrows():
        site = sites[(sites["id_code"] == row["id_code"]) & (sites["site"] == 1)].iloc[0]
        image = raw_site_images.read(site["w1"][: -len("_w1.png")])
        verdict = "right" if row["correct"] else "wrong"
        tiles.append(f'<figure><img src="data:image/png;base64,{_png(composite(image))}" alt="{row["id_code"]}">'
                     f'<figcaption>{html.escape(row["id_code"])}<br>predicted {row["sirna_assigned"]}, '
                     f'true {int(row["sirna"])} ({verdict})</figcaption></figure>')

    def table(frame: pd.DataFrame, percent: list[str]) -> str:
        return frame.to_html(index=False, border=0, float_format=lambda v: f"{v:.3f}",
                             formatters={c: "{:.1%}".format for c in percent})

    parts = [
        run_header(run_identity),
        "<h2>Validation accuracy per stage</h2>",
        "<p>Counted over <b>wells</b> of the held-out experiments: each well's logits combined over its sites "
        "and the inference's views (TTA). <i>raw</i>: argmax over every class; <i>masked</i>: argmax within the "
        "plate's inferred group; <i>assigned</i>: the balanced assignment of the plate group's siRNAs; <i>layout_correct</i>: the "
        "share of experiments whose inferred plate layout is the true one.</p>",
        table(stages, ["raw", "masked", "assigned", "layout_correct"]),
        *(["<h2>Test accuracy per stage (released test labels)</h2>",
           "<p>The labels score the run only: no training, pseudo-label or post-processing step reads them. "
           "<i>submission</i>: the assignment with copied experiments answered from their map.</p>",
           table(test_metrics[test_metrics["level"] != "experiment"][
               ["name", "wells", "raw", "masked", "assigned", "layout_correct", "submission"]],
               ["raw", "masked", "assigned", "layout_correct", "submission"])] if len(test_metrics) else []),
        pio.to_html(postprocess_chart, full_html=False, include_plotlyjs=True),
        "<h2>Training curves</h2>",
        "<p>Counted over single <b>sites</b> with one view, the cheap signal of each epoch: lower than the well "
        "accuracies above, which combine both sites and every view, then use the plate structure.</p>",
        pio.to_html(training_curves, full_html=False, include_plotlyjs=False),
        "<h2>Plate layout posterior per experiment</h2>",
        "<p>Posterior of each candidate layout (group on plates 1..4) given the model's logits; "
        "margin in nats over the runner-up.</p>",
        table(posterior, []),
        "<h2>Copied experiments</h2>",
        "<p>Per test experiment, the labelled experiment and plate order its calls agree with most; a copy (p below "
        "postprocess.copies.max_p_value) is answered from that map in the submission.</p>",
        table(copied_experiments, ["agreement", "runner_up", "chance"]) if len(copied_experiments)
        else "<p>None looked for (postprocess.copies.detect: false).</p>",
        "<h2>Accuracy after assignment per validation plate</h2>",
        per_plate.reset_index().to_html(index=False, border=0, float_format=lambda v: f"{v:.1%}"),
        "<h2>Validation sites (site 1, RGB composite of the 6 channels)</h2>",
        '<div class="tiles">' + "".join(tiles) + "</div>",
    ]
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px} table{border-collapse:collapse;"
             "font-size:13px} td,th{padding:3px 8px;text-align:right} tr:nth-child(even){background:#f4f4f4}"
             " .tiles{display:flex;flex-wrap:wrap;gap:12px} figure{margin:0;font-size:12px;text-align:center}")
    log.info("Report: %d stage rows, %d experiments' layouts, %d example sites", len(stages), len(posterior),
             len(tiles))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>RxRx1 pipeline report</title>"
            f"<style>{style}</style></head><body><h1>RxRx1 pipeline report</h1>{''.join(parts)}</body></html>")
