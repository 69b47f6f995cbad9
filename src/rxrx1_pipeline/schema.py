"""One typed schema for every parameter block, checked before a run writes anything.

``validate_parameters`` checks the blocks a pipeline reads and raises :class:`ParameterError` listing
each bad key with its value and what is allowed. ``hooks.ValidateParameters`` calls it when a run starts.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from rxrx1_pipeline.plates import CELL_LINES

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
NonNegative = Annotated[float, Field(ge=0)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


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
    crop_min_area: Annotated[float, Field(gt=0, le=1)] = 1.0
    mixup: NonNegative = 0.0
    cutmix: NonNegative = 0.0


class PseudoLabels(Strict):
    start_epoch: NonNegativeInt = 0
    final_share: Annotated[float, Field(gt=0, le=1)] = 0.5


class Training(Strict):
    valid_experiments: Any

    @field_validator("valid_experiments")
    @classmethod
    def _held_out(cls, value: Any) -> Any:
        if isinstance(value, bool) or not ((isinstance(value, int) and value >= 1) or (
                isinstance(value, list) and value and all(isinstance(v, str) for v in value))):
            raise ValueError("must be a count >= 1 (the last N labelled experiments) or a list of experiment names")
        return value
    arch: Annotated[str, Field(min_length=1)]
    pretrained_weights: str | None = None
    image_size: Annotated[int, Field(ge=8)]
    embedding_dim: Annotated[int, Field(ge=2)]
    head: Literal["cosface", "arcface", "softmax"]
    margin: NonNegative
    scale: Annotated[float, Field(gt=0)]
    normalization: Literal["plate", "image"]
    epochs: NonNegativeInt  # 0 only with init shared (checked below)
    batch_size: Annotated[int, Field(ge=2)]  # BatchNorm needs two samples
    lr: Annotated[float, Field(gt=0, le=1)]
    weight_decay: NonNegative
    seed: int
    validate_every: NonNegativeInt
    num_workers: NonNegativeInt
    channels_last: bool = False
    controls: Literal["train_experiments", "all_experiments"] = "train_experiments"
    final_fit: bool = False
    device: str | None = None
    distributed: Distributed = Distributed()
    init: Literal["scratch", "shared"] = "scratch"
    batches: Literal["mixed", "per_plate"] = "mixed"
    augment: Augment = Augment()
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
    def _global_batch(self):
        world = self.distributed.nproc_per_node
        if isinstance(world, int):
            world *= self.distributed.nnodes
        if isinstance(world, int) and (self.batch_size // world < 2 or self.batch_size % world):
            raise ValueError(f"batch_size {self.batch_size} is the global batch: it must divide by the "
                             f"{world} DDP processes, leaving at least 2 sites each")
        return self


class SharedTraining(Training):
    """The shared model's recipe: a training block that starts from scratch, without pseudo-labels (0
    epochs: no shared model)."""

    @model_validator(mode="after")
    def _shared(self):
        if self.init != "scratch" or self.pseudo_labels.start_epoch:
            raise ValueError("the shared model starts from scratch (init: scratch) and has no pseudo-labels")
        return self

    zero_epochs_allowed: ClassVar[bool] = True  # 0 epochs: no shared model


class CellLine(Strict):
    cell_line: Literal[CELL_LINES]  # type: ignore[valid-type]
    training: Training


class Inference(Strict):
    tta: Annotated[int, Field(ge=1, le=8)]
    sites: Literal["mean", "sum"] = "mean"
    batch_size: PositiveInt
    num_workers: NonNegativeInt
    batchnorm: Literal["trained", "per_plate"]
    plate_centring: bool


class Rotation(Strict):
    min_confidence: Annotated[float, Field(gt=0, le=1)]


class Assignment(Strict):
    cost: Literal["prob", "log_prob"]
    temperature: Any

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: Any) -> Any:
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int | float) or not value > 0):
            raise ValueError("must be 'auto' (fitted on the validation wells) or a number > 0")
        return value
    temperature_bounds: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=2, max_length=2)]
    sinkhorn_iterations: NonNegativeInt

    @model_validator(mode="after")
    def _bounds(self) -> Assignment:
        low, high = self.temperature_bounds
        if low >= high:
            raise ValueError(f"temperature_bounds must be [low, high] with low < high, got {self.temperature_bounds}")
        return self


class Postprocess(Strict):
    rotation: Rotation
    assignment: Assignment


BLOCKS: dict[str, type[BaseModel]] = {"synthetic": Synthetic, "inference": Inference, "shared_training": SharedTraining,
                                      "postprocess": Postprocess, **{cl: CellLine for cl in CELL_LINES}}


class ParameterError(ValueError):
    """Parameters break the schema; the message lists every bad key, its value and what is allowed."""


def validate_parameters(parameters: dict[str, Any], blocks: set[str] | None = None) -> None:
    """Check the named top-level blocks (default: all known) of a parameters mapping."""
    problems = []
    for block in sorted(blocks if blocks is not None else BLOCKS):
        schema = BLOCKS.get(block)
        if schema is None:
            continue
        if block not in parameters:
            problems.append(f"{block}: missing (every run of these pipelines needs it)")
            continue
        try:
            schema.model_validate(parameters[block])
        except ValidationError as exc:
            for error in exc.errors():
                key = ".".join([block, *(str(p) for p in error["loc"])])
                value, message = error.get("input"), error["msg"].removeprefix("Value error, ")
                # a check across a whole block names the block, not all of its values
                problems.append(f"{key}: {message}" if isinstance(value, dict) else f"{key} = {value!r}: {message}")
    chosen = blocks if blocks is not None else BLOCKS
    line_training = {cl: parameters[cl].get("training", {}) for cl in CELL_LINES
                     if cl in chosen and isinstance(parameters.get(cl), dict)}
    shared_training = parameters.get("shared_training", {}) if "shared_training" in chosen else {}
    shared = [cl for cl, training in line_training.items() if training.get("init") == "shared"]
    if shared and "shared_training" in chosen and not shared_training.get("epochs"):
        problems.append(f"{', '.join(shared)}.training.init = 'shared' with shared_training.epochs = 0: set "
                        "shared_training.epochs >= 1 to train the shared model they start from")
    final = [f"{cl}.training.final_fit" for cl, training in line_training.items() if training.get("final_fit")]
    final += ["shared_training.final_fit"] if shared_training.get("final_fit") else []
    temperature = parameters.get("postprocess", {}).get("assignment", {}).get("temperature")
    if final and "postprocess" in chosen and temperature == "auto":
        problems.append(f"{', '.join(final)} = True with postprocess.assignment.temperature = "
                        "'auto': the validation wells are then training data; set the temperature that the "
                        "held-out run fitted (its 08_reporting/postprocess_calibration.json)")
    if problems:
        raise ParameterError("invalid parameters (nothing was run):\n  " + "\n  ".join(problems))


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
