"""PNG plots of a set of runs: perplexity against pruning ratio, and the kept width of every layer.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch), so this works
headless and inside other programs. Rows come from :func:`loraprune.report.rows.collect_rows`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from loraprune.report.reference import reference_rows
from loraprune.report.rows import Row, sort_rows
from loraprune.run.results import PPL_LABELS

DPI = 120


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "x"


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def plot_ppl_vs_ratio(rows: Sequence[Row], path: str | Path, title: str | None = None) -> Path:
    """Perplexity against pruning ratio: one panel per perplexity set, one line per method, the dense
    model as a dashed line; ``[paper]`` rows of the methods run as crosses.

    Args:
        rows: rows of one model (runs, dense, optionally paper rows); other kinds are ignored.
        path: PNG to write.
        title: figure title (default: the model name).
    """
    rows = [r for r in sort_rows(rows) if not r.pattern]  # N:M runs have no ratio to plot against
    sets = []
    for r in rows:
        sets += [s for s, v in r.ppl.items() if v is not None and s not in sets and r.kind != "paper"]
    if not sets:
        raise ValueError("no perplexity in these rows")
    fig = Figure(figsize=(4.8 * len(sets), 3.8), layout="constrained")
    axes = fig.subplots(1, len(sets), squeeze=False)[0]
    methods = [m for m in dict.fromkeys(r.method for r in rows if r.kind == "run")]
    lines = list(dict.fromkeys(_line(r) for r in rows if r.kind == "run"))
    for ax, name in zip(axes, sets, strict=True):
        colors: dict[str, str] = {}
        for key in lines:
            members = [r for r in rows if r.kind == "run" and _line(r) == key]
            pts = [(100 * r.ratio, r.ppl.get(name)) for r in members]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                label = members[0].label_with(n=False) + (" · params target" if key[2] == "params" else "")
                (line,) = ax.plot(*zip(*pts, strict=True), marker="o", label=label)
                colors.setdefault(key[0], line.get_color())
        for r in rows:
            value = r.ppl.get(name)
            if value is None:
                continue
            if r.kind == "dense":
                ax.axhline(value, color="0.4", linestyle="--", linewidth=1, label="Dense")
            elif r.kind == "paper" and r.method in methods:  # published points of the methods run
                ax.plot(
                    [100 * r.ratio],
                    [value],
                    marker="x",
                    linestyle="none",
                    markersize=9,
                    color=colors.get(r.method),
                    label=r.label,
                )
        values = [v for r in rows for v in [r.ppl.get(name)] if v is not None]
        if values and max(values) / max(min(values), 1e-9) > 20:
            ax.set_yscale("log")
        ratios = sorted({100 * r.ratio for r in rows if r.kind in ("run", "paper") and r.ppl.get(name)})
        if ratios:
            ax.set_xticks(ratios)
        mixed = len({key[2] for key in lines}) > 1
        ax.set_xlabel("pruning ratio (%)" + (", of groups or params" if mixed else ""))
        ax.set_ylabel("perplexity")
        ax.set_title(PPL_LABELS.get(name, name))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or (rows[0].model if rows else ""))
    return _save(fig, Path(path))


def _line(row: Row) -> tuple:
    """One line of the ratio plot: a method with its settings and target (seeds already averaged)."""
    return (row.method, row.settings, row.target)


def plot_kept_widths(row: Row, path: str | Path, title: str | None = None) -> Path:
    """Kept query heads (and KV heads where they differ) and MLP channels per layer for one run.

    The dashed line is the widest layer, i.e. the unpruned width when some layer is left whole.
    """
    kept = row.kept_per_layer or {}
    if not kept:
        raise ValueError("row has no kept_per_layer")
    layers = sorted(kept, key=int)
    x = [int(i) for i in layers]
    q = [kept[i]["q_heads"] for i in layers]
    kv = [kept[i]["kv_heads"] for i in layers]
    ch = [kept[i]["channels"] for i in layers]
    fig = Figure(figsize=(max(6.0, 0.25 * len(x) + 3), 5.2), layout="constrained")
    ax_heads, ax_mlp = fig.subplots(2, 1, sharex=True)
    if kv != q:
        ax_heads.bar([i - 0.2 for i in x], q, width=0.4, label="query heads")
        ax_heads.bar([i + 0.2 for i in x], kv, width=0.4, label="KV heads")
        ax_heads.legend(fontsize=7)
    else:
        ax_heads.bar(x, q, width=0.8, label="heads")
    ax_heads.axhline(max(q), color="0.4", linestyle="--", linewidth=1)
    ax_heads.set_ylabel("kept heads")
    ax_mlp.bar(x, ch, width=0.8, color="tab:orange")
    ax_mlp.axhline(max(ch), color="0.4", linestyle="--", linewidth=1)
    ax_mlp.set_ylabel("kept MLP channels")
    ax_mlp.set_xlabel("layer")
    ax_mlp.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_heads.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax_heads, ax_mlp):
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title or f"{row.model} · {row.label} · ratio {row.ratio_label}")
    return _save(fig, Path(path))


def write_plots(rows: Sequence[Row], out_dir: str | Path, *, reference: bool = True) -> list[Path]:
    """Every plot for ``rows``: ``ppl_vs_ratio_<model>.png`` per model (with the published points for
    LLaMA-7B when ``reference``) and ``kept_<model>_<method>[_<settings>][_params]_r<ratio>.png`` per row."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    paper = reference_rows()[0] if reference else []
    for model in sorted({r.model for r in rows}):
        model_rows = [r for r in rows if r.model == model]
        if any(r.ppl for r in model_rows if r.kind == "run"):
            lens = {r.eval_seq_len for r in model_rows if r.kind == "run"}
            extra = [r for r in paper if r.model == model and {r.eval_seq_len} == lens]
            path = out_dir / f"ppl_vs_ratio_{_slug(model)}.png"
            written.append(plot_ppl_vs_ratio([*model_rows, *extra], path))
        for r in model_rows:
            if r.kind == "run" and r.kept_per_layer:
                target = "params" if r.target == "params" else ""
                what = _slug(" ".join([r.method, r.qualifier or "", target]))
                name = f"kept_{_slug(model)}_{what}_r{r.ratio:g}.png"
                written.append(plot_kept_widths(r, out_dir / name))
    return written
