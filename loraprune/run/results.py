"""What a run's ``metrics.json`` holds, read as the paper's table columns.

The run layer's own view of its results: the column labels and order (perplexity sets, the seven
zero-shot tasks), small readers for the zero-shot, memory and parameter entries, and :func:`flat_result`,
one run as a ``{column: value}`` row for loggers such as W&B. The report layer
(:mod:`loraprune.report`) builds its tables on these; this module imports nothing from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from loraprune.evaluation.tasks import PAPER_TASKS

TASKS = PAPER_TASKS
TASK_LABELS = {
    "boolq": "BoolQ",
    "piqa": "PIQA",
    "hellaswag": "HellaSwag",
    "winogrande": "WinoGrande",
    "arc_easy": "ARC-e",
    "arc_challenge": "ARC-c",
    "openbookqa": "OBQA",
}
PPL_ORDER = (
    "wikitext2",
    "ptb",
    "wiki_embedded_val",
    "news_embedded_val",
    "drama_embedded_val",
    "tech_embedded_val",
    "wiki_embedded",
    "news_embedded",
    "drama_embedded",
    "tech_embedded",
)
PPL_LABELS = {
    "wikitext2": "WikiText2",
    "ptb": "PTB",
    "wiki_embedded": "Wiki (emb.)",
    "news_embedded": "News (emb.)",
    "drama_embedded": "Drama (emb.)",
    "tech_embedded": "Tech (emb.)",
    "wiki_embedded_val": "Wiki val",
    "news_embedded_val": "News val",
    "drama_embedded_val": "Drama val",
    "tech_embedded_val": "Tech val",
}


def pct(value: Any) -> float | None:
    """A fraction as a percentage (None stays None)."""
    return None if value is None else 100.0 * float(value)


def zeroshot_scores(zs: dict[str, Any] | None) -> tuple[dict[str, float | None], float | None]:
    """Per-task paper metric and their average, in percent, from a ``zeroshot`` entry."""
    if not zs:
        return {}, None
    tasks = {name: pct(entry.get("paper_value")) for name, entry in zs.get("tasks", {}).items()}
    return tasks, pct(zs.get("average_acc"))


def zeroshot_protocol(zs: dict[str, Any] | None) -> str | None:
    """Where the zero-shot data came from.

    E.g. "offline data, validation split, first 20 examples per task".
    """
    if not zs:
        return None
    splits = sorted({str(t.get("split")) for t in zs.get("tasks", {}).values() if t.get("split")})
    limit = zs.get("limit")
    cap = "every example" if limit is None else f"first {limit:g} examples per task"
    split_text = f"{'/'.join(splits)} split{'s' if len(splits) > 1 else ''}" if splits else "default splits"
    return f"{zs.get('source', '?')} data, {split_text}, {cap}"


def peak_memory(mem: dict[str, Any] | None) -> tuple[float | None, str | None]:
    """``(GiB, device)``: the CUDA peak when measured, else the CPU peak RSS, else ``(None, None)``."""
    mem = mem or {}
    if mem.get("cuda_max_allocated_gib") is not None:
        return float(mem["cuda_max_allocated_gib"]), "cuda"
    if mem.get("cpu_peak_rss_gib") is not None:
        return float(mem["cpu_peak_rss_gib"]), "cpu"
    return None, None


def ordered(names: Iterable[str], order: Sequence[str]) -> list[str]:
    """The distinct ``names``, those in ``order`` first (in that order), then the rest as they came."""
    seen: list[str] = []
    for name in names:
        if name not in seen:
            seen.append(name)
    return [n for n in order if n in seen] + [n for n in seen if n not in order]


def task_columns(tasks: Iterable[dict[str, float | None]], averages: Iterable[float | None]) -> list[str]:
    """The zero-shot task columns that rows with these scores fill (all seven if only averages exist)."""
    columns = ordered((k for scores in tasks for k, v in scores.items() if v is not None), TASKS)
    if not columns and any(a is not None for a in averages):  # an average without per-task numbers
        columns = list(TASKS)
    return columns


def flat_result(metrics: dict[str, Any]) -> dict[str, Any]:
    """One run's table row as ``{column: value}`` (raw numbers; for loggers such as W&B).

    Raises:
        KeyError, TypeError, ValueError: ``metrics`` lacks the pruned results or holds a malformed run.
    """
    run = metrics.get("run", {})
    model, method, ratio = str(run.get("model")), str(run.get("method")), float(run.get("ratio", 0.0))
    pruned = metrics["pruned"]
    ppl = dict(pruned.get("ppl", {}))
    tasks, average = zeroshot_scores(pruned.get("zeroshot"))
    memory, device = peak_memory(metrics.get("memory"))
    pattern = (metrics.get("semistructured") or {}).get("pattern")
    out: dict[str, Any] = {"model": model, "method": method, "ratio": pattern or ratio}
    out.update({PPL_LABELS.get(s, s): ppl.get(s) for s in ordered(ppl, PPL_ORDER)})
    columns = task_columns([tasks], [average])
    if columns:
        out.update({TASK_LABELS.get(t, t): tasks.get(t) for t in columns})
        out["Average"] = average
    out["Params removed (%)"] = pct(metrics.get("params", {}).get("removed_fraction_total"))
    out[f"Peak mem (GiB, {device or 'n/a'})"] = memory
    out["Wall time (s)"] = metrics.get("wall_time_s")
    return out
