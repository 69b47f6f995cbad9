"""What identifies a trained model: the settings that define it, and the fingerprint of a training run
(settings, data, pixels, code, starting weights). A checkpoint of another fingerprint is never resumed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from rxrx1_pipeline.schema import Training

# Settings that do not change the trained model, left out of its fingerprint and checkpoint (a run may
# resume on another device or number of processes: the global batch, and so the recipe, is the same; the
# guard against non-finite steps changes nothing while none occurs).
RUNTIME_ONLY = frozenset({"num_workers", "device", "distributed", "max_skipped_steps"})


def model_settings(training: Training) -> dict[str, Any]:
    """The settings saved with a model: every training setting but the runtime ones, as plain values."""
    return training.model_dump(exclude=set(RUNTIME_ONLY))


# What a model saved before a setting existed was trained with: that setting's value then. Frozen here, never
# read from today's schema defaults (which are the base recipe and may change). A new setting gets its entry
# here, with the value that keeps the behaviour from before it (tests/nn/test_identity.py checks each has one).
PREDATED = {
    "pretrained": "none", "pretrained_weights": None, "neck": "linear", "line_input": "embedding",
    "arcface_weight": 0.2, "batchnorm_momentum": 0.1, "accumulate_steps": 1, "optimizer": "adamw",
    "lr_cycles": [], "mixed_precision": True, "channels_last": False, "controls": "train_experiments",
    "final_fit": False, "init": "scratch", "batches": "mixed", "steps_per_epoch": None,
    "augment": {"crop_min_area": 1.0, "zoom_min_edge": 1.0, "intensity_gain_std": 0.0, "intensity_bias_std": 0.0,
                "mixup": 0.0, "cutmix": 0.0},
    "pseudo_labels": {"start_epoch": 0, "initial_share": 0.0, "final_share": 0.5},
}
# The settings every saved model carries (those of the first checkpoint format).
ALWAYS_SAVED = ("valid_experiments", "arch", "image_size", "embedding_dim", "head", "margin", "scale",
                "normalization", "epochs", "batch_size", "lr", "weight_decay", "seed", "validate_every")


def with_defaults(settings: dict) -> dict:
    """A saved model's settings with every setting it predates at the value it was trained with (``PREDATED``),
    so models saved before a setting existed still load as they were trained."""
    filled = {**PREDATED, **settings}
    for name, value in PREDATED.items():  # a block saved before one of its keys existed
        if isinstance(value, dict) and isinstance(settings.get(name), dict):
            filled[name] = {**value, **settings[name]}
    return filled


def fingerprint(obj) -> str:
    """Short stable hash of a JSON-able object (training settings and data)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_version() -> str:
    """Fingerprint of the training code: the nn package and the kernels pseudo-labelling uses."""
    package = Path(__file__).resolve().parents[1]
    files = sorted((package / "nn").glob("*.py")) + [package / "leak" / "kernels.py"]
    return hashlib.sha1(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]


def run_fingerprint(settings: dict, fit_ids: list[str], fit_labels: list[int], n_classes: int, images: dict,
                    start: dict) -> str:
    """The identity of a training run: everything that changes the trained model. ``images`` identifies the
    pixels (source folder, size, fingerprint of the files); ``start`` what it starts from (the shared model's
    run id), empty from scratch."""
    return fingerprint({"settings": settings, "fit": fit_ids, "labels": fit_labels, "classes": n_classes,
                        "images": images, "code": code_version(), **start})
