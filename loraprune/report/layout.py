"""Rows grouped into tables: one per model, the columns its rows fill, the notes beneath it.

Columns follow the LoRAPrune / LLM-Pruner table: ratio, method, perplexity per evaluation set (WikiText2 /
PTB, or whatever sets the runs used), the seven zero-shot tasks and their average, then parameters
removed, peak memory and wall time. The published numbers are shown next to the runs, labelled
``[paper]``, when the runs are LLaMA-7B, and as a separate block otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraprune.report.reference import REFERENCE_MODEL, load_reference, reference_notes, reference_rows
from loraprune.report.rows import Row, collect_rows, sort_rows
from loraprune.run.results import PPL_ORDER, ordered, task_columns

REFERENCE_MODES = ("auto", "separate", "none")


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
        """Whether the table has zero-shot columns."""
        return bool(self.tasks)


def columns_for(rows: Sequence[Row]) -> tuple[list[str], list[str]]:
    """The perplexity sets and zero-shot tasks that ``rows`` fill, in the paper's order."""
    ppl_sets = ordered((k for r in rows for k in r.ppl), PPL_ORDER)
    tasks = task_columns([r.tasks for r in rows], [r.average for r in rows])
    return ppl_sets, tasks


def run_notes(rows: Sequence[Row]) -> list[str]:
    """The notes under a table of runs: memory device, perplexity windows, zero-shot protocol, seeds."""
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


def _with_reference(
    rows: list[Row], notes: list[str], ref_data: dict[str, Any], ref_rows: list[Row], missing: list[str]
) -> tuple[list[Row], list[str]]:
    """A model's rows with the ``[paper]`` rows inline, its notes with the reference's (and a warning when
    the runs' perplexity windows differ from the paper's)."""
    rows = sort_rows([*rows, *ref_rows])
    notes = notes + reference_notes(ref_data, missing)
    seq = ref_data.get("protocol", {}).get("ppl_seq_len")
    lens = {r.eval_seq_len for r in rows if r.kind != "paper" and r.ppl}
    if lens and lens != {seq}:
        notes.append(
            f"Warning: these runs used {sorted(lens)}-token perplexity windows, the paper {seq}: "
            "perplexities are not comparable (use eval=paper)."
        )
    return rows, notes


def _reference_table(ref_data: dict[str, Any], ref_rows: list[Row], missing: list[str]) -> Table:
    """The published rows as a block of their own."""
    ppl_sets, tasks = columns_for(ref_rows)
    paper = ref_data["paper"]
    title = f"Published: {paper['title'].split(':')[0]} paper, {ref_data.get('model')} (not these runs)"
    return Table(title, None, ppl_sets, tasks, ref_rows, reference_notes(ref_data, missing))


def build_tables(rows: Sequence[Row], reference: str = "auto") -> list[Table]:
    """One table per model; the published rows inline for LLaMA-7B runs, else as their own block.

    Args:
        rows: aggregated rows (:func:`loraprune.report.rows.collect_rows`).
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
        notes = run_notes(model_rows)
        if ref_data and reference == "auto" and model == ref_data.get("model", REFERENCE_MODEL):
            model_rows, notes = _with_reference(model_rows, notes, ref_data, ref_rows, missing)
            inlined = True
        ppl_sets, tasks = columns_for(model_rows)
        tables.append(Table(model, model, ppl_sets, tasks, model_rows, notes))
    if ref_data and ref_rows and not inlined:
        tables.append(_reference_table(ref_data, ref_rows, missing))
    return tables


def build_from_dir(
    root: str | Path, *, reference: str = "auto", before_recovery: bool = False
) -> list[Table]:
    """:func:`loraprune.report.rows.collect_rows` then :func:`build_tables`."""
    return build_tables(collect_rows(root, before_recovery=before_recovery), reference)
