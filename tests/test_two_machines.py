"""Training on two machines, proven on one: two `kedro run` processes of the same project with
``distributed.nnodes: 2`` (one DDP process each) meet at a c10d rendezvous on 127.0.0.1, as two machines
sharing the output root would (README, "More than one GPU")."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import pandas as pd
import yaml

from tests.tiny_project import shrink_project
from tests.conftest import KEDRO, kedro_run

# HEPG2 alone
TRAIN = ("--pipelines=train", "--namespaces=HEPG2")
COMMON = "HEPG2.training.batch_size=24,HEPG2.training.validate_every=1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _machines(project: Path, epochs: int, name: str, port: int = 0) -> tuple[list[subprocess.Popen], list[Path]]:
    """Two `kedro run`s of ``project`` as two machines of one training, each in its own process group."""
    params = (f"--params={COMMON},HEPG2.training.epochs={epochs},HEPG2.training.distributed.nnodes=2,"
              f"HEPG2.training.distributed.rdzv_endpoint=127.0.0.1:{port or _free_port()}")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "COLUMNS": "200"}
    logs = [project / f"{name}_{k}.log" for k in (0, 1)]
    procs = [subprocess.Popen([str(KEDRO), "run", *TRAIN, params], cwd=project, env=env, stdout=subprocess.DEVNULL,
                              stderr=log.open("w"), start_new_session=True) for log in logs]
    return procs, logs


def _wait(procs: list[subprocess.Popen], timeout: float = 300) -> list[int]:
    deadline = time.monotonic() + timeout
    return [proc.wait(timeout=max(1.0, deadline - time.monotonic())) for proc in procs]


def _history(project: Path) -> pd.DataFrame:
    return pd.read_parquet(project / "data/08_reporting/HEPG2/history.parquet")


def test_two_machines_on_one(project_copy: Path, monkeypatch):
    import mlflow

    # one thread per DDP process in both layouts (else 1 on one machine of two processes, 2 on each machine of
    # one): the thread count changes the float rounding, and so the losses
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    shrink_project(project_copy)
    conf = project_copy / "conf/base/parameters_train.yml"  # every cell line from scratch, no shared model
    train = yaml.safe_load(conf.read_text())
    train["shared_training"]["epochs"] = 0
    for cell_line in ("HEPG2", "HUVEC", "RPE", "U2OS"):
        train[cell_line]["training"]["init"] = "scratch"
    conf.write_text(yaml.safe_dump(train))
    for args in (["--pipelines=synthetic"], ["--pipelines=ingest,plate_groups"],
                 ["--pipelines=train", "--to-nodes=train_shared_model"]):  # the (empty) shared model, an input
        ready = kedro_run(project_copy, *args, timeout=300)
        assert ready.returncode == 0, ready.stderr[-3000:]
    one = kedro_run(project_copy, *TRAIN, f"--params={COMMON},HEPG2.training.epochs=3,"
                    "HEPG2.training.distributed.nproc_per_node=2", timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    reference = _history(project_copy)
    for done in ("06_models/HEPG2", "08_reporting/HEPG2"):  # the same settings would resume the finished run
        for file in (project_copy / "data" / done).iterdir():
            file.unlink()

    procs, logs = _machines(project_copy, epochs=3, name="two")
    codes = _wait(procs)
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n".join(t[-3000:] for t in texts)
    two = _history(project_copy)
    print(pd.concat({"1 machine x 2": reference, "2 machines x 1": two}, axis=1)[
        [(k, c) for k in ("1 machine x 2", "2 machines x 1") for c in ("loss", "valid_site_accuracy")]].to_string())
    assert list(two["epoch"]) == [1, 2, 3]
    np.testing.assert_array_equal(two["loss"], reference["loss"])
    np.testing.assert_array_equal(two["valid_site_accuracy"], reference["valid_site_accuracy"])
    # only rank 0's machine writes: one log saves the model, the other says it was a worker and stopped
    writers = [t for t in texts if "Saving data to HEPG2.model " in t]
    workers = [t for t in texts if "this machine trained as node 1 of 2" in t]
    assert len(writers) == 1 and len(workers) == 1 and "Saving data to" not in workers[0].split("node 1 of 2")[1]
    client = mlflow.MlflowClient(f"sqlite:///{project_copy / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id],
                              order_by=["attributes.start_time ASC"])[-2:]  # the two machines' runs
    assert all(run.info.status == "FINISHED" and run.info.run_name == "train" for run in runs)
    with_curves = [run for run in runs if "HEPG2.loss" in run.data.metrics]
    assert len(with_curves) == 1
    assert [m.value for m in client.get_metric_history(with_curves[0].info.run_id, "HEPG2.loss")] == list(two["loss"])
    worker = next(run for run in runs if run is not with_curves[0])
    assert worker.data.tags["node_rank"] == "1" and "worker 1 of 2" in worker.data.tags["machine"]

    # one machine killed mid-training: the other stops naming the lost peer; both started again resume
    port = _free_port()
    procs, logs = _machines(project_copy, epochs=4, name="kill", port=port)
    deadline = time.monotonic() + 240
    while not any("HEPG2 epoch 1/4" in log.read_text() for log in logs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            "\n".join(f"machine {k} (exit {p.poll()}):\n{log.read_text()[-3000:]}"
                      for k, (p, log) in enumerate(zip(procs, logs)))
        time.sleep(0.5)
    killed = next(k for k, log in enumerate(logs) if "HEPG2 epoch 1/4" not in log.read_text())  # the worker
    os.killpg(procs[killed].pid, signal.SIGKILL)
    survivor = procs[1 - killed]
    assert survivor.wait(timeout=180) != 0
    text = logs[1 - killed].read_text()
    # gloo names the peer whose connection closed or reset; or the rendezvous store that machine hosted is gone
    gloo = "[127.0.0.1]:" in text and f"a peer of this 2-machine training, meeting at 127.0.0.1:{port}, was lost" in text
    assert gloo or f"the machine at 127.0.0.1:{port} left" in text, text[-3000:]
    assert "start `kedro run` again on every machine: training resumes from the last checkpoint" in text
    procs[killed].wait(timeout=30)

    procs, logs = _machines(project_copy, epochs=4, name="resume")
    codes = _wait(procs)
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n".join(t[-3000:] for t in texts)
    assert any("HEPG2: resuming from the checkpoint after epoch" in t for t in texts)
    assert list(_history(project_copy)["epoch"]) == [1, 2, 3, 4]


def test_two_trainings_of_one_run_on_several_machines_are_refused_before_running():
    from rxrx1_pipeline.schema import ParameterError, validate_parameters
    from tests.pipelines.conftest import TINY_TRAINING_VALUES

    spread = {"nproc_per_node": 1, "nnodes": 2, "rdzv_endpoint": "127.0.0.1:29500"}
    block = {**TINY_TRAINING_VALUES, "init": "scratch", "distributed": spread}
    parameters = {"HEPG2": {"cell_line": "HEPG2", "training": block},
                  "HUVEC": {"cell_line": "HUVEC", "training": block}}
    with pytest.raises(ParameterError, match=r"HEPG2.training, HUVEC.training.distributed.nnodes > 1 in one run: "
                                             r"a machine without rank 0 stops after the first"):
        validate_parameters(parameters, {"HEPG2", "HUVEC"})
    validate_parameters(parameters, {"HEPG2"})  # one of them per run
    one_line_not_trained = {**parameters, "HUVEC": {"cell_line": "HUVEC", "training": {**block, "init": "shared",
                                                                                        "epochs": 0}},
                            "shared_training": {**TINY_TRAINING_VALUES, "distributed": spread}}
    validate_parameters(one_line_not_trained, {"HUVEC", "shared_training"})  # fine-tuning 0 epochs trains nothing
