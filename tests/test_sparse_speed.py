"""2:4 sparse-kernel timing: skips cleanly without a capable GPU; on one, the converted model agrees."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO

from loraprune.evaluation.sparse_speed import measure, unsupported_reason
from loraprune.run.models import TinySpec, load_model

CUDA = torch.cuda.is_available()


def _two_four_masks(model) -> dict:
    sys.path.insert(0, str(REPO / "scripts"))
    from bench_semistructured import two_four_by_magnitude

    return two_four_by_magnitude(model)


@pytest.mark.skipif(CUDA, reason="checks the CPU path")
def test_cpu_is_skipped_with_a_reason_and_the_model_untouched():
    assert "CUDA" in unsupported_reason("cpu")
    model, _ = load_model("tiny", tiny=TinySpec(hidden_size=64), dtype="float32", device="cpu")
    masks = _two_four_masks(model)
    before = {n: p.clone() for n, p in model.named_parameters()}
    result = measure(model, masks)
    assert set(result) == {"skipped"} and "CUDA" in result["skipped"]
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[n])


def test_benchmark_script_runs_or_skips_cleanly():
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench_semistructured.py"),
            "--model",
            "tiny",
            "--repeats",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        ("whole forward" in proc.stdout)
        if CUDA and unsupported_reason("cuda") is None
        else (proc.stdout.startswith("skipped: "))
    )


@pytest.mark.skipif(not CUDA or unsupported_reason("cuda") is not None, reason="needs a GPU with 2:4 kernels")
def test_sparse_forward_matches_dense_on_gpu():
    model, _ = load_model(
        "tiny", tiny=TinySpec(hidden_size=128, intermediate_size=256), dtype="float16", device="cuda"
    )
    result = measure(model, _two_four_masks(model), batch_size=4, seq_len=64, repeats=3)
    assert result["converted_projections"] > 0
    assert result["max_rel_logit_diff"] < 2e-2
    assert result["model_dense_ms"] > 0 and result["model_sparse_ms"] > 0
