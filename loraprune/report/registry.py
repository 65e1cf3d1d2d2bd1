"""The results registry: run records the documented tables are generated from.

Layout: ``<registry>/<table>/<run>/`` holds a run's ``metrics.json``, ``config.yaml`` (when it had one),
``window_losses.json`` and ``command.txt`` (the command that made it), never weights;
``<registry>/<table>/table.json`` may hold the table's options (``reference``: the row the Δ column
compares against, ``paper``: ``auto|separate|none``, default ``none``).

:func:`render_registry` writes one section per table folder, each opened by a header (protocol, windows,
sets, seeds, commits, the commands that regenerate it) and built with the ``loraprune-table`` code.
:func:`rewrite_headlines` fills README blocks between ``<!-- results:headline:start table=NAME
[reference="ROW"] -->`` and ``<!-- results:headline:end -->`` with that table. Both are deterministic:
rendering twice changes nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from loraprune.report.layout import PAPER_MODES, build_tables
from loraprune.report.markdown import to_markdown
from loraprune.report.rows import collect_rows, load_metrics
from loraprune.report.windows import WINDOW_LOSSES
from loraprune.run.results import PPL_LABELS, PPL_ORDER, ordered

REGISTRY = Path("results")
METRICS = "metrics.json"
COPIED = (METRICS, "config.yaml", WINDOW_LOSSES)
REQUIRED = (METRICS, WINDOW_LOSSES)
COMMAND = "command.txt"
OPTIONS = "table.json"
HEADLINE = re.compile(
    r"(<!-- results:headline:start(?P<attrs>[^>]*?)-->)(?P<body>.*?)(<!-- results:headline:end -->)", re.S
)
_ATTR = re.compile(r'(\w+)=(?:"([^"]*)"|(\S+))')
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RegistryError(Exception):
    """Bad input to the registry: its message is the one error line."""


# -------------------------------------------------------------------------------------------- adding
def run_command(run_dir: Path, metrics: dict[str, Any]) -> str | None:
    """The command that made a run: its provenance, else ``loraprune`` + Hydra's ``overrides.yaml``."""
    command = (metrics.get("provenance") or {}).get("command")
    if command:
        return str(command)
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        items = yaml.safe_load(overrides.read_text(encoding="utf-8")) or []
        return " ".join(["loraprune", *map(str, items)])
    return None


def _check_run(run_dir: Path) -> dict[str, Any]:
    """The run's metrics, after checking it can be registered."""
    if not run_dir.is_dir():
        raise RegistryError(f"{run_dir} is not a directory")
    missing = [name for name in REQUIRED if not (run_dir / name).is_file()]
    if missing:
        raise RegistryError(f"{run_dir} has no {' or '.join(missing)}; only finished runs can be registered")
    try:
        metrics = json.loads((run_dir / METRICS).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise RegistryError(f"{run_dir / METRICS}: {err}") from err
    if not isinstance(metrics, dict) or "run" not in metrics or "pruned" not in metrics:
        raise RegistryError(f"{run_dir / METRICS} is not a loraprune metrics file")
    return metrics


def _check_table_name(table: str) -> None:
    if not _NAME.match(table):
        raise RegistryError(f"table name {table!r}: letters, digits, '.', '_' and '-' only")


def add_runs(
    run_dirs: Sequence[str | Path],
    table: str,
    registry: str | Path = REGISTRY,
    *,
    reference: str | None = None,
    paper: str | None = None,
) -> list[Path]:
    """Copy runs into ``<registry>/<table>/<run dir name>/``; all of them or, on any error, none.

    Args:
        run_dirs: finished run directories (each with ``metrics.json`` and ``window_losses.json``).
        table: the table folder.
        registry: the registry's root.
        reference, paper: table options to record in ``table.json`` (left as they are when None).

    Returns:
        The new run folders.

    Raises:
        RegistryError: a run dir lacks a required file, two runs share a name, or a name is taken.
    """
    _check_table_name(table)
    if paper is not None and paper not in PAPER_MODES:
        raise RegistryError(f"paper must be one of {PAPER_MODES}, got {paper!r}")
    dest = Path(registry) / table
    runs = [(Path(d), _check_run(Path(d))) for d in run_dirs]
    names = [d.resolve().name for d, _ in runs]
    for name in names:
        if names.count(name) > 1:
            raise RegistryError(f"two runs are named {name!r}; register them in separate calls or tables")
        if (dest / name).exists():
            raise RegistryError(f"{dest / name} already exists; remove it first to replace it")
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".adding-", dir=dest))
    try:
        for (run_dir, metrics), name in zip(runs, names, strict=True):
            target = staging / name
            target.mkdir()
            for file in COPIED:
                if (run_dir / file).is_file():
                    shutil.copy2(run_dir / file, target / file)
            command = run_command(run_dir, metrics)
            if command:
                (target / COMMAND).write_text(command + "\n", encoding="utf-8")
        added = []
        for name in names:
            (staging / name).rename(dest / name)
            added.append(dest / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if reference is not None or paper is not None:
        options = table_options(dest)
        options.update({k: v for k, v in (("reference", reference), ("paper", paper)) if v is not None})
        (dest / OPTIONS).write_text(json.dumps(options, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return added


# ----------------------------------------------------------------------------------------- rendering
def table_options(table_dir: Path) -> dict[str, Any]:
    """The options in ``table.json`` (empty when there is none)."""
    path = table_dir / OPTIONS
    if not path.is_file():
        return {}
    try:
        options = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise RegistryError(f"{path}: {err}") from err
    if not isinstance(options, dict):
        raise RegistryError(f"{path}: expected an object")
    return options


def table_dirs(registry: str | Path) -> list[Path]:
    """The table folders of the registry, by name."""
    root = Path(registry)
    if not root.is_dir():
        raise RegistryError(f"{root} is not a directory (no registry there)")
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _windows_text(metrics: list[dict[str, Any]]) -> str:
    """Per set: windows of how many, documents of how many (from the runs' ``eval.windows``)."""
    coverage: dict[str, set[str]] = {}
    for m in metrics:
        for name, w in ((m.get("eval") or {}).get("windows") or {}).items():
            text = (
                f"{w.get('windows')} of {w.get('of')} windows, "
                f"{w.get('documents')} of {w.get('of_documents')} docs"
            )
            coverage.setdefault(name, set()).add(text)
    return "; ".join(
        f"{PPL_LABELS.get(n, n)}: {' / '.join(sorted(coverage[n]))}" for n in ordered(coverage, PPL_ORDER)
    )


def table_header(table_dir: Path, registry: str | Path, options: dict[str, Any]) -> list[str]:
    """The lines that open a table's section: where its numbers come from and how to make them again."""
    found = load_metrics(table_dir)
    metrics = [m for _, m in found]
    seq_lens = sorted({str((m.get("eval") or {}).get("seq_len")) for m in metrics})
    sets = ordered((s for m in metrics for s in (m.get("pruned") or {}).get("ppl", {})), PPL_ORDER)
    seeds = sorted({str(m["run"].get("seed")) for m in metrics if m["run"].get("seed") is not None})
    commits = sorted(
        {
            str(p.get("commit"))[:12] + (" (dirty)" if p.get("dirty") else "")
            for m in metrics
            if (p := m.get("provenance") or {}).get("commit")
        }
    )
    command = (
        f"loraprune-table {Path(registry).as_posix()}/{table_dir.name} --paper {options.get('paper', 'none')}"
    )
    if options.get("reference"):
        command += f" --reference {json.dumps(str(options['reference']))}"
    lines = [
        f"- Runs: {len(metrics)}; perplexity windows of {', '.join(seq_lens)} tokens.",
        f"- Sets: {', '.join(PPL_LABELS.get(s, s) for s in sets) or 'none'}.",
    ]
    if windows := _windows_text(metrics):
        lines.append(f"- Windows: {windows}.")
    lines += [
        f"- Seeds: {', '.join(seeds) or 'not recorded'}.",
        f"- Commits: {', '.join(commits) or 'not recorded'}.",
        f"- Table: `{command}`",
    ]
    commands = sorted(
        {
            (p.parent / COMMAND).read_text(encoding="utf-8").strip()
            for p, _ in found
            if (p.parent / COMMAND).is_file()
        }
    )
    if commands:
        lines += ["- Runs made with:", "", "  ```", *[f"  {c}" for c in commands], "  ```"]
    return lines


def _tables_markdown(table_dir: Path, options: dict[str, Any], *, demote: int = 0) -> str:
    """The tables of one table folder as Markdown (headings ``demote`` levels deeper)."""
    rows = collect_rows(table_dir)
    if not rows:
        raise RegistryError(f"{table_dir} holds no run")
    try:
        tables = build_tables(rows, options.get("paper", "none"), reference=options.get("reference"))
    except ValueError as err:
        raise RegistryError(f"{table_dir.name}: {err}") from err
    text = to_markdown(tables)
    return re.sub(r"^###", "###" + "#" * demote, text, flags=re.M) if demote else text


def render_registry(registry: str | Path = REGISTRY) -> str:
    """Every table of the registry as one Markdown document (one section per table folder).

    Raises:
        RegistryError: no registry, an empty one, or a table that cannot be built.
    """
    dirs = table_dirs(registry)
    if not dirs:
        raise RegistryError(f"{registry} holds no table")
    parts = [
        "# Results tables",
        "",
        f"Generated from the registry `{Path(registry).as_posix()}/` by `loraprune-results render`; "
        "do not edit by hand.",
    ]
    for table_dir in dirs:
        options = table_options(table_dir)
        parts += ["", f"## {table_dir.name}", "", *table_header(table_dir, registry, options), ""]
        parts.append(_tables_markdown(table_dir, options, demote=0).rstrip("\n"))
    return "\n".join(parts) + "\n"


def headline_attrs(attrs: str) -> dict[str, str]:
    """``table=NAME reference="ROW"`` into a dict."""
    return {m.group(1): m.group(2) if m.group(2) is not None else m.group(3) for m in _ATTR.finditer(attrs)}


def rewrite_headlines(text: str, registry: str | Path = REGISTRY) -> str:
    """``text`` with every headline block filled from the registry (unchanged when it has none).

    Raises:
        RegistryError: a block names no table, or a table the registry lacks.
    """

    def fill(match: re.Match) -> str:
        attrs = headline_attrs(match.group("attrs"))
        name = attrs.get("table")
        if not name:
            raise RegistryError(f"headline block {match.group(1)!r} names no table (table=NAME)")
        table_dir = Path(registry) / name
        if not table_dir.is_dir():
            raise RegistryError(f"headline block names table {name!r}, which {registry} lacks")
        options = {**table_options(table_dir), **{k: v for k, v in attrs.items() if k != "table"}}
        body = _tables_markdown(table_dir, options, demote=1).rstrip("\n")
        return f"{match.group(1)}\n{body}\n{match.group(4)}"

    return HEADLINE.sub(fill, text)
