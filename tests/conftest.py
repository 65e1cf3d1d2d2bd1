"""Shared fixtures: tiny random LLaMA models and composing the real Hydra config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loraprune.models.loading import TinySpec, load_model
from loraprune.pruners import CalibrationData

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "loraprune" / "conf"

TINY_CASES = {
    "mha": TinySpec(num_heads=4, num_kv_heads=4),
    "gqa_bias": TinySpec(num_heads=8, num_kv_heads=2, attention_bias=True),
}


@pytest.fixture(params=sorted(TINY_CASES))
def tiny(request):
    """(model, tokenizer) for each tiny geometry: MHA and GQA with q/k/v bias."""
    return load_model("tiny", tiny=TINY_CASES[request.param], dtype="float32", device="cpu")


@pytest.fixture
def tokens():
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, 259, (2, 24), generator=g)


def compose(*overrides: str):
    """The real config composed with ``overrides`` (as the CLI would)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from loraprune.config.schema import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m loraprune ARGS`` as a user would run it (offline), whatever its exit status."""
    return subprocess.run(
        [sys.executable, "-m", "loraprune", *args],
        cwd=cwd,
        env=env or OFFLINE_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli(
    *args: str, cwd: Path, env: dict | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """:func:`cli`, asserting it succeeded."""
    proc = cli(*args, cwd=cwd, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def lora_with_random_b(model, r: int):
    """``model`` under peft LoRA (rank ``r``, α = 2r, all seven projections) with seeded nonzero B, so
    the LoRA update and its gradients are nonzero from the start."""
    from peft import LoraConfig, get_peft_model

    from loraprune.core.structure import ALL_PROJECTIONS

    pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(ALL_PROJECTIONS)))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return pm


def calibration_samples(n: int = 4) -> CalibrationData:
    """``n`` calibration samples of 20 random token ids (seeded) for tiny-model criteria tests."""
    g = torch.Generator().manual_seed(5)
    samples = []
    for _ in range(n):
        ids = torch.randint(3, 259, (20,), generator=g).tolist()
        samples.append({"input_ids": ids, "labels": ids})
    return CalibrationData(samples, pad_token_id=0)
