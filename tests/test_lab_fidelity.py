"""`benchmarks/lab_fidelity.py --smoke`: the synthetic lab's fidelity benchmark (generic-feature probe and CNN
under per-plate and per-image normalisation, each leak stage) runs end to end at tiny sizes, so it cannot rot.
The targets themselves are measured at the full size (README, benchmarks/levers.md)."""

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_lab_fidelity_smoke_prints_its_table(tmp_path):
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lab_fidelity.py"), "--smoke"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("model ")))
    rows = [line.split() for line in lines[header + 1: header + 6]]
    assert [(r[0], r[1]) for r in rows] == [("probe", "none"), ("probe", "plate"), ("probe", "image"),
                                           ("cnn", "plate"), ("cnn", "image")]
    for row in rows:
        assert all(0.0 <= float(v.rstrip("%")) <= 100.0 for v in row[2:5])
    assert "probe: image raw / plate raw" in result.stdout and "cnn: image raw / plate raw" in result.stdout
