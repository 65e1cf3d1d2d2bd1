"""Table rows from run directories: read every ``metrics.json``, aggregate seeds, sort in the paper's order.

Every ``metrics.json`` below a directory (a Hydra multirun, or any tree of runs) becomes one row per
(model, method, ratio), seeds averaged; the dense model gets its own row. A sweep cell that failed
(``failed.json``, :mod:`loraprune.run.failure`) gets a row marked failed, with the error's first line.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from loraprune.run.failure import FAILED, read_failure
from loraprune.run.results import pct, peak_memory, zeroshot_protocol, zeroshot_scores

log = logging.getLogger("loraprune")

METHOD_LABELS = {
    "dense": "Dense",
    "random": "Random",
    "l1": "L1",
    "l2": "L2",
    "magnitude": "Magnitude",
    "magnitude_oneshot": "Magnitude (one-shot)",
    "wanda_sp": "Wanda-sp",
    "wanda": "Wanda",
    "sparsegpt": "SparseGPT",
    "llm_pruner": "LLM-Pruner",
    "grad": "Grad",
    "loraprune": "LoRAPrune",
    "loraprune_8bit": "LoRAPrune (8-bit base)",
    "mask_fisher": "LoRA + mask Fisher",
}
# baselines first, LoRAPrune last within a ratio block (the paper's order); unknown methods before LoRAPrune
METHOD_ORDER = (
    "dense",
    "random",
    "l1",
    "l2",
    "magnitude_oneshot",
    "magnitude",
    "wanda_sp",
    "wanda",
    "sparsegpt",
    "llm_pruner",
    "grad",
    "loraprune",
    "loraprune_8bit",
    "mask_fisher",
)
KIND_ORDER = {"dense": 0, "before_recovery": 1, "run": 2, "failed": 2.5, "paper": 3}


@dataclass
class Row:
    """One table row: a method at a ratio (runs averaged over seeds), the dense model, or a paper row.

    Percentages (``tasks``, ``average``, ``params_removed``) are in percent, as in the paper.
    ``memory_gib`` is the CUDA peak when measured, else the CPU peak RSS (``memory_device`` says which).
    """

    model: str
    method: str
    ratio: float
    kind: str = "run"  # run | dense | before_recovery | failed | paper
    ppl: dict[str, float | None] = field(default_factory=dict)
    tasks: dict[str, float | None] = field(default_factory=dict)
    average: float | None = None
    params_removed: float | None = None
    memory_gib: float | None = None
    memory_device: str | None = None  # cuda | cpu | paper
    wall_time_s: float | None = None
    eval_seq_len: int | None = None
    n_runs: int = 1
    run_dirs: list[str] = field(default_factory=list)
    kept_per_layer: dict[str, dict[str, int]] | None = None
    label_override: str | None = None
    status: str | None = None  # paper rows: abstract | secondary | unverified
    pattern: str | None = None  # semi-structured N:M runs ("2:4"): the ratio is unused
    sparsity: float | None = None  # N:M runs: percent of the pruned projections' weights zeroed
    zeroshot_protocol: str | None = None  # where the zero-shot data came from: source, split(s), limit
    error: str | None = None  # failed runs: the error's type and first line

    @property
    def ratio_label(self) -> str:
        """The Ratio cell: the N:M pattern, else the ratio in percent."""
        return self.pattern if self.pattern else f"{100 * self.ratio:g}%"

    @property
    def label(self) -> str:
        """The Method cell: the method's name, marked for w/o-tune, paper and multi-seed rows."""
        base = self.label_override or METHOD_LABELS.get(self.method, self.method)
        if self.kind == "before_recovery":
            return f"{base} w/o tune"
        if self.kind == "paper":
            return f"{base} [paper]"
        if self.kind == "failed":
            times = f" ×{self.n_runs}" if self.n_runs > 1 else ""
            return f"{base} (failed{times}: {self.error})"
        if self.n_runs > 1:
            return f"{base} (n={self.n_runs})"
        return base


# ------------------------------------------------------------------------------------------ reading
def find_metrics(root: str | Path) -> list[Path]:
    """Every ``metrics.json`` below ``root`` (recursively), sorted by path."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(root.rglob("metrics.json"))


def load_metrics(root: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(path, metrics)`` for every readable run below ``root``; unreadable or foreign files are skipped."""
    out = []
    for path in find_metrics(root):
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            log.warning("skipping %s: %s", path, err)
            continue
        if not isinstance(metrics, dict) or "run" not in metrics or "pruned" not in metrics:
            log.warning("skipping %s: not a loraprune metrics file", path)
            continue
        out.append((path, metrics))
    return out


def _pruned_row(metrics: dict[str, Any], base: Row) -> Row:
    """The pruned model's row (``base`` carries model, method, ratio, pattern, windows and run dir)."""
    semi = metrics.get("semistructured") or {}
    zeroshot = metrics["pruned"].get("zeroshot")
    tasks, average = zeroshot_scores(zeroshot)
    memory, device = peak_memory(metrics.get("memory"))
    return replace(
        base,
        ppl=dict(metrics["pruned"].get("ppl", {})),
        tasks=tasks,
        average=average,
        params_removed=pct(metrics.get("params", {}).get("removed_fraction_total")),
        memory_gib=memory,
        memory_device=device,
        wall_time_s=metrics.get("wall_time_s"),
        kept_per_layer=None if base.pattern else metrics.get("kept_per_layer"),
        sparsity=pct(semi.get("sparsity")),
        zeroshot_protocol=zeroshot_protocol(zeroshot),
    )


def _dense_row(metrics: dict[str, Any], base: Row) -> Row:
    """The dense model's row, as evaluated by this run."""
    tasks, average = zeroshot_scores(metrics["dense"].get("zeroshot"))
    return Row(
        model=base.model,
        method="dense",
        ratio=0.0,
        kind="dense",
        ppl=dict(metrics["dense"].get("ppl", {})),
        tasks=tasks,
        average=average,
        params_removed=0.0,
        eval_seq_len=base.eval_seq_len,
        run_dirs=list(base.run_dirs),
    )


def _before_recovery_row(metrics: dict[str, Any], base: Row) -> Row:
    """A one-shot method's row before LoRA recovery (masks on, no fine-tuning)."""
    return replace(
        base,
        kind="before_recovery",
        ppl=dict(metrics["pruned_before_recovery"].get("ppl", {})),
        params_removed=pct(metrics.get("params", {}).get("removed_fraction_total")),
        run_dirs=list(base.run_dirs),
    )


def rows_from_metrics(
    metrics: dict[str, Any], path: str | Path | None = None, *, before_recovery: bool = False
) -> list[Row]:
    """The rows one run contributes: the pruned model, its dense model (if evaluated) and, optionally, the
    one-shot result before LoRA recovery."""
    run = metrics.get("run", {})
    pattern = (metrics.get("semistructured") or {}).get("pattern")
    random_weights = run.get("weights") == "random"  # model.source=shape / tiny: memory and speed only
    base = Row(
        model=str(run.get("model")) + (" (random weights)" if random_weights else ""),
        method=str(run.get("method")),
        ratio=0.0 if pattern else float(run.get("ratio", 0.0)),  # N:M runs: the pattern identifies them
        eval_seq_len=metrics.get("eval", {}).get("seq_len"),
        run_dirs=[str(run.get("dir") or (Path(path).parent if path else ""))],
        pattern=pattern,
    )
    rows = [_pruned_row(metrics, base)]
    if "dense" in metrics:
        rows.append(_dense_row(metrics, base))
    if before_recovery and "pruned_before_recovery" in metrics:
        rows.append(_before_recovery_row(metrics, base))
    return rows


def failed_rows(root: str | Path) -> list[Row]:
    """A row marked failed for every ``failed.json`` below ``root`` whose run has no ``metrics.json``."""
    root = Path(root)
    paths = [root] if root.is_file() else sorted(root.rglob(FAILED))
    rows = []
    for path in paths:
        record = read_failure(path)
        if record is None or (path.parent / "metrics.json").exists():
            continue
        run = record["run"]
        rows.append(
            Row(
                model=str(run.get("model")) + (" (random weights)" if run.get("weights") == "random" else ""),
                method=str(run.get("method")),
                ratio=0.0 if run.get("pattern") else float(run.get("ratio") or 0.0),
                kind="failed",
                pattern=run.get("pattern"),
                run_dirs=[str(path.parent)],
                error=str(record["error"]),
            )
        )
    return rows


# -------------------------------------------------------------------------------------- aggregation
def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def _mean_dict(dicts: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
    keys: list[str] = []
    for d in dicts:
        keys += [k for k in d if k not in keys]
    return {k: _mean(d.get(k) for d in dicts) for k in keys}


def aggregate(rows: Sequence[Row]) -> list[Row]:
    """One row per (model, kind, method, ratio): numbers averaged over the runs (seeds) that share it.

    Dense rows count once per distinct run directory; ``n_runs`` is not shown for them.
    """
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        key = (row.model, row.kind, row.method, round(row.ratio, 6), row.pattern, row.eval_seq_len)
        groups.setdefault(key, []).append(row)
    out = []
    for group in groups.values():
        first = group[0]
        n = len(group) if first.kind in ("run", "failed") else 1
        out.append(
            replace(
                first,
                ppl=_mean_dict([r.ppl for r in group]),
                tasks=_mean_dict([r.tasks for r in group]),
                average=_mean(r.average for r in group),
                params_removed=_mean(r.params_removed for r in group),
                memory_gib=_mean(r.memory_gib for r in group),
                memory_device=first.memory_device,
                wall_time_s=_mean(r.wall_time_s for r in group),
                sparsity=_mean(r.sparsity for r in group),
                n_runs=n,
                run_dirs=[d for r in group for d in r.run_dirs],
            )
        )
    return sort_rows(out)


# ------------------------------------------------------------------------------------------ sorting
def _method_rank(method: str) -> float:
    if method in METHOD_ORDER:
        return float(METHOD_ORDER.index(method))
    return METHOD_ORDER.index("loraprune") - 0.5


def sort_rows(rows: Iterable[Row]) -> list[Row]:
    """The paper's order: dense first, then by ratio, then N:M patterns; baselines before LoRAPrune; a
    paper row right after the run row of the same method."""
    return sorted(
        rows,
        key=lambda r: (
            r.model,
            0 if r.kind == "dense" else 2 if r.pattern else 1,
            r.pattern or "",
            r.ratio,
            _method_rank(r.method),
            r.method,
            KIND_ORDER.get(r.kind, 9),
            r.eval_seq_len or 0,
        ),
    )


def collect_rows(root: str | Path, *, before_recovery: bool = False) -> list[Row]:
    """All rows below ``root`` (failed sweep cells included), aggregated and sorted."""
    rows: list[Row] = []
    for path, metrics in load_metrics(root):
        rows += rows_from_metrics(metrics, path, before_recovery=before_recovery)
    return aggregate(rows + failed_rows(root))
