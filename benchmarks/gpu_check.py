"""The GPU acceptance command: proves the GPU path of the project and measures it, on data it generates itself.

    .venv/bin/python benchmarks/gpu_check.py            # one GPU machine (~8 min with 16 cores)
    .venv/bin/python benchmarks/gpu_check.py --smoke    # the same code paths on the CPU at tiny sizes (~1 min)

Prints one table (and writes it as Markdown with ``--out``):
  - PNG decode and training-loader sites/s at 512 px with 0/4/8/16 loader processes, from the decode-once
    store and from the PNGs (``images.source: store | png``);
  - train and inference sites/s at 512 px of densenet121 and densenet161 (bf16 autocast, channels_last,
    eager and torch.compile), and peak GPU memory of a train step at batch 24 and 32;
  - a DDP run (torch's elastic launcher, NCCL, 1 process) whose per-epoch losses match the plain path's on the
    same batches (the project's ``nn/training.fit`` and ``nn/distributed.train`` on the tiny preset's inputs);
  - a short end-to-end ``kedro run`` of a tiny synthetic preset (synthetic, then full: training, inference,
    postprocess);
  - the projected wall time of the ``real`` recipe (conf/real) on the real data from these rates, per epoch,
    for the whole schedule and for two seeds, and what bounds it.
``--smoke`` shrinks every size (32 px images, ``test_resnet``, loader processes capped to the cores, gloo
instead of NCCL) but runs the same functions; the test suite runs it so the command cannot rot.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
REAL_LABELLED_SITES = 81_224  # RxRx1 train: 36,515 treatment + 4,097 control wells, 2 sites each
REAL_TEST_CONTROL_SITES = 4_492  # test controls (2,246 wells x 2 sites): trained on with controls all_experiments
REAL_PREDICTED_SITES = 39_794 + 8_864  # test treatment sites + ~one held-out experiment per cell line
CELL_LINES = ("HEPG2", "HUVEC", "RPE", "U2OS")


@dataclasses.dataclass(frozen=True)
class Plan:
    image_size: int
    sites: int  # distinct generated sites
    workers: tuple[int, ...]
    archs: tuple[str, ...]
    batch: int
    memory_batches: tuple[int, ...]
    steps: int
    compile_backend: str  # torch.compile backend: inductor (generated kernels) | eager (graph capture only)
    project_size: int  # image size of the tiny kedro preset
    project_epochs: int


FULL = Plan(512, 192, (0, 4, 8, 16), ("densenet121", "densenet161"), 32, (24, 32), 10, "inductor", 64, 2)
# on the CPU, inductor's C++ compilation alone takes over a minute: the smoke run captures the graph only
SMOKE = Plan(32, 24, (0, 4, 8, 16), ("test_resnet",), 8, (4, 8), 2, "eager", 16, 1)


class Table:
    """Rows of (section, item, value, note), printed as one aligned table and optionally as Markdown."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, section: str, item: str, value: str, note: str = "") -> None:
        self.rows.append((section, item, value, note))
        print(f"[gpu_check] {section} | {item} | {value} | {note}", flush=True)

    def text(self) -> str:
        head = ("section", "item", "value", "note")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(4)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in self.rows]
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = ["| section | item | value | note |", "|---|---|---|---|"]
        return "\n".join(lines + [f"| {' | '.join(r)} |" for r in self.rows])


# ---------------------------------------------------------------------------------------------- pixels


def fake_site(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (6, size, size) uint8 site that compresses about like a real one: smooth blobs plus shot noise."""
    from PIL import Image

    channels = []
    for _ in range(6):
        coarse = (rng.random((max(2, size // 16), max(2, size // 16))) ** 3 * 255).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.int16)
        channels.append(np.clip(smooth // 3 + rng.integers(0, 5, (size, size)), 0, 255).astype(np.uint8))
    return np.stack(channels)


def write_sites(root: Path, n: int, size: int) -> tuple[str, ...]:
    """``n`` generated sites as PNGs in the Kaggle layout under ``root``."""
    from rxrx1_pipeline.storage.images import write_site

    rng = np.random.default_rng(0)
    prefixes = tuple(f"train/GEN-01/Plate{1 + i // 300}/B{2 + (i // 2) % 22:02d}_s{1 + i % 2}_{i}" for i in range(n))
    for p in prefixes:
        write_site(root, p, fake_site(rng, size))
    return prefixes


def loader_rate(store, workers: int, batch: int, reads: int) -> float:
    """Sites/s of the project's training loader over ``store`` with ``workers`` processes (0: in this
    process), timed from its first batch (worker start-up left out)."""
    from rxrx1_pipeline.nn.data import StoreSites, fit_loader

    rows = np.resize(np.arange(len(store)), reads)
    data = fit_loader(StoreSites(store, rows), np.zeros(len(rows)), batch, workers, seed=0)
    n, start = 0, None
    for images, _, _ in data:
        if start is None:
            start = time.perf_counter()
            continue
        n += len(images)
    return n / (time.perf_counter() - start)


def check_pixels(plan: Plan, tmp: Path, table: Table) -> dict[str, float]:
    from rxrx1_pipeline.schema import ImageSource
    from rxrx1_pipeline.storage.images import DecodeJob, PngSites, build_store, open_store, read_site

    cores = os.cpu_count() or 1
    root = tmp / "pngs"
    t0 = time.perf_counter()
    prefixes = write_sites(root, plan.sites, plan.image_size)
    png_kib = sum(f.stat().st_size for f in root.rglob("*.png")) / len(prefixes) / 6 / 1024
    table.add("data", f"{plan.sites} generated sites at {plan.image_size} px", f"{time.perf_counter() - t0:.1f} s",
              f"{png_kib:.0f} KiB per channel PNG (real 512 px: 86 KiB on average)")
    start = time.perf_counter()
    for p in prefixes:
        read_site(root, p)
    table.add("pixels", f"PNG decode, 1 process, {plan.image_size} px", f"{len(prefixes) / (time.perf_counter() - start):.0f} sites/s")
    stores = {}
    for source in ("store", "png"):
        path = tmp / f"store-{source}"
        start = time.perf_counter()
        job = DecodeJob(PngSites(root), prefixes, plan.image_size, ImageSource(source=source))
        build_store(path, job, workers=cores)
        stores[source] = open_store(path)
        what = "decode-once store build" if source == "store" else "statistics pass (PNG source)"
        table.add("pixels", f"{what}, {cores} processes", f"{len(prefixes) / (time.perf_counter() - start):.0f} sites/s",
                  "incl. process start")
    rates = {}
    for workers in sorted({min(w, cores) for w in plan.workers}):
        for source, store in stores.items():
            reads = (64 if source == "png" else 512) * max(1, workers) * (4 if plan is SMOKE else 1)
            rate = loader_rate(store, workers, plan.batch, reads)
            rates[f"{source}/{workers}"] = rate
            label = "store reads (page cache)" if source == "store" else "PNGs decoded"
            table.add("loader", f"{label}, {workers} workers, {plan.image_size} px", f"{rate:.0f} sites/s",
                      f"{rate / max(1, workers):.0f} per process")
    return rates


# ---------------------------------------------------------------------------------------------- models


def recipe_network(arch: str, device):
    """The ``real`` recipe's network (conf/real's shared_training over conf/base: neck, cell-line input, head,
    BatchNorm momentum, channels_last) with ``arch`` as its backbone and random weights, as the project builds
    it (``nn.network.build_network``), wrapped in the project's ``nn.training.TrainStep`` (network + loss)."""
    from rxrx1_pipeline.nn.identity import model_settings
    from rxrx1_pipeline.nn.network import build_network
    from rxrx1_pipeline.nn.training import TrainStep
    from rxrx1_pipeline.schema import SharedTraining

    base, real = (yaml.safe_load((ROOT / "conf" / env / "parameters_train.yml").read_text())["shared_training"]
                  for env in ("base", "real"))
    block = {**base, **real, "arch": arch, "pretrained": "none", "pretrained_weights": None}
    block["pseudo_labels"] = {"start_epoch": 0}
    settings = {**model_settings(SharedTraining.model_validate(block)), "cell_lines": list(CELL_LINES)}
    return TrainStep(build_network(settings, 1139, pretrained=False)).to(device)


def model_rates(arch: str, plan: Plan, device, compiled: bool, table: Table) -> tuple[float, float]:
    """(train, inference) sites/s of the real recipe's network (:func:`recipe_network`) at ``plan.image_size``,
    bf16 autocast on CUDA, channels_last; compile time is left out of the rate and reported."""
    import torch

    torch.manual_seed(0)
    step = recipe_network(arch, device)
    net = step.net
    forward = torch.compile(step, backend=plan.compile_backend) if compiled else step
    embed = torch.compile(net, backend=plan.compile_backend) if compiled else net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    x = torch.randn(plan.batch, 6, plan.image_size, plan.image_size, device=device)
    y = torch.randint(1139, (plan.batch,), device=device)
    lines = torch.randint(len(CELL_LINES), (plan.batch,), device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step():
        with autocast:
            _, loss = forward(x, y, lines)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step():
        with torch.no_grad(), autocast:
            net.logits(embed(x, lines).float())

    rates, warm = [], 0.0
    for run_once, training in ((train_step, True), (infer_step, False)):
        net.train(training)
        start = time.perf_counter()
        for _ in range(2):
            run_once()
        sync()
        warm += time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(plan.steps):
            run_once()
        sync()
        rates.append(plan.steps * plan.batch / (time.perf_counter() - start))
    mode = f"torch.compile ({plan.compile_backend})" if compiled else "eager"
    note = f"{mode}, batch {plan.batch}" + (f", warm-up/compile {warm:.0f} s" if compiled else "")
    table.add("model", f"{arch} train, {plan.image_size} px", f"{rates[0]:.0f} sites/s", note)
    table.add("model", f"{arch} inference (1 view), {plan.image_size} px", f"{rates[1]:.0f} sites/s", note)
    del step, net, forward, embed, opt
    return rates[0], rates[1]


def peak_memory(arch: str, plan: Plan, device, table: Table) -> None:
    """Peak GPU memory of an eager train step of the recipe's network (bf16 autocast, channels_last) at each
    of ``memory_batches``."""
    import torch

    for batch in plan.memory_batches:
        if device.type != "cuda":
            table.add("memory", f"{arch} train step, batch {batch}", "n/a", "CPU run: no GPU memory to measure")
            continue
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        step = recipe_network(arch, device)
        opt = torch.optim.AdamW(step.parameters(), lr=1e-4)
        x = torch.randn(batch, 6, plan.image_size, plan.image_size, device=device)
        y = torch.randint(1139, (batch,), device=device)
        lines = torch.randint(len(CELL_LINES), (batch,), device=device)
        for _ in range(2):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                _, loss = step(x, y, lines)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        table.add("memory", f"{arch} train step, batch {batch}, {plan.image_size} px", f"{peak:.1f} GiB",
                  f"of {total:.0f} GiB")
        del step, opt, x, y, loss


# ---------------------------------------------------------------------------------------------- project


def tiny_project(dst: Path, image_size: int, epochs: int) -> Path:
    """The project's tiny synthetic run (``tests.tiny_project``) copied to ``dst``, at ``image_size`` px
    with ``epochs`` for the shared model and each cell line, and one TTA view."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/ holds the fixtures
    from tests.tiny_project import copy_project, shrink_project
    from rxrx1_pipeline.schema import SharedTraining

    project = copy_project(dst)
    shrink_project(project)
    conf = project / "conf" / "base"
    synthetic = yaml.safe_load((conf / "parameters_synthetic.yml").read_text())
    synthetic["synthetic"]["image_size"] = image_size
    (conf / "parameters_synthetic.yml").write_text(yaml.safe_dump(synthetic))
    train = yaml.safe_load((conf / "parameters_train.yml").read_text())
    for key, block in train.items():
        if key == "shared_training" and SharedTraining.model_validate(block).epochs:
            block.update(image_size=image_size, epochs=epochs)
        elif key in CELL_LINES:
            block["training"].update(image_size=image_size, epochs=epochs)
    (conf / "parameters_train.yml").write_text(yaml.safe_dump(train))
    inference = yaml.safe_load((conf / "parameters_inference.yml").read_text())
    inference["inference"]["tta"] = 1
    (conf / "parameters_inference.yml").write_text(yaml.safe_dump(inference))
    return project


def kedro_run(project: Path, table: Table) -> None:
    """`kedro run` of the tiny preset: the synthetic data, then the full pipeline (on the GPU when there is one)."""
    import pandas as pd

    kedro = Path(sys.executable).with_name("kedro")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    for pipeline in ("synthetic", "full"):
        start = time.perf_counter()
        result = subprocess.run([str(kedro), "run", f"--pipelines={pipeline}"], cwd=project, env=env,
                                capture_output=True, text=True, timeout=600)
        if result.returncode:
            raise RuntimeError(f"kedro run --pipelines={pipeline} failed in {project}:\n{result.stderr[-4000:]}")
        table.add("kedro run", f"tiny preset, --pipelines={pipeline}", f"{time.perf_counter() - start:.1f} s", "ok")
    submission = pd.read_csv(project / "data" / "08_reporting" / "submission.csv")
    table.add("kedro run", "submission.csv", f"{len(submission)} wells", "training, inference, postprocess ran")


def ddp_check(project: Path, epochs: int, table: Table) -> None:
    """HEPG2 of the tiny preset trained twice from scratch on the same batches: ``nn.training.fit`` in this
    process, and ``nn.distributed.train`` on 1 process started by torch's elastic launcher (NCCL on a GPU,
    gloo on the CPU); their per-epoch losses must match."""
    import torch
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from rxrx1_pipeline.kedro_io.datasets import CheckpointStoreDataset
    from rxrx1_pipeline.nn import distributed
    from rxrx1_pipeline.nn import training as training_module
    from rxrx1_pipeline.pipelines.train.nodes import train_model

    bootstrap_project(project)
    cwd = os.getcwd()
    os.chdir(project)
    try:
        with KedroSession.create(project_path=project) as session:
            context = session.load_context()
            catalog, params = context.catalog, context.params
            inputs = [catalog.load(f"HEPG2.{name}") for name in ("model_sites", "site_images", "plate_stats")]
            classes = catalog.load("classes")
    finally:
        os.chdir(cwd)
    training = params["HEPG2"]["training"]
    update = {"init": "scratch", "epochs": epochs}
    training = training.model_copy(update=update) if hasattr(training, "model_copy") else {**training, **update}
    jobs = []
    plain_fit = training_module.fit

    def recording_fit(job, *args, **kwargs):
        jobs.append(job)
        return plain_fit(job, *args, **kwargs)

    checkpoints = CheckpointStoreDataset(filepath=str(project / "ddp_check" / "plain.pt")).load()
    callers = [m for m in (training_module, distributed) if getattr(m, "fit", None) is plain_fit]
    for module in callers:  # wherever the train node reaches fit from
        module.fit = recording_fit
    try:
        start = time.perf_counter()
        _, plain_history, _ = train_model(*inputs, classes, checkpoints, "HEPG2", training)
        plain_seconds = time.perf_counter() - start
    finally:
        for module in callers:
            module.fit = plain_fit
    if len(jobs) != 1:
        raise RuntimeError(f"DDP check: the train node ran fit {len(jobs)} times in this process, expected once")
    launched = dataclasses.replace(jobs[0], checkpoints=CheckpointStoreDataset(
        filepath=str(project / "ddp_check" / "launched.pt")).load())
    start = time.perf_counter()
    _, launched_history, _ = distributed.train(launched, 1)
    launched_seconds = time.perf_counter() - start
    plain = np.asarray(plain_history["loss"], float)
    ddp = np.asarray([row["loss"] for row in launched_history], float)
    if plain.shape != ddp.shape:
        raise RuntimeError(f"DDP check: {len(ddp)} epochs launched vs {len(plain)} plain")
    gap = float(np.max(np.abs(plain - ddp) / np.maximum(np.abs(plain), 1e-12)))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    ok = gap <= (1e-3 if torch.cuda.is_available() else 1e-6)
    table.add("ddp", f"1 process, {backend}, losses per epoch", " / ".join(f"{v:.5f}" for v in ddp),
              f"plain: {' / '.join(f'{v:.5f}' for v in plain)}; max rel. gap {gap:.1e} "
              f"({'match' if ok else 'MISMATCH'}); {launched_seconds:.0f} s vs {plain_seconds:.0f} s plain")
    if not ok:
        raise RuntimeError(f"DDP check: the launched losses {ddp} differ from the plain path's {plain}")


def _wrapped_steps(rank: int, arch: str, size: int, steps: int, backend: str, port: int, out: str) -> None:
    """In a spawned process: the project's TrainStep wrapped in DistributedDataParallel (world size 1), trained
    on the fixed batches of :func:`_batches`; writes the losses to ``out``."""
    import torch
    import torch.distributed as dist

    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        dev = torch.device("cuda:0" if backend == "nccl" else "cpu")
        step = _train_step(arch, dev)
        ddp = torch.nn.parallel.DistributedDataParallel(step, device_ids=[0] if backend == "nccl" else None)
        Path(out).write_text(json.dumps(_run_steps(ddp, step, arch, size, steps, dev)))
    finally:
        dist.destroy_process_group()


def _train_step(arch: str, dev):
    import torch

    from rxrx1_pipeline.nn.network import EmbeddingNet
    from rxrx1_pipeline.nn.training import TrainStep

    torch.manual_seed(0)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    return TrainStep(EmbeddingNet(arch, 11, 16)).to(dev)


def _run_steps(module, step, arch: str, size: int, steps: int, dev) -> list[float]:
    import torch

    opt = torch.optim.SGD(step.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(8, 6, size, size, generator=g).to(dev)
        y = torch.randint(11, (8,), generator=g).to(dev)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            _, loss = module(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def ddp_wrapper_check(arch: str, size: int, device, table: Table, steps: int = 4) -> None:
    """The project's TrainStep trained on the same batches plainly and wrapped in DDP (1 process, NCCL on a
    GPU, gloo on the CPU): gradients then go through DDP's all-reduce; the losses must match."""
    import socket

    import torch.multiprocessing as mp

    plain = _run_steps(*(2 * [_train_step(arch, device)]), arch, size, steps, device)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "losses.json"
        start = time.perf_counter()
        mp.spawn(_wrapped_steps, args=(arch, size, steps, backend, port, str(out)), nprocs=1, join=True)
        wrapped = json.loads(out.read_text())
    gap = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(plain, wrapped))
    ok = gap <= (1e-3 if device.type == "cuda" else 1e-6)
    table.add("ddp", f"DistributedDataParallel(TrainStep), 1 process, {backend}, {arch} {size} px, {steps} steps",
              " / ".join(f"{v:.4f}" for v in wrapped),
              f"plain: {' / '.join(f'{v:.4f}' for v in plain)}; max rel. gap {gap:.1e} ({'match' if ok else 'MISMATCH'}); "
              f"{time.perf_counter() - start:.0f} s")
    if not ok:
        raise RuntimeError(f"DDP wrapper check: losses {wrapped} differ from the plain path's {plain}")


# ---------------------------------------------------------------------------------------------- projection


def real_schedule() -> tuple[int, int, str, int]:
    """(shared-model epochs, per-cell-line epochs, backbone, first pseudo-labelled epoch or 0) of the ``real``
    recipe (conf/real over conf/base)."""
    from rxrx1_pipeline.schema import SharedTraining, Training

    base = yaml.safe_load((ROOT / "conf" / "base" / "parameters_train.yml").read_text())
    real = yaml.safe_load((ROOT / "conf" / "real" / "parameters_train.yml").read_text()) or {}
    shared = SharedTraining.model_validate({**base["shared_training"], **real.get("shared_training", {})})
    line = Training.model_validate({**base["HEPG2"]["training"], **(real.get("HEPG2", {}).get("training") or {})})
    return shared.epochs, line.epochs, shared.arch, shared.pseudo_labels.start_epoch


def project(table: Table, rates: dict[str, tuple[float, float]], loader: dict[str, float], smoke: bool) -> None:
    """The real recipe's wall time on one GPU from the measured rates of its backbone (else the last measured)."""
    shared_epochs, line_epochs, recipe_arch, pseudo_start = real_schedule()
    arch = recipe_arch if recipe_arch in rates else list(rates)[-1]
    train_rate, infer_rate = rates[arch]
    sites = REAL_LABELLED_SITES + REAL_TEST_CONTROL_SITES
    epochs = shared_epochs + line_epochs  # each line fine-tuned on its share: all lines together = one pass each
    widest = max(int(k.split("/")[1]) for k in loader)
    for source in ("store", "png"):
        feed = loader[f"{source}/{widest}"]
        rate = min(train_rate, feed)
        bound = "model (GPU compute)" if train_rate <= feed else f"loader ({source}, {widest} workers)"
        epoch = sites / rate
        infer = REAL_PREDICTED_SITES * 8 / min(infer_rate, feed)  # 8 dihedral views per site
        # before each pseudo-labelled epoch, one view of every unlabelled validation and test site is predicted
        # (an epoch keeps its number of batches as labels are added); validation passes are left out
        pseudo = (shared_epochs - pseudo_start + 1 if pseudo_start else 0) * REAL_PREDICTED_SITES / min(infer_rate, feed)
        total = epochs * epoch + pseudo + infer
        note = ("from CPU smoke rates: not a real projection; " if smoke else "") + \
               f"{arch}{'' if arch == recipe_arch else f' (the recipe has {recipe_arch})'}; {sites:,} sites/epoch at " \
               f"{rate:.0f} sites/s; bound: {bound}; 1 GPU: no all-reduce"
        table.add("projection", f"real recipe, images.source {source}: one epoch", f"{epoch / 60:.1f} min", note)
        table.add("projection", f"images.source {source}: whole schedule ({shared_epochs} shared + {line_epochs} "
                                "per line epochs, pseudo-label passes, 8-view inference)", f"{total / 3600:.2f} h",
                  f"two seeds: {2 * total / 3600:.2f} h")


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: the same code paths in ~1 min")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--budget", type=float, default=420, help="seconds after which the compile rows are skipped")
    parser.add_argument("--out", type=Path, help="also write the table as Markdown to this file")
    args = parser.parse_args()
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
    if args.smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # every subprocess on the CPU too (kedro run, DDP on gloo)
    import torch

    began = time.perf_counter()
    plan = SMOKE if args.smoke else FULL
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        raise SystemExit("no CUDA device: run with --smoke for the CPU check")
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    table = Table()
    table.add("machine", name, f"{os.cpu_count()} cores", f"torch {torch.__version__}" + (", smoke" if args.smoke else ""))
    if Path("/dev/shm").is_dir():  # loader workers hand batches over in shared memory: 16 x 2 x 32 sites = 1.6 GB at 512 px
        table.add("machine", "/dev/shm free", f"{shutil.disk_usage('/dev/shm').free / 2**30:.1f} GiB",
                  "loader workers pass batches through it (~50 MB per 512 px batch of 32, 2 in flight per worker)")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tmp = Path(tmp)
        loader = check_pixels(plan, tmp, table)
        rates = {}
        for arch in plan.archs:
            rates[arch] = model_rates(arch, plan, device, False, table)
            peak_memory(arch, plan, device, table)
        project_dir = tiny_project(tmp / "project", plan.project_size, plan.project_epochs)
        kedro_run(project_dir, table)
        ddp_check(project_dir, plan.project_epochs, table)
        ddp_wrapper_check(plan.archs[0], plan.image_size if args.smoke else 128, device, table)
        if not args.no_compile:
            for arch in plan.archs:
                if time.perf_counter() - began > args.budget:
                    table.add("model", f"{arch} compiled", "skipped", f"time budget of {args.budget:.0f} s spent")
                    continue
                model_rates(arch, plan, device, True, table)  # shown only: the pipeline trains eagerly
        project(table, rates, loader, args.smoke)
    table.add("total", "gpu_check wall time", f"{time.perf_counter() - began:.0f} s")
    print("\n" + table.text())
    if args.out:
        args.out.write_text(table.markdown() + "\n")


if __name__ == "__main__":
    main()
