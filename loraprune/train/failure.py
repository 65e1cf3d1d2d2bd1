"""A failed run inside a sweep: ``failed.json`` (error type, its first line, the cell's identity) and the
full traceback next to it, so one failing job does not stop the others and the table can show it."""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

from loraprune.models.shapes import weights_kind
from loraprune.train.checkpoint import write_json, write_text

FAILED = "failed.json"
TRACEBACK = "failed.traceback.txt"


def first_line(error: BaseException) -> str:
    """``Type: first line of the message``."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def write_failure(run_dir: Path, error: BaseException, cfg: Any) -> Path:
    """Record ``error`` in ``run_dir`` (made if needed); ``cfg`` (the run's config, typed or not) names
    the cell: model, method, ratio, pattern, seed."""
    run_dir = Path(run_dir)
    write_text(run_dir / TRACEBACK, "".join(traceback.format_exception(error)))

    def get(path: str) -> Any:
        node = cfg
        for part in path.split("."):
            node = getattr(node, part, None)
        return node

    record = {
        "error_type": type(error).__name__,
        "error": first_line(error),
        "traceback": TRACEBACK,
        "run": {
            "dir": str(run_dir),
            "model": get("model.name"),
            "weights": weights_kind(get("model")),
            "method": get("method.name"),
            "ratio": get("prune.ratio"),
            "target": get("prune.target"),
            "pattern": get("prune.pattern"),
            "seed": get("trainer.seed"),
        },
    }
    write_json(run_dir / FAILED, record)
    return run_dir / FAILED


def read_failure(path: Path) -> dict[str, Any] | None:
    """A ``failed.json``, or None when unreadable or not one."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and "error" in record and "run" in record else None
