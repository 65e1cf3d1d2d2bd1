"""The ``loraprune-table`` command: tables (Markdown, LaTeX) and plots from a (multi)run directory.

``loraprune-table <multirun_dir> [--out docs/x.md] [--latex x.tex] [--plots dir]`` (also
``python scripts/make_tables.py ...``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from loraprune.report.latex import to_latex
from loraprune.report.layout import REFERENCE_MODES, build_tables
from loraprune.report.markdown import to_markdown
from loraprune.report.rows import collect_rows


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
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
    return parser


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (parents created) and say so on stderr."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """``loraprune-table <multirun_dir> [--out x.md] [--latex x.tex] [--plots dir]``.

    Returns:
        0, or 2 when no run was found below the directory.
    """
    parser = build_parser()
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
        _write(args.out, markdown)
    else:
        print(markdown)
    if args.latex:
        _write(args.latex, to_latex(tables))
    if args.plots:
        from loraprune.report.plots import write_plots  # matplotlib only when plots are asked for

        for path in write_plots(rows, args.plots, reference=args.reference != "none"):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
