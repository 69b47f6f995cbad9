"""`kedro run --env=real` trains the 1st place's recipe (maciej-sypetkowski/kaggle-rcic-1st), setting for setting:
the training blocks of conf/real, the network and optimiser built from them, and the inference block."""

import math

import pytest
import torch

from rxrx1_pipeline.nn.identity import model_settings
from rxrx1_pipeline.schema import NETWORK
from rxrx1_pipeline.nn.loops import cycles_lr, optimiser
from rxrx1_pipeline.nn.network import build_network
from rxrx1_pipeline.leak.plates import CELL_LINES
from rxrx1_pipeline.schema import Inference, SharedTraining, Training, validate_parameters
from tests.test_schema import conf


@pytest.fixture(scope="module")
def real():
    parameters = conf("real")
    validate_parameters(parameters)
    return parameters


def test_the_shared_model_is_the_first_place_recipe(real):
    t = SharedTraining.model_validate(real["shared_training"])
    assert (t.arch, t.pretrained, t.pretrained_weights, t.image_size) == ("densenet161", "imagenet", None, 512)
    assert (t.embedding_dim, t.neck, t.line_input) == (1024, "mlp", "one_hot")
    assert (t.head, t.scale, t.margin, t.arcface_weight) == ("softmax_arcface", 30.0, 0.5, 0.2)
    assert (t.batchnorm_momentum, t.normalization) == (0.05, "image")
    a = t.augment
    assert (a.zoom_min_edge, a.intensity_gain_std, a.intensity_bias_std, a.cutmix, a.mixup, a.crop_min_area) == (
        0.5, 0.1, 0.1, 1.0, 0.0, 1.0)
    assert (t.batch_size, t.accumulate_steps, t.optimizer, t.weight_decay) == (24, 2, "adam", 1e-5)
    assert [(c.lr, c.until_epoch) for c in t.lr_cycles] == [(1.5e-4, 90), (6e-5, 150)] and t.epochs == 130
    assert t.mixed_precision and t.controls == "all_experiments" and t.init == "scratch"
    p = t.pseudo_labels
    assert (p.start_epoch, p.initial_share, p.final_share) == (91, 0.4, 1.0)  # --pl-epoch 90 (0-based), 0.6x + 0.4
    assert (t.seed, t.num_workers) == (0, 10)


def test_each_cell_line_uses_the_shared_model_as_it_is(real):
    shared = model_settings(SharedTraining.model_validate(real["shared_training"]))
    for cell_line in CELL_LINES:
        line = Training.model_validate(real[cell_line]["training"])
        assert line.init == "shared" and line.epochs == 0
        assert {k: model_settings(line)[k] for k in NETWORK} == {k: shared[k] for k in NETWORK}


def test_the_network_and_optimiser_built_from_conf_real(real):
    training = SharedTraining.model_validate(real["shared_training"])
    net = build_network(model_settings(training) | {"cell_lines": list(CELL_LINES)}, n_classes=1139,
                        pretrained=False)  # the weights are timm's; the structure is what is checked here
    assert type(net.backbone).__name__ == "DenseNet" and net.backbone.num_features == 2208
    assert net.embed[1].in_features == 2208 + 4 and net.embed[-1].num_features == 1024
    assert net.classifier.out_features == 1139 and net.arc_weight.shape == (1139, 1024)
    assert {m.momentum for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)} == {0.05}
    conv = net.backbone.features.conv0
    assert conv.in_channels == 6 and conv.out_channels == 96
    opt, sched = optimiser(net, training, steps_per_epoch=100)
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["weight_decay"] == 1e-5
    assert opt.param_groups[0]["lr"] == pytest.approx(1.5e-4)
    assert cycles_lr(129.5, training.lr_cycles) == pytest.approx(6e-5 * 0.5 * (1 + math.cos(math.pi * 39.5 / 60)))


def test_inference_sums_both_sites_over_eight_views_with_trained_batchnorm(real):
    inference = Inference.model_validate(real["inference"])
    assert (inference.tta, inference.sites, inference.batchnorm, inference.plate_centring) == (8, "sum", "trained", False)
