"""Table rows from run directories: read every ``metrics.json``, aggregate seeds, sort in the paper's order.

Every ``metrics.json`` below a directory (a Hydra multirun, or any tree of runs) becomes one row per
(model, method, ratio, settings), seeds averaged (and their standard deviation kept); the dense model gets
its own row. The settings (:mod:`loraprune.report.settings`) come from the run block or the
``config.yaml`` beside it; the per-window losses (:mod:`loraprune.report.windows`) ride along for
intervals. A sweep cell that failed
(``failed.json``, :mod:`loraprune.train.failure`) gets a row marked failed, with the error's first line.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from loraprune.evaluation.intervals import Interval
from loraprune.report.settings import qualify, run_settings
from loraprune.report.windows import STAGE_OF_KIND, StageLosses, read_window_losses
from loraprune.run.results import pct, peak_memory, zeroshot_protocol, zeroshot_scores
from loraprune.train.failure import FAILED, read_failure

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
    "flap": "FLAP",
    "shortgpt": "ShortGPT",
    "shortened_ppl": "Shortened LLaMA (PPL)",
    "kwon": "Kwon et al.",
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
    "shortgpt",
    "shortened_ppl",
    "flap",
    "kwon",
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
    target: str = "groups"  # what ``ratio`` is a fraction of: groups (of each layer) or params (prune.target)
    resumed: bool = False  # a run (a seed of the row) resumed: memory and time are its last process's
    sparsity: float | None = None  # N:M runs: percent of the pruned projections' weights zeroed
    zeroshot_protocol: str | None = None  # where the zero-shot data came from: source, split(s), limit
    error: str | None = None  # failed runs: the error's type and first line
    settings: tuple[tuple[str, str], ...] = ()  # (setting, shown value): runs differing here never merge
    qualifier: str | None = None  # the settings named in the label (see report.settings.qualify)
    seeds: list[int | None] = field(default_factory=list)  # per run, aligned with ``losses``
    losses: list[StageLosses | None] = field(default_factory=list)  # per run: this row's stage's windows
    ppl_std: dict[str, float | None] = field(default_factory=dict)  # over seeds (n_runs > 1)
    tasks_std: dict[str, float | None] = field(default_factory=dict)  # over seeds, percent
    average_std: float | None = None
    tasks_stderr: dict[str, float | None] = field(default_factory=dict)  # lm-eval's, percent (one run)
    run_ppl: list[dict[str, float | None]] = field(default_factory=list)  # per run, aligned with ``losses``
    # filled by loraprune.report.uncertainty for a table's perplexity sets
    ppl_ci: dict[str, Interval] = field(default_factory=dict)  # one run: 95% document-bootstrap interval
    geo: float | None = None  # geometric mean of the table's perplexity sets (mean over seeds)
    geo_std: float | None = None
    geo_ci: Interval | None = None
    delta: Interval | None = None  # paired Δ% of the geometric mean against the reference row
    set_deltas: dict[str, Interval] = field(default_factory=dict)  # paired Δ% of each set alone
    is_reference: bool = False

    @property
    def ratio_label(self) -> str:
        """The Ratio cell: the N:M pattern, else the ratio in percent (``15% params``: a parameter target)."""
        if self.pattern:
            return self.pattern
        return f"{100 * self.ratio:g}%" + (" params" if self.target == "params" else "")

    @property
    def block(self) -> tuple:
        """The rows compared with one another: one model at one ratio of one target, or one N:M pattern."""
        return (self.model, self.pattern, None if self.pattern else self.target, round(self.ratio, 6))

    @property
    def label(self) -> str:
        """The Method cell: the method's name, marked for w/o-tune, paper and multi-seed rows and with
        the settings that tell it from its neighbours."""
        return self.label_with(n=True)

    @property
    def name(self) -> str:
        """The method's name as tables show it, without marks or settings."""
        return self.label_override or METHOD_LABELS.get(self.method, self.method)

    def label_with(self, *, n: bool) -> str:
        """The Method cell, with or without the ``n=k`` of multi-seed rows."""
        base = self.name
        if self.kind == "before_recovery":
            base = f"{base} w/o tune"
        if self.kind == "paper":
            return f"{base} [paper]"
        if self.kind == "failed":
            times = f" ×{self.n_runs}" if self.n_runs > 1 else ""
            qualifier = f"{self.qualifier}, " if self.qualifier else ""
            return f"{base} ({qualifier}failed{times}: {self.error})"
        marks = [self.qualifier] if self.qualifier else []
        if n and self.n_runs > 1 and self.kind == "run":
            marks.append(f"n={self.n_runs}")
        return f"{base} ({', '.join(marks)})" if marks else base


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
        tasks_stderr=task_stderr(zeroshot),
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
    return replace(
        base,
        model=base.model,
        method="dense",
        ratio=0.0,
        kind="dense",
        pattern=None,
        target="groups",
        ppl=dict(metrics["dense"].get("ppl", {})),
        tasks=tasks,
        tasks_stderr=task_stderr(metrics["dense"].get("zeroshot")),
        average=average,
        params_removed=0.0,
        run_dirs=list(base.run_dirs),
        settings=(),
        seeds=[None],
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


def task_stderr(zs: dict[str, Any] | None) -> dict[str, float | None]:
    """lm-eval's standard error of each task's paper metric, in percent (None where not stored)."""
    out = {}
    for name, entry in (zs or {}).get("tasks", {}).items():
        value = entry.get(f"{entry.get('paper_metric', 'acc')}_stderr")
        out[name] = pct(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
    return out


def rows_from_metrics(
    metrics: dict[str, Any],
    path: str | Path | None = None,
    *,
    before_recovery: bool = False,
    config: dict[str, Any] | None = None,
    losses: dict[str, StageLosses] | None = None,
) -> list[Row]:
    """The rows one run contributes: the pruned model, its dense model (if evaluated) and, optionally, the
    one-shot result before LoRA recovery.

    Args:
        metrics: the run's ``metrics.json``.
        path: where it was read (the run dir when the run block names none).
        before_recovery: add the one-shot result before recovery.
        config: the run's resolved ``config.yaml`` (settings not in the run block are read there).
        losses: the stages of its ``window_losses.json``.
    """
    run = metrics.get("run", {})
    pattern = (metrics.get("semistructured") or {}).get("pattern")
    random_weights = run.get("weights") == "random"  # model.source=shape / tiny: memory and speed only
    base = Row(
        model=str(run.get("model")) + (" (random weights)" if random_weights else ""),
        method=str(run.get("method")),
        ratio=0.0 if pattern else float(run.get("ratio", 0.0)),  # N:M runs: the pattern identifies them
        target=str(run.get("target") or _get_target(config)),
        eval_seq_len=metrics.get("eval", {}).get("seq_len"),
        run_dirs=[str(run.get("dir") or (Path(path).parent if path else ""))],
        pattern=pattern,
        settings=run_settings(run, config),
        seeds=[run.get("seed", _seed(config))],
    )
    rows = [replace(_pruned_row(metrics, base), resumed=resumed_run(metrics, config))]
    if "dense" in metrics:
        rows.append(_dense_row(metrics, base))
    if before_recovery and "pruned_before_recovery" in metrics:
        rows.append(_before_recovery_row(metrics, base))
    return [replace(r, losses=[(losses or {}).get(STAGE_OF_KIND[r.kind])], run_ppl=[r.ppl]) for r in rows]


def resumed_run(metrics: dict[str, Any], config: dict[str, Any] | None) -> bool:
    """Whether the run resumed from a checkpoint: ``train.resumed_from_step`` > 0; a run that fine-tuned
    before that was recorded counts as resumed when its config says ``resume: true``."""
    train = metrics.get("train") or {}
    if "resumed_from_step" in train:
        return bool(train["resumed_from_step"])
    return "seconds" in train and bool((config or {}).get("resume"))


def _get_target(config: dict[str, Any] | None) -> str:
    """``prune.target`` of a resolved config (runs from before metrics.json recorded it), else groups."""
    prune = (config or {}).get("prune")
    return str(prune.get("target") or "groups") if isinstance(prune, dict) else "groups"


def _seed(config: dict[str, Any] | None) -> int | None:
    trainer = (config or {}).get("trainer")
    return trainer.get("seed") if isinstance(trainer, dict) else None


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
                target=str(run.get("target") or "groups"),
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


def _std(values: Iterable[float | None]) -> float | None:
    """The sample standard deviation (None below two values)."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.stdev(vals) if len(vals) > 1 else None


def _mean_dict(dicts: Sequence[dict[str, float | None]], reduce=_mean) -> dict[str, float | None]:
    keys: list[str] = []
    for d in dicts:
        keys += [k for k in d if k not in keys]
    return {k: reduce(d.get(k) for d in dicts) for k in keys}


def aggregate(rows: Sequence[Row]) -> list[Row]:
    """One row per (model, kind, method, ratio, settings): numbers averaged over the runs (seeds) that
    share it, with their standard deviation over runs (``*_std``, when there are two or more).

    Dense rows count once per distinct run directory; ``n_runs`` is not shown for them, and their
    numbers and window losses are the first run's. Labels are then qualified by the settings that differ
    within a ratio block (:func:`loraprune.report.settings.qualify`).
    """
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        key = (row.block, row.kind, row.method, row.eval_seq_len)
        groups.setdefault((*key, row.settings), []).append(row)
    out = []
    for group in groups.values():
        first = group[0]
        n = len(group) if first.kind in ("run", "failed") else 1
        multi = group if n > 1 else []
        out.append(
            replace(
                first,
                ppl=_mean_dict([r.ppl for r in group]),
                ppl_std=_mean_dict([r.ppl for r in multi], _std),
                tasks=_mean_dict([r.tasks for r in group]),
                tasks_std=_mean_dict([r.tasks for r in multi], _std),
                tasks_stderr=first.tasks_stderr if n == 1 else {},
                average=_mean(r.average for r in group),
                average_std=_std(r.average for r in multi),
                params_removed=_mean(r.params_removed for r in group),
                memory_gib=_mean(r.memory_gib for r in group),
                memory_device=first.memory_device,
                wall_time_s=_mean(r.wall_time_s for r in group),
                resumed=any(r.resumed for r in group),
                sparsity=_mean(r.sparsity for r in group),
                n_runs=n,
                run_dirs=[d for r in group for d in r.run_dirs],
                seeds=[s for r in group for s in r.seeds] if n > 1 else first.seeds,
                losses=[x for r in group for x in r.losses] if n > 1 else first.losses,
                run_ppl=[x for r in group for x in r.run_ppl] if n > 1 else first.run_ppl,
            )
        )
    out = sort_rows(out)
    marks = qualify(out)
    return [replace(r, qualifier=marks.get(i)) for i, r in enumerate(out)]


# ------------------------------------------------------------------------------------------ sorting
def _method_rank(method: str) -> float:
    if method in METHOD_ORDER:
        return float(METHOD_ORDER.index(method))
    return METHOD_ORDER.index("loraprune") - 0.5


def sort_rows(rows: Iterable[Row]) -> list[Row]:
    """The paper's order: dense first, then by ratio (group ratios, then parameter targets), then N:M
    patterns; baselines before LoRAPrune; a paper row right after the run row of the same method."""
    return sorted(
        rows,
        key=lambda r: (
            r.model,
            0 if r.kind == "dense" else 2 if r.pattern else 1,
            r.pattern or "",
            r.target == "params",
            r.ratio,
            _method_rank(r.method),
            r.method,
            KIND_ORDER.get(r.kind, 9),
            r.eval_seq_len or 0,
        ),
    )


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """The resolved ``config.yaml`` of a run dir (None when absent or unreadable)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        log.warning("ignoring %s: %s", path, err)
        return None
    return data if isinstance(data, dict) else None


def collect_rows(roots: str | Path | Sequence[str | Path], *, before_recovery: bool = False) -> list[Row]:
    """All rows below one or several directories (failed sweep cells included), aggregated and sorted.

    A run found below two of the roots counts once. The ``config.yaml`` and ``window_losses.json`` beside
    each ``metrics.json`` are read too.

    Raises:
        loraprune.report.windows.WindowLossesError: a ``window_losses.json`` is malformed.
    """
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    rows: list[Row] = []
    seen: set[Path] = set()
    for root in roots:
        for path, metrics in load_metrics(root):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            rows += rows_from_metrics(
                metrics,
                path,
                before_recovery=before_recovery,
                config=read_config(path.parent),
                losses=read_window_losses(path.parent),
            )
        for row in failed_rows(root):
            if (key := Path(row.run_dirs[0]).resolve() / "failed") not in seen:
                seen.add(key)
                rows.append(row)
    return aggregate(rows)
