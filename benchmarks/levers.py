"""One row of the accuracy-lever table: run the pipelines with a setting, then score on the preset.

    .venv/bin/python benchmarks/levers.py NAME [--env rxrx1_shaped] [--pipelines full] [--params K=V,...]
                                               [--recipe FILE]

Runs `kedro run --env ENV --pipelines PIPELINES --params PARAMS` (timed), then prints one markdown
row: valid raw / masked / assigned accuracy (the run's own stage table), hidden-test accuracy after
assignment (the submission against the generator's hidden labels) and the wall time. With
pseudo-labelling on, it first prints how many of the labels added each epoch were wrong (against the
hidden truth, validation and test wells alike). ``--recipe FILE`` merges a YAML file of parameter blocks
(benchmarks/recipes/) over the environment's, for settings the command line cannot carry (lists of
mappings): the run uses a temporary environment conf/_recipe_<file>, removed afterwards. The rows of
benchmarks/levers.md were made with it; see there for each row's command.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--env", default="rxrx1_shaped")
    parser.add_argument("--pipelines", default="full")
    parser.add_argument("--params", default=None)
    parser.add_argument("--recipe", type=Path, default=None)
    args = parser.parse_args()
    if args.recipe:
        args.env = recipe_env(args.env, args.recipe)
    try:
        run_and_score(args)
    finally:
        if args.recipe:
            shutil.rmtree(ROOT / "conf" / args.env, ignore_errors=True)


def recipe_env(env: str, recipe: Path) -> str:
    """A temporary Kedro environment: ``env``'s conf with ``recipe``'s parameter blocks merged over its own
    (one parameters file, since an environment may not define a top-level key twice)."""
    from omegaconf import OmegaConf

    name = f"_recipe_{recipe.stem}"
    folder = ROOT / "conf" / name
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(ROOT / "conf" / env, folder)
    files = sorted(folder.glob("parameters*.yml"))
    merged = OmegaConf.merge(*[OmegaConf.load(f) for f in files], OmegaConf.load(recipe))
    for file in files:
        file.unlink()
    OmegaConf.save(merged, folder / "parameters.yml")
    return name


def run_and_score(args: argparse.Namespace) -> None:
    command = [str(Path(sys.executable).with_name("kedro")), "run", f"--env={args.env}",
               f"--pipelines={args.pipelines}"] + ([f"--params={args.params}"] if args.params else [])
    # the row's command: a recipe row's temporary environment is named by its recipe file
    shown = (["benchmarks/levers.py", repr(args.name), f"--recipe {args.recipe}"] if args.recipe else command[1:])
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"})
    wall = time.perf_counter() - start

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from hidden_test import score

    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT, env=args.env) as session:
        catalog = session.load_context().catalog
        valid = catalog.load("postprocess_metrics").set_index("name").loc["all"]
        truth = catalog.load("synthetic_truth")
        hidden = score(catalog.load("test_predictions"), truth,
                       catalog.load("test_plate_groups"), catalog.load("sirna_groups")).set_index("name").loc["all"]
        pseudo = pseudo_label_errors(catalog, truth)
    if len(pseudo):
        print("Pseudo-labels added per epoch, and how many were wrong (hidden truth):")
        print(pseudo.to_string(index=False))
    print(f"| {args.name} | {valid['raw']:.1%} | {valid['masked']:.1%} | {valid['assigned']:.1%} | "
          f"{hidden['assigned']:.1%} | {wall / 60:.1f} min | `{' '.join(shown)}` |")


def pseudo_label_errors(catalog, truth):
    """Per epoch: pseudo-labels added (all cell lines), of which wrong, and the running totals."""
    import pandas as pd

    from rxrx1_pipeline.leak.plates import CELL_LINES

    names = ["shared_pseudo_labels", *(f"{cl}.pseudo_labels" for cl in CELL_LINES)]
    labels = pd.concat([catalog.load(name) for name in names if catalog.exists(name)], ignore_index=True)
    if labels.empty:
        return labels
    labels = labels.merge(truth[["id_code", "sirna"]].rename(columns={"sirna": "true"}), on="id_code")
    table = labels.assign(wrong=labels["sirna"] != labels["true"]).groupby("epoch").agg(
        added=("wrong", "size"), wrong=("wrong", "sum")).reset_index()
    table["labelled"], table["wrong so far"] = table["added"].cumsum(), table["wrong"].cumsum()
    table["error of added"] = (table["wrong"] / table["added"]).map("{:.1%}".format)
    return table


if __name__ == "__main__":
    main()
