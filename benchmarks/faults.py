"""Fault-injection matrix on a small synthetic data set: each case injects one fault, runs the `kedro run`
a user would, and checks that the run either fails loudly (non-zero exit, a message naming the problem,
no output changed) or recovers (a re-run ends with the result of a run without the fault).

    .venv/bin/python benchmarks/faults.py [--keep DIR] [--only TEXT,TEXT...]

Prints one row per case: exit code(s), verdict, the message, and the files the case changed. A case is
"SILENT" when a run that should fail exits 0 or changes outputs without a word; after every case, every
table under data/ must still parse and the submission keep its rows ("half-written" otherwise).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/ holds the fixtures
from tests.tiny_project import ROOT, copy_project, shrink_project  # noqa: E402

KEDRO = Path(sys.executable).with_name("kedro")
TRAIN_HEPG2 = ("--pipelines=train", "--namespaces=HEPG2", "--params=HEPG2.training.epochs=3")  # the kill cases' run
INJECTOR = '''
import os, signal
if os.environ.get("FAULT") == "kill_during_csv_write":
    import pandas as pd
    original = pd.DataFrame.to_csv
    def to_csv(self, path_or_buf=None, *args, **kwargs):
        original(self.head(len(self) // 2), path_or_buf, *args, **kwargs)  # half the rows reach the disk
        os.kill(os.getpid(), signal.SIGKILL)
    pd.DataFrame.to_csv = to_csv
if os.environ.get("FAULT") == "kill_during_decode":
    import numpy as np
    from rxrx1_pipeline.storage import images
    save = images._save_atomic
    def save_then_die(file, array):
        save(file, array)
        if file.name == images.DONE and array.sum() >= 2:
            os.kill(os.getpid(), signal.SIGKILL)
    images._save_atomic = save_then_die
if os.environ.get("FAULT") == "artifact_store_fails_mid_run":
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    def refuse(self, local_file, artifact_path=None):
        raise PermissionError(13, "Permission denied", os.path.join(self.artifact_dir, os.path.basename(local_file)))
    LocalArtifactRepository.log_artifact = refuse
'''
HOLDER = '''import sys, time
sys.argv = ["kedro", "run", "--pipelines=full"]  # stands for another run writing the same outputs
from rxrx1_pipeline.runs.locks import FileLock
FileLock(sys.stdin.readline().strip(), "output root").acquire()
print("held", flush=True)
time.sleep(600)
'''


def run(project: Path, *args: str, fault: str | None = None, timeout: float = 300, script: str | None = None
        ) -> subprocess.CompletedProcess:
    """`kedro run ARGS` in ``project`` (or ``python -c script ARGS`` with the project's src first on the path);
    output through files, so helpers outliving a killed run cannot hold it open; whatever is left of the run's
    process group afterwards is killed."""
    paths = [str(project / ".faults"), *([str(project / "src")] if script else []), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "COLUMNS": "200", "PYTHONPATH": os.pathsep.join(paths)}
    if fault:
        env["FAULT"] = fault
    command = [sys.executable, "-c", script, *args] if script else [str(KEDRO), "run", *args]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, cwd=project, env=env, stdout=out, stderr=err,
                                start_new_session=True)
        try:
            code = proc.wait(timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, code, out.read(), err.read())


def fingerprint(project: Path) -> dict[str, str]:
    return {str(p.relative_to(project)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted((project / "data").rglob("*")) if p.is_file() and p.name != ".gitkeep"}


def half_written(project: Path, submission_rows: int | None) -> list[str]:
    """Tables under data/ that no longer parse, or a submission that lost rows (None: a case that changes the
    submission's wells on purpose)."""
    bad = []
    for p in (project / "data").rglob("*"):
        if p.name.startswith(".") or not p.is_file():
            continue
        try:
            if p.suffix == ".parquet":
                pd.read_parquet(p)
            elif p.suffix == ".csv":
                table = pd.read_csv(p)
                if p.name == "submission.csv" and submission_rows is not None and len(table) != submission_rows:
                    bad.append(f"{p.name} ({len(table)} rows)")
            elif p.suffix == ".json":
                json.loads(p.read_text())
        except Exception:
            bad.append(p.name)
    return bad


@dataclass
class Case:
    name: str
    inject: Callable[[Path], None]
    args: tuple[str, ...]
    expect: str  # a text the failing run must print, or "recover"
    fault: str | None = None
    rerun: tuple[str, ...] = ()  # recovery: the command run after the faulty one
    check: Callable[[Path, subprocess.CompletedProcess], str] | None = None  # recovery: "" when right
    recovered: str = "recovered: same result as without the fault"
    cleanup: Callable[[Path], None] | None = None  # after the run (e.g. stop a process the fault started)
    script: str | None = None  # run `python -c script ARGS` in the project instead of `kedro run ARGS`
    other_wells: bool = False  # the case changes which wells the submission holds (its row count is not checked)


def edit_parquet(rel: str, change: Callable[[pd.DataFrame], None]) -> Callable[[Path], None]:
    def inject(project: Path) -> None:
        table = pd.read_parquet(project / rel)
        change(table)
        table.to_parquet(project / rel, index=False)
    return inject


def set_cell(row: int, col: int, value: float) -> Callable[[pd.DataFrame], None]:
    def change(table: pd.DataFrame) -> None:
        table.iloc[row, col] = value
    return change


def nan_column(col: int) -> Callable[[pd.DataFrame], None]:
    def change(table: pd.DataFrame) -> None:
        table.iloc[:, col] = np.nan
    return change


def nan_row(table: pd.DataFrame) -> None:
    table.iloc[3, 1:] = np.nan


def permute_labels(project: Path) -> None:
    """Shuffle siRNA labels within every train plate: same wells, same plate groups, other labels."""
    path = project / "data/01_raw/synthetic/train.csv"
    train = pd.read_csv(path)
    rng = np.random.default_rng(0)
    train["sirna"] = train.groupby(["experiment", "plate"])["sirna"].transform(lambda s: rng.permutation(s.to_numpy()))
    train.to_csv(path, index=False)


def add_unknown_cell_line(project: Path) -> None:
    with open(project / "data/01_raw/synthetic/test.csv", "a") as f:
        f.write("A549-01_1_C03,A549-01,1,C03\n")


def drop_store(project: Path) -> None:
    shutil.rmtree(project / "data/05_model_input/image_store/HEPG2")


def nothing(project: Path) -> None:
    pass


def same_as(reference: Path, *files: str) -> Callable[[Path, subprocess.CompletedProcess], str]:
    def check(project: Path, result: subprocess.CompletedProcess) -> str:
        differ = [f for f in files if (project / f).read_bytes() != (reference / f).read_bytes()]
        return f"differs from the run without the fault: {', '.join(differ)}" if differ else ""
    return check


def retrained(project: Path, result: subprocess.CompletedProcess) -> str:
    return "reused the checkpoint of the old labels" if "reusing it" in result.stderr else ""


def png_16_bit(project: Path) -> None:
    """One HEPG2 channel image rewritten as a 16-bit PNG of the same picture (values x 257), its store dropped."""
    from PIL import Image

    file = sorted((project / "data/01_raw/synthetic/train").glob("HEPG2-*/Plate1/*_w2.png"))[0]
    pixels = np.asarray(Image.open(file)).astype(np.uint16) * 257
    Image.fromarray(pixels).save(file)
    drop_store(project)


def header_only_test_csv(project: Path) -> None:
    path = project / "data/01_raw/synthetic/test.csv"
    path.write_text(path.read_text().splitlines()[0] + "\n")


def control_id_of_a_treatment(project: Path) -> None:
    """One positive-control row of train_controls.csv gets the siRNA id of a treatment."""
    path = project / "data/01_raw/synthetic/train_controls.csv"
    controls = pd.read_csv(path)
    row = controls.index[controls["well_type"] == "positive_control"][0]
    controls.loc[row, "sirna"] = int(pd.read_csv(project / "data/01_raw/synthetic/train.csv")["sirna"].iloc[0])
    controls.to_csv(path, index=False)


def member_in_test_only(project: Path) -> None:
    folder = project / "data/07_model_output/ensemble/test"
    folder.mkdir(parents=True)
    shutil.copy(project / "data/07_model_output/test_logits.parquet", folder / "seed2.parquet")


HOLDERS: dict[Path, subprocess.Popen] = {}


def another_run_holds_the_outputs(project: Path) -> None:
    """A live process holds the output root's run lock, as a `kedro run --pipelines=full` would."""
    env = {**os.environ, "PYTHONPATH": str(project / "src")}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER], cwd=project, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, start_new_session=True, env=env)
    proc.stdin.write(f"{project / 'data' / '.run.lock'}\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "held"
    HOLDERS[project] = proc


def stop_holder(project: Path) -> None:
    HOLDERS.pop(project).kill()


def lock_of_a_killed_run(project: Path) -> None:
    """The run lock file a kill -9'd run leaves: its details, no process behind them."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (project / "data" / ".run.lock").write_text(json.dumps(
        {"pid": dead.pid, "host": os.uname().nodename, "started": "2026-01-01 00:00:00",
         "command": "kedro run --pipelines=full"}))


def corrupt_mlflow_db(project: Path) -> None:
    db = project / "mlflow.db"
    db.write_bytes(db.read_bytes()[:100] + os.urandom(20000))


def artifact_folder_unwritable(project: Path) -> None:
    """The experiment's artifact folder is a file: nothing can be written there (root or not)."""
    folder = project / "mlruns" / "1"
    shutil.rmtree(folder)
    folder.write_text("not a folder")


def tracked_into_the_copy(project: Path, result: subprocess.CompletedProcess) -> str:
    """The project is a copy of the base (with its mlflow.db): the run's artifacts must land in the copy."""
    import sqlite3

    with sqlite3.connect(project / "mlflow.db") as con:
        uri = con.execute("SELECT artifact_uri FROM runs ORDER BY start_time DESC").fetchone()[0]
    if not uri.startswith(str(project)):
        return f"artifacts logged outside the copied project: {uri}"
    if not (Path(uri) / "submission.csv").is_file():
        return f"no submission.csv among the run's artifacts in {uri}"
    return ""


Check = Callable[[Path, subprocess.CompletedProcess], str]


RAW = "data/01_raw/synthetic"


def keep_rows(files: tuple[str, ...], keep: Callable[[pd.DataFrame], pd.Series]) -> Callable[[Path], None]:
    """Rewrite these metadata CSVs with only the rows ``keep`` selects."""
    def inject(project: Path) -> None:
        for name in files:
            table = pd.read_csv(project / RAW / name)
            table[keep(table)].to_csv(project / RAW / name, index=False)
    return inject


def huvec(table: pd.DataFrame) -> pd.Series:
    return table["experiment"].str.startswith("HUVEC-")


def drop_shared_model(project: Path) -> None:
    (project / "data/06_models/shared/model.pt").unlink()


def first_site_pngs(project: Path) -> list[Path]:
    first = sorted((project / RAW / "train").glob("HEPG2-*/Plate1/*_s1_w1.png"))[0]
    return [first.with_name(first.name.replace("_w1", f"_w{c}")) for c in range(1, 7)]


def rewrite_png_in_place(project: Path) -> None:
    """One HEPG2 channel PNG fixed in place: other pixels, same size and name (its mtime moves)."""
    from PIL import Image

    file = first_site_pngs(project)[1]
    pixels = 255 - np.asarray(Image.open(file))
    time.sleep(0.01)
    Image.fromarray(pixels).save(file)


def site_of_double_resolution(project: Path) -> None:
    """One HEPG2 site's six PNGs at twice the size of every other site (another magnification)."""
    from PIL import Image

    for file in first_site_pngs(project):
        image = Image.open(file)
        image.resize((2 * image.size[0], 2 * image.size[1])).save(file)


def control_id_of_both_kinds(project: Path) -> None:
    """One negative-control row of train_controls.csv gets the positive control's siRNA id."""
    path = project / RAW / "train_controls.csv"
    controls = pd.read_csv(path)
    positive = controls.loc[controls["well_type"] == "positive_control", "sirna"].iloc[0]
    controls.loc[controls.index[controls["well_type"] == "negative_control"][0], "sirna"] = positive
    controls.to_csv(path, index=False)


def nested_unknown_key(project: Path) -> None:
    path = project / "conf/base/parameters_train.yml"
    params = yaml.safe_load(path.read_text())
    params["HEPG2"]["training"]["augment"] = {"cutmx": 0.5}
    path.write_text(yaml.safe_dump(params))


def not_printed(text: str) -> Check:
    def check(project: Path, result: subprocess.CompletedProcess) -> str:
        return f"the run said {text!r}" if text in result.stderr + result.stdout else ""
    return check


def submission_of(cell_line: str) -> Check:
    def check(project: Path, result: subprocess.CompletedProcess) -> str:
        ids = pd.read_csv(project / "data/08_reporting/submission.csv")["id_code"]
        return "" if len(ids) and ids.str.startswith(f"{cell_line}-").all() else \
            f"the submission holds wells of other lines than {cell_line}"
    return check


def batch_leaving_one(reference: Path, role_filter: Callable[[pd.DataFrame], pd.Series]) -> int:
    """A batch size that leaves one site after whole batches on some HEPG2 plate of the selected sites."""
    sites = pd.read_parquet(reference / "data/05_model_input/HEPG2/sites.parquet")
    counts = sites[role_filter(sites)].groupby("plate_index").size()
    return int(counts[counts >= 3].min()) - 1


def fit_sites(sites: pd.DataFrame) -> pd.Series:
    from rxrx1_pipeline.pipelines.train.nodes import sites_to_fit

    return sites.index.isin(sites_to_fit(sites, "all_experiments").index)


# Scores one test plate of HEPG2 as the scoring model does (pipelines/score: score_cell_line, WellScorer) with
# the run's model, at a batch size that leaves one site of the plate after whole batches.
SCORE_ONE_PLATE = """
import sys
from pathlib import Path
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from rxrx1_pipeline.pipelines.score import experiment_sites
from rxrx1_pipeline.pipelines.score.nodes import prepare_new_sites, score_cell_line
from rxrx1_pipeline.schema import ImageSource, Inference
bootstrap_project(Path.cwd())
with KedroSession.create(project_path=Path.cwd()) as session:
    catalog = session.load_context().catalog
    model, classes, groups = (catalog.load(n) for n in ("HEPG2.model", "classes", "sirna_groups"))
sites = experiment_sites("data/01_raw/synthetic", split="test")
sites = sites[sites["experiment"].str.startswith("HEPG2") & (sites["plate"] == 1)]
if sys.argv[1] == "no well_type":
    sites = sites.drop(columns="well_type")
sites, _ = prepare_new_sites(sites, groups)
batch = len(sites) - 1
logits, _ = score_cell_line(model, sites, classes, "HEPG2", Inference(batch_size=batch), ImageSource())
print(f"scored {len(logits)} wells of a plate of {len(sites)} sites in batches of {batch} (per-plate BatchNorm)")
"""


def both(*checks: Check) -> Check:
    def check(project: Path, result: subprocess.CompletedProcess) -> str:
        return next((problem for problem in (c(project, result) for c in checks) if problem), "")
    return check


def printed(text: str) -> Check:
    def check(project: Path, result: subprocess.CompletedProcess) -> str:
        return "" if text in result.stderr + result.stdout else f"the run did not say {text!r}"
    return check


def cases(reference: Path) -> list[Case]:
    logits = "data/07_model_output/test_logits.parquet"
    submission = "data/08_reporting/submission.csv"
    stats = "data/05_model_input/HEPG2/plate_stats.parquet"
    store = "data/05_model_input/image_store/HEPG2/images.npy"
    return [
        Case("NaN in one cached logit", edit_parquet(logits, set_cell(5, 7, np.nan)), ("--pipelines=postprocess",),
             "test_logits.parquet: 1 values are NaN or infinite"),
        Case("+inf in one cached logit", edit_parquet(logits, set_cell(2, 3, np.inf)), ("--pipelines=postprocess",),
             "test_logits.parquet: 1 values are NaN or infinite"),
        Case("NaN row of cached logits", edit_parquet(logits, nan_row), ("--pipelines=postprocess",),
             "NaN or infinite, in 1 rows"),
        Case("temperature=-1", nothing, ("--pipelines=postprocess", "--params=postprocess.assignment.temperature=-1"),
             "temperature = -1: must be 'auto'"),
        Case("temperature=0", nothing, ("--pipelines=postprocess", "--params=postprocess.assignment.temperature=0"),
             "temperature = 0: must be 'auto'"),
        Case("sinkhorn_iterations=-1", nothing,
             ("--pipelines=postprocess", "--params=postprocess.assignment.sinkhorn_iterations=-1"),
             "sinkhorn_iterations = -1: Input should be greater than or equal to 0"),
        Case("epochs=0 from scratch", nothing,
             ("--pipelines=train", "--params=HEPG2.training.epochs=0,HEPG2.training.init=scratch"),
             "epochs must be >= 1 (0 only with init: shared"),
        Case("epochs=-2", nothing, ("--pipelines=train", "--params=HEPG2.training.epochs=-2"),
             "epochs = -2: Input should be greater than or equal to 0"),
        Case("valid_experiments > labelled", nothing,
             ("--pipelines=train", "--namespaces=HEPG2", "--params=HEPG2.training.valid_experiments=5"),
             "valid_experiments 5 must be at least 1 and fewer than"),
        Case("unknown cell line in test.csv", add_unknown_cell_line, ("--pipelines=ingest",),
             "cell line 'A549' has no pipeline namespace"),
        Case("diverging training (NaN input statistics)", edit_parquet(stats, nan_column(3)),
             ("--pipelines=train", "--namespaces=HEPG2", "--from-nodes=HEPG2.train_model",
              "--params=HEPG2.training.epochs=3"), "the loss became nan"),
        Case("labels permuted within plates", permute_labels, ("--pipelines=ingest",), "recover",
             rerun=("--pipelines=train", "--namespaces=HEPG2"), check=retrained,
             recovered="retrained from scratch: the checkpoint of the old labels was not reused"),
        Case("kill -9 while writing submission.csv", nothing, ("--pipelines=postprocess",), "recover",
             fault="kill_during_csv_write", rerun=("--pipelines=postprocess",),
             check=same_as(reference, "data/08_reporting/submission.csv")),
        Case("kill -9 while decoding the image store", drop_store, ("--pipelines=train", "--namespaces=HEPG2"),
             "recover", fault="kill_during_decode", rerun=("--pipelines=train", "--namespaces=HEPG2"),
             check=same_as(reference, store)),
        Case("16-bit PNG in the image tree", png_16_bit, ("--pipelines=train", "--namespaces=HEPG2"),
             "is mode I;16 (16-bit, 1 channel)"),
        Case("header-only test.csv", header_only_test_csv, ("--pipelines=ingest",),
             "test.csv: no wells (a header only)"),
        Case("control id equal to a treatment id", control_id_of_a_treatment, ("--pipelines=ingest",),
             "is also a treatment siRNA id (train.csv"),
        Case("ensemble member in test/ only", member_in_test_only, ("--pipelines=postprocess",),
             "ensemble member seed2 is in 07_model_output/ensemble/test/ but not in ensemble/valid/"),
        Case("second run on the same output root", another_run_holds_the_outputs, ("--pipelines=postprocess",),
             "is in use by another run: pid", cleanup=stop_holder),
        Case("run lock left by a killed run", lock_of_a_killed_run, ("--pipelines=postprocess",), "recover",
             check=both(printed("Taking over the lock of output root"), same_as(reference, submission)),
             recovered="lock taken over with a warning naming the dead run; same submission"),
        Case("corrupt mlflow.db", corrupt_mlflow_db, ("--pipelines=postprocess",), "mlflow.db cannot be used"),
        Case("MLflow artifact folder not writable", artifact_folder_unwritable, ("--pipelines=postprocess",),
             "MLflow artifact folder of experiment 'synthetic'"),
        Case("artifact store fails after the run started", nothing, ("--pipelines=postprocess,report",), "recover",
             fault="artifact_store_fails_mid_run",
             check=both(printed("The run's outputs are complete, but tracking failed"),
                        same_as(reference, submission)),
             recovered="exit 0, outputs complete (same submission); the tracking failures are listed and the "
                       "MLflow run is marked FAILED"),
        Case("project copied with its mlflow.db", nothing, ("--pipelines=postprocess",), "recover",
             check=both(tracked_into_the_copy, same_as(reference, submission)),
             recovered="the copy's runs log into its own mlruns/ (the experiment was repointed, with a warning)"),
        # issue 29, items 7-12
        Case("7 test set of one cell line", keep_rows(("test.csv", "test_controls.csv"), huvec), ("--pipelines=full",),
             "recover", check=both(printed("No test wells of cell line(s) HEPG2, RPE, U2OS"), submission_of("HUVEC")),
             recovered="every model trains and validates; the log names the lines without test wells; the "
                       "submission holds HUVEC's wells", other_wells=True),
        Case("7 data set of one cell line", keep_rows(("train.csv", "test.csv", "train_controls.csv",
                                                       "test_controls.csv"), huvec), ("--pipelines=full",), "recover",
             check=both(printed("No wells of cell line(s) HEPG2, RPE, U2OS in this data set"),
                        printed("shared model: no sites of HEPG2, RPE, U2OS in this data set: trained on HUVEC only"),
                        submission_of("HUVEC")),
             recovered="the README's command runs: HUVEC trained (the shared model on HUVEC only), the other lines "
                       "get no model (logged); the submission holds HUVEC's wells", other_wells=True),
        Case("7 init: scratch without a shared model file", drop_shared_model,
             ("--pipelines=train", "--namespaces=HUVEC", "--params=HUVEC.training.init=scratch"), "recover",
             check=printed("HUVEC epoch 2/2"), recovered="HUVEC trains from scratch; the shared model is never read"),
        Case("8 PNG rewritten in place", rewrite_png_in_place, ("--pipelines=train", "--namespaces=HEPG2"), "recover",
             check=both(not_printed("already holds these"), not_printed("reusing it"), printed("HEPG2 epoch 2/2")),
             recovered="the image store is rebuilt and HEPG2's model retrained (nothing reused)"),
        Case("9 inference: a plate of k x batch + 1 sites", nothing,
             ("--pipelines=inference", "--namespaces=HEPG2",
              f"--params=inference.batch_size={batch_leaving_one(reference, lambda s: s['role'] != 'fit')}"),
             "recover", check=printed("HEPG2: test logits for"),
             recovered="per-plate BatchNorm merged the last site into the batch before; logits written"),
        Case("9 inference: batch_size=1 with per-plate BatchNorm", nothing,
             ("--pipelines=inference", "--params=inference.batch_size=1"), "batch_size = 1 with batchnorm: per_plate"),
        Case("9 training: a plate of k x batch + 1 fit sites", nothing,
             ("--pipelines=train", "--namespaces=HEPG2", "--params=HEPG2.training.batch_size="
              f"{batch_leaving_one(reference, fit_sites)},HEPG2.training.epochs=1"), "recover",
             check=printed("HEPG2 epoch 1/1"), recovered="the remainder site joined the batch before; trained"),
        Case("9 DDP: one rank's share of 1 site", nothing,
             ("--pipelines=train", "--params=HEPG2.training.batch_size=2,HEPG2.training.distributed.nproc_per_node=2"),
             "leaving at least 2 sites each"),
        Case("9 scoring: a plate of k x batch + 1 sites", nothing, ("with well_type",), "recover",
             script=SCORE_ONE_PLATE, check=printed("(per-plate BatchNorm)"),
             recovered="the scoring model's WellScorer merged the last site into the batch before"),
        Case("11 shared_training.valid_experiments", nothing,
             ("--pipelines=train", "--params=shared_training.valid_experiments=2"),
             "the shared model holds out each cell line's own validation experiments"),
        Case("11 control id of both kinds", control_id_of_both_kinds, ("--pipelines=ingest",),
             "is also the positive_control id of train_controls.csv"),
        Case("11 fine-tuned line of another arch", nothing,
             ("--pipelines=train", "--params=HEPG2.training.arch=resnet18"),
             "a cell line fine-tuned from the shared model keeps its network"),
        Case("11 backbone that cannot take image_size", nothing,
             ("--pipelines=train", "--params=HEPG2.training.arch=vit_tiny_patch16_224,HEPG2.training.init=scratch"),
             "the backbone arch 'vit_tiny_patch16_224' cannot take 16 px images"),
        Case("11 scoring table without well_type", nothing, ("no well_type",), "give them a well_type column",
             script=SCORE_ONE_PLATE),
        Case("11 site PNG of another resolution", site_of_double_resolution,
             ("--pipelines=train", "--namespaces=HEPG2"),
             "B02_s1_w1.png is 32 x 32 px but the other sites are 16 x 16 px"),
        Case("12 nested unknown key", nested_unknown_key, ("--pipelines=postprocess",),
             "HEPG2.training.augment.cutmx = 0.5: no such setting in base/parameters_train.yml (did you mean cutmix?)"),
    ]


def train_until_first_checkpoint(project: Path, args: tuple[str, ...] = TRAIN_HEPG2) -> subprocess.Popen:
    """`kedro run ARGS` in ``project`` in its own process group, returned once HEPG2's first epoch checkpoint is
    written (or the run ended, or 120 s passed): the moment the kill cases strike."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    proc = subprocess.Popen([str(KEDRO), "run", *args], cwd=project, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoint = project / "data/06_models/HEPG2/last_epoch.pt"
    before = checkpoint.stat().st_mtime_ns
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and checkpoint.stat().st_mtime_ns == before:
        time.sleep(0.02)
    return proc


def kill_during_training(base: Path, reference: Path, work: Path) -> dict:
    """kill -9 after the first epoch's checkpoint, then the same command: it resumes, and ends bit-identical."""
    import torch

    project = work / "kill during training"
    shutil.copytree(base, project)
    args = TRAIN_HEPG2
    clean = work / "uninterrupted"
    shutil.copytree(base, clean)
    run(clean, *args)
    proc = train_until_first_checkpoint(project, args)
    os.killpg(proc.pid, signal.SIGKILL)
    code = proc.wait()
    again = run(project, *args)
    a = torch.load(project / "data/06_models/HEPG2/model.pt", weights_only=True)["state_dict"]
    b = torch.load(clean / "data/06_models/HEPG2/model.pt", weights_only=True)["state_dict"]
    identical = all(torch.equal(a[k], b[k]) for k in b)
    resumed = "resuming from the checkpoint" in again.stderr
    verdict = "ok" if again.returncode == 0 and identical and resumed else "FAILED"
    return {"case": "kill -9 during training, then re-run", "exit": f"{code}, then {again.returncode}",
            "verdict": verdict, "message": ("resumed; weights bit-identical to an uninterrupted run" if identical
                                            else "weights differ from an uninterrupted run"),
            "changed": "", "half_written": ", ".join(half_written(project, len(pd.read_csv(
                reference / "data/08_reporting/submission.csv"))))}


def sigterm_during_training(base: Path, reference: Path, work: Path) -> dict:
    """SIGTERM (a plain `kill`) after the first epoch's checkpoint: the run stops with 143, its MLflow run is
    KILLED (not RUNNING forever), the run lock is released and no temporary file is left."""
    import sqlite3

    project = work / "sigterm during training"
    shutil.copytree(base, project)
    proc = train_until_first_checkpoint(project)
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(120)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    with sqlite3.connect(project / "mlflow.db") as con:
        status = con.execute("SELECT status FROM runs ORDER BY start_time DESC").fetchone()[0]
    leftovers = [p.name for p in (project / "data").rglob(".*") if p.name != ".gitkeep"]
    problems = [f"exit {code}, not 143"] * (code != 143) + [f"MLflow run {status}, not KILLED"] * (status != "KILLED") \
        + [f"left {', '.join(leftovers)}"] * bool(leftovers)
    return {"case": "SIGTERM during training", "exit": str(code), "verdict": "FAILED" if problems else "ok",
            "message": "; ".join(problems) or "MLflow run marked KILLED; run lock released; no temporary file left",
            "changed": "", "half_written": ", ".join(half_written(project, len(pd.read_csv(
                reference / "data/08_reporting/submission.csv"))))}


def kill_9_closes_the_mlflow_run(base: Path, reference: Path, work: Path) -> dict:
    """kill -9 (what the OOM killer sends) during training leaves its MLflow run RUNNING; the next run on the
    output root takes the dead run's lock over and marks that MLflow run KILLED."""
    import sqlite3

    project = work / "kill -9 then the next run"
    shutil.copytree(base, project)

    def statuses() -> dict[str, str]:
        with sqlite3.connect(project / "mlflow.db") as con:
            return dict(con.execute("SELECT run_uuid, status FROM runs").fetchall())

    before = statuses()
    proc = train_until_first_checkpoint(project)
    os.killpg(proc.pid, signal.SIGKILL)
    code = proc.wait()
    killed = {run: status for run, status in statuses().items() if run not in before}
    again = run(project, "--pipelines=postprocess")
    after = statuses()
    problems = [f"the killed run left {len(killed)} new MLflow runs"] * (len(killed) != 1)
    problems += [f"MLflow run {run} is {after[run]} after the next run, not KILLED" for run in killed
                 if after[run] != "KILLED"]
    problems += [f"the next run exited {again.returncode}"] * bool(again.returncode)
    return {"case": "10 kill -9 during training, then a run", "exit": f"{code}, then {again.returncode}",
            "verdict": "FAILED" if problems else "ok",
            "message": "; ".join(problems) or "the next run took the lock over and marked the dead run's MLflow run "
                                               "KILLED (it was RUNNING)",
            "changed": "", "half_written": ", ".join(half_written(project, len(pd.read_csv(
                reference / "data/08_reporting/submission.csv"))))}


def prepare(work: Path) -> Path:
    """A project copy with tiny settings, its synthetic data generated and the full pipeline run once."""
    base = copy_project(work / "base")
    shrink_project(base)
    (base / ".faults").mkdir()
    (base / ".faults" / "sitecustomize.py").write_text(INJECTOR)
    conf = base / "conf" / "base"
    catalog = yaml.safe_load((conf / "catalog_model.yml").read_text())
    catalog["{cell_line}.site_images"]["chunk"] = 16  # several chunks to be killed between, on tiny data
    (conf / "catalog_model.yml").write_text(yaml.safe_dump(catalog))
    for args in (("--pipelines=synthetic",), ("--pipelines=full",)):
        result = run(base, *args)
        if result.returncode:
            raise SystemExit(f"preparing the base project failed:\n{result.stderr[-3000:]}")
    return base


def selected(name: str, only: str | None) -> bool:
    return not only or any(text in name for text in only.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--only", help="run only the cases whose name contains one of these comma-separated texts")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="rxrx1-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base = prepare(work)
    reference = base
    rows_expected = len(pd.read_csv(base / "data/08_reporting/submission.csv"))
    before = fingerprint(base)
    rows = []
    for case in cases(reference):
        if not selected(case.name, args.only):
            continue
        project = work / case.name.replace("/", "_")
        shutil.copytree(base, project)
        case.inject(project)
        injected = fingerprint(project)
        result = run(project, *case.args, fault=case.fault, script=case.script)
        output = result.stdout + result.stderr
        after = fingerprint(project)
        changed = sorted(f for f in set(after) | set(injected) if after.get(f) != injected.get(f))
        codes = str(result.returncode)
        if case.cleanup:
            case.cleanup(project)
        if case.expect == "recover":
            again = run(project, *case.rerun) if case.rerun else result  # no re-run: the run itself must end right
            codes += f", then {again.returncode}" if case.rerun else ""
            problem = case.check(project, again) if again.returncode == 0 else (
                f"{'re-' if case.rerun else ''}run failed: {again.stderr.strip().splitlines()[-1]}")
            verdict = "SILENT" if problem.startswith("reused") else ("ok" if not problem else "FAILED")
            message = problem or case.recovered
            changed_text = f"{len(changed)} files" + (", then re-run" if case.rerun else "")
        else:
            last = [line for line in output.splitlines() if case.expect in line]
            message = last[-1].strip() if last else (output.strip().splitlines() or [""])[-1]
            if result.returncode == 0:
                verdict = "SILENT"
            elif not last:
                verdict = "UNCLEAR"
            elif changed:
                verdict = "CHANGED OUTPUTS"
            else:
                verdict = "ok"
            changed_text = ", ".join(Path(f).name for f in changed) or "none"
        rows.append({"case": case.name, "exit": codes, "verdict": verdict, "message": message[:150],
                     "changed": changed_text,
                     "half_written": ", ".join(half_written(project, None if case.other_wells else rows_expected))})
        assert fingerprint(base) == before, "a case changed the base project"
    for name, case in (("kill -9 during training", kill_during_training), ("SIGTERM during training",
                                                                            sigterm_during_training),
                       ("10 kill -9 during training, then a run", kill_9_closes_the_mlflow_run)):
        if selected(name, args.only):
            rows.append(case(base, reference, work))
    table = pd.DataFrame(rows)
    with pd.option_context("display.max_colwidth", 150, "display.width", 250):
        print(table.to_string(index=False))
    silent = int((table["verdict"] == "SILENT").sum())
    partial = int((table["half_written"] != "").sum())
    print(f"\n{len(table)} cases in {time.perf_counter() - started:.0f} s: {int((table['verdict'] == 'ok').sum())} ok, "
          f"{silent} silent failures, {partial} with half-written outputs")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if silent or partial or (table["verdict"] != "ok").any() else 0)


if __name__ == "__main__":
    main()
