"""Embedding training: per cell line (splits, the decode-once image store, plate statistics, the model),
and one shared model over every cell line that per-cell-line models may start from."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rxrx1_pipeline.leak.copies import copied_well_labels
from rxrx1_pipeline.leak.plates import CELL_LINES
from rxrx1_pipeline.schema import NETWORK, ImageSource, SharedTraining, Training
from rxrx1_pipeline.storage.checkpoints import CheckpointStore, ModelFile
from rxrx1_pipeline.storage.images import (
    DecodeJob,
    ImageStore,
    PngSites,
    StoreChain,
)

if TYPE_CHECKING:  # torch is imported inside the nodes
    from rxrx1_pipeline.nn.training import TrainJob

log = logging.getLogger(__name__)


def select_sites(wells: pd.DataFrame, sites: pd.DataFrame, classes: pd.DataFrame, cell_line: str,
                 training: Training, heldout_copies: pd.DataFrame | None = None) -> pd.DataFrame:
    """This cell line's sites with their role: ``fit``, ``valid`` (held-out experiments) or ``test``,
    their ``plate_index`` and their ``store_row`` in the image store.

    ``training.valid_experiments`` is a number (the last N labelled experiments) or a list of names. In a final
    fit (``training.final_fit``), the test wells of the held-out run's copied experiments (``heldout_copies``)
    carry the class their copied map gives them, so that :func:`sites_to_fit` trains on them.
    """
    mine = wells[wells["cell_line"] == cell_line]
    if mine.empty:  # a data set without this cell line: an empty table, every later stage of the line skips
        log.info("%s: no wells of this cell line in the data set: its model is not trained and it scores no wells",
                 cell_line)
        return _sites_table(sites, mine, classes, [])
    train_exps = sorted(mine.loc[mine["split"] == "train", "experiment"].unique())
    held = training.valid_experiments
    if isinstance(held, int) and not 0 < held < len(train_exps):
        raise ValueError(f"{cell_line}: valid_experiments {held} must be at least 1 and fewer than its "
                         f"{len(train_exps)} labelled experiments (holding out all leaves nothing to fit)")
    valid = train_exps[len(train_exps) - held:] if isinstance(held, int) else list(held)
    unknown = sorted(set(valid) - set(train_exps))
    if unknown:
        raise ValueError(f"{cell_line}: valid_experiments {unknown} are not labelled train experiments")
    if len(valid) >= len(train_exps):
        raise ValueError(f"{cell_line}: holding out {len(valid)} of {len(train_exps)} train experiments "
                         "leaves nothing to fit")
    table = _sites_table(sites, mine, classes, valid)
    if training.final_fit and heldout_copies is not None and len(heldout_copies):
        table = _label_copied_wells(table, copied_well_labels(heldout_copies, wells), classes, cell_line)
    log.info("%s: %d fit, %d valid, %d test sites; valid experiments %s", cell_line,
             *(int((table["role"] == r).sum()) for r in ("fit", "valid", "test")), ", ".join(valid))
    return table


def _label_copied_wells(table: pd.DataFrame, labels: pd.DataFrame, classes: pd.DataFrame, cell_line: str
                        ) -> pd.DataFrame:
    """``table`` with the class of each copied test well (``labels``: id_code, sirna) as its ``class_index``."""
    class_of = labels.merge(classes[["sirna", "class_index"]], on="sirna").set_index("id_code")["class_index"]
    copied = (table["role"] == "test") & table["id_code"].isin(class_of.index)
    table.loc[copied, "class_index"] = class_of.loc[table.loc[copied, "id_code"]].to_numpy()
    if copied.any():
        log.info("%s: final fit: %d sites of the copied experiment(s) %s are trained on with their copied map",
                 cell_line, int(copied.sum()), ", ".join(sorted(table.loc[copied, "experiment"].unique())))
    return table


def _sites_table(sites: pd.DataFrame, wells: pd.DataFrame, classes: pd.DataFrame, valid: list[str]) -> pd.DataFrame:
    """The sites of ``wells`` with their role (``valid``: these experiments), class, plate and store row."""
    table = sites.drop(columns="split").merge(wells, on="id_code", how="inner")
    table["role"] = np.where(table["split"] == "test", "test",
                             np.where(table["experiment"].isin(valid), "valid", "fit")).astype(object)
    table = table.merge(classes[["sirna", "class_index"]], on="sirna", how="left")
    table["class_index"] = table["class_index"].fillna(-1).astype("int64")
    plates = table[["experiment", "plate"]].drop_duplicates().reset_index(drop=True)
    plates["plate_index"] = np.arange(len(plates), dtype="int64")
    table = table.merge(plates, on=["experiment", "plate"]).sort_values(["role", "id_code", "site"],
                                                                        ignore_index=True)
    table["store_row"] = np.arange(len(table), dtype="int64")
    return table


def decode_sites(model_sites: pd.DataFrame, raw_site_images: PngSites, training: Training, images: ImageSource
                 ) -> DecodeJob:
    """What the image store must hold: every site of the table, in ``store_row`` order, at training size,
    resized or centre-cropped (``images.fit``); decoded once (``images.source`` store) or read from the PNGs
    on every read (png: the store then keeps only the sites' statistics).

    The store dataset builds it once (and reuses or resumes it on later runs).
    """
    prefixes = model_sites.sort_values("store_row")["w1"].str.slice(0, -len("_w1.png"))
    return DecodeJob(raw_site_images, tuple(prefixes), training.image_size, images)


def sites_to_fit(model_sites: pd.DataFrame, controls: str, final_fit: bool = False) -> pd.DataFrame:
    """The sites the model is fitted on: every labelled site of the fit experiments and, with ``controls``
    = ``all_experiments``, the control wells of the validation and test experiments too (their labels
    are public), so the model also sees the plates it will predict. Controls are classes of the model
    but never answers: inference keeps the treatment classes only.

    ``final_fit`` adds the validation experiments (the submission models, trained on every labelled
    experiment; their validation figures are then on training data) and the test wells labelled by a copied
    map (:func:`select_sites`)."""
    fit = model_sites["role"].isin(["fit", "valid"] if final_fit else ["fit"])
    if final_fit:
        fit |= ((model_sites["role"] == "test") & (model_sites["well_type"] == "treatment")
                & (model_sites["class_index"] >= 0))
    if controls == "all_experiments":
        fit |= (model_sites["well_type"] != "treatment") & (model_sites["class_index"] >= 0)
    return model_sites[fit]


def sites_to_validate(model_sites: pd.DataFrame) -> pd.DataFrame:
    """The treatment sites of the held-out validation experiments (the valid site accuracy while training)."""
    return model_sites[(model_sites["role"] == "valid") & (model_sites["well_type"] == "treatment")]


def train_model(model_sites: pd.DataFrame, site_images: ImageStore, plate_stats: pd.DataFrame,
                classes: pd.DataFrame, checkpoints: CheckpointStore, cell_line: str, training: Training,
                shared_model: dict | ModelFile | None = None, sirna_groups: pd.DataFrame | None = None,
                plate_layouts: pd.DataFrame | None = None) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Train the cell line's embedding model on the fit sites, resuming from the last checkpoint of the same
    setup; in this process, or on ``training.distributed.nproc_per_node`` DDP processes.

    ``training.controls`` chooses which control wells are fitted (:func:`sites_to_fit`). With ``training.init:
    shared`` the model starts from ``shared_model`` (trained on every cell line; a :class:`ModelFile` is read
    only then, so ``init: scratch`` never reads it and runs without one) and is fine-tuned for ``epochs`` epochs
    (0: the shared model as it is). ``training.pseudo_labels.start_epoch`` > 0 adds pseudo-labelled validation
    and test wells from that epoch on (``nn/pseudo.py``; needs ``sirna_groups`` and ``plate_layouts``). A cell
    line without sites in the data set gets no model (an empty dict).

    Returns the trained model (settings + weights), the per-epoch history and the pseudo-labels
    (id_code, class_index, sirna, epoch added).
    """
    from rxrx1_pipeline.nn.identity import model_settings
    from rxrx1_pipeline.nn.pseudo import PseudoLabeller, no_pseudo_labels
    from rxrx1_pipeline.nn.training import TrainJob

    if model_sites.empty:
        log.info("%s: no sites in this data set: no model trained", cell_line)
        return {}, no_history(), no_pseudo_labels()
    fit_sites = sites_to_fit(model_sites, training.controls, training.final_fit)
    if training.final_fit:
        log.warning("%s: final fit: the validation experiments are trained on too, so their figures are no "
                    "longer a validation", cell_line)
    settings = model_settings(training)
    initial, start = None, {}
    if training.init == "shared":
        if isinstance(shared_model, ModelFile):
            shared_model = shared_model.read(f"{cell_line}.training.init is 'shared'")
        if not shared_model:
            raise ValueError(f"{cell_line}: training.init is 'shared' but no shared model was trained (set "
                             "shared_training.epochs >= 1)")
        differ = [k for k in NETWORK if settings[k] != shared_model["settings"].get(k)]
        if differ:
            raise ValueError(f"{cell_line}: training.init is 'shared' but {', '.join(differ)} differ from "
                             "shared_training; a fine-tuned model keeps the shared model's network")
        settings = {**settings, "cell_lines": shared_model["settings"]["cell_lines"], "cell_line": cell_line}
        initial, start = shared_model["state_dict"], {"shared": shared_model["run_id"]}
        if training.epochs == 0:
            log.info("%s: using the shared model of %s as it is (epochs 0)", cell_line,
                     ", ".join(settings["cell_lines"]))
            return {**shared_model, "settings": settings}, no_history(), no_pseudo_labels()
    pseudo = None
    if training.pseudo_labels.start_epoch:
        pseudo = PseudoLabeller(candidate_sites(model_sites, fit_sites), classes, sirna_groups, plate_layouts,
                                training.pseudo_labels, training.epochs)
    job = TrainJob(label=cell_line, training=training, settings=settings, fit=fit_sites,
                   valid=sites_to_validate(model_sites), store=site_images, plate_stats=plate_stats,
                   n_classes=len(classes), checkpoints=checkpoints, initial=initial, pseudo=pseudo, start=start)
    model, history, labelled = _run_training(job)
    return model, pd.DataFrame(history), no_pseudo_labels() if labelled is None else labelled


LINE_INPUTS = ("model_sites", "site_images", "plate_stats")  # what the shared model reads of each cell line
LINE_PARAMS = ("training",)  # and of its parameters: whether the line is fine-tuned from it (init)


def train_shared_model(classes: pd.DataFrame, checkpoints: CheckpointStore, training: SharedTraining,
                       sirna_groups: pd.DataFrame, plate_layouts: pd.DataFrame, **line_inputs: pd.DataFrame | ImageStore
                       ) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """One model over every cell line, with the cell line as an input (``line_inputs``: each line's
    ``<line>_model_sites``, ``<line>_site_images`` and ``<line>_plate_stats``, e.g. ``HUVEC_plate_stats``, for the
    lines of ``CELL_LINES`` present, and optionally ``<line>_training``). Each line's held-out experiments stay
    held out; ``training`` (``shared_training``) sets the recipe; ``epochs`` 0, or no line given with
    ``training.init: shared``, trains nothing (returns an empty model). Lines without sites (a data set of
    other cell lines) are left out. With
    ``pseudo_labels.start_epoch`` > 0 the validation and test wells of every line are pseudo-labelled
    (:func:`candidate_sites`).

    Returns the model, its per-epoch history and its pseudo-labels (id_code, class_index, sirna, epoch added).
    """
    from rxrx1_pipeline.nn.identity import model_settings
    from rxrx1_pipeline.nn.pseudo import PseudoLabeller, no_pseudo_labels
    from rxrx1_pipeline.nn.training import TrainJob

    trainings = {key.removesuffix("_training"): line_inputs.pop(key) for key in list(line_inputs)
                 if key.endswith("_training")}
    lines = [cl for cl in CELL_LINES if f"{cl}_model_sites" in line_inputs]
    unknown = set(line_inputs) - {f"{cl}_{name}" for cl in lines for name in LINE_INPUTS}
    if unknown or len(line_inputs) != len(lines) * len(LINE_INPUTS) or set(trainings) - set(lines):
        raise TypeError(f"train_shared_model takes <line>_{{{', '.join(LINE_INPUTS)}}} (and <line>_training) for "
                        f"lines of {CELL_LINES}, got {sorted(line_inputs) + sorted(trainings)}")
    if training.epochs == 0:
        log.info("shared model: not trained (shared_training.epochs is 0)")
        return {}, no_history(), no_pseudo_labels()
    absent = [cl for cl in lines if line_inputs[f"{cl}_model_sites"].empty]
    if absent:
        log.info("shared model: no sites of %s in this data set: trained on %s only", ", ".join(absent),
                 ", ".join(cl for cl in lines if cl not in absent) or "no cell line")
        lines = [cl for cl in lines if cl not in absent]
    if trainings and not any(trainings[cl].init == "shared" for cl in lines if cl in trainings):
        log.info("shared model: not trained: no cell line with sites has training.init 'shared' (%s train from "
                 "scratch)", ", ".join(lines) or "none")
        return {}, no_history(), no_pseudo_labels()
    if not lines:
        raise ValueError("shared model: no cell line has sites in this data set: nothing to train on")
    if training.final_fit:
        log.warning("shared model: final fit: the validation experiments are trained on too, so the figures of "
                    "every model fine-tuned from it are no longer a validation")
    triples = [tuple(line_inputs[f"{cl}_{name}"] for name in LINE_INPUTS) for cl in lines]
    store = StoreChain([images for _, images, _ in triples])
    fits, valids, candidates, stats = [], [], [], []
    plate_offset = 0
    for k, (sites, _, plate_stats) in enumerate(triples):
        sites = sites.assign(store_row=sites["store_row"] + store.offsets[k],
                             plate_index=sites["plate_index"] + plate_offset, line_index=k)
        fits.append(sites_to_fit(sites, training.controls, training.final_fit))
        valids.append(sites_to_validate(sites))
        candidates.append(candidate_sites(sites, fits[-1]))
        stats.append(plate_stats.assign(plate_index=plate_stats["plate_index"] + plate_offset))
        plate_offset += len(plate_stats)
    pseudo = None
    if training.pseudo_labels.start_epoch:
        pseudo = PseudoLabeller(pd.concat(candidates, ignore_index=True), classes, sirna_groups, plate_layouts,
                                training.pseudo_labels, training.epochs)
    job = TrainJob(label="shared", training=training, settings=model_settings(training) | {"cell_lines": lines},
                   fit=pd.concat(fits, ignore_index=True), valid=pd.concat(valids, ignore_index=True), store=store,
                   plate_stats=pd.concat(stats, ignore_index=True), n_classes=len(classes), checkpoints=checkpoints,
                   pseudo=pseudo)
    model, history, labelled = _run_training(job)
    return model, pd.DataFrame(history), no_pseudo_labels() if labelled is None else labelled


def _run_training(job: TrainJob) -> tuple[dict, list[dict], pd.DataFrame | None]:
    """``nn.distributed.run_training``; on a worker machine of a training on several machines, its MLflow run is
    marked as such before this `kedro run` stops."""
    from rxrx1_pipeline.nn.distributed import WorkerMachineDone, run_training

    try:
        return run_training(job)
    except WorkerMachineDone as done:
        from rxrx1_pipeline.runs.tracking import end_worker_machine_run

        end_worker_machine_run(done.node_rank, done.nnodes)
        raise


def candidate_sites(model_sites: pd.DataFrame, fit_sites: pd.DataFrame) -> pd.DataFrame:
    """The sites pseudo-labelling may label: treatment sites of the validation and test experiments that are
    not fitted already."""
    return model_sites[(model_sites["well_type"] == "treatment") & ~model_sites.index.isin(fit_sites.index)
                       & model_sites["role"].isin(["valid", "test"])]


def no_history() -> pd.DataFrame:
    """The history of a model that was not trained here (no epochs)."""
    return pd.DataFrame({"epoch": pd.Series(dtype="int64")})
