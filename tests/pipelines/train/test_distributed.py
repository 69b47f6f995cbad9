"""DDP training on CPU (gloo, 2 processes started by torch's elastic launcher).

- The loop's mechanics (shards, views, gradient averaging, epoch totals) reproduce one process exactly
  on a model without BatchNorm.
- The real network at the same global batch and seed stays close to one process: the only difference
  left is that BatchNorm normalises each process's half batch (synchronised BatchNorm needs GPUs).
- A DDP run whose worker dies mid-epoch resumes from rank 0's last checkpoint to the same weights.
"""

import os

import numpy as np
import pandas as pd
import pytest
import torch

from rxrx1_pipeline.storage.checkpoints import CheckpointStore
from rxrx1_pipeline.pipelines.train.nodes import train_model
from tests.pipelines.conftest import changed, TINY_TRAINING


class Pictures(torch.utils.data.Dataset):
    """40 fixed random 6-channel images with labels, as StoreSites yields them."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 255, (40, 6, 4, 4), generator=g, dtype=torch.uint8)
        self.labels = torch.randint(0, 5, (40,), generator=g)

    def __len__(self):
        return 40

    def __getitem__(self, i):
        return self.images[i], i, int(self.labels[i])


class LinearStep(torch.nn.Module):
    """A model without BatchNorm, so DDP must equal one process up to float rounding."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(6 * 4 * 4, 5)
        with torch.no_grad():
            self.linear.weight.copy_(torch.linspace(-0.1, 0.1, 5 * 96).reshape(5, 96))
            self.linear.bias.zero_()

    def forward(self, x, labels, lines=None, partner=None, lam=1.0):
        logits = self.linear(x.flatten(1))
        return logits, torch.nn.functional.cross_entropy(logits, labels)


def _three_epochs(rank: int = 0, world: int = 1, accumulate: int = 1):
    from rxrx1_pipeline.nn.data import fit_loader
    from rxrx1_pipeline.nn.loops import run_epoch

    data = fit_loader(Pictures(), np.zeros(40), 8, 0, seed=1, rank=rank, world=world)
    step = LinearStep()
    opt = torch.optim.SGD(step.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model = torch.nn.parallel.DistributedDataParallel(step) if world > 1 else step
    curve = []
    for epoch in range(3):
        data.batch_sampler.set_epoch(epoch)
        views = torch.Generator().manual_seed(epoch)
        curve.append(run_epoch(model, lambda x, p: x.float() / 255, opt, sched, data, torch.zeros(40, dtype=torch.long),
                               views, "test", changed(TINY_TRAINING, {"accumulate_steps": accumulate}), rank, world))
    return curve, {k: v.clone() for k, v in step.state_dict().items()}


def _ddp_worker(accumulate: int):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        return _three_epochs(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), accumulate)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("accumulate", [1, 2], ids=["every batch", "2 batches accumulated (no_sync)"])
def test_ddp_loop_equals_one_process_without_batchnorm(accumulate):
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, run_id=f"loop-test-{accumulate}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, start_method="spawn")
    ranks = elastic_launch(config, _ddp_worker)(accumulate)
    curve, weights = _three_epochs(accumulate=accumulate)
    for rank in (0, 1):
        np.testing.assert_allclose(ranks[rank][0], curve, rtol=1e-5)  # (loss, accuracy) of every epoch
        for key, value in weights.items():
            torch.testing.assert_close(ranks[rank][1][key], value, rtol=1e-5, atol=1e-6)
    assert curve[-1][0] < curve[0][0]


def _two(training: dict) -> dict:
    return changed(training, {"distributed": {"nproc_per_node": 2, "nnodes": 1, "rdzv_endpoint": None}})


def test_two_processes_stay_close_to_one_at_the_same_global_batch(prepared, tmp_path):
    classes, model_sites, images, stats = prepared
    training = changed(TINY_TRAINING, {"epochs": 4, "batch_size": 64})  # 32 sites per process: BatchNorm stays stable
    _, one, _ = train_model(model_sites, images, stats, classes, CheckpointStore(tmp_path / "1.pt"), "HEPG2", training)
    _, two, _ = train_model(model_sites, images, stats, classes, CheckpointStore(tmp_path / "2.pt"), "HEPG2",
                         _two(training))
    print(pd.concat({"1 process": one, "2 processes": two}, axis=1).round(4).to_string())
    assert list(two["epoch"]) == [1, 2, 3, 4] and list(two["lr"]) == pytest.approx(list(one["lr"]))
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=0.2)
    assert abs(two["valid_site_accuracy"].iloc[-1] - one["valid_site_accuracy"].iloc[-1]) <= 0.15
    assert two["loss"].iloc[-1] < 0.7 * two["loss"].iloc[0]


class FailingStore:
    """An image store whose reads fail after ``limit`` sites in each process: a worker dying mid-epoch."""

    def __init__(self, store, limit: int):
        self.store, self.limit, self.reads = store, limit, 0
        self.manifest, self.image_size = store.manifest, store.image_size

    def read(self, row):
        self.reads += 1
        if self.reads > self.limit:
            raise RuntimeError("simulated worker death")
        return self.store.read(row)


def test_ddp_run_that_fails_mid_epoch_resumes(prepared, tmp_path):
    classes, model_sites, images, stats = prepared
    training = _two(changed(TINY_TRAINING, {"epochs": 3, "validate_every": 0}))
    per_process_epoch = -(-int((model_sites["role"] == "fit").sum()) // 2)
    store = CheckpointStore(tmp_path / "ddp.pt")
    with pytest.raises(RuntimeError, match="DDP training failed on rank .*simulated worker death"):
        train_model(model_sites, FailingStore(images, per_process_epoch * 3 // 2), stats, classes, store, "HEPG2",
                    training)
    assert torch.load(tmp_path / "ddp.pt", weights_only=True)["epoch"] == 1  # rank 0's state after epoch 1
    resumed, history, _ = train_model(model_sites, images, stats, classes, store, "HEPG2", training)
    assert list(history["epoch"]) == [1, 2, 3]
    uninterrupted, _, _ = train_model(model_sites, images, stats, classes, CheckpointStore(tmp_path / "clean.pt"),
                                   "HEPG2", training)
    for key, value in uninterrupted["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, msg=key)


def test_trainings_in_parallel_threads_equal_sequential_ones(prepared, tmp_path):
    """Cell lines side by side (ThreadRunner): each training keeps its own seed's weights, data order and views."""
    from concurrent.futures import ThreadPoolExecutor

    classes, model_sites, images, stats = prepared

    def train(seed: int, folder: str):
        store = CheckpointStore(tmp_path / folder / f"{seed}.pt")
        model, _, _ = train_model(model_sites, images, stats, classes, store, "HEPG2",
                                  changed(TINY_TRAINING, {"seed": seed, "validate_every": 0}))
        return model["state_dict"]

    sequential = [train(seed, "sequential") for seed in (0, 1)]
    with ThreadPoolExecutor(2) as pool:
        parallel = list(pool.map(train, (0, 1), ("parallel", "parallel")))
    for one, other in zip(sequential, parallel):
        for key, value in one.items():
            torch.testing.assert_close(other[key], value, rtol=0, atol=0, msg=lambda m, key=key: f"{key}: {m}")
    assert not torch.equal(sequential[0]["embed.0.weight"], sequential[1]["embed.0.weight"])
