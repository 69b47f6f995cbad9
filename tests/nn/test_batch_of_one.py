"""No batch of one site reaches BatchNorm in training mode: inference with per-plate statistics (AdaBN) and
the scoring model merge a last batch of one into the batch before it; where that cannot help (a plate of one
site, a batch size of one) the error names the setting and the plate."""

import numpy as np
import pandas as pd
import pytest
import torch

from rxrx1_pipeline.nn.checkpoints import model_checkpoint
from rxrx1_pipeline.nn.data import statistics_batches
from rxrx1_pipeline.nn.identity import model_settings
from rxrx1_pipeline.nn.loops import adapt_batchnorm
from rxrx1_pipeline.nn.network import Normaliser, build_network
from rxrx1_pipeline.nn.wells import WellScorer
from rxrx1_pipeline.schema import Inference, ParameterError, Training
from rxrx1_pipeline.storage.images import N_CHANNELS, MemoryStore

SIZE = 16


def tiny_model(n_classes: int = 3) -> dict:
    training = Training(arch="test_resnet", image_size=SIZE, embedding_dim=8, neck="mlp", channels_last=False)
    settings = model_settings(training)
    torch.manual_seed(0)
    return model_checkpoint(build_network(settings, n_classes, pretrained=False), settings, n_classes)


def plate_sites(counts: list[int]) -> pd.DataFrame:
    """Sites of plates 1.. of experiment HEPG2-01 with ``counts[p - 1]`` sites on plate p, one site per well."""
    rows = [{"experiment": "HEPG2-01", "plate": p + 1, "plate_index": p, "well_type": "treatment", "site": 1,
             "id_code": f"HEPG2-01_{p + 1}_B{w + 2:02d}"} for p, n in enumerate(counts) for w in range(n)]
    sites = pd.DataFrame(rows)
    sites["store_row"] = np.arange(len(sites))
    return sites


def scorer(sites: pd.DataFrame, inference: Inference) -> WellScorer:
    rng = np.random.default_rng(0)
    store = MemoryStore(rng.integers(0, 255, (len(sites), N_CHANNELS, SIZE, SIZE), dtype=np.uint8))
    stats = sites[["experiment", "plate", "plate_index"]].drop_duplicates().reset_index(drop=True)
    for c in range(1, N_CHANNELS + 1):
        stats[f"mean_w{c}"], stats[f"std_w{c}"] = 120.0, 60.0
    classes = pd.DataFrame({"sirna": [0, 1, 2], "class_index": [0, 1, 2], "well_type": ["treatment"] * 3})
    return WellScorer(tiny_model(), store, stats, classes, "HEPG2", inference)


def test_a_last_batch_of_one_joins_the_batch_before():
    assert statistics_batches(9, 4) == [[0, 1, 2, 3], [4, 5, 6, 7, 8]]
    assert statistics_batches(8, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert statistics_batches(10, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert statistics_batches(1, 4) == [[0]]  # alone: adapt_batchnorm refuses it


def test_per_plate_batchnorm_on_a_plate_of_k_batches_plus_one_site():
    sites = plate_sites([2 * 4 + 1, 5])  # plate 1: two batches of 4 and one site left
    logits, embeddings = scorer(sites, Inference(batch_size=4, tta=1)).score(sites, sites)
    assert logits.shape == (14, 4) and embeddings.shape == (14, 9)
    assert np.isfinite(logits.iloc[:, 1:].to_numpy()).all()


def test_the_adapted_statistics_are_those_of_every_site_of_the_plate():
    """Merged, the last site counts in the plate's statistics: one batch of 5 gives the same running mean as
    batches of 4 + 1 merged (a plain average over batches would weigh the single site as much as 4)."""
    sites = plate_sites([5])
    net = build_network(tiny_model()["settings"], 3, pretrained=False)
    store = MemoryStore(np.random.default_rng(1).integers(0, 255, (5, N_CHANNELS, SIZE, SIZE), dtype=np.uint8))
    norm = Normaliser("image")
    adapt_batchnorm(net, norm, store, sites, batch_size=4, workers=0)
    merged = net.embed[-1].running_mean.clone()
    adapt_batchnorm(net, norm, store, sites, batch_size=5, workers=0)
    torch.testing.assert_close(merged, net.embed[-1].running_mean)


def test_a_plate_of_one_site_names_the_setting_and_the_plate():
    sites = plate_sites([4, 1])
    with pytest.raises(ValueError, match=r"HEPG2: inference.batchnorm is 'per_plate' but plate HEPG2-01 plate 2 "
                                         r"has 1 site.*inference.batchnorm: trained"):
        scorer(sites, Inference(batch_size=4, tta=1)).score(sites, sites)
    logits, _ = scorer(sites, Inference(batch_size=4, tta=1, batchnorm="trained")).score(sites, sites)
    assert len(logits) == 5  # trained statistics (eval mode) take a batch of one


def test_a_batch_size_of_one_with_per_plate_batchnorm_is_refused():
    with pytest.raises(ParameterError, match="batch_size = 1 with batchnorm: per_plate"):
        Inference.model_validate({"batch_size": 1})
    assert Inference.model_validate({"batch_size": 1, "batchnorm": "trained"}).batch_size == 1
