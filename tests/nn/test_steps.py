"""What could stop a two-day run: a margin head under bf16 autocast, a non-finite loss or gradient, a remainder
batch of one site (BatchNorm cannot train on it)."""

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rxrx1_pipeline.nn.data import FitBatches, fit_loader
from rxrx1_pipeline.nn.loops import EpochSchedule, run_epoch
from rxrx1_pipeline.nn.network import EmbeddingNet
from tests.pipelines.conftest import TINY_TRAINING, changed


@pytest.mark.parametrize("head", ["softmax_arcface", "arcface", "cosface"])
def test_margin_heads_are_float32_under_bf16_autocast(head):
    """A cosine of 1 in bf16 (1 - 1e-6 rounds to 1) gave sqrt(0) in the ArcFace margin and a NaN gradient;
    the heads and losses are computed in float32 under autocast, so the clamp holds and the gradient is finite."""
    assert torch.tensor(1 - 1e-6, dtype=torch.bfloat16).item() == 1.0
    torch.manual_seed(0)
    net = EmbeddingNet("test_resnet", 5, 16, head=head, margin=0.5, scale=30.0)
    weight = net.arc_weight if head == "softmax_arcface" else net.weight
    labels = torch.tensor([0, 1, 2, 3])
    embedding = (weight.detach()[labels] * 3).requires_grad_()  # each exactly on its class: cosine 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = net.loss(embedding, labels)
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(embedding.grad).all() and torch.isfinite(weight.grad).all()


class _Sites(torch.utils.data.Dataset):
    def __len__(self):
        return 24

    def __getitem__(self, i):
        return torch.full((6, 4, 4), i, dtype=torch.uint8), i, i % 5


class _Step(torch.nn.Module):
    """A linear model whose loss is NaN (``nan``) or whose gradient is (``bad_grad``) on the given batches."""

    def __init__(self, nan=(), bad_grad=()):
        super().__init__()
        self.linear = torch.nn.Linear(96, 5)
        self.nan, self.bad_grad, self.batch = set(nan), set(bad_grad), 0

    def forward(self, x, labels, lines=None, partner=None, lam=1.0):
        self.batch += 1
        logits = self.linear(x.flatten(1))
        loss = F.cross_entropy(logits, labels)
        if self.batch in self.nan:
            loss = loss * float("nan")
        if self.batch in self.bad_grad:  # finite loss (0), gradient sqrt'(0) x 0 = NaN
            loss = loss + (self.linear.weight.sum() * 0).abs().sqrt()
        return logits, loss


def _epoch(step, limit: int, accumulate: int = 1):
    data = fit_loader(_Sites(), np.zeros(24), 4, 0, seed=0)  # 6 batches
    opt = torch.optim.SGD(step.parameters(), lr=0.1)
    steps = []
    plain = opt.step
    opt.step = lambda *a, **k: (steps.append(step.batch), plain(*a, **k))[1]
    training = changed(TINY_TRAINING, {"max_skipped_steps": limit, "accumulate_steps": accumulate})
    loss, _ = run_epoch(step, lambda x, p: x.float() / 24, opt, EpochSchedule(opt, lambda e: 0.1), data,
                        torch.zeros(24, dtype=torch.long), torch.Generator().manual_seed(0), "e 1/1", training)
    return loss, steps


def test_a_non_finite_loss_or_gradient_skips_the_step_and_says_so(caplog):
    with caplog.at_level(logging.WARNING):
        loss, steps = _epoch(_Step(nan={2}, bad_grad={5}), limit=1)
    assert steps == [1, 3, 4, 6] and np.isfinite(loss)
    assert "e 1/1: the loss became nan at batch 2 of 6: that step is skipped (1 in a row" in caplog.text
    assert "e 1/1: a gradient became non-finite at batch 5 of 6: that step is skipped (1 in a row" in caplog.text
    assert "2 of its optimiser steps skipped" in caplog.text


def test_a_non_finite_batch_drops_its_accumulation_group():
    step = _Step(nan={3})
    _, steps = _epoch(step, limit=1, accumulate=2)
    assert steps == [2, 6]  # batches 3-4 are one step: skipped
    assert all(torch.isfinite(p).all() for p in step.parameters())


def test_more_skipped_steps_in_a_row_than_allowed_stop_the_training():
    with pytest.raises(FloatingPointError, match=r"e 1/1: the loss became nan at batch 3 of 6$"):
        _epoch(_Step(nan={2, 3}), limit=1)
    with pytest.raises(FloatingPointError, match="at batch 1 of 6"):
        _epoch(_Step(nan={1}), limit=0)
    _, steps = _epoch(_Step(nan={2, 4}), limit=1)  # not in a row
    assert steps == [1, 3, 5, 6]


@pytest.mark.parametrize("sites, world, by_plate, sizes", [
    (25, 1, False, [8, 8, 9]),  # one left over: joins the batch before it
    (26, 2, False, [8, 8, 10]),  # one per process left over
    (27, 2, False, [8, 8, 8, 3]),  # two per process (padded): trains
    (17, 1, True, [8, 8]),  # a plate of one site (plates 0, 0, ... and one site of plate 1): dropped
])
def test_a_remainder_batch_batchnorm_cannot_train_on_is_merged_or_dropped(sites, world, by_plate, sizes):
    plates = np.zeros(sites) if not by_plate else np.r_[np.zeros(sites - 1), 1]
    batches = FitBatches(plates, 8, seed=0, world=world, by_plate=by_plate).global_batches()
    assert sorted(len(b) for b in batches) == sorted(sizes)
    norm = torch.nn.BatchNorm1d(3).train()
    for rank in range(world):  # every process's share trains
        for batch in FitBatches(plates, 8, seed=0, rank=rank, world=world, by_plate=by_plate):
            norm(torch.randn(len(batch), 3))


def _skip_run(rank: int = 0, world: int = 1, accumulate: int = 1):
    """Two epochs of 3 global batches of 8; the loss of the 2nd batch is NaN on the last process only."""
    data = fit_loader(_Sites(), np.zeros(24), 8, 0, seed=0, rank=rank, world=world)
    torch.manual_seed(0)
    step = _Step(nan={2} if rank == world - 1 else ())
    model = torch.nn.parallel.DistributedDataParallel(step) if world > 1 else step
    opt = torch.optim.SGD(step.parameters(), lr=0.1)
    sched, steps = EpochSchedule(opt, lambda e: 0.1), []
    plain = opt.step
    opt.step = lambda *a, **k: (steps.append(step.batch), plain(*a, **k))[1]
    training = changed(TINY_TRAINING, {"max_skipped_steps": 1, "accumulate_steps": accumulate})
    for epoch in range(2):
        data.batch_sampler.set_epoch(epoch)
        run_epoch(model, lambda x, p: x.float() / 24, opt, sched, data, torch.zeros(24, dtype=torch.long),
                  torch.Generator().manual_seed(epoch), "ddp", training, rank, world, epoch=epoch)
    return steps, {k: v.clone() for k, v in step.state_dict().items()}


def _skip_worker(accumulate: int):
    import os

    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        return _skip_run(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), accumulate)
    finally:
        dist.destroy_process_group()


def test_ddp_processes_skip_a_step_together_when_one_loss_is_not_finite(accumulate: int = 2):
    """One process's NaN (on the batch that steps, after a no_sync batch) skips the step on every process (no
    process waits in an all-reduce), and the weights stay those of one process skipping the same global batch."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, run_id=f"skip-{accumulate}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, start_method="spawn")
    ranks = elastic_launch(config, _skip_worker)(accumulate)
    steps, weights = _skip_run(accumulate=accumulate)
    assert steps == ([1, 3, 4, 5, 6] if accumulate == 1 else [3, 5, 6])
    for rank in (0, 1):
        assert ranks[rank][0] == steps
        for key, value in weights.items():
            torch.testing.assert_close(ranks[rank][1][key], value, rtol=1e-5, atol=1e-6)
