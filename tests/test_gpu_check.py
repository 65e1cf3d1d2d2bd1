"""The GPU check runs end to end at tiny size on CPU (its figures are only meaningful on a GPU)."""

from __future__ import annotations

import subprocess

from conftest import OFFLINE_ENV, REPO


def test_gpu_check_script_runs_at_tiny_size_on_cpu():
    proc = subprocess.run(
        [str(REPO / "scripts" / "gpu_check.sh"), "--model", "tiny", "--device", "cpu", "--dtype", "fp32"]
        + ["--steps", "3", "--seq-len", "16"],
        env=OFFLINE_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    rows = {line.split(":")[0].strip(): line for line in lines if "tokens/s" in line}
    assert set(rows) == {"loraprune", "grad"}
    assert any(line.strip().startswith("loraprune / grad: memory") for line in lines)
    assert any("2:4 sparse kernels: skipped" in line and "CUDA" in line for line in lines)
