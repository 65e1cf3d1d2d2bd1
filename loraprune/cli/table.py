"""The ``loraprune-table`` command: tables (Markdown, LaTeX) and plots from run directories.

``loraprune-table DIR [DIR ...] [--out x.md] [--latex x.tex] [--plots dir] [--paper auto|separate|none]
[--sets SPEC] [--reference ROW] [--before-recovery]`` (also ``python scripts/make_tables.py ...``). Bad
input ends with one ``loraprune-table: error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from loraprune.report.latex import to_latex
from loraprune.report.layout import PAPER_MODES, PER_SET_MAX, Table, build_tables
from loraprune.report.markdown import to_markdown
from loraprune.report.rows import Row, collect_rows

PROG = "loraprune-table"

REFERENCE_HELP = (
    "add a column with each row's paired Δ%% of the geometric-mean perplexity against this row at the "
    "same ratio (of the same target, groups or params), with its 95%% interval (* when it excludes 0). "
    "ROW is a Method cell as shown ('LoRA + mask Fisher (n=3)'), the same without '(n=k)', a method key "
    "('mask_fisher'), or a key or name with some of the settings its label shows ('mask_fisher (no "
    "reconstruction)'), case-insensitive; ROW@RATIO ('mask_fisher@20%%', 'mask_fisher@15%% params') keeps "
    "one ratio. Needs window_losses.json in every run compared. Multi-seed rows are paired on the seeds "
    f"both have, else their means. With 2 to {PER_SET_MAX} sets shown, a second table gives the paired "
    "Δ%% on each set alone"
)
SETS_HELP = (
    "show these perplexity sets only, the Geo. mean and the --reference Δ%% over them: a comma list of set "
    "names, 'val' (every set whose name ends in _val) or 'test' (every other set), e.g. --sets val or "
    "--sets wiki_embedded,news_embedded (default: every set the runs have)"
)


class TableError(Exception):
    """Bad input to the command: its message is the one error line."""


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Paper-style tables (and plots) from every metrics.json below one or more directories.",
    )
    parser.add_argument(
        "dirs", type=Path, nargs="+", metavar="DIR", help="directories searched recursively for metrics.json"
    )
    parser.add_argument("--out", type=Path, help="write the Markdown here (default: print it)")
    parser.add_argument("--latex", type=Path, help="also write a LaTeX (booktabs) version here")
    parser.add_argument(
        "--plots", type=Path, help="write PNG plots into this directory (a panel per set shown)"
    )
    parser.add_argument(
        "--paper",
        choices=PAPER_MODES,
        default="auto",
        help="published rows: inline for LLaMA-7B else a separate block (auto), always separate, or none",
    )
    parser.add_argument("--sets", metavar="SPEC", help=SETS_HELP)
    parser.add_argument("--reference", metavar="ROW", help=REFERENCE_HELP)
    parser.add_argument(
        "--before-recovery",
        action="store_true",
        help="add one-shot methods' rows before LoRA recovery ('w/o tune')",
    )
    return parser


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (parents created) and say so on stderr."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)


def load_tables(
    dirs: Sequence[Path],
    *,
    paper: str = "auto",
    reference: str | None = None,
    sets: str | None = None,
    before_recovery: bool = False,
) -> tuple[list[Row], list[Table]]:
    """The rows below ``dirs`` and their tables.

    Raises:
        TableError: a directory is missing, holds no run, a ``window_losses.json`` is malformed, ``sets``
            names a set the runs lack, or the reference names no row or cannot be paired.
    """
    for d in dirs:
        if not d.exists():
            raise TableError(f"{d} does not exist")
    try:
        rows = collect_rows(dirs, before_recovery=before_recovery)
        if not rows:
            raise TableError(f"no metrics.json found below {', '.join(map(str, dirs))}")
        return rows, build_tables(rows, paper, reference=reference, sets=sets)
    except ValueError as err:  # WindowLossesError, SetsError, UncertaintyError
        raise TableError(str(err)) from err


def main(argv: Sequence[str] | None = None) -> int:
    """``loraprune-table DIR [DIR ...] [--out x.md] [--latex x.tex] [--plots dir] [--sets SPEC]
    [--reference ROW]``.

    Returns:
        0, or 2 after one error line on bad input (see :func:`load_tables`).
    """
    args = build_parser().parse_args(argv)
    if args.reference in PAPER_MODES:  # the flag's former meaning
        print(
            f"{PROG}: warning: --reference {args.reference} is now --paper {args.reference}",
            file=sys.stderr,
        )
        args.paper, args.reference = args.reference, None
    try:
        rows, tables = load_tables(
            args.dirs,
            paper=args.paper,
            reference=args.reference,
            sets=args.sets,
            before_recovery=args.before_recovery,
        )
    except TableError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    markdown = to_markdown(tables)
    if args.out:
        _write(args.out, markdown)
    else:
        print(markdown)
    if args.latex:
        _write(args.latex, to_latex(tables))
    if args.plots:
        from loraprune.report.plots import write_plots  # matplotlib only when plots are asked for

        if args.sets:  # the plots' panels: the sets the tables show
            shown = {s for t in tables for s in t.ppl_sets}
            rows = [replace(r, ppl={k: v for k, v in r.ppl.items() if k in shown}) for r in rows]
        for path in write_plots(rows, args.plots, reference=args.paper != "none"):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
