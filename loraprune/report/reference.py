"""The paper's published numbers (``loraprune/reference/loraprune_paper.json``) as ``[paper]`` rows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

from loraprune.report.rows import METHOD_LABELS, Row, sort_rows

REFERENCE_MODEL = "llama_7b"


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


def reference_notes(reference: dict[str, Any], missing: Sequence[str]) -> list[str]:
    """The notes under a table holding ``[paper]`` rows: their source, provenance and the rows left out."""
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
