"""The ``loraprune-results`` command: register finished runs, render the documented tables from them.

``loraprune-results add [RUN_DIR ...] --table NAME [--registry results] [--reference ROW] [--paper MODE]
[--view [TITLE=]SETS ...] [--include TABLE/RUN ...]`` copies each run's records into ``results/NAME/<run>/``
and records the options given in ``results/NAME/table.json`` (no RUN_DIR: only the options, of an existing
table);
``loraprune-results render [--registry results] [--out docs/results_tables.md] [--readme FILE ...]``
writes every table and fills the headline blocks of README.md and docs/results.md (writing nothing when one
of those files was edited while the tables were built). Bad input ends with one ``loraprune-results:
error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from loraprune.report.layout import PAPER_MODES
from loraprune.report.registry import REGISTRY, RegistryError, add_runs, render_registry, rewrite_headlines

PROG = "loraprune-results"
OUT = Path("docs/results_tables.md")
READMES = (Path("README.md"), Path("docs/results.md"))


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="The results registry the documented tables come from."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser(
        "add",
        help="copy finished runs (metrics.json, config.yaml, window_losses.json, command.txt) into a table",
    )
    add.add_argument(
        "run_dirs",
        type=Path,
        nargs="*",
        metavar="RUN_DIR",
        help="finished run directories (none: record the options given, of an existing table)",
    )
    add.add_argument("--table", required=True, help="the table folder: results/<TABLE>/")
    add.add_argument("--registry", type=Path, default=REGISTRY, help="the registry's root (default: results)")
    add.add_argument(
        "--reference", metavar="ROW", help="record the row the table's Δ column compares against"
    )
    add.add_argument(
        "--include",
        nargs="*",
        metavar="TABLE/RUN",
        help="registered runs of other tables this table shows too (e.g. its reference), replacing the "
        "table's list; no value: none",
    )
    add.add_argument("--paper", choices=PAPER_MODES, help="record whether the table shows the published rows")
    add.add_argument(
        "--view",
        dest="views",
        action="append",
        metavar="[TITLE=]SETS",
        help="render the table once per --view, on the sets of a loraprune-table --sets spec (val, test, or "
        "a comma list of names), under TITLE (default: 'validation' for val, 'test' for test, else SETS); "
        "the views given replace the table's, e.g. --view val --view 'test (development)=test'",
    )
    render = sub.add_parser("render", help="write every table, and fill README headline blocks")
    render.add_argument(
        "--registry", type=Path, default=REGISTRY, help="the registry's root (default: results)"
    )
    render.add_argument("--out", type=Path, default=OUT, help=f"the Markdown file (default: {OUT})")
    render.add_argument(
        "--readme",
        type=Path,
        nargs="+",
        default=list(READMES),
        help="rewrite the blocks between <!-- results:headline:start table=NAME [view=VIEW] [sets=SPEC] "
        '[reference="ROW"] --> and <!-- results:headline:end --> in this file (VIEW: a view\'s title or '
        "sets; default: README.md and docs/results.md; a file that is absent is skipped)",
    )
    render.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 naming each file whose tables differ from the registry's (for CI)",
    )
    return parser


def _update(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` unless it holds it already; say which on stderr."""
    if _current(path) == text:
        print(f"unchanged {path}", file=sys.stderr)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """``loraprune-results add ...`` or ``loraprune-results render ...``.

    Returns:
        0; 1 when ``render --check`` finds a stale file; 2 after one error line.
    """
    args = build_parser().parse_args(argv)
    try:
        if args.action == "add":
            for path in add_runs(
                args.run_dirs,
                args.table,
                args.registry,
                reference=args.reference,
                paper=args.paper,
                views=args.views,
                include=args.include,
            ):
                print(f"added {path}", file=sys.stderr)
            return 0
        document = render_registry(args.registry)
        read = {path: path.read_text(encoding="utf-8") for path in args.readme if path.is_file()}
        filled = {path: rewrite_headlines(text, args.registry) for path, text in read.items()}
    except RegistryError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    outputs = {args.out: document, **filled}
    if args.check:
        stale = [path for path, text in outputs.items() if _current(path) != text]
        for path in stale:
            print(
                f"{PROG}: {path} is not what the registry renders; run loraprune-results render",
                file=sys.stderr,
            )
        return 1 if stale else 0
    edited = [path for path, text in read.items() if _current(path) != text]
    if edited:  # an edit made while the tables were built would be lost: write nothing
        print(
            f"{PROG}: error: {', '.join(map(str, edited))} changed while rendering; nothing written, "
            "run loraprune-results render again",
            file=sys.stderr,
        )
        return 2
    for path, text in outputs.items():
        _update(path, text)
    return 0


def _current(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


if __name__ == "__main__":
    raise SystemExit(main())
