"""The training levers of benchmarks/levers.md: batches from one plate, crops, mixup / CutMix, the shared model of
every cell line (and fine-tuning from it), progressive pseudo-labelling."""

import numpy as np
import pandas as pd
import pytest
import torch

from rxrx1_pipeline.nn.augment import mix, resized_crop
from rxrx1_pipeline.storage.checkpoints import CheckpointStore
from rxrx1_pipeline.nn.data import FitBatches
from rxrx1_pipeline.nn.pseudo import PseudoLabeller
from rxrx1_pipeline.pipelines.plate_groups.nodes import (
    assign_train_plate_groups,
    discover_sirna_groups,
    tabulate_plate_layouts,
)
from rxrx1_pipeline.pipelines.train.nodes import LINE_INPUTS, train_model, train_shared_model
from rxrx1_pipeline.schema import ParameterError, PseudoLabels, SharedTraining, validate_parameters
from tests.pipelines.conftest import TINY_TRAINING_VALUES, changed


def test_per_plate_batches_hold_one_plate_each_and_cover_every_site_once():
    plates = np.repeat([0, 1, 2], [21, 9, 30])
    batches = FitBatches(plates, 8, seed=3, by_plate=True)
    batches.set_epoch(2)
    drawn = batches.global_batches()
    assert all(len(np.unique(plates[b])) == 1 for b in drawn)
    assert sorted(np.concatenate(drawn).tolist()) == list(range(60))
    assert len(drawn) == len(batches) == 3 + 1 + 4  # plate 1's 9th site joins its batch (BatchNorm needs 2)
    assert [b.tolist() for b in drawn] == [b.tolist() for b in batches.global_batches()]  # (seed, epoch) alone
    mixed = FitBatches(plates, 8, seed=3).global_batches()
    assert any(len(np.unique(plates[b])) > 1 for b in mixed)


def test_a_fixed_number_of_steps_keeps_the_epoch_when_the_data_grows():
    grown = FitBatches(np.zeros(100), 8, seed=0, steps=5)
    assert len(grown) == 5 and len(list(grown)) == 5 and all(len(b) == 8 for b in grown)
    halves = [list(FitBatches(np.zeros(20), 8, seed=0, rank=r, world=2)) for r in (0, 1)]
    assert all(len(a) == len(b) for a, b in zip(*halves))  # a last batch of 4 splits evenly


def test_resized_crops_keep_the_shape_and_change_the_pixels():
    x = torch.rand(6, 6, 16, 16)
    g = torch.Generator().manual_seed(0)
    assert resized_crop(x, 1.0, g) is x
    cropped = resized_crop(x, 0.3, g)
    assert cropped.shape == x.shape and not torch.allclose(cropped, x)
    # a crop is a zoom into the image: its values stay within the image's range
    assert cropped.min() >= x.min() - 1e-6 and cropped.max() <= x.max() + 1e-6


def test_mixup_and_cutmix_blend_each_site_with_its_partner():
    x = torch.rand(4, 6, 8, 8)
    g = torch.Generator().manual_seed(1)
    same, partner, lam = mix(x, 0.0, 0.0, g)
    assert same is x and partner is None and lam == 1.0
    mixed, partner, lam = mix(x, 0.4, 0.0, g)
    assert partner.tolist() == [3, 2, 1, 0] and 0 <= lam <= 1
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[partner])
    pasted, partner, lam = mix(x, 0.0, 1.0, g)
    moved = partner != torch.arange(4)  # a random permutation: a site may be its own partner
    own = (pasted == x).all(dim=1)[moved].float().mean().item()  # share of pixels still the site's own
    assert moved.any() and own == pytest.approx(lam)


def test_the_shared_model_learns_every_line_and_fine_tunes_per_line(prepared, tiny_training, tmp_path):
    classes, model_sites, images, stats = prepared
    other = model_sites.assign(cell_line="HUVEC")  # a second cell line: the same sites under another name
    shared, history, labels = train_shared_model(classes, CheckpointStore(tmp_path / "s.pt"), tiny_training, None,
                                                 None, **line_inputs(HEPG2=(model_sites, images, stats),
                                                                     HUVEC=(other, images, stats)))
    assert labels.empty
    assert shared["settings"]["cell_lines"] == ["HEPG2", "HUVEC"] and list(history["epoch"]) == [1, 2]
    lines = shared["state_dict"]["line_embedding.weight"]
    assert lines.shape[0] == 2 and not torch.equal(lines[0], lines[1])  # each line has learned its own input

    as_is, none, _ = train_model(model_sites, images, stats, classes, CheckpointStore(tmp_path / "a.pt"), "HUVEC",
                                 changed(tiny_training, {"init": "shared", "epochs": 0}), shared)
    assert none.empty and as_is["settings"]["cell_line"] == "HUVEC" and as_is["state_dict"] is shared["state_dict"]
    tuned, tuned_history, _ = train_model(model_sites, images, stats, classes, CheckpointStore(tmp_path / "b.pt"),
                                          "HEPG2", changed(tiny_training, {"init": "shared", "epochs": 1}), shared)
    assert list(tuned_history["epoch"]) == [1]
    assert not torch.equal(tuned["state_dict"]["embed.0.weight"], shared["state_dict"]["embed.0.weight"])

    with pytest.raises(ValueError, match="image_size differ from shared_training"):
        train_model(model_sites, images, stats, classes, CheckpointStore(tmp_path / "c.pt"), "HEPG2",
                    changed(tiny_training, {"init": "shared", "image_size": 32}), shared)
    with pytest.raises(ValueError, match="no shared model was trained"):
        train_model(model_sites, images, stats, classes, CheckpointStore(tmp_path / "c.pt"), "HEPG2",
                    changed(tiny_training, {"init": "shared"}), {})
    off, off_history, _ = train_shared_model(classes, CheckpointStore(tmp_path / "o.pt"),
                                          changed(tiny_training, {"epochs": 0}, SharedTraining), None, None,
                                          **line_inputs(HEPG2=(model_sites, images, stats)))
    assert off == {} and off_history.empty


def test_starting_from_an_untrained_shared_model_is_refused_before_running(tiny_training):
    block = {"cell_line": "HEPG2", "training": {**TINY_TRAINING_VALUES, "init": "shared"}}
    with pytest.raises(ParameterError, match="HEPG2.training.init = 'shared' with shared_training.epochs = 0"):
        validate_parameters({"HEPG2": block, "shared_training": {**TINY_TRAINING_VALUES, "epochs": 0}},
                            {"HEPG2", "shared_training"})
    with pytest.raises(ParameterError, match="epochs must be >= 1"):
        validate_parameters({"HEPG2": {"cell_line": "HEPG2", "training": {**TINY_TRAINING_VALUES, "epochs": 0}}},
                            {"HEPG2"})


def _labeller(n_plates: int = 2, per_plate: int = 4, share: float = 1.0, initial_share: float = 0.0) -> PseudoLabeller:
    """Candidates of one experiment whose plate p holds group p - 1; 2 groups of 4 siRNAs, 1 site per well."""
    wells = pd.DataFrame([{"id_code": f"E-1_{p}_W{w}", "experiment": "E-1", "plate": p, "plate_index": p - 1,
                           "store_row": (p - 1) * per_plate + w}
                          for p in range(1, n_plates + 1) for w in range(per_plate)])
    classes = pd.DataFrame({"sirna": range(9), "class_index": range(9), "well_type": ["treatment"] * 8 + ["negative"]})
    groups = pd.DataFrame({"sirna": range(8), "group": [0] * 4 + [1] * 4})
    layouts = pd.DataFrame({"layout": [0, 1], "plate_1": [0, 1], "plate_2": [1, 0]})
    return PseudoLabeller(wells, classes, groups, layouts, PseudoLabels(start_epoch=1, initial_share=initial_share, final_share=share), epochs=2)


def test_pseudo_labels_follow_the_plate_group_one_well_per_sirna_most_confident_first():
    labeller = _labeller(share=1.0)
    truth = np.array([0, 1, 2, 3, 4, 5, 6, 7])  # plate 1 holds siRNAs 0-3 (group 0), plate 2 siRNAs 4-7
    logits = np.full((8, 8), -3.0, np.float32)
    logits[np.arange(8), truth] = np.linspace(5, 1, 8)  # well 0 the most confident
    logits[1, 0] = 4.9  # well 1 hesitates between siRNA 1 and siRNA 0, which well 0 takes
    logits[3, 4] = 9.0  # well 3 prefers siRNA 4 of the other group, outside its plate's group
    assert labeller.target(0) == 4 and labeller.target(1) == 8  # half the wells before epoch 1, all at the end
    first = labeller.update(logits, 0)
    assert len(first) == 4 and first["id_code"].iloc[0] == "E-1_1_W0"
    second = labeller.update(logits, 1)
    labels = pd.concat([first, second]).set_index("id_code")["sirna"]
    assert len(labels) == 8 and labels.is_unique  # every well once, one well per (plate, siRNA)
    assert (labels.to_numpy() == truth[[int(c[-1]) + 4 * (c[4] == "2") for c in labels.index]]).all()
    assert set(second["epoch"]) == {2} and set(first["epoch"]) == {1}


def test_pseudo_labelling_trains_on_valid_and_test_wells_and_resumes_with_its_labels(prepared, tiny_training,
                                                                                    tiny_data, tmp_path):
    classes, model_sites, images, stats = prepared
    _, wells, _, _ = tiny_data
    groups = discover_sirna_groups(wells)
    layouts = tabulate_plate_layouts(assign_train_plate_groups(wells, groups))
    training = changed(tiny_training, {"epochs": 3, "pseudo_labels": {"start_epoch": 2, "final_share": 0.6}})
    model, history, labels = train_model(model_sites, images, stats, classes, CheckpointStore(tmp_path / "p.pt"),
                                         "HEPG2", training, None, groups, layouts)
    candidates = model_sites[model_sites["role"].isin(["valid", "test"]) & (model_sites["well_type"] == "treatment")]
    n = candidates["id_code"].nunique()
    assert list(history["pseudo_labels"]) == [0, round(0.6 * 0.5 * n), round(0.6 * n)]
    assert list(labels.groupby("epoch").size()) == [round(0.6 * 0.5 * n), round(0.6 * n) - round(0.6 * 0.5 * n)]
    assert set(labels["id_code"]) <= set(candidates["id_code"]) and labels["id_code"].is_unique
    plate = labels["id_code"].str.rsplit("_", n=1).str[0]
    assert not pd.DataFrame({"plate": plate, "sirna": labels["sirna"]}).duplicated().any()
    # each label is an siRNA of the group that one layout puts on the well's plate
    group_of = groups.set_index("sirna")["group"]
    per_plate = pd.DataFrame({"plate": plate, "group": group_of.loc[labels["sirna"]].to_numpy()})
    assert (per_plate.groupby("plate")["group"].nunique() == 1).all()

    class CrashingStore(CheckpointStore):
        def save(self, run_id, epoch, *args):
            super().save(run_id, epoch, *args)
            if epoch == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(model_sites, images, stats, classes, CrashingStore(tmp_path / "q.pt"), "HEPG2", training, None,
                    groups, layouts)
    resumed, _, resumed_labels = train_model(model_sites, images, stats, classes, CheckpointStore(tmp_path / "q.pt"),
                                             "HEPG2", training, None, groups, layouts)
    pd.testing.assert_frame_equal(resumed_labels, labels)
    for key, value in model["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, msg=key)


def test_the_shared_model_pseudo_labels_the_wells_of_every_line(prepared, tiny_training, tiny_data, tmp_path):
    classes, model_sites, images, stats = prepared
    _, wells, _, _ = tiny_data
    groups = discover_sirna_groups(wells)
    layouts = tabulate_plate_layouts(assign_train_plate_groups(wells, groups))
    other = model_sites.assign(cell_line="HUVEC", experiment=model_sites["experiment"].str.replace("HEPG2", "HUVEC"),
                               id_code=model_sites["id_code"].str.replace("HEPG2", "HUVEC"))
    training = changed(tiny_training, {"epochs": 3, "pseudo_labels": {"start_epoch": 2, "initial_share": 0.2,
                                                                      "final_share": 0.6}}, SharedTraining)
    _, history, labels = train_shared_model(classes, CheckpointStore(tmp_path / "s.pt"), training, groups, layouts,
                                            **line_inputs(HEPG2=(model_sites, images, stats),
                                                          HUVEC=(other, images, stats)))
    candidates = model_sites[model_sites["role"].isin(["valid", "test"]) & (model_sites["well_type"] == "treatment")]
    n = 2 * candidates["id_code"].nunique()  # both lines' wells
    assert list(history["pseudo_labels"]) == [0, round((0.2 + 0.4 * 0.5) * n), round(0.6 * n)]
    assert labels["id_code"].is_unique and set(labels["id_code"].str[:5]) == {"HEPG2", "HUVEC"}


def line_inputs(**lines: tuple) -> dict:
    """``train_shared_model``'s named inputs of each line from its (model_sites, site_images, plate_stats)."""
    return {f"{line}_{name}": value for line, values in lines.items() for name, value in zip(LINE_INPUTS, values)}
