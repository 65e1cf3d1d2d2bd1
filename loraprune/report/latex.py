"""Tables as LaTeX (booktabs)."""

from __future__ import annotations

from collections.abc import Sequence

from loraprune.report.cells import DASH, cells, header
from loraprune.report.layout import Table, expand

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
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "−": "--",
}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (and the dash and dagger spelled in LaTeX)."""
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def _body(table: Table) -> list[str]:
    """The tabular's rows: a rule between ratio blocks, paper rows in italics."""
    lines = []
    previous = None
    for row in table.rows:
        block = (row.kind == "dense", row.block[1:])
        if previous is not None and block != previous:
            lines.append(r"\midrule")
        previous = block
        row_cells = [latex_escape(c) for c in cells(table, row)]
        if row.kind == "paper":
            row_cells = [rf"\textit{{{c}}}" for c in row_cells]
        lines.append(" & ".join(row_cells) + r" \\")
    return lines


def table_to_latex(table: Table) -> str:
    """One ``table*`` environment, the notes in its caption."""
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
        *_body(table),
        r"\bottomrule",
        r"\end{tabular}",
        rf"\caption{{{caption}}}",
        r"\end{table*}",
    ]
    return "\n".join(lines)


def to_latex(tables: Sequence[Table]) -> str:
    """LaTeX (booktabs): one ``table`` environment per table (its per-set Δ% companion next), a rule
    between ratio blocks, paper rows in italics, notes in the caption."""
    return "\n\n".join(table_to_latex(table) for table in expand(tables)) + "\n"
