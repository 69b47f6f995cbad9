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
# Settings that define the network: a model fine-tuned from the shared one must have the shared one's.
NETWORK = ("arch", "image_size", "embedding_dim", "neck", "line_input", "head", "margin", "scale",
           "arcface_weight", "batchnorm_momentum", "normalization", "channels_last")


def model_settings(training: Training) -> dict[str, Any]:
    """The settings saved with a model: every training setting but the runtime ones, as plain values."""
    return training.model_dump(exclude=set(RUNTIME_ONLY))


def with_defaults(settings: dict) -> dict:
    """A saved model's settings with every setting it predates at the schema's default (the value it was
    trained with), so models saved before a setting existed still load."""
    defaults = {name: field.get_default(call_default_factory=True) for name, field in Training.model_fields.items()
                if not field.is_required()}
    return {**{k: v.model_dump() if hasattr(v, "model_dump") else v for k, v in defaults.items()}, **settings}


def fingerprint(obj) -> str:
    """Short stable hash of a JSON-able object (training settings and data)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_version() -> str:
    """Fingerprint of the training code: the nn package and the kernels pseudo-labelling uses."""
    package = Path(__file__).resolve().parents[1]
    files = sorted((package / "nn").glob("*.py")) + [package / "kernels.py"]
    return hashlib.sha1(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]


def run_fingerprint(settings: dict, fit_ids: list[str], fit_labels: list[int], n_classes: int, images: dict,
                    start: dict) -> str:
    """The identity of a training run: everything that changes the trained model. ``images`` identifies the
    pixels (source folder, size, fingerprint of the files); ``start`` what it starts from (the shared model's
    run id), empty from scratch."""
    return fingerprint({"settings": settings, "fit": fit_ids, "labels": fit_labels, "classes": n_classes,
                        "images": images, "code": code_version(), **start})
