"""The mechanics of the 1st place's recipe (conf/real): neck, cell line as a one-hot input, softmax + ArcFace
head, BatchNorm momentum, Adam, cosine cycles, gradient accumulation, zoom, intensity jitter, the
pseudo-label share, and timm's ImageNet weights by name (refused offline before any work)."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rxrx1_pipeline.nn.augment import jitter_intensity, zoom
from rxrx1_pipeline.nn.identity import model_settings
from rxrx1_pipeline.nn.loops import cycles_lr, optimiser
from rxrx1_pipeline.nn.network import build_network, with_margin
from rxrx1_pipeline.schema import LrCycle
from tests.pipelines.conftest import TINY_TRAINING, changed

RECIPE = {"neck": "mlp", "line_input": "one_hot", "head": "softmax_arcface", "margin": 0.5, "scale": 30.0,
          "arcface_weight": 0.2, "batchnorm_momentum": 0.05}


def _net(n_classes: int = 5, lines=("HEPG2", "HUVEC", "RPE", "U2OS"), **changes):
    settings = model_settings(changed(TINY_TRAINING, {**RECIPE, **changes})) | {"cell_lines": list(lines)}
    return build_network(settings, n_classes)


def test_the_neck_takes_the_one_hot_cell_line_and_every_batchnorm_has_the_momentum():
    net = _net()
    features = net.backbone.num_features
    kinds = [type(layer).__name__ for layer in net.embed]
    assert kinds == ["BatchNorm1d", "Linear", "ReLU", "BatchNorm1d", "Linear", "BatchNorm1d"]
    assert net.embed[1].in_features == features + 4 and net.embed[1].bias is None
    assert net.line_embedding is None
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(norms) > 3 and {m.momentum for m in norms} == {0.05}
    net.eval()
    x = torch.randn(2, 6, 16, 16)
    one, other = net(x, torch.tensor([0, 0])), net(x, torch.tensor([0, 3]))
    assert torch.equal(one[0], other[0]) and not torch.equal(one[1], other[1])  # the line changes the embedding


def test_softmax_arcface_loss_is_the_weighted_sum_and_inference_uses_the_softmax_classifier():
    net = _net()
    embedding, labels = torch.randn(6, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    logits, loss = net.loss(embedding, labels)
    softmax = net.classifier(embedding)
    torch.testing.assert_close(logits, softmax)
    torch.testing.assert_close(net.logits(embedding), softmax)  # no margin, no ArcFace at inference
    cos = F.linear(F.normalize(embedding), F.normalize(net.arc_weight))
    theta = torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))
    target = torch.where(theta + 0.5 < math.pi, torch.cos(theta + 0.5), cos - math.sin(math.pi - 0.5) * 0.5)
    arc = F.cross_entropy(30.0 * torch.where(F.one_hot(labels, 5).bool(), target, cos), labels)
    expected = 0.8 * F.cross_entropy(softmax, labels) + 0.2 * arc / 2
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


def test_the_arcface_margin_keeps_the_target_decreasing_past_pi():
    cos = torch.linspace(-1, 1, 201)[:, None].clamp(-1 + 1e-6, 1 - 1e-6)
    target = with_margin(cos, torch.zeros(201, dtype=torch.long), "arcface", 0.5)[:, 0]
    assert (target.diff() > 0).all()  # monotonic in cos, so in the angle, also where theta + m > pi
    assert target[-1] == pytest.approx(math.cos(0.5), abs=1e-3)


def test_cosine_cycles_restart_and_adam_takes_the_weight_decay():
    cycles = [LrCycle(lr=1.5e-4, until_epoch=90), LrCycle(lr=6e-5, until_epoch=150)]
    assert cycles_lr(0, cycles) == pytest.approx(1.5e-4)
    assert cycles_lr(45, cycles) == pytest.approx(0.75e-4)
    assert cycles_lr(89.999, cycles) == pytest.approx(0, abs=1e-9)
    assert cycles_lr(90, cycles) == pytest.approx(6e-5)  # the restart
    assert cycles_lr(129, cycles) == pytest.approx(6e-5 * 0.5 * (1 + math.cos(math.pi * 39 / 60)))
    training = changed(TINY_TRAINING, {"optimizer": "adam", "weight_decay": 1e-5, "epochs": 130,
                                       "lr_cycles": [c.model_dump() for c in cycles]})
    opt, sched = optimiser(torch.nn.Linear(2, 2), training, steps_per_epoch=4)
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["weight_decay"] == 1e-5
    rates = [sched.at(s / 4) for s in range(4 * 91)]  # batch i of 4 in an epoch: epoch + i / 4
    assert rates[0] == pytest.approx(1.5e-4) and rates[4 * 45] == pytest.approx(0.75e-4)
    assert rates[4 * 90] == pytest.approx(6e-5) and opt.param_groups[0]["lr"] == rates[-1]
    sched.at(7.25)
    restored = optimiser(torch.nn.Linear(2, 2), training, steps_per_epoch=4)[1]
    restored.load_state_dict(sched.state_dict())  # a resumed run continues at the saved position
    assert restored.opt.param_groups[0]["lr"] == pytest.approx(cycles_lr(7.25, cycles))


class _Flat(torch.utils.data.Dataset):
    """Images constant over their pixels (every dihedral view the same), 5 classes."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.values = torch.randint(0, 255, (32, 6), generator=g, dtype=torch.uint8)
        self.labels = torch.randint(0, 5, (32,), generator=g)

    def __len__(self):
        return 32

    def __getitem__(self, i):
        return self.values[i][:, None, None].expand(6, 4, 4).clone(), i, int(self.labels[i])


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(96, 5)
        with torch.no_grad():
            self.linear.weight.copy_(torch.linspace(-0.1, 0.1, 480).reshape(5, 96))
            self.linear.bias.zero_()

    def forward(self, x, labels, lines=None, partner=None, lam=1.0):
        logits = self.linear(x.flatten(1))
        return logits, F.cross_entropy(logits, labels)


def _one_epoch(batch: int, accumulate: int) -> torch.Tensor:
    from rxrx1_pipeline.nn.data import fit_loader
    from rxrx1_pipeline.nn.loops import run_epoch

    data = fit_loader(_Flat(), np.zeros(32), batch, 0, seed=2)
    step = _Linear()
    opt = torch.optim.SGD(step.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    run_epoch(step, lambda x, p: x.float() / 255, opt, sched, data, torch.zeros(32, dtype=torch.long),
              torch.Generator().manual_seed(0), "test", changed(TINY_TRAINING, {"accumulate_steps": accumulate}))
    return step.linear.weight.detach().clone()


def test_two_accumulated_batches_of_8_step_as_one_batch_of_16():
    torch.testing.assert_close(_one_epoch(8, 2), _one_epoch(16, 1))
    assert not torch.allclose(_one_epoch(8, 1), _one_epoch(16, 1))


def test_zoom_crops_a_square_of_the_image_and_keeps_its_pixel_values():
    x = torch.arange(2 * 6 * 16 * 16, dtype=torch.float32).reshape(2, 6, 16, 16)
    assert zoom(x, 1.0, torch.Generator().manual_seed(0)) is x
    out = zoom(x, 0.5, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for image, zoomed in zip(x, out):
        assert set(zoomed.unique().tolist()) <= set(image.unique().tolist())  # nearest: no new values
        rows = (zoomed[0, :, 0] // 16).unique()  # the source rows it shows
        assert 8 <= len(rows) <= 16


def test_intensity_jitter_is_one_gain_and_bias_per_channel():
    x = torch.randn(3, 6, 8, 8)
    assert jitter_intensity(x, 0.0, 0.0, torch.Generator()) is x
    out = jitter_intensity(x, 0.1, 0.1, torch.Generator().manual_seed(1))
    for i in range(3):
        for c in range(6):
            a, b = x[i, c].flatten(), out[i, c].flatten()
            gain = ((b - b.mean()) * (a - a.mean())).sum() / ((a - a.mean()) ** 2).sum()
            torch.testing.assert_close(b, gain * a + (b.mean() - gain * a.mean()), rtol=1e-4, atol=1e-4)
            assert 0.5 < gain < 1.5


def test_pseudo_label_share_grows_from_the_initial_share():
    from tests.pipelines.train.test_levers import _labeller

    labeller = _labeller(initial_share=0.4, share=1.0)  # 2 epochs, pseudo-labels from the first
    wells = len(labeller.wells)
    assert labeller.target(0) == round((0.4 + 0.6 * 0.5) * wells) and labeller.target(1) == wells


def test_imagenet_weights_unreachable_fail_naming_both_settings(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "KEDRO_DISABLE_TELEMETRY": "1"}
    code = "from rxrx1_pipeline.nn.network import fetch_imagenet_weights; fetch_imagenet_weights('resnet18', 'HEPG2.training')"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert ("HEPG2.training.pretrained = 'imagenet': timm could not get the ImageNet weights of resnet18" in result.stderr
            and "set HEPG2.training.pretrained: none and HEPG2.training.pretrained_weights: <path" in result.stderr)


def test_an_offline_run_with_imagenet_weights_stops_before_any_node(project_copy, monkeypatch, tmp_path):
    from tests.conftest import kedro_run

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = kedro_run(project_copy, "--pipelines=full", "--params=shared_training.pretrained=imagenet")
    assert result.returncode != 0
    assert "shared_training.pretrained = 'imagenet'" in result.stderr and "pretrained_weights" in result.stderr
    assert not any(p.is_file() for p in (project_copy / "data").rglob("*") if p.name != ".gitkeep")


def test_a_model_saved_before_the_recipe_settings_still_loads():
    from rxrx1_pipeline.nn.checkpoints import load_model, model_checkpoint

    settings = model_settings(TINY_TRAINING)
    net = build_network(settings, 5)
    old = {k: v for k, v in settings.items() if k not in ("neck", "line_input", "arcface_weight", "batchnorm_momentum",
                                                          "pretrained", "optimizer", "lr_cycles")}
    loaded = load_model(model_checkpoint(net, old, 5), torch.device("cpu"))
    for key, value in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
