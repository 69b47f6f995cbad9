"""Network, normalisation, augmentation views and local pretrained weights."""

import numpy as np
import pytest
import torch

from rxrx1_pipeline.nn.data import dihedral, random_dihedral
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


def test_random_dihedral_draws_one_view_per_image_in_batch_order():
    batch = torch.arange(5 * 6 * 4 * 4, dtype=torch.uint8).reshape(5, 6, 4, 4)
    torch.manual_seed(3)
    out = random_dihedral(batch)
    torch.manual_seed(3)
    views = [int(torch.randint(8, (1,))) for _ in range(5)]  # as if drawn image by image
    for image, augmented, k in zip(batch, out, views):
        assert torch.equal(augmented, dihedral(image, k))


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
