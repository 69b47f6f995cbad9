import numpy as np
import pandas as pd
import pytest

from rxrx1_pipeline.nn.checkpoints import CheckpointStore
from rxrx1_pipeline.pipelines.inference.nodes import (
    combine_cell_lines,
    per_well,
    predict_wells,
)
from rxrx1_pipeline.pipelines.train.nodes import train_model
from tests.pipelines.conftest import TINY_INFERENCE


def test_per_well_averages_sites():
    codes = pd.Series(["b", "a", "b", "a"])
    values = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    out = per_well(codes, values, ["0", "7"])
    assert list(out.columns) == ["id_code", "0", "7"]
    assert list(out["id_code"]) == ["a", "b"]
    np.testing.assert_allclose(out[["0", "7"]].to_numpy(), [[5.0, 6.0], [3.0, 4.0]])
    assert (out.dtypes.iloc[1:] == np.float32).all()


def test_logits_follow_the_cached_logits_contract(tiny_data, prepared, tiny_training, tmp_path):
    wells = tiny_data[1]
    classes, model_sites, images, stats = prepared
    checkpoint, _ = train_model(model_sites, images, stats, classes, CheckpointStore(tmp_path / "c.pt"),
                                "HEPG2", {**tiny_training, "epochs": 1})
    valid_logits, test_logits, valid_emb, test_emb = predict_wells(
        checkpoint, model_sites, images, stats, classes, "HEPG2", TINY_INFERENCE)

    treatment = wells[wells["well_type"] == "treatment"]
    sirnas = sorted(classes.loc[classes["well_type"] == "treatment", "sirna"])
    for logits, split_wells in ((valid_logits, treatment[treatment["experiment"] == "HEPG2-03"]),
                                (test_logits, treatment[treatment["split"] == "test"])):
        assert list(logits.columns) == ["id_code", *map(str, sirnas)]
        assert sorted(logits["id_code"]) == sorted(split_wells["id_code"])
        assert (logits.dtypes.iloc[1:] == np.float32).all()
        assert np.isfinite(logits.iloc[:, 1:].to_numpy()).all()
    assert list(valid_emb["id_code"]) == list(valid_logits["id_code"])
    assert valid_emb.shape[1] == 1 + tiny_training["embedding_dim"]
    assert len(test_emb) == len(test_logits)

    # the same checkpoint gives the same logits (deterministic inference), also read by loader workers
    again = predict_wells(checkpoint, model_sites, images, stats, classes, "HEPG2",
                          {**TINY_INFERENCE, "num_workers": 2})[0]
    pd.testing.assert_frame_equal(again, valid_logits)

    # the image size comes from the checkpoint, and must match the store
    other = {**checkpoint, "settings": {**checkpoint["settings"], "image_size": 32}}
    with pytest.raises(ValueError, match="HEPG2: the model was trained on 32 px images but the image store "
                                         "holds 16 px"):
        predict_wells(other, model_sites, images, stats, classes, "HEPG2", TINY_INFERENCE)

    both = combine_cell_lines(test_logits.iloc[3:], test_logits.iloc[:3])
    pd.testing.assert_frame_equal(both, test_logits.sort_values("id_code", ignore_index=True))
