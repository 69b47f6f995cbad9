"""Network, normalisation, augmentation views and local pretrained weights."""

import numpy as np
import pytest
import torch

from rxrx1_pipeline.nn.data import dihedral, fit_loader, random_dihedral, views_of_step
from rxrx1_pipeline.nn.network import EmbeddingNet, Normaliser


def test_normaliser_modes():
    x = torch.arange(2 * 6 * 4 * 4, dtype=torch.float32).reshape(2, 6, 4, 4)
    image = Normaliser("image")(x)
    assert torch.allclose(image.mean(dim=(2, 3)), torch.zeros(2, 6), atol=1e-5)
    mean = np.full((3, 6), 10.0, np.float32)
    std = np.full((3, 6), 2.0, np.float32)
    plate = Normaliser("plate", mean, std)(x, torch.tensor([0, 2]))
    assert torch.allclose(plate, (x - 10.0) / 2.0)
    with pytest.raises(ValueError, match="normalization must be"):
        Normaliser("batch")


def test_dihedral_views_are_distinct():
    x = torch.arange(16.0).reshape(1, 4, 4)
    views = [dihedral(x, k) for k in range(8)]
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8


def test_random_dihedral_applies_each_images_view():
    batch = torch.arange(5 * 6 * 4 * 4, dtype=torch.uint8).reshape(5, 6, 4, 4)
    views = torch.tensor([3, 0, 7, 3, 5])
    for image, augmented, k in zip(batch, random_dihedral(batch, views), views.tolist()):
        assert torch.equal(augmented, dihedral(image, k))


def test_shards_of_two_processes_make_the_global_batches_and_views_of_one():
    """Rank r takes positions r, r + world, ... of each global batch, for its sites and its views alike."""
    dataset = list(range(37))
    plates = np.zeros(37)
    one = fit_loader(dataset, plates, 8, 0, seed=5)
    two = [fit_loader(dataset, plates, 8, 0, seed=5, rank=r, world=2) for r in (0, 1)]
    for loader in (one, *two):
        loader.batch_sampler.set_epoch(3)
    g1, g2 = torch.Generator().manual_seed(9), [torch.Generator().manual_seed(9) for _ in (0, 1)]
    batches = list(zip(one, *two))
    for full, half0, half1 in batches[:-1]:  # the last global batch is padded to split evenly
        views = views_of_step(g1, len(full))
        assert torch.equal(half0, full[0::2]) and torch.equal(half1, full[1::2])
        assert torch.equal(views_of_step(g2[0], len(half0), 0, 2), views[0::2])
        assert torch.equal(views_of_step(g2[1], len(half1), 1, 2), views[1::2])
    assert sorted(torch.cat([b[0] for b in batches]).tolist()) == dataset
    one.batch_sampler.set_epoch(4)
    assert not torch.equal(next(iter(one)), batches[0][0])  # a new order every epoch
    with pytest.raises(ValueError, match="must divide by the 3 training processes"):
        fit_loader(dataset, plates, 8, 0, seed=5, rank=0, world=3)


@pytest.mark.parametrize("head", ["cosface", "arcface", "softmax"])
def test_one_step_lowers_the_loss(head):
    torch.manual_seed(0)
    net = EmbeddingNet("test_resnet", n_classes=5, embedding_dim=8, head=head, margin=0.2, scale=10.0)
    x, y = torch.randn(10, 6, 16, 16), torch.arange(10) % 5
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    net.train()

    def loss():
        return torch.nn.functional.cross_entropy(net.logits(net(x), y), y)

    before = loss()
    opt.zero_grad()
    before.backward()
    opt.step()
    assert loss().item() < before.item()


def test_local_pretrained_weights_adapt_the_first_conv(tmp_path):
    import timm
    from timm.models import adapt_input_conv

    source = timm.create_model("test_resnet", pretrained=False, in_chans=3, num_classes=10)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    net = EmbeddingNet("test_resnet", n_classes=4, embedding_dim=8, pretrained_weights=str(tmp_path / "weights.pth"))
    own = net.backbone.state_dict()
    conv = next(k for k, v in source.state_dict().items() if v.ndim == 4)
    assert own[conv].shape[1] == 6
    torch.testing.assert_close(own[conv], adapt_input_conv(6, source.state_dict()[conv]))
    other = [k for k, v in source.state_dict().items() if v.ndim == 4][-1]
    torch.testing.assert_close(own[other], source.state_dict()[other])
    with pytest.raises(FileNotFoundError, match="pretrained_weights: no such file"):
        EmbeddingNet("test_resnet", 4, 8, pretrained_weights=str(tmp_path / "missing.pth"))
