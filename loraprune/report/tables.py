"""The paper's result tables from a (multi)run directory: rows, Markdown, LaTeX, plots, CLI.

Every ``metrics.json`` below a directory (a Hydra multirun, or any tree of runs) becomes one row per
(model, method, ratio), seeds averaged; the dense model gets its own row. Columns follow the LoRAPrune /
LLM-Pruner table: ratio, method, perplexity per evaluation set (WikiText2 / PTB, or whatever sets the runs
used), the seven zero-shot tasks and their average, then parameters removed, peak memory and wall time.

The published numbers (``loraprune/reference/loraprune_paper.json``) are shown next to the runs, labelled
``[paper]``, when the runs are LLaMA-7B, and as a separate block otherwise.

CLI: ``python scripts/make_tables.py <multirun_dir> [--out docs/x.md] [--latex x.tex] [--plots dir]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from loraprune.evaluation.tasks import PAPER_TASKS

log = logging.getLogger("loraprune")

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
PPL_ORDER = ("wikitext2", "ptb", "wiki_embedded", "news_embedded")
PPL_LABELS = {
    "wikitext2": "WikiText2",
    "ptb": "PTB",
    "wiki_embedded": "Wiki (emb.)",
    "news_embedded": "News (emb.)",
}
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
)
KIND_ORDER = {"dense": 0, "before_recovery": 1, "run": 2, "paper": 3}
REFERENCE_MODEL = "llama_7b"
REFERENCE_MODES = ("auto", "separate", "none")
DASH = "–"


@dataclass
class Row:
    """One table row: a method at a ratio (runs averaged over seeds), the dense model, or a paper row.

    Percentages (``tasks``, ``average``, ``params_removed``) are in percent, as in the paper.
    ``memory_gib`` is the CUDA peak when measured, else the CPU peak RSS (``memory_device`` says which).
    """

    model: str
    method: str
    ratio: float
    kind: str = "run"  # run | dense | before_recovery | paper
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

    @property
    def ratio_label(self) -> str:
        return self.pattern if self.pattern else f"{100 * self.ratio:g}%"

    @property
    def label(self) -> str:
        base = self.label_override or METHOD_LABELS.get(self.method, self.method)
        if self.kind == "before_recovery":
            return f"{base} w/o tune"
        if self.kind == "paper":
            return f"{base} [paper]"
        if self.n_runs > 1:
            return f"{base} (n={self.n_runs})"
        return base


@dataclass
class Table:
    """Rows of one model (or the published reference block) with the columns they fill."""

    title: str
    model: str | None
    ppl_sets: list[str]
    tasks: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)

    @property
    def has_zeroshot(self) -> bool:
        return bool(self.tasks)


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


def _pct(value: Any) -> float | None:
    return None if value is None else 100.0 * float(value)


def _zeroshot(zs: dict[str, Any] | None) -> tuple[dict[str, float | None], float | None]:
    if not zs:
        return {}, None
    tasks = {name: _pct(entry.get("paper_value")) for name, entry in zs.get("tasks", {}).items()}
    return tasks, _pct(zs.get("average_acc"))


def _zeroshot_protocol(zs: dict[str, Any] | None) -> str | None:
    """E.g. "offline data, validation split, first 20 examples per task"."""
    if not zs:
        return None
    splits = sorted({str(t.get("split")) for t in zs.get("tasks", {}).values() if t.get("split")})
    limit = zs.get("limit")
    cap = "every example" if limit is None else f"first {limit:g} examples per task"
    split_text = f"{'/'.join(splits)} split{'s' if len(splits) > 1 else ''}" if splits else "default splits"
    return f"{zs.get('source', '?')} data, {split_text}, {cap}"


def _memory(mem: dict[str, Any] | None) -> tuple[float | None, str | None]:
    mem = mem or {}
    if mem.get("cuda_max_allocated_gib") is not None:
        return float(mem["cuda_max_allocated_gib"]), "cuda"
    if mem.get("cpu_peak_rss_gib") is not None:
        return float(mem["cpu_peak_rss_gib"]), "cpu"
    return None, None


def rows_from_metrics(
    metrics: dict[str, Any], path: str | Path | None = None, *, before_recovery: bool = False
) -> list[Row]:
    """The rows one run contributes: the pruned model, its dense model (if evaluated) and, optionally, the
    one-shot result before LoRA recovery."""
    run = metrics.get("run", {})
    model, method, ratio = str(run.get("model")), str(run.get("method")), float(run.get("ratio", 0.0))
    seq_len = metrics.get("eval", {}).get("seq_len")
    run_dir = str(run.get("dir") or (Path(path).parent if path else ""))
    semi = metrics.get("semistructured") or {}
    pattern = semi.get("pattern")
    if pattern:
        ratio = 0.0  # unused by N:M runs; the pattern identifies them
    tasks, average = _zeroshot(metrics["pruned"].get("zeroshot"))
    memory, device = _memory(metrics.get("memory"))
    params = metrics.get("params", {})
    rows = [
        Row(
            model=model,
            method=method,
            ratio=ratio,
            ppl=dict(metrics["pruned"].get("ppl", {})),
            tasks=tasks,
            average=average,
            params_removed=_pct(params.get("removed_fraction_total")),
            memory_gib=memory,
            memory_device=device,
            wall_time_s=metrics.get("wall_time_s"),
            eval_seq_len=seq_len,
            run_dirs=[run_dir],
            kept_per_layer=None if pattern else metrics.get("kept_per_layer"),
            pattern=pattern,
            sparsity=_pct(semi.get("sparsity")),
            zeroshot_protocol=_zeroshot_protocol(metrics["pruned"].get("zeroshot")),
        )
    ]
    if "dense" in metrics:
        d_tasks, d_average = _zeroshot(metrics["dense"].get("zeroshot"))
        rows.append(
            Row(
                model=model,
                method="dense",
                ratio=0.0,
                kind="dense",
                ppl=dict(metrics["dense"].get("ppl", {})),
                tasks=d_tasks,
                average=d_average,
                params_removed=0.0,
                eval_seq_len=seq_len,
                run_dirs=[run_dir],
            )
        )
    if before_recovery and "pruned_before_recovery" in metrics:
        rows.append(
            Row(
                model=model,
                method=method,
                ratio=ratio,
                kind="before_recovery",
                ppl=dict(metrics["pruned_before_recovery"].get("ppl", {})),
                params_removed=_pct(params.get("removed_fraction_total")),
                eval_seq_len=seq_len,
                run_dirs=[run_dir],
                pattern=pattern,
            )
        )
    return rows


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
        n = len(group) if first.kind == "run" else 1
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
    """All rows below ``root``, aggregated and sorted."""
    rows: list[Row] = []
    for path, metrics in load_metrics(root):
        rows += rows_from_metrics(metrics, path, before_recovery=before_recovery)
    return aggregate(rows)


# ---------------------------------------------------------------------------------------- reference
def load_reference() -> dict[str, Any]:
    """The published numbers shipped as package data (``loraprune/reference/loraprune_paper.json``)."""
    ref = resources.files("loraprune").joinpath("reference", "loraprune_paper.json")
    return json.loads(ref.read_text(encoding="utf-8"))


def reference_rows(reference: dict[str, Any] | None = None) -> tuple[list[Row], list[str]]:
    """Paper rows that carry at least one number, and the labels of those left out (all-null rows)."""
    reference = reference or load_reference()
    rows, missing = [], []
    for entry in reference["rows"]:
        ppl = dict(entry.get("ppl", {}))
        tasks = dict(entry.get("tasks", {}))
        numbers = [*ppl.values(), *tasks.values(), entry.get("average"), entry.get("memory_gb")]
        label = entry.get("label") or METHOD_LABELS.get(entry["method"], entry["method"])
        if entry.get("ratio") is None or all(v is None for v in numbers):
            ratio = "" if entry.get("ratio") is None else f" {100 * entry['ratio']:g}%"
            missing.append(f"{label}{ratio}")
            continue
        rows.append(
            Row(
                model=reference.get("model", REFERENCE_MODEL),
                method=entry["method"],
                ratio=float(entry["ratio"]),
                kind="paper",
                ppl=ppl,
                tasks=tasks,
                average=entry.get("average"),
                memory_gib=entry.get("memory_gb"),
                memory_device="paper",
                eval_seq_len=reference.get("protocol", {}).get("ppl_seq_len"),
                n_runs=0,
                label_override=label,
                status=entry.get("status"),
            )
        )
    return sort_rows(rows), missing


def _reference_notes(reference: dict[str, Any], missing: Sequence[str]) -> list[str]:
    paper = reference["paper"]
    seq = reference.get("protocol", {}).get("ppl_seq_len")
    notes = [
        f"[paper] rows: {paper['title']} (arXiv {paper['arxiv']} {paper['version']}, {paper['venue']}), "
        f"{reference.get('model')}, perplexity with {seq}-token windows; memory in GB as printed.",
        "[paper] numbers: perplexity and memory at 50% match the differences stated in the abstract; "
        "averages and the 8-bit row come from a secondary transcription; per-task accuracies were not "
        "verifiable and are left empty (see the JSON's 'verification' and per-row 'status').",
    ]
    if missing:
        notes.append("[paper] rows not verifiable, left out: " + ", ".join(missing) + ".")
    return notes


# ------------------------------------------------------------------------------------------- tables
def _ordered(names: Iterable[str], order: Sequence[str]) -> list[str]:
    seen: list[str] = []
    for name in names:
        if name not in seen:
            seen.append(name)
    return [n for n in order if n in seen] + [n for n in seen if n not in order]


def _columns_for(rows: Sequence[Row]) -> tuple[list[str], list[str]]:
    ppl_sets = _ordered((k for r in rows for k in r.ppl), PPL_ORDER)
    tasks = _ordered((k for r in rows for k, v in r.tasks.items() if v is not None), TASKS)
    if not tasks and any(r.average is not None for r in rows):  # an average without per-task numbers
        tasks = list(TASKS)
    return ppl_sets, tasks


def build_tables(rows: Sequence[Row], reference: str = "auto") -> list[Table]:
    """One table per model; the published rows inline for LLaMA-7B runs, else as their own block.

    Args:
        rows: aggregated rows (:func:`collect_rows`).
        reference: ``auto`` (inline for LLaMA-7B, separate block otherwise), ``separate`` (always a
            separate block) or ``none``.
    """
    if reference not in REFERENCE_MODES:
        raise ValueError(f"reference must be one of {REFERENCE_MODES}, got {reference!r}")
    ref_data = load_reference() if reference != "none" else None
    ref_rows, missing = reference_rows(ref_data) if ref_data else ([], [])
    tables: list[Table] = []
    inlined = False
    for model in sorted({r.model for r in rows}):
        model_rows = [r for r in rows if r.model == model]
        notes = _run_notes(model_rows)
        if ref_data and reference == "auto" and model == ref_data.get("model", REFERENCE_MODEL):
            model_rows = sort_rows([*model_rows, *ref_rows])
            notes += _reference_notes(ref_data, missing)
            seq = ref_data.get("protocol", {}).get("ppl_seq_len")
            lens = {r.eval_seq_len for r in model_rows if r.kind != "paper" and r.ppl}
            if lens and lens != {seq}:
                notes.append(
                    f"Warning: these runs used {sorted(lens)}-token perplexity windows, the paper {seq}: "
                    "perplexities are not comparable (use eval=paper)."
                )
            inlined = True
        ppl_sets, tasks = _columns_for(model_rows)
        tables.append(Table(model, model, ppl_sets, tasks, model_rows, notes))
    if ref_data and ref_rows and not inlined:
        ppl_sets, tasks = _columns_for(ref_rows)
        paper = ref_data["paper"]
        title = f"Published: {paper['title'].split(':')[0]} paper, {ref_data.get('model')} (not these runs)"
        notes = _reference_notes(ref_data, missing)
        tables.append(Table(title, None, ppl_sets, tasks, ref_rows, notes))
    return tables


def _run_notes(rows: Sequence[Row]) -> list[str]:
    notes = []
    devices = {r.memory_device for r in rows if r.kind == "run" and r.memory_gib is not None}
    if "cpu" in devices:
        notes.append(
            "Peak memory marked † is the CPU peak resident set (no CUDA device); others CUDA max allocated."
        )
    seqs = sorted({r.eval_seq_len for r in rows if r.kind != "paper" and r.eval_seq_len})
    if seqs:
        notes.append(f"Perplexity windows: {', '.join(map(str, seqs))} tokens.")
    if any(r.tasks for r in rows if r.kind != "paper"):
        notes.append(
            "Zero-shot: acc (BoolQ, PIQA, WinoGrande, ARC-e) or acc_norm (HellaSwag, ARC-c, OBQA), percent; "
            "Average over the tasks run."
        )
        protocols = sorted({r.zeroshot_protocol for r in rows if r.kind == "run" and r.zeroshot_protocol})
        if protocols:
            notes.append(f"Zero-shot data: {'; '.join(protocols)}.")
    if any(r.n_runs > 1 for r in rows):
        notes.append("(n=k): mean over k runs (seeds).")
    return notes


def build_from_dir(
    root: str | Path, *, reference: str = "auto", before_recovery: bool = False
) -> list[Table]:
    """:func:`collect_rows` then :func:`build_tables`."""
    return build_tables(collect_rows(root, before_recovery=before_recovery), reference)


# ------------------------------------------------------------------------------------------ cells
def _fmt_ppl(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return DASH
    return f"{v:.0f}" if v >= 1000 else f"{v:.2f}"


def _fmt_pct(v: float | None, digits: int = 2) -> str:
    return DASH if v is None else f"{v:.{digits}f}"


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _fmt_memory(row: Row) -> str:
    if row.memory_gib is None:
        return DASH
    return f"{row.memory_gib:.1f}" + ("†" if row.memory_device == "cpu" else "")


def header(table: Table) -> list[str]:
    cols = ["Ratio", "Method"] + [PPL_LABELS.get(s, s) for s in table.ppl_sets]
    if table.has_zeroshot:
        cols += [TASK_LABELS.get(t, t) for t in table.tasks] + ["Average"]
    return cols + ["Params removed", "Peak mem (GiB)", "Wall time"]


def cells(table: Table, row: Row) -> list[str]:
    """The formatted cells of ``row`` under :func:`header`."""
    out = [row.ratio_label, row.label] + [_fmt_ppl(row.ppl.get(s)) for s in table.ppl_sets]
    if table.has_zeroshot:
        out += [_fmt_pct(row.tasks.get(t)) for t in table.tasks] + [_fmt_pct(row.average)]
    params = DASH if row.params_removed is None else f"{row.params_removed:.1f}%"
    if row.pattern and row.sparsity is not None:
        params = f"{row.sparsity:.1f}% zeroed"
    return out + [params, _fmt_memory(row), _fmt_time(row.wall_time_s)]


# -------------------------------------------------------------------------------------- renderers
def to_markdown(tables: Sequence[Table]) -> str:
    """GitHub Markdown: one section per table, notes below it."""
    parts = []
    for table in tables:
        head = header(table)
        lines = [f"### {table.title}", ""]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join([":--", ":--"] + ["--:"] * (len(head) - 2)) + "|")
        for row in table.rows:
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells(table, row)) + " |")
        if table.notes:
            lines.append("")
            lines += [f"- {note}" for note in table.notes]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    DASH: "--",
    "†": r"$^\dagger$",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(tables: Sequence[Table]) -> str:
    """LaTeX (booktabs): one ``table`` environment per table, a rule between ratio blocks, paper rows in
    italics, notes in the caption."""
    parts = []
    for table in tables:
        head = header(table)
        spec = "ll" + "r" * (len(head) - 2)
        caption = latex_escape(table.title) + "."
        if table.notes:
            caption += " " + " ".join(latex_escape(n) for n in table.notes)
        lines = [
            r"\begin{table*}[t]",
            r"\centering",
            r"\small",
            rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            " & ".join(latex_escape(h) for h in head) + r" \\",
            r"\midrule",
        ]
        previous = None
        for row in table.rows:
            block = (row.kind == "dense", row.pattern, row.ratio)
            if previous is not None and block != previous:
                lines.append(r"\midrule")
            previous = block
            row_cells = [latex_escape(c) for c in cells(table, row)]
            if row.kind == "paper":
                row_cells = [rf"\textit{{{c}}}" for c in row_cells]
            lines.append(" & ".join(row_cells) + r" \\")
        lines += [
            r"\bottomrule",
            r"\end{tabular}",
            rf"\caption{{{caption}}}",
            r"\end{table*}",
        ]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def flat_result(metrics: dict[str, Any]) -> dict[str, Any]:
    """One run's table row as ``{column: value}`` (raw numbers; for loggers such as W&B)."""
    row = rows_from_metrics(metrics)[0]
    table = Table("", row.model, *_columns_for([row]), [row])
    out: dict[str, Any] = {"model": row.model, "method": row.method, "ratio": row.pattern or row.ratio}
    out.update({PPL_LABELS.get(s, s): row.ppl.get(s) for s in table.ppl_sets})
    if table.has_zeroshot:
        out.update({TASK_LABELS.get(t, t): row.tasks.get(t) for t in table.tasks})
        out["Average"] = row.average
    out["Params removed (%)"] = row.params_removed
    out[f"Peak mem (GiB, {row.memory_device or 'n/a'})"] = row.memory_gib
    out["Wall time (s)"] = row.wall_time_s
    return out


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``loraprune-table <multirun_dir> [--out x.md] [--latex x.tex] [--plots dir]``."""
    parser = argparse.ArgumentParser(
        prog="loraprune-table",
        description="Paper-style tables (and plots) from every metrics.json below a (multi)run directory.",
    )
    parser.add_argument("multirun_dir", type=Path, help="directory searched recursively for metrics.json")
    parser.add_argument("--out", type=Path, help="write the Markdown here (default: print it)")
    parser.add_argument("--latex", type=Path, help="also write a LaTeX (booktabs) version here")
    parser.add_argument("--plots", type=Path, help="write PNG plots into this directory")
    parser.add_argument(
        "--reference",
        choices=REFERENCE_MODES,
        default="auto",
        help="published rows: inline for LLaMA-7B else a separate block (auto), always separate, or none",
    )
    parser.add_argument(
        "--before-recovery",
        action="store_true",
        help="add one-shot methods' rows before LoRA recovery ('w/o tune')",
    )
    args = parser.parse_args(argv)
    if not args.multirun_dir.exists():
        parser.error(f"{args.multirun_dir} does not exist")
    rows = collect_rows(args.multirun_dir, before_recovery=args.before_recovery)
    if not rows:
        print(f"no metrics.json found below {args.multirun_dir}", file=sys.stderr)
        return 2
    tables = build_tables(rows, args.reference)
    markdown = to_markdown(tables)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(markdown, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(markdown)
    if args.latex:
        args.latex.parent.mkdir(parents=True, exist_ok=True)
        args.latex.write_text(to_latex(tables), encoding="utf-8")
        print(f"wrote {args.latex}", file=sys.stderr)
    if args.plots:
        from loraprune.report.plots import write_plots

        for path in write_plots(rows, args.plots, reference=args.reference != "none"):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
