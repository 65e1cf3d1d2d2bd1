"""A table's header and formatted cells, shared by the Markdown and LaTeX renderers.

A number carries its uncertainty where one is known: ``mean ± std`` over the seeds of a multi-seed row;
a single run's perplexity ``31.85 [31.20, 32.50]`` (its 95% document-bootstrap interval, written out
because it is not symmetric about the estimate) and its accuracies ``55.00 ± 4.97`` (lm-eval's standard
error); a Δ cell ``+3.21 [+1.10, +5.40]*`` (percent; ``*``: the interval excludes 0). A per-set Δ table
(kind ``deltas``) has such a cell per set and one for the geometric mean.
"""

from __future__ import annotations

import math

from loraprune.evaluation.intervals import Interval
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


def fmt_ppl_spread(v: float | None, std: float | None = None, ci: Interval | None = None) -> str:
    """Perplexity with ``± std`` (seeds) or ``[low, high]`` (a run's interval) when known."""
    text = fmt_ppl(v)
    if text == DASH:
        return text
    if std is not None:
        return f"{text} ± {fmt_ppl(std)}"
    if ci is not None:
        return f"{text} [{fmt_ppl(ci.low)}, {fmt_ppl(ci.high)}]"
    return text


def fmt_pct_spread(v: float | None, spread: float | None = None) -> str:
    """A percentage with ``± spread`` (std over seeds or a standard error) when known."""
    if v is None:
        return DASH
    return fmt_pct(v) if spread is None else f"{fmt_pct(v)} ± {fmt_pct(spread)}"


def fmt_delta(delta: Interval | None, is_reference: bool = False) -> str:
    """A paired Δ%: ``+3.21 [+1.10, +5.40]*``, ``*`` when the interval excludes 0; ``ref.`` for the
    reference row itself."""
    if is_reference:
        return "ref."
    if delta is None:
        return DASH
    star = "*" if delta.excludes_zero else ""
    return f"{delta.estimate:+.2f} [{delta.low:+.2f}, {delta.high:+.2f}]{star}"


def average_stderr(table: Table, row: Row) -> float | None:
    """The standard error of a single run's average accuracy, the tasks taken as independent:
    sqrt(sum se²) / k; None unless every task shown has one."""
    errors = [row.tasks_stderr.get(t) for t in table.tasks]
    if row.n_runs > 1 or not errors or any(e is None for e in errors):
        return None
    return math.sqrt(sum(e * e for e in errors)) / len(errors)  # type: ignore[operator]


def fmt_time(seconds: float | None) -> str:
    """Wall time in s, min or h; a dash when missing."""
    if seconds is None:
        return DASH
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


RESUMED = "‡"  # a resumed run's peak memory and wall time are those of its last process


def fmt_memory(row: Row) -> str:
    """Peak memory in GiB, marked † when it is the CPU peak, ‡ when a run resumed; a dash when missing."""
    if row.memory_gib is None:
        return DASH
    return f"{row.memory_gib:.1f}" + ("†" if row.memory_device == "cpu" else "") + (RESUMED * row.resumed)


def header(table: Table) -> list[str]:
    """The column titles of ``table``."""
    cols = ["Ratio", "Method"] + [PPL_LABELS.get(s, s) for s in table.ppl_sets]
    if table.kind == "deltas":
        return cols + ["Geo. mean"]
    if table.has_geo_mean:
        cols.append("Geo. mean")
    if table.reference:
        cols.append(f"Δ% vs {table.reference}")
    if table.has_zeroshot:
        cols += [TASK_LABELS.get(t, t) for t in table.tasks] + ["Average"]
    return cols + ["Params removed", "Peak mem (GiB)", "Wall time"]


def cells(table: Table, row: Row) -> list[str]:
    """The formatted cells of ``row`` under :func:`header`."""
    if table.kind == "deltas":
        deltas = [row.set_deltas.get(s) for s in table.ppl_sets] + [row.delta]
        return [row.ratio_label, row.label] + [fmt_delta(d, row.is_reference) for d in deltas]
    out = [row.ratio_label, row.label] + [
        fmt_ppl_spread(row.ppl.get(s), row.ppl_std.get(s), row.ppl_ci.get(s)) for s in table.ppl_sets
    ]
    if table.has_geo_mean:
        out.append(fmt_ppl_spread(row.geo, row.geo_std, row.geo_ci))
    if table.reference:
        out.append(fmt_delta(row.delta, row.is_reference))
    if table.has_zeroshot:
        spread = row.tasks_std if row.n_runs > 1 else row.tasks_stderr
        out += [fmt_pct_spread(row.tasks.get(t), spread.get(t)) for t in table.tasks]
        average_spread = row.average_std if row.n_runs > 1 else average_stderr(table, row)
        out.append(fmt_pct_spread(row.average, average_spread))
    params = DASH if row.params_removed is None else f"{row.params_removed:.1f}%"
    if row.pattern and row.sparsity is not None:
        params = f"{row.sparsity:.1f}% zeroed"
    time = fmt_time(row.wall_time_s) + (RESUMED if row.resumed and row.wall_time_s is not None else "")
    return out + [params, fmt_memory(row), time]
