"""What identifies a trained model: old checkpoints load with the settings they were trained with."""

from rxrx1_pipeline.nn.identity import ALWAYS_SAVED, PREDATED, RUNTIME_ONLY, model_settings, with_defaults
from rxrx1_pipeline.schema import Training


def test_every_saved_setting_is_always_saved_or_has_its_value_from_before_it():
    saved = set(Training.model_fields) - RUNTIME_ONLY
    assert set(ALWAYS_SAVED) | set(PREDATED) == saved
    assert not set(ALWAYS_SAVED) & set(PREDATED)
    assert set(model_settings(Training())) == saved


def test_an_old_checkpoint_loads_with_what_it_was_trained_with_not_todays_defaults():
    """A model saved before channels_last, controls, init, batches and zoom existed trained without them, whatever
    the schema's defaults (the base recipe) say today."""
    old = {name: value for name, value in model_settings(Training()).items() if name in ALWAYS_SAVED}
    old["augment"] = {"crop_min_area": 0.5, "mixup": 0.0, "cutmix": 0.0}
    filled = with_defaults(old)
    assert (filled["channels_last"], filled["controls"], filled["init"], filled["batches"]) == \
        (False, "train_experiments", "scratch", "mixed")
    assert Training().channels_last and Training().init == "shared"  # today's base recipe differs
    assert filled["augment"] == {**PREDATED["augment"], "crop_min_area": 0.5}
    assert with_defaults(model_settings(Training())) == model_settings(Training())  # a new model: as saved
