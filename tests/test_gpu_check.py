"""`benchmarks/gpu_check.py --smoke`: the GPU acceptance command's code paths on the CPU, so it cannot rot."""

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_gpu_check_smoke_prints_every_row_of_the_table(tmp_path):
    out = tmp_path / "table.md"
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(out)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [line.split(" | ") for line in out.read_text().splitlines()[2:]]
    table = {(r[0].lstrip("| "), r[1]): (r[2], r[3].rstrip(" |")) for r in rows}
    items = {section: [item for s, item in table if s == section] for section, _ in table}
    cores = min(os.cpu_count() or 1, 16)
    loaders = sorted(i for i in items["loader"])
    assert loaders == sorted(f"{what}, {w} workers, 32 px" for w in sorted({0, min(4, cores), min(8, cores), cores})
                             for what in ("store reads (page cache)", "PNGs decoded"))
    for item in loaders + ["PNG decode, 1 process, 32 px"]:
        value = table[("loader" if "workers" in item else "pixels", item)][0]
        assert value.endswith(" sites/s") and float(value.split()[0]) > 0
    models = [(item, note) for (s, item), (_, note) in table.items() if s == "model"]
    assert sum("eager" in n for _, n in models) == 2 and sum("torch.compile" in n for _, n in models) == 2
    assert len(items["memory"]) == 2  # batch 4 and 8 (n/a on the CPU)
    assert table[("kedro run", "submission.csv")][0].endswith(" wells")
    assert {"tiny preset, --pipelines=synthetic", "tiny preset, --pipelines=full"} <= set(items["kedro run"])
    assert len(items["ddp"]) == 2  # the launched training and the DDP-wrapped train step
    for item in items["ddp"]:
        assert "gloo" in item and "(match)" in table[("ddp", item)][1]
    assert len(items["projection"]) == 4 and sum("whole schedule" in i for i in items["projection"]) == 2
    assert "gpu_check wall time" in items["total"]
    assert "section" in result.stdout and "projection" in result.stdout  # the table is printed too
