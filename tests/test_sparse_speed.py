"""2:4 sparse-kernel timing: skips cleanly without a capable GPU; on one, the converted model agrees."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO

from loraprune.evaluation.sparse_speed import (
    measure,
    report_lines,
    two_four_by_magnitude,
    unsupported_reason,
)
from loraprune.models.loading import TinySpec, load_model

CUDA = torch.cuda.is_available()


def test_two_four_by_magnitude_keeps_the_larger_half_of_every_four():
    model, _ = load_model("tiny", tiny=TinySpec(hidden_size=64), dtype="float32", device="cpu")
    before = {n: p.clone() for n, p in model.named_parameters()}
    masks = two_four_by_magnitude(model)
    assert len(masks) == 7 * model.config.num_hidden_layers
    for (i, name), keep in masks.items():
        part = "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
        key = f"model.layers.{i}.{part}.{name}.weight"
        weight, original = dict(model.named_parameters())[key], before[key]
        assert keep.shape == weight.shape and (keep.view(keep.shape[0], -1, 4).sum(-1) == 2).all()
        assert torch.equal(weight, original * keep)
        kept = original.abs().masked_fill(~keep, float("inf")).view(keep.shape[0], -1, 4).amin(-1)
        dropped = original.abs().masked_fill(keep, -1.0).view(keep.shape[0], -1, 4).amax(-1)
        assert (kept >= dropped).all()


def test_report_lines_show_each_shape_and_the_whole_forward():
    result = {
        "device": "GPU",
        "dtype": "float16",
        "batch": [8, 128],
        "converted_projections": 3,
        "dense_projections_refused": ["layer 0 o_proj (64, 64): too small"],
        "model_dense_ms": 2.0,
        "model_sparse_ms": 1.0,
        "model_speedup": 2.0,
        "max_rel_logit_diff": 1e-3,
        "per_shape": [
            {"shape": [128, 64], "dense_ms": 0.2, "sparse_ms": 0.1, "speedup": 2.0},
            {"shape": [64, 64], "skipped": "too small"},
        ],
    }
    lines = report_lines(result, "tiny")
    assert lines[0] == "model=tiny batch=8x128 dtype=float16 device=GPU"
    assert "128x64" in lines[2] and "2.00x" in lines[2] and "skipped: too small" in lines[3]
    assert "whole forward: dense 2.00 ms, 2:4 1.00 ms, dense / 2:4 = 2.00x (3 projections" in lines[4]
    assert lines[5] == "  left dense: layer 0 o_proj (64, 64): too small"


@pytest.mark.skipif(CUDA, reason="checks the CPU path")
def test_cpu_is_skipped_with_a_reason_and_the_model_untouched():
    assert "CUDA" in unsupported_reason("cpu")
    model, _ = load_model("tiny", tiny=TinySpec(hidden_size=64), dtype="float32", device="cpu")
    masks = two_four_by_magnitude(model)
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
    result = measure(model, two_four_by_magnitude(model), batch_size=4, seq_len=64, repeats=3)
    assert result["converted_projections"] > 0
    assert result["max_rel_logit_diff"] < 2e-2
    assert result["model_dense_ms"] > 0 and result["model_sparse_ms"] > 0
