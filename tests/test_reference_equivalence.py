"""The 1st place's recipe against its own code: maciej-sypetkowski/kaggle-rcic-1st (MIT licence, at its last
commit) in ../shared/reference/kaggle-rcic-1st, imported here and run on the same seeded inputs as this
project's implementation. Skipped where ../shared is absent (a user's clone).

Nothing of the original is copied into the project; these tests only call it. What cannot be installed is
stubbed: ``apex`` (its ``amp`` is not called by the functions compared) and, where OpenCV is not installed,
``cv2``: ``imread`` decodes the 8-bit grayscale PNG with Pillow (lossless) and ``resize`` takes OpenCV's
``INTER_NEAREST`` source index (``resizeNN``: ``cvFloor(dx * (1 / (dsize / ssize)))``, in double).

Each comparison is exact or to float tolerance, or a bounded difference that the README's list of
differences states with its reason (the pseudo-label share, the remainder batch, a last odd batch).
"""

from __future__ import annotations

import importlib
import math
import sys
import types
from argparse import Namespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rxrx1_pipeline.nn.augment import cutmix_box, jitter_intensity, mix, paste_box, zoom_square
from rxrx1_pipeline.nn.data import FitBatches, dihedral, random_dihedral
from rxrx1_pipeline.nn.loops import class_logits, embed_sites, optimiser, run_epoch
from rxrx1_pipeline.nn.network import EmbeddingNet, Normaliser
from rxrx1_pipeline.schema import SharedTraining
from tests.conftest import SHARED
from tests.pipelines.conftest import TINY_TRAINING, changed

REFERENCE = SHARED / "reference" / "kaggle-rcic-1st"
REAL_SITE = SHARED / "rxrx1" / "images" / "train" / "HEPG2-01" / "Plate1" / "B02_s1"  # all six channels
MODULES = ("precomputed", "model", "dataset", "main", "make_submission")


def _cv2_stub() -> types.ModuleType:
    cv2 = types.ModuleType("cv2")
    cv2.IMREAD_GRAYSCALE, cv2.INTER_NEAREST = 0, 0

    def imread(path, flag):
        return np.array(Image.open(path))

    def resize(image, dsize, interpolation):
        assert interpolation == cv2.INTER_NEAREST
        width, height = dsize
        rows = np.minimum(np.floor(np.arange(height) * (1.0 / (height / image.shape[0]))).astype(int), image.shape[0] - 1)
        cols = np.minimum(np.floor(np.arange(width) * (1.0 / (width / image.shape[1]))).astype(int), image.shape[1] - 1)
        return image[rows][:, cols]

    cv2.imread, cv2.resize = imread, resize
    return cv2


@pytest.fixture(scope="module")
def ref() -> Namespace:
    """The original's modules (main, model, dataset, make_submission, precomputed), imported from its folder."""
    if not (REFERENCE / "main.py").is_file():
        pytest.skip(f"the 1st place's code is not in {REFERENCE}")
    stubs = {"apex": types.ModuleType("apex")}
    stubs["apex"].amp = types.SimpleNamespace()
    try:
        import cv2  # noqa: F401
    except ImportError:
        stubs["cv2"] = _cv2_stub()
    names = (*stubs, *MODULES)
    saved = {name: sys.modules.pop(name, None) for name in names}
    sys.modules.update(stubs)
    sys.path.insert(0, str(REFERENCE))
    try:
        return Namespace(**{name: importlib.import_module(name) for name in MODULES})
    finally:
        sys.path.remove(str(REFERENCE))
        for name in names:  # the generic names (main, model, dataset) leave sys.modules as they were
            sys.modules.pop(name, None)
            if saved[name] is not None:
                sys.modules[name] = saved[name]


@pytest.fixture
def no_cuda(monkeypatch):
    """The original moves tensors with ``.cuda()``; here they stay on the CPU."""
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)


def first_place() -> SharedTraining:
    from tests.test_schema import conf

    return SharedTraining.model_validate(conf("real")["shared_training"])


# --- the learning rate ------------------------------------------------------------------------------------

class _Sites(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((6, 4, 4), i % 7, dtype=torch.uint8), i, i % 5


class _Step(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(96, 5)

    def forward(self, x, labels, lines=None, partner=None, lam=1.0):
        logits = self.linear(x.flatten(1))
        return logits, F.cross_entropy(logits, labels)


def test_learning_rate_at_every_step_of_a_scaled_run_with_growing_epochs(ref):
    """``--lr cosine,1.5e-4,90,6e-5,150,0 -e 130 --gradient-accumulation 2``: the rate of every optimiser step
    of 130 epochs (4 batches, then 6 and 8 as pseudo-labelled sites join) is the original's
    ``get_learning_rate(args, epoch + i / len(train_loader))`` at the step's batch i."""
    recipe = first_place()
    assert [(c.lr, c.until_epoch) for c in recipe.lr_cycles] == [(1.5e-4, 90), (6e-5, 150)] and recipe.epochs == 130
    args = Namespace(lr=("cosine", [1.5e-4, 90, 6e-5, 150, 0]), epochs=130, gradient_accumulation=2)
    training = changed(TINY_TRAINING, {"lr_cycles": [c.model_dump() for c in recipe.lr_cycles], "epochs": 130,
                                       "optimizer": "adam", "accumulate_steps": 2, "lr": recipe.lr})
    step = _Step()
    opt, sched = optimiser(step, training, steps_per_epoch=4)
    used = []
    plain = opt.step
    opt.step = lambda *a, **k: (used.append(opt.param_groups[0]["lr"]), plain(*a, **k))[1]
    expected = []
    for epoch in range(130):
        n_sites = 16 if epoch < 90 else 24 if epoch < 110 else 32  # pseudo-labelled sites from epoch 90 (0-based)
        data = torch.utils.data.DataLoader(_Sites(n_sites), batch_sampler=FitBatches(np.zeros(n_sites), 4, seed=0))
        data.batch_sampler.set_epoch(epoch)
        n = len(data)
        assert n == n_sites // 4  # = len of the original's DataLoader(batch_size 4, drop_last=True)
        run_epoch(step, lambda x, p: x.float(), opt, sched, data, torch.zeros(n_sites, dtype=torch.long),
                  torch.Generator().manual_seed(epoch), "lr", training, epoch=epoch)
        expected += [ref.main.get_learning_rate(args, epoch + i / n) for i in range(n) if (i + 1) % 2 == 0]
    assert len(used) == len(expected) == 2 * 90 + 3 * 20 + 4 * 20
    np.testing.assert_allclose(used, expected, rtol=1e-12, atol=0)


# --- the loss ---------------------------------------------------------------------------------------------

def _net(n_classes: int = 7, lines: int = 4) -> EmbeddingNet:
    torch.manual_seed(0)
    net = EmbeddingNet("test_resnet", n_classes, 16, head="softmax_arcface", margin=0.5, scale=30.0, n_lines=lines,
                       neck="mlp", line_input="one_hot", arcface_weight=0.2)
    return net.eval()


def _original_loss(ref, net: EmbeddingNet, embedding: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The original's ``ModelAndLoss.train_forward`` on this network's embedding and classifier weights."""
    model = ref.model
    arc = model.ArcMarginProduct(net.arc_weight.shape[1], net.arc_weight.shape[0])
    arc.weight.data.copy_(net.arc_weight.data)
    original = model.ModelAndLoss.__new__(model.ModelAndLoss)
    torch.nn.Module.__init__(original)
    original.args = Namespace(metric_loss_coeff=0.2)
    original.metric_crit, original.crit = model.ArcFaceLoss(s=30.0, m=0.5), model.DenseCrossEntropy()
    original.model = types.SimpleNamespace(embed=lambda x, s: x, metric_classify=arc, classify=net.classifier)
    loss, _ = original.train_forward(embedding, None, target)
    return loss


def test_softmax_plus_arcface_loss_with_hard_and_cutmix_soft_labels(ref):
    net = _net()
    g = torch.Generator().manual_seed(3)
    embedding, labels = torch.randn(8, 16, generator=g), torch.randint(7, (8,), generator=g)
    hard = F.one_hot(labels, 7).float()
    torch.testing.assert_close(net.loss(embedding, labels)[1], _original_loss(ref, net, embedding, hard))
    partner, lam = torch.randperm(8, generator=g), 0.63
    soft = lam * hard + (1 - lam) * hard[partner]
    torch.testing.assert_close(net.loss(embedding, labels, soft)[1], _original_loss(ref, net, embedding, soft))


# --- CutMix -----------------------------------------------------------------------------------------------

def test_cutmix_box_labels_and_cell_line_as_transform_input(ref, no_cuda):
    """For a fixed random state the original's ``transform_input`` (permutation, Beta draw, uniform centre,
    clipped box, labels and cell-type input mixed by the kept area) equals :func:`paste_box` on the same draws,
    and the loss of this project's mixed batch equals the loss of the original's mixed inputs."""
    net = _net()
    batch, size = 6, 32
    args = Namespace(batch_size=batch, classes=7, label_smoothing=0.0, mixup=0.0, cutmix=1.0)
    g = torch.Generator().manual_seed(0)
    empty = 0
    for seed in range(24):
        x = torch.randn(batch, 6, size, size, generator=g)
        labels, lines = torch.randint(7, (batch,), generator=g), torch.randint(4, (batch,), generator=g)
        torch.manual_seed(seed)
        np.random.seed(seed)
        x_o, s_o, y_o = ref.main.transform_input(args, x.clone(), F.one_hot(lines, 4).float(), labels.clone())
        torch.manual_seed(seed)
        perm = torch.randperm(batch)
        np.random.seed(seed)
        lam, column, row = np.random.beta(1.0, 1.0), np.random.uniform(0, size), np.random.uniform(0, size)
        mixed, partner, kept = paste_box(x, perm, lam, row, column)
        assert torch.equal(mixed, x_o)
        hard = F.one_hot(labels, 7).float()
        if partner is None:  # the box rounded to nothing: the original mixes nothing either
            empty += 1
            assert torch.equal(y_o, hard)
            continue
        r1, r2, c1, c2 = cutmix_box(lam, row, column, size, size)
        assert kept == pytest.approx(1 - (r2 - r1) * (c2 - c1) / size**2)
        torch.testing.assert_close(kept * hard + (1 - kept) * hard[partner], y_o)
        ours = net.train_loss(mixed, labels, lines, partner, kept)[1]
        torch.testing.assert_close(ours, _original_loss(ref, net, net(x_o, s_o), y_o))
    assert empty < 24


def test_cutmix_pastes_the_same_share_of_the_image_as_the_original(ref, no_cuda):
    """Over many draws this project's :func:`mix` pastes on average the share the original pastes (about 32 %:
    the box is centred anywhere and clipped), not the unclipped (1 - lam) = 50 %."""
    size, draws = 64, 500
    x = torch.zeros(2, 1, size, size)
    g = torch.Generator().manual_seed(0)
    ours = [1 - mix(x, 0.0, 1.0, g)[2] for _ in range(draws)]
    args = Namespace(batch_size=2, classes=2, label_smoothing=0.0, mixup=0.0, cutmix=1.0)
    np.random.seed(0)
    theirs = []
    with pytest.MonkeyPatch.context() as patch:  # the partner of site 0 is site 1: its label weight is the pasted share
        patch.setattr(torch, "randperm", lambda n, **kwargs: torch.arange(n - 1, -1, -1))
        for _ in range(draws):
            _, _, y = ref.main.transform_input(args, torch.zeros(2, 1, size, size), torch.zeros(2, 4),
                                               torch.tensor([0, 1]))
            theirs.append(y[0, 1].item())
    assert abs(np.mean(ours) - np.mean(theirs)) < 0.06  # 4 standard errors of the difference
    assert 0.27 < np.mean(ours) < 0.37  # 0.5 without the clipping


# --- one real site through the original's training transforms ----------------------------------------------

def _original_transforms(ref, monkeypatch, args: Namespace):
    """``train_transform1`` and ``train_transform2`` of the original's ``get_train_val_loader`` (local
    functions there), taken from the training dataset it builds."""
    built = []

    class Capture:
        def __init__(self, root, mode, transform=None, **kwargs):
            self.data, self.transform = [], transform
            built.append(self)

    monkeypatch.setattr(ref.dataset, "CellularDataset", Capture)
    monkeypatch.setattr(ref.dataset, "DataLoader", lambda dataset, *a, **k: Namespace(dataset=dataset))
    ref.dataset.get_train_val_loader(args)
    return built[0].transform


class _Scripted:
    """Python's ``random`` as the original's dataset module sees it, answering given draws in order."""

    def __init__(self, randoms, randints):
        self.randoms, self.randints = list(randoms), list(randints)

    def random(self):
        return self.randoms.pop(0)

    def randint(self, low, high):
        value = self.randints.pop(0)
        assert low <= value <= high
        return value


@pytest.mark.parametrize("flips, edge, corner", [((0.9, 0.9, 0.9), 512, (0, 0)), ((0.1, 0.9, 0.2), 256, (0, 256)),
                                                  ((0.3, 0.4, 0.9), 301, (17, 190)), ((0.6, 0.1, 0.1), 437, (75, 3))],
                         ids=["no flip, no zoom", "flip, transpose, half edge", "two flips, odd edge", "flip, transpose"])
def test_a_real_site_through_the_originals_transforms_and_sample_normalisation(ref, monkeypatch, tmp_path, flips,
                                                                                edge, corner):
    """The original's ``CellularDataset.__getitem__`` (flips and transpose, zoom, ``sample`` normalisation,
    pixel-wise jitter) on a real 512 px site equals this project's dihedral view, :func:`zoom_square`, image
    normalisation and :func:`jitter_intensity` for the same draws."""
    if not REAL_SITE.with_name(REAL_SITE.name + "_w6.png").is_file():
        pytest.skip(f"real RxRx1 images not found under {REAL_SITE.parent}")
    args = Namespace(scale_aug=0.5, pw_aug=(0.1, 0.1), data=tmp_path, all_controls_train=True, cv_number=-1,
                     data_split_seed=0, data_normalization="sample", batch_size=24, num_data_workers=0)
    CellularDataset = ref.dataset.CellularDataset
    transforms = _original_transforms(ref, monkeypatch, args)
    plate = tmp_path / "train" / "HEPG2-01" / "Plate1"
    plate.mkdir(parents=True)
    for c in range(1, 7):
        (plate / f"B02_s1_w{c}.png").symlink_to(REAL_SITE.with_name(f"B02_s1_w{c}.png"))
    dataset = CellularDataset.__new__(CellularDataset)
    dataset.root, dataset.transform, dataset.normalization, dataset.mode = tmp_path, transforms, "sample", "train"
    dataset.data, dataset.data_indices = [("HEPG2-01", 1, "B02", 1, "HEPG2", 1138)], None
    dataset.cell_types = ["HEPG2", "HUVEC", "RPE", "U2OS"]

    jitter_draws = torch.Generator().manual_seed(edge)
    replay = torch.Generator().set_state(jitter_draws.get_state())
    gain = 1 + 0.1 * torch.randn((1, 6, 1, 1), generator=replay)
    bias = 0.1 * torch.randn((1, 6, 1, 1), generator=replay)
    normals = [gain[0].double().numpy(), bias[0].double().numpy()]
    monkeypatch.setattr(ref.dataset, "random", _Scripted(flips, (edge, *corner)))
    monkeypatch.setattr(ref.dataset.np.random, "normal", lambda *a: normals.pop(0))
    image, cell_type, _, label = dataset[0]
    assert torch.equal(cell_type, torch.tensor([1.0, 0, 0, 0])) and label.item() == 1138

    pixels = torch.from_numpy(np.stack([np.array(Image.open(REAL_SITE.with_name(f"B02_s1_w{c}.png")))
                                        for c in range(1, 7)]))[None]
    flipped = pixels
    if flips[0] < 0.5:
        flipped = flipped.flip(-1)
    if flips[1] < 0.5:
        flipped = flipped.flip(-2)
    if flips[2] < 0.5:
        flipped = flipped.transpose(-1, -2)
    k = [k for k in range(8) if torch.equal(dihedral(pixels, k), flipped)]
    assert len(k) == 1  # the original's 3 coin flips reach each of the 8 dihedral views once
    x = random_dihedral(pixels, torch.tensor(k)).float()
    x = zoom_square(x, edge, *corner)
    x = Normaliser("image")(x)
    x = jitter_intensity(x, 0.1, 0.1, jitter_draws)
    torch.testing.assert_close(x[0], image, rtol=1e-4, atol=1e-4)


def test_zoom_draws_the_originals_edges_and_corners():
    """:func:`zoom` draws an edge in randint(round(512 x 0.5), 512) and a corner in randint(0, 512 - edge), as
    ``train_transform1``: each zoomed image is one of those squares resized."""
    from rxrx1_pipeline.nn.augment import zoom

    x = torch.arange(512 * 512, dtype=torch.float32).reshape(1, 1, 512, 512).expand(3, 1, 512, 512).contiguous()
    out = zoom(x, 0.5, torch.Generator().manual_seed(4))
    for image in out:
        rows, cols = image[0] // 512, image[0] % 512
        top, left = int(rows.min()), int(cols.min())
        edge = int(rows.max()) - top + 1
        assert 256 <= edge <= 512 and 0 <= top <= 512 - edge and 0 <= left <= 512 - edge
        assert torch.equal(image, zoom_square(x[0], edge, top, left))


# --- inference --------------------------------------------------------------------------------------------

class _Store:
    def __init__(self, images: np.ndarray):
        self.images = images

    def read(self, row: int) -> np.ndarray:
        return self.images[row]


def test_eight_tta_views_and_their_mean_logits_are_the_originals(ref):
    """``--tta 8``: the original's 8 views (``dataset.tta``) are the 8 dihedral views, and its logits (the mean of
    the softmax head's over the views, ``infer``) are this project's (the head of the mean embedding: the
    softmax head is linear)."""
    g = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (3, 6, 16, 16), dtype=torch.uint8, generator=g)
    x = Normaliser("image")(pixels)
    views = ref.dataset.tta(Namespace(tta=8, tta_size=1), x)
    matched = sorted(k for view in views for k in range(8) if torch.equal(view, dihedral(x, k)))
    assert matched == list(range(8))
    net = _net()
    lines = torch.tensor([0, 2, 3])
    with torch.no_grad():
        theirs = torch.stack([net.classifier(net(view, lines)) for view in views]).mean(0)
    sites = pd.DataFrame({"store_row": [0, 1, 2], "plate_index": [0, 0, 0], "line_index": lines.numpy()})
    ours = class_logits(net, embed_sites(net, Normaliser("image"), _Store(pixels.numpy()), sites, 2, 0, tta=8))
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-4, atol=1e-5)


def test_well_logits_are_the_sum_of_both_sites_as_make_submission(ref):
    from rxrx1_pipeline.nn.wells import per_well

    rng = np.random.default_rng(0)
    codes = ["HEPG2-08_1_B03", "HEPG2-08_1_B03", "HEPG2-08_2_B04", "HEPG2-08_2_B04", "HUVEC-17_4_O23"]
    logits = rng.normal(size=(len(codes), 1139)).astype(np.float32)
    per_code: dict[str, list] = {}
    for code, row in zip(codes, logits):
        per_code.setdefault(code, []).append(row)  # the original's predict output: {id_code: [site logits]}
    theirs = dict(ref.make_submission.PredictionGroup(per_code).combine())
    ours = per_well(pd.Series(codes), logits, [str(c) for c in range(1139)], "sum").set_index("id_code")
    assert sorted(theirs) == sorted(ours.index)
    for code, summed in theirs.items():  # the original keeps the 1108 treatment classes
        np.testing.assert_allclose(ours.loc[code].to_numpy()[:1108], summed, rtol=1e-6)


# --- pseudo-labels: the share, and epochs that grow ----------------------------------------------------------

def test_pseudo_label_share_and_growing_epochs_against_the_originals_loop(ref, monkeypatch):
    """``--pl-epoch 90 --pl-size-func 0.6*x+0.4 -e 130``: the wells the original's ``pseudo_label`` adds before
    each epoch against :meth:`PseudoLabeller.target` (a bounded difference: the project's progress reaches 1 at
    the last epoch, the original's 40/41), and the original's epoch (``DataLoader(..., drop_last=True)`` over the
    grown training set) against :class:`FitBatches` (at most the remainder batch more)."""
    from rxrx1_pipeline.nn.pseudo import PseudoLabeller
    from rxrx1_pipeline.schema import PseudoLabels

    P = ref.precomputed
    experiment, per_plate = "HEPG2-08", 12
    rng = np.random.default_rng(0)
    test_data, site_logits = [], {}
    for plate in range(1, 5):
        group = sorted(P.groups[P.group_assignment[experiment][plate - 1]])
        for w in range(per_plate):
            logits = rng.normal(size=1139).astype(np.float32)
            logits[group[w]] += 5 + rng.uniform()  # each well's best siRNA its own, confidences distinct
            for site in (1, 2):
                site_logits[len(test_data)] = logits / 2
                test_data.append((experiment, plate, f"W{w:02d}", site, "HEPG2", None))

    class Data:
        treatment_classes = 1108

        def __init__(self, data):
            self.data, self.indices = data, None

        def filter(self, func=None):
            self.indices = None if func is None else [i for i, d in enumerate(self.data) if func(i, d)]

    test, val = Namespace(dataset=Data(test_data)), Namespace(dataset=Data([]))
    train_sites = 24 * 40 + 7
    train = Namespace(dataset=Data([("HEPG2-01", 1, "B02", 1, "HEPG2", 1138)] * train_sites))

    def infer(args, model, loader):
        data = loader.dataset
        return {i: site_logits[i].copy() for i in (data.indices if data.indices is not None else range(len(data.data)))
                if loader is test}

    monkeypatch.setattr(ref.main, "infer", infer)
    args = Namespace(pl_epoch=90, epochs=130, pl_size_func="0.6*x+0.4")
    wells = 4 * per_plate
    candidates = pd.DataFrame({"id_code": [f"{e}_{p}_{w}" for e, p, w, *_ in test_data[::2]], "experiment": experiment,
                               "plate": [d[1] for d in test_data[::2]], "plate_index": 0, "store_row": 0})
    classes = pd.DataFrame({"sirna": range(1108), "class_index": range(1108), "well_type": "treatment"})
    groups = pd.DataFrame({"sirna": range(1108), "group": 0})
    layouts = pd.DataFrame({"layout": [0], **{f"plate_{p}": [0] for p in range(1, 5)}})
    labeller = PseudoLabeller(candidates, classes, groups, layouts,
                              PseudoLabels(start_epoch=91, initial_share=0.4, final_share=1.0), epochs=130)
    assert len(labeller.wells) == wells
    bound = math.ceil(0.6 * wells * (1 / 40 - 1 / 41) * 40) + 1
    pl_data: set = set()
    for epoch in range(130):
        before = len(train.dataset.data)
        ref.main.pseudo_label(args, epoch, pl_data, None, val, test, train)
        theirs = (len(train.dataset.data) - train_sites) // 2  # wells labelled so far (2 sites each)
        if epoch < 90:
            assert not labeller.due(epoch) and theirs == 0
            continue
        assert labeller.due(epoch) and before <= len(train.dataset.data)
        ours = labeller.target(epoch)
        assert abs(ours - theirs) <= bound, (epoch, ours, theirs)
        if epoch == 90:
            assert ours == theirs == round((0.4 + 0.6 / 41) * wells)
        sites = len(train.dataset.data)
        loader = torch.utils.data.DataLoader(range(sites), 24, drop_last=True)  # the original's training loader
        grown = len(FitBatches(np.zeros(sites), 24, seed=0))
        assert grown - len(loader) == (1 if sites % 24 > 1 else 0)  # the remainder batch, when it can train
    assert labeller.target(129) == wells and theirs == round((0.4 + 0.6 * 40 / 41) * wells)
