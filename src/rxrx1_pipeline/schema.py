"""One typed schema for every parameter block: the one home of their defaults and rules.

Kedro builds each node's ``params:`` argument from its YAML block with the model its type hint names
(``Training``, ``Inference``...), before any node runs, so a node reads attributes of a checked value.
A bad block fails with :class:`ParameterError` listing each bad key with its value and what is allowed.
Rules that span blocks (a fine-tuned cell line needs a trained shared model...) live in
:func:`check_across_blocks`, which ``hooks.ValidateParameters`` runs when a run starts;
:func:`validate_parameters` checks a whole parameters mapping (the tests check the shipped conf with it).
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# The cell lines: each is a namespace of the pipelines and a block of the parameters (RxRx1's four).
CELL_LINES = ("HEPG2", "HUVEC", "RPE", "U2OS")

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
NonNegative = Annotated[float, Field(ge=0)]


class ParameterError(ValueError):
    """Parameters break the schema; the message lists every bad key, its value and what is allowed."""


class Strict(BaseModel):
    """A parameter block: unknown keys (typos) are refused; a failed check lists every bad key."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any):
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as exc:
            # one line, which Kedro prefixes with the block's key ("Parameter 'HEPG2.training': ...")
            raise ParameterError("invalid parameters (nothing was run): " + "; ".join(problems_of(exc, "", cls))
                                 ) from None


def problems_of(exc: ValidationError, block: str = "", schema: type[BaseModel] | None = None) -> list[str]:
    """One line per failed check of ``exc``: ``key = value: rule`` (``key: rule`` for a check across a block); an
    unknown key of ``schema`` (the model that failed) also gets the nearest known key."""
    problems = []
    for error in exc.errors():
        key = ".".join([p for p in [block, *(str(p) for p in error["loc"])] if p])
        value, message = error.get("input"), error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden" and schema is not None:
            message += did_you_mean(str(error["loc"][-1]), known_keys_at(schema, error["loc"][:-1]))
        if not key:  # a check across the whole block
            problems.append(message)
        else:
            problems.append(f"{key}: {message}" if isinstance(value, dict) else f"{key} = {value!r}: {message}")
    return problems


class Synthetic(Strict):
    seed: int
    image_size: Annotated[int, Field(ge=8)]
    cell_lines: Annotated[list[Literal[CELL_LINES]], Field(min_length=1)]  # type: ignore[valid-type]
    experiments: dict[str, Any]
    sirnas_per_group: PositiveInt
    positive_controls: NonNegativeInt
    missing_well_rate: Annotated[float, Field(ge=0, lt=1)]
    phenotype_strength: NonNegative
    cell_line_specificity: NonNegative
    batch_strength: NonNegative
    noise: NonNegative
    # test experiments that repeat a train experiment's map, plates reordered (the real test set has one:
    # HUVEC-18 repeats RPE-03; pipelines/synthetic plant_copies)
    copies: NonNegativeInt = 0
    # the folder layout written: kaggle (the competition's four CSVs) | rxrx.ai (the release's metadata.csv,
    # with the test labels, and images/): storage/downloads.py
    layout: Literal["kaggle", "rxrx.ai"] = "kaggle"

    @model_validator(mode="after")
    def _counts(self) -> Synthetic:
        """``experiments`` is {train, test} for all cell lines, or per cell line; every cell line needs counts."""
        for cell_line in self.cell_lines:
            counts = self.experiments.get(cell_line, self.experiments)
            train, test = counts.get("train"), counts.get("test")
            if not (isinstance(train, int) and train >= 1 and isinstance(test, int) and test >= 0):
                raise ValueError(f"{cell_line} needs experiments {{train: >= 1, test: >= 0}}, got {counts}")
        if self.sirnas_per_group + self.positive_controls + 1 > 308:
            raise ValueError("sirnas_per_group + positive_controls + 1 must fit the 308 wells of a plate")
        return self


class Distributed(Strict):
    nproc_per_node: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    nnodes: Annotated[int, Field(ge=1)] = 1
    rdzv_endpoint: str | None = None

    @model_validator(mode="after")
    def _endpoint(self):
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port of the first node)")
        return self


class Augment(Strict):
    """Batch augmentations besides a random dihedral view per site (``nn/augment.py``); each default is off."""

    crop_min_area: Annotated[float, Field(gt=0, le=1)] = 1.0
    zoom_min_edge: Annotated[float, Field(gt=0, le=1)] = 1.0
    intensity_gain_std: NonNegative = 0.0
    intensity_bias_std: NonNegative = 0.0
    mixup: NonNegative = 0.0
    cutmix: NonNegative = 0.0


class PseudoLabels(Strict):
    """Progressive pseudo-labels (``nn/pseudo.py``): the labelled share of candidate wells grows linearly from
    ``initial_share`` at ``start_epoch`` to ``final_share`` at the last epoch."""

    start_epoch: NonNegativeInt = 0
    initial_share: Annotated[float, Field(ge=0, le=1)] = 0.0
    final_share: Annotated[float, Field(gt=0, le=1)] = 0.5

    @model_validator(mode="after")
    def _shares(self):
        if self.initial_share > self.final_share:
            raise ValueError(f"initial_share {self.initial_share} is above final_share {self.final_share}")
        return self


class LrCycle(Strict):
    """One cosine cycle of the learning rate: from ``lr`` down towards 0 at ``until_epoch``."""

    lr: Annotated[float, Field(gt=0, le=1)]
    until_epoch: PositiveInt


class Training(Strict):
    """A model's training recipe (``<cell line>.training``, ``shared_training``). Every field but the
    runtime ones (``nn.identity.RUNTIME_ONLY``) is part of the trained model's fingerprint.

    The defaults below are the base recipe (the toy run's, measured in benchmarks/levers.md); an environment's
    parameters list only what it changes (conf/real: the 1st place's recipe; conf/rxrx1_shaped: the preset)."""

    # held-out labelled experiments per cell line: a count (the last N) or a list of experiment names
    valid_experiments: Any = 1

    @field_validator("valid_experiments")
    @classmethod
    def _held_out(cls, value: Any) -> Any:
        if isinstance(value, bool) or not ((isinstance(value, int) and value >= 1) or (
                isinstance(value, list) and value and all(isinstance(v, str) for v in value))):
            raise ValueError("must be a count >= 1 (the last N labelled experiments) or a list of experiment names")
        return value
    arch: Annotated[str, Field(min_length=1)] = "test_resnet"  # any timm model name, e.g. densenet161 on a GPU

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        import timm

        if not timm.is_model(value):
            close = timm.list_models(f"*{value[:4]}*")[:5]
            raise ValueError(f"timm knows no model of that name{' (close: ' + ', '.join(close) + ')' if close else ''}")
        return value
    # imagenet: timm's weights by name (downloaded once into timm's cache); or pretrained_weights: a local file
    # (offline machines; the first convolution is adapted to 6 channels)
    pretrained: Literal["none", "imagenet"] = "none"
    pretrained_weights: str | None = None
    image_size: Annotated[int, Field(ge=8)] = 64
    embedding_dim: Annotated[int, Field(ge=2)] = 128
    neck: Literal["linear", "mlp"] = "linear"  # mlp: BN, linear, ReLU, BN, linear, BN (the 1st place's)
    line_input: Literal["embedding", "one_hot"] = "embedding"  # how the cell line enters the shared model
    head: Literal["cosface", "arcface", "softmax", "softmax_arcface"] = "cosface"
    margin: NonNegative = 0.2
    scale: Annotated[float, Field(gt=0)] = 30.0
    arcface_weight: Annotated[float, Field(ge=0, le=1)] = 0.2  # softmax_arcface: the ArcFace term's weight
    batchnorm_momentum: Annotated[float, Field(gt=0, le=1)] = 0.1
    # plate: each plate's own channel statistics | image: per-image standardisation (the 1st place's)
    normalization: Literal["plate", "image"] = "plate"
    epochs: NonNegativeInt = 15  # with init shared: the fine-tuning epochs; 0 only with init shared (checked below)
    batch_size: Annotated[int, Field(ge=2)] = 64  # the global batch; BatchNorm needs two samples
    accumulate_steps: PositiveInt = 1
    # at most this many batches per epoch (null: every fit site, and more as pseudo-labelled sites join); a count
    # to shrink a rehearsal or smoke run (benchmarks/real_rehearsal.py), as the schedule counts epochs
    steps_per_epoch: PositiveInt | None = None
    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: Annotated[float, Field(gt=0, le=1)] = 0.003
    lr_cycles: list[LrCycle] = []  # cosine cycles of the learning rate (none: one cosine from lr to 0 at epochs)
    weight_decay: NonNegative = 1e-4
    mixed_precision: bool = True  # bf16 autocast on a GPU only
    # optimiser steps skipped in a row for a non-finite loss or gradient before the training stops (0: stop at the
    # first); each skipped step is logged (nn.loops.run_epoch), as apex's loss scaling skipped fp16 overflows
    max_skipped_steps: NonNegativeInt = 10
    seed: int = 0
    validate_every: NonNegativeInt = 5  # epochs between valid site-accuracy checks (0: never)
    num_workers: NonNegativeInt = 0  # DataLoader processes reading the image store (0: the training process)
    # NHWC convolutions: +15% train, +50% inference sites/s on the 2-core CPU (benchmarks/throughput.py)
    channels_last: bool = True
    # all_experiments: also fit the (publicly labelled) controls of the valid and test plates (+3.1 valid / +2.7
    # hidden-test points on the preset: benchmarks/levers.md) | train_experiments
    controls: Literal["train_experiments", "all_experiments"] = "all_experiments"
    final_fit: bool = False  # true: also train on the validation experiments (the submission models; README)
    device: str | None = None  # None: the first GPU, else the CPU; e.g. cuda:1 to train cell lines side by side
    distributed: Distributed = Distributed()  # data-parallel training on torch's elastic launcher (README)
    # shared: fine-tune the shared model of every cell line (shared_training.epochs >= 1; epochs 0: use it as
    # it is) | scratch: this cell line's data only (benchmarks/levers.md)
    init: Literal["scratch", "shared"] = "shared"
    # per_plate: every batch from one plate (BatchNorm sees one plate: AdaBN in training) | mixed
    batches: Literal["mixed", "per_plate"] = "per_plate"
    augment: Augment = Augment()  # besides a random dihedral view per site
    pseudo_labels: PseudoLabels = PseudoLabels()

    zero_epochs_allowed: ClassVar[bool] = False  # besides with init shared

    @model_validator(mode="after")
    def _epochs(self):
        if self.epochs == 0 and self.init != "shared" and not self.zero_epochs_allowed:
            raise ValueError("epochs must be >= 1 (0 only with init: shared, to use the shared model as it is)")
        if self.pseudo_labels.start_epoch > self.epochs:
            raise ValueError(f"pseudo_labels.start_epoch {self.pseudo_labels.start_epoch} is after the last "
                             f"epoch ({self.epochs})")
        return self

    @model_validator(mode="after")
    def _weights(self):
        if self.pretrained != "none" and self.pretrained_weights:
            raise ValueError(f"pretrained: {self.pretrained} and pretrained_weights: {self.pretrained_weights} "
                             "both set: choose timm's weights by name or a local file, not both")
        return self

    @model_validator(mode="after")
    def _cycles(self):
        ends = [cycle.until_epoch for cycle in self.lr_cycles]
        if ends and (ends != sorted(set(ends)) or ends[-1] < self.epochs):
            raise ValueError(f"lr_cycles must end at increasing epochs, the last at or after epochs "
                             f"({self.epochs}); got until_epoch {ends}")
        return self

    @model_validator(mode="after")
    def _backbone_takes_the_size(self):
        problem = backbone_input_problem(self.arch, self.image_size)
        if problem:
            raise ValueError(f"image_size = {self.image_size}: the backbone arch {self.arch!r} cannot take "
                             f"{self.image_size} px images ({problem}); choose another arch or image_size")
        return self

    @model_validator(mode="after")
    def _global_batch(self):
        world = self.distributed.nproc_per_node
        if isinstance(world, int):
            world *= self.distributed.nnodes
        if isinstance(world, int) and (self.batch_size // world < 2 or self.batch_size % world):
            raise ValueError(f"batch_size {self.batch_size} is the global batch: it must divide by the "
                             f"{world} DDP processes, leaving at least 2 sites each")
        return self


@functools.lru_cache(maxsize=64)
def backbone_input_problem(arch: str, image_size: int) -> str | None:
    """What goes wrong when timm's ``arch`` (6 channels) embeds two ``image_size`` px images, or None. Built and
    run on torch's meta device (shapes only: no weights, no arithmetic), so even a large backbone takes ~0.1 s;
    this catches e.g. a ViT built for 224 px, which timm refuses by an assertion at the first batch."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            timm.create_model(arch, pretrained=False, in_chans=6, num_classes=0).eval()(
                torch.zeros(2, 6, image_size, image_size))
    except NotImplementedError:  # an operation the meta device lacks: the first batch will tell
        return None
    except (AssertionError, RuntimeError, ValueError) as exc:
        return f"timm: {exc}".strip()
    return None


# The settings that define a network: a cell line fine-tuned from the shared model keeps the shared model's.
NETWORK = ("arch", "image_size", "embedding_dim", "neck", "line_input", "head", "margin", "scale", "arcface_weight",
           "batchnorm_momentum", "normalization", "channels_last")


class SharedTraining(Training):
    """The shared model's recipe: a training block that starts from scratch (0 epochs: no shared model), with
    the cell line as an input. Each cell line's held-out experiments stay held out."""

    init: Literal["scratch", "shared"] = "scratch"
    batches: Literal["mixed", "per_plate"] = "mixed"
    epochs: NonNegativeInt = 30

    @model_validator(mode="after")
    def _shared(self):
        if self.init != "scratch":
            raise ValueError("the shared model starts from scratch (init: scratch)")
        if self.valid_experiments != Training.model_fields["valid_experiments"].default:
            raise ValueError(f"valid_experiments {self.valid_experiments!r}: the shared model holds out each cell "
                             "line's own validation experiments (<cell line>.training.valid_experiments); set those")
        return self

    zero_epochs_allowed: ClassVar[bool] = True  # 0 epochs: no shared model


class CellLine(Strict):
    cell_line: Literal[CELL_LINES]  # type: ignore[valid-type]
    training: Training


class Inference(Strict):
    """How inference runs; what the model is (architecture, image size, normalisation) comes from its checkpoint.
    The two batch-effect corrections are measured in benchmarks/levers.md."""

    tta: Annotated[int, Field(ge=1, le=8)] = 8  # dihedral views averaged per site
    # mean | sum of its sites' logits make a well's (equal under a fitted temperature when all wells have 2 sites)
    sites: Literal["mean", "sum"] = "mean"
    batch_size: PositiveInt = 64
    num_workers: NonNegativeInt = 0  # DataLoader processes reading the image store (0: the inference process)
    # per_plate: BatchNorm statistics re-estimated on each plate's own sites (AdaBN) | trained
    batchnorm: Literal["trained", "per_plate"] = "per_plate"
    plate_centring: bool = False  # move each plate's mean embedding onto the mean of all plates before the head

    @model_validator(mode="after")
    def _statistics_batches(self):
        if self.batchnorm == "per_plate" and self.batch_size < 2:
            raise ValueError(f"batch_size = {self.batch_size} with batchnorm: per_plate: BatchNorm statistics cannot "
                             "be estimated on batches of one site; set inference.batch_size >= 2 (or batchnorm: "
                             "trained)")
        return self


class Rotation(Strict):
    min_confidence: Annotated[float, Field(gt=0, le=1)] = 0.99  # warn about layouts chosen with a lower posterior


class Assignment(Strict):
    """The balanced assignment. Defaults chosen with benchmarks/postprocess.py (real metadata, simulated logits,
    raw accuracy 1.5%..88%): "prob" + fitted temperature + 10 normalisation rounds had the best mean validation
    accuracy after assignment (45.8% vs 45.6% for log_prob at T=1, the plain assignment on logits), winning in
    the 20-80% range and within 0.1 pt above it."""

    cost: Literal["prob", "log_prob"] = "prob"  # prob: maximise expected correct wells; log_prob: most likely
    temperature: Any = "auto"  # a number, or auto: fitted on the labelled validation wells (valid_logits)

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: Any) -> Any:
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int | float) or not value > 0):
            raise ValueError("must be 'auto' (fitted on the validation wells) or a number > 0")
        return value
    temperature_bounds: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=2, max_length=2)] = [0.02, 50.0]
    sinkhorn_iterations: NonNegativeInt = 10  # row/column normalisation rounds before the assignment (0: none)

    @model_validator(mode="after")
    def _bounds(self) -> Assignment:
        low, high = self.temperature_bounds
        if low >= high:
            raise ValueError(f"temperature_bounds must be [low, high] with low < high, got {self.temperature_bounds}")
        return self


class Copies(Strict):
    """Copied experiments (``leak/copies.py``): a test experiment whose plates repeat a labelled experiment's map
    is answered from that map (RxRx1: HUVEC-18 repeats RPE-03, plates reordered; the 1st place used it)."""

    detect: bool = True
    # a copy when its best match's binomial tail, Bonferroni-corrected over every labelled experiment and plate
    # order tried, is below this (the chance of declaring a copy of an experiment that is none)
    max_p_value: Annotated[float, Field(gt=0, lt=1)] = 1e-6


class Postprocess(Strict):
    rotation: Rotation = Rotation()
    assignment: Assignment = Assignment()
    copies: Copies = Copies()


BLOCKS: dict[str, type[BaseModel]] = {"synthetic": Synthetic, "inference": Inference, "shared_training": SharedTraining,
                                      "postprocess": Postprocess, **{cl: CellLine for cl in CELL_LINES}}


def validate_parameters(parameters: dict[str, Any], blocks: set[str] | None = None) -> None:
    """Check the named top-level blocks (default: all known) of a parameters mapping, and the rules across
    them; one :class:`ParameterError` lists every problem found."""
    problems, checked = [], {}
    for block in sorted(blocks if blocks is not None else BLOCKS):
        schema = BLOCKS.get(block)
        if schema is None:
            continue
        if block not in parameters:
            problems.append(f"{block}: missing (every run of these pipelines needs it)")
            continue
        try:
            checked[block] = super(Strict, schema).model_validate(plain(parameters[block]))
        except ValidationError as exc:
            problems += problems_of(exc, block, schema)
    problems += cross_block_problems({**parameters, **checked}, blocks if blocks is not None else set(BLOCKS))
    problems += [f"{key}: no such parameter block" + (f" (did you mean {near}?)" if near else "")
                 for key, near in unknown_blocks(parameters).items()]
    if problems:
        raise ParameterError("invalid parameters (nothing was run):\n  " + "\n  ".join(problems))


def nested_schema(annotation: Any) -> type[BaseModel] | None:
    """The parameter model a field's type holds (``Augment``, ``list[LrCycle]``, ``Distributed | None``), or None."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((found for arg in typing.get_args(annotation) if (found := nested_schema(arg)) is not None), None)


def known_keys_at(schema: type[BaseModel], loc: tuple) -> list[str]:
    """The keys allowed at ``loc`` (a path of keys and list positions) inside ``schema``."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = schema.model_fields.get(str(part))
        inner = nested_schema(field.annotation) if field is not None else None
        if inner is None:
            return []
        schema = inner
    return list(schema.model_fields)


def did_you_mean(key: str, known: list[str]) -> str:
    """`` (did you mean X?)`` with the known key nearest to ``key``, else the known keys (or nothing)."""
    import difflib

    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if near:
        return f" (did you mean {near[0]}?)"
    return f" (known: {', '.join(known)})" if known else ""


def unknown_keys(parameters: dict[str, Any]) -> dict[str, str]:
    """Every key of a parameters mapping that no node reads, at every level: dotted path (``HEPG2.training.lrr``)
    -> `` (did you mean lr?)`` (or the known keys). Top-level keys are blocks (:func:`unknown_blocks`); inside a
    block, the keys of its model and of every model nested in it; ``synthetic.experiments`` takes
    ``train``/``test``, or a cell line holding them."""
    found = {key: did_you_mean(key, [*BLOCKS, *RUNTIME_KEYS]) for key in unknown_blocks(parameters)}
    for block, schema in BLOCKS.items():
        if isinstance(parameters.get(block), dict):
            found |= _unknown_in(parameters[block], schema, block)
    experiments = (parameters.get("synthetic") or {}).get("experiments") if isinstance(parameters.get("synthetic"),
                                                                                        dict) else None
    if isinstance(experiments, dict):
        counts = ["train", "test"]
        for key, value in experiments.items():
            if key not in [*counts, *CELL_LINES]:
                found[f"synthetic.experiments.{key}"] = did_you_mean(key, [*counts, *CELL_LINES])
            elif isinstance(value, dict):
                found |= {f"synthetic.experiments.{key}.{k}": did_you_mean(k, counts) for k in value if k not in counts}
    return found


def _unknown_in(value: dict, schema: type[BaseModel], path: str) -> dict[str, str]:
    found = {}
    for key, given in value.items():
        field = schema.model_fields.get(key)
        if field is None:
            found[f"{path}.{key}"] = did_you_mean(str(key), list(schema.model_fields))
            continue
        inner = nested_schema(field.annotation)
        items = [(f"{path}.{key}", given)] if isinstance(given, dict) else [
            (f"{path}.{key}.{i}", item) for i, item in enumerate(given)] if isinstance(given, list) else []
        for where, item in items if inner is not None else ():
            if isinstance(item, dict):
                found |= _unknown_in(item, inner, where)
    return found


RUNTIME_KEYS = frozenset({"data_root"})  # top-level keys a run may be given besides the blocks (--params)


def unknown_blocks(parameters: dict[str, Any]) -> dict[str, str | None]:
    """Top-level keys of the parameters that no node reads (a typo of a block, a block of another project), each
    with the nearest known block name or None; named recipes (keys starting with ``_``) are YAML anchors."""
    import difflib

    known = [*BLOCKS, *RUNTIME_KEYS]
    return {key: next(iter(difflib.get_close_matches(key, known, n=1, cutoff=0.6)), None)
            for key in parameters if key not in known and not key.startswith("_")}


def check_across_blocks(parameters: dict[str, Any], blocks: set[str], where: dict[str, str] | None = None) -> None:
    """The rules that span the named blocks (each block itself is already checked: Kedro built it), and no
    unknown top-level key (``where`` names the file of each key, where known)."""
    problems = [f"{key}: no such parameter block{f' in {where[key]}' if where and key in where else ''}"
                + (f" (did you mean {near}?)" if near else f" (known: {', '.join(BLOCKS)})")
                for key, near in unknown_blocks(parameters).items()]
    problems += cross_block_problems(parameters, blocks)
    if problems:
        raise ParameterError("invalid parameters (nothing was run):\n  " + "\n  ".join(problems))


def cross_block_problems(parameters: dict[str, Any], blocks: set[str]) -> list[str]:
    """What breaks a rule across blocks: cell lines fine-tuned from an untrained shared model, several trainings
    of one run spread over several machines, and a final fit whose assignment temperature would be fitted on
    the wells it trained on. Each block is read as its model, defaults filled in; a block that breaks its own
    schema is left to its own check."""
    parameters = plain(parameters)
    problems = []
    lines = {cl: built(parameters[cl].get("training"), Training) for cl in CELL_LINES
             if cl in blocks and isinstance(parameters.get(cl), dict)}
    lines = {cl: training for cl, training in lines.items() if training is not None}
    shared = built(parameters.get("shared_training"), SharedTraining) if "shared_training" in blocks else None
    postprocess = built(parameters.get("postprocess"), Postprocess) if "postprocess" in blocks else None
    fine_tuned = [cl for cl, training in lines.items() if training.init == "shared"]
    if fine_tuned and shared is not None and not shared.epochs:
        problems.append(f"{', '.join(fine_tuned)}.training.init = 'shared' with shared_training.epochs = 0: set "
                        "shared_training.epochs >= 1 to train the shared model they start from")
    for cl in fine_tuned if shared is not None and shared.epochs else ():
        differ = [k for k in NETWORK if getattr(lines[cl], k) != getattr(shared, k)]
        if differ:
            problems.append(f"{cl}.training." + f", {cl}.training.".join(f"{k} = {getattr(lines[cl], k)!r}"
                                                                          for k in differ)
                            + " with init: shared: a cell line fine-tuned from the shared model keeps its network ("
                            + ", ".join(f"shared_training.{k} = {getattr(shared, k)!r}" for k in differ) + ")")
    trainings = [(f"{cl}.training", training) for cl, training in lines.items()]
    trainings += [("shared_training", shared)] if shared is not None else []
    final = [f"{name}.final_fit" for name, training in trainings if training.final_fit]
    spread = [name for name, training in trainings if training.epochs and training.distributed.nnodes > 1]
    if len(spread) > 1:
        problems.append(f"{', '.join(spread)}.distributed.nnodes > 1 in one run: a machine without rank 0 stops "
                        "after the first of these trainings, so train one model per run on several machines, "
                        "e.g. --pipelines=train --namespaces=HUVEC (README: More than one GPU)")
    if final and postprocess is not None and postprocess.assignment.temperature == "auto":
        problems.append(f"{', '.join(final)} = True with postprocess.assignment.temperature = "
                        "'auto': the validation wells are then training data; set the temperature that the "
                        "held-out run fitted (its 08_reporting/postprocess_calibration.json)")
    return problems


def built(value: Any, schema: type[Strict]) -> Strict | None:
    """``value`` (a plain block) as the ``schema`` model Kedro builds from it, or None where it breaks the schema."""
    try:
        return schema.model_validate(value)
    except ParameterError:
        return None


def changed_settings(parameters: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per block of the parameters (``HEPG2.training``, ``shared_training``, ``inference``, ...), the settings whose
    value differs from the schema's default, flattened (``augment.cutmix``): what a run changed of the base recipe."""
    parameters = plain(parameters)
    blocks = {f"{cl}.training": (parameters.get(cl) or {}).get("training") for cl in CELL_LINES}
    blocks |= {name: parameters.get(name) for name in ("shared_training", "inference", "postprocess", "images")}
    changed = {}
    for name, value in blocks.items():
        if isinstance(value, dict):  # as given (no timm import to check an arch): compared with the defaults
            schema = BLOCKS.get(name, Training) if name != "shared_training" else SharedTraining
            default = _flat(schema().model_dump(mode="json"))
            changed[name] = {k: v for k, v in _flat(value).items() if v != default.get(k)}
    return changed


def _flat(values: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def plain(value: Any) -> Any:
    """``value`` with every parameter model in it turned back into a plain dict (Kedro puts the models it
    built into the parameters mapping)."""
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


class ImageSource(Strict):
    """``images``: where training and inference read each site's pixels from (README: where 512 px images
    are read from). ``source`` store: every site decoded once into an on-disk array under image_store_root
    (6 x S x S bytes per site at S = training.image_size); png: no pixel array, the loader decodes the six
    PNGs of a site on every read (set num_workers so that workers x their rate exceeds the model's).
    ``fit``: how a site becomes S px when its PNGs are larger: resize (the whole field of view) or crop
    (the centre S x S at full resolution). Both are part of the store's identity, hence of every model's
    fingerprint."""

    source: Literal["store", "png"] = "store"
    fit: Literal["resize", "crop"] = "resize"


BLOCKS["images"] = ImageSource
