"""Sweeps through Hydra's launchers: parallel jobs (joblib) where one failure stops nothing (the exit status
says it), a re-launch that skips finished cells, the table's failed cells, and the SLURM submission rendered
without a cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import OFFLINE_ENV

from loraprune.cli.table import main as table_main

# two tiny cells: 16 fine-tune samples, and 1 sample, fewer than a micro-batch: fails at fine-tune time,
# after validation, the model load and the dense evaluation
SWEEP = (
    "debug=tiny",
    "method=loraprune",
    "trainer.steps=2",
    "trainer.micro_batch_size=2",
    "save_model=false",
    "data.nsamples=16,1",
)
ERROR = "ValueError: 1 fine-tune samples are fewer than one micro-batch (2)"


def _failed_line(sweep: Path, failed: int, jobs: int) -> str:
    return (
        f"loraprune: error: {failed} of {jobs} sweep jobs failed "
        f"(see {sweep}/**/failed.json; loraprune-table shows them)"
    )


def _loraprune(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**OFFLINE_ENV, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "loraprune", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_joblib_sweep_survives_a_failing_job_and_a_relaunch_skips_the_finished_cell(tmp_path):
    sweep = tmp_path / "sweep"
    launch = ("-m", *SWEEP, f"hydra.sweep.dir={sweep}")
    proc = _loraprune(*launch, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]  # once both jobs have ended
    assert proc.stderr.splitlines()[-1] == _failed_line(sweep, 1, 2)
    good, bad = sweep / "0_loraprune_r0.2", sweep / "1_loraprune_r0.2"
    metrics = json.loads((good / "metrics.json").read_text())
    assert metrics["run"]["dir"] == str(good)
    failed = json.loads((bad / "failed.json").read_text())
    assert failed["error"] == ERROR
    assert failed["run"]["method"] == "loraprune" and failed["run"]["ratio"] == 0.2
    assert "Traceback" in (bad / failed["traceback"]).read_text()
    assert not (bad / "metrics.json").exists()

    table = tmp_path / "table.md"
    assert table_main([str(sweep), "--out", str(table), "--reference", "none"]) == 0
    lines = table.read_text().splitlines()
    ok = next(line for line in lines if line.startswith("| 20% | LoRAPrune |"))
    assert f"{metrics['pruned']['ppl']['news_embedded']:.2f}" in ok
    assert any(line.startswith(f"| 20% | LoRAPrune (failed: {ERROR}) | – |") for line in lines)

    # the same sweep again (default launcher): the finished cell is skipped, the failed one runs again
    before = (good / "metrics.json").read_bytes(), (good / "metrics.json").stat().st_mtime_ns
    again = _loraprune(*launch, cwd=tmp_path)
    assert again.returncode == 1 and again.stderr.splitlines()[-1] == _failed_line(sweep, 1, 2)
    assert "finished already" in again.stdout + again.stderr
    assert ((good / "metrics.json").read_bytes(), (good / "metrics.json").stat().st_mtime_ns) == before
    assert json.loads((bad / "failed.json").read_text())["error"] == ERROR

    # the good cell alone into the same directory: the earlier launches' failed.json is not this sweep's
    alone = _loraprune("-m", *SWEEP[:-1], "data.nsamples=16", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert alone.returncode == 0 and "sweep jobs failed" not in alone.stderr, alone.stderr[-3000:]
    assert "finished already" in alone.stdout + alone.stderr and (bad / "failed.json").exists()


def test_slurm_submission_renders_without_a_cluster(tmp_path):
    """``hydra/launcher=slurm`` through the real plugin and submitit, up to ``sbatch``: stand-ins on PATH
    (``srun`` for detection, ``sbatch`` keeps the script submitit wrote and refuses the job)."""
    bin_dir, captured = tmp_path / "bin", tmp_path / "job.sbatch"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f'#!/bin/sh\ncp "$1" {captured}\necho "sbatch: error: no cluster here" >&2\nexit 1\n')
    sbatch.chmod(0o755)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it to detect SLURM
    (bin_dir / "srun").chmod(0o755)
    proc = _loraprune(
        "-m",
        "debug=tiny",
        "prune.ratio=0.2,0.3",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu_a100",
        "hydra.launcher.gpus_per_node=2",
        "hydra.launcher.timeout_min=90",
        "hydra.launcher.mem_gb=48",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
        env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
    )
    assert proc.returncode != 0 and "no cluster here" in proc.stderr
    script = captured.read_text()
    for line in (
        "#SBATCH --partition=gpu_a100",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --time=90",
        "#SBATCH --mem=48GB",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --array=0-1%2",  # one job per cell, all at once
        "#SBATCH --job-name=loraprune",
        "#SBATCH --signal=USR2@120",  # submitit requeues a job at its time limit (then it resumes)
    ):
        assert line in script, script
    assert "submitit.core._submit" in script
