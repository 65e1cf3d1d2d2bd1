"""Tables as GitHub Markdown."""

from __future__ import annotations

from collections.abc import Sequence

from loraprune.report.cells import cells, header
from loraprune.report.layout import Table, expand


def to_markdown(tables: Sequence[Table]) -> str:
    """GitHub Markdown: one section per table (its per-set Δ% companion next), notes below it."""
    parts = []
    for table in expand(tables):
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
