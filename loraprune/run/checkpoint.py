"""Saving and reloading pruned models: safetensors + config + tokenizer + pruning plan, written atomically."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loraprune.core.plan import PruningPlan
from loraprune.core.surgery import apply_plan

log = logging.getLogger(__name__)

PLAN_FILE = "pruning_plan.json"


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically."""
    write_text(path, json.dumps(data, indent=2, default=str))


def _uniform_config(config, plan: PruningPlan):
    """A copy of ``config`` stating the pruned widths when every layer keeps the same ones and the config
    class accepts them (some versions require hidden_size to divide by the head count); else None."""
    widths = plan.uniform_widths() if plan.layers else None
    if widths is None:
        return None
    try:
        return type(config).from_dict({**config.to_dict(), **widths, "head_dim": plan.geometry.head_dim})
    except Exception as e:  # noqa: BLE001 - config classes raise their own validation errors
        log.info(
            "pruned widths not expressible in %s (%s): load with loraprune.load_pruned",
            type(config).__name__,
            e,
        )
        return None


def save_pruned(model: nn.Module, tokenizer, plan: PruningPlan, path: str | Path) -> Path:
    """Save a physically pruned model so :func:`load_pruned` restores it; replaces ``path`` atomically.

    When every layer keeps the same widths, the saved config states them, so that plain
    ``AutoModelForCausalLM.from_pretrained(path)`` loads the pruned model as well.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    original = model.config
    uniform = _uniform_config(original, plan)
    try:
        if uniform is not None:
            model.config = uniform
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / PLAN_FILE, plan.to_dict())
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        model.config = original
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_pruned(
    path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None, with_tokenizer: bool = False
):
    """Rebuild a pruned model: empty model from its config, the saved plan applied, weights loaded.

    Returns the model (and its tokenizer when ``with_tokenizer``).
    """
    from accelerate import init_empty_weights
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / PLAN_FILE).is_file():
        raise FileNotFoundError(f"{path} has no {PLAN_FILE}: not a loraprune checkpoint")
    plan = PruningPlan.from_dict(json.loads((path / PLAN_FILE).read_text()))
    config = AutoConfig.from_pretrained(path)
    if config.intermediate_size != plan.geometry.intermediate_size or (
        config.num_attention_heads != plan.geometry.num_heads
    ):  # uniform widths were saved in the config: a plain HF checkpoint
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto").to(device).eval()
        return (model, AutoTokenizer.from_pretrained(path)) if with_tokenizer else model
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    apply_plan(model, plan)
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(path.glob("*.safetensors")):
        state.update(load_file(shard, device=device))
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(
            f"checkpoint does not match its plan: missing {sorted(set(missing) - tied)}, "
            f"unexpected {sorted(unexpected)}"
        )
    if tied:
        model.tie_weights()
    model.to(device).eval()
    if with_tokenizer:
        return model, AutoTokenizer.from_pretrained(path)
    return model
