"""A table's header and formatted cells, shared by the Markdown and LaTeX renderers."""

from __future__ import annotations

import math

from loraprune.report.layout import Table
from loraprune.report.rows import Row
from loraprune.run.results import PPL_LABELS, TASK_LABELS

DASH = "–"


def fmt_ppl(v: float | None) -> str:
    """Perplexity: two decimals, none from 1000 up; a dash when missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return DASH
    return f"{v:.0f}" if v >= 1000 else f"{v:.2f}"


def fmt_pct(v: float | None, digits: int = 2) -> str:
    """A percentage (without the sign); a dash when missing."""
    return DASH if v is None else f"{v:.{digits}f}"


def fmt_time(seconds: float | None) -> str:
    """Wall time in s, min or h; a dash when missing."""
    if seconds is None:
        return DASH
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def fmt_memory(row: Row) -> str:
    """Peak memory in GiB, marked † when it is the CPU peak; a dash when missing."""
    if row.memory_gib is None:
        return DASH
    return f"{row.memory_gib:.1f}" + ("†" if row.memory_device == "cpu" else "")


def header(table: Table) -> list[str]:
    """The column titles of ``table``."""
    cols = ["Ratio", "Method"] + [PPL_LABELS.get(s, s) for s in table.ppl_sets]
    if table.has_zeroshot:
        cols += [TASK_LABELS.get(t, t) for t in table.tasks] + ["Average"]
    return cols + ["Params removed", "Peak mem (GiB)", "Wall time"]


def cells(table: Table, row: Row) -> list[str]:
    """The formatted cells of ``row`` under :func:`header`."""
    out = [row.ratio_label, row.label] + [fmt_ppl(row.ppl.get(s)) for s in table.ppl_sets]
    if table.has_zeroshot:
        out += [fmt_pct(row.tasks.get(t)) for t in table.tasks] + [fmt_pct(row.average)]
    params = DASH if row.params_removed is None else f"{row.params_removed:.1f}%"
    if row.pattern and row.sparsity is not None:
        params = f"{row.sparsity:.1f}% zeroed"
    return out + [params, fmt_memory(row), fmt_time(row.wall_time_s)]
