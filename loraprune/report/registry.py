"""The results registry: run records the documented tables are generated from.

Layout: ``<registry>/<table>/<run>/`` holds a run's ``metrics.json``, ``config.yaml`` (when it had one),
``window_losses.json`` and ``command.txt`` (the command that made it), never weights;
``<registry>/<table>/table.json`` may hold the table's options (``reference``: the row the Δ column
compares against, ``paper``: ``auto|separate|none``, default ``none``; ``sets``: a ``--sets`` spec;
``views``: ``[{"title": "validation", "sets": "val"}, {"title": "test", "sets": "test"}]``, the table shown
once per entry, on those sets; ``include``: runs of other tables shown in this one as well, as paths relative
to the registry, e.g. ``["compare/mask_fisher_r0.2_s42"]``: a table of candidates shows the reference
without a second copy of its records).

:func:`render_registry` writes one section per table folder, each opened by a header (protocol, windows,
sets, seeds, commits, the commands that regenerate it) and built with the ``loraprune-table`` code; a table
with views gets one subsection per view, each with its own ``loraprune-table ... --sets ...`` command.
:func:`rewrite_headlines` fills README blocks between ``<!-- results:headline:start table=NAME
[view=VIEW] [sets=SPEC] [reference="ROW"] -->`` and ``<!-- results:headline:end -->`` with that table (a
view named by its title or its sets spec). Both are deterministic: rendering twice changes nothing.
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

from loraprune.report.layout import PAPER_MODES, build_tables, select_sets
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
VIEW_TITLES = {"val": "validation", "test": "test"}  # a view's title when ``--view`` gives none


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
    views: Sequence[str] | None = None,
    include: Sequence[str] | None = None,
) -> list[Path]:
    """Copy runs into ``<registry>/<table>/<run dir name>/``; all of them or, on any error, none.

    Args:
        run_dirs: finished run directories (each with ``metrics.json`` and ``window_losses.json``); none
            to record options of an existing table only.
        table: the table folder.
        registry: the registry's root.
        reference, paper: table options to record in ``table.json`` (left as they are when None).
        views: ``[TITLE=]SETS`` (:func:`parse_view`), replacing the table's views (left when None).
        include: registered runs of other tables (``TABLE/RUN``) the table shows too, replacing the
            table's (left when None).

    Returns:
        The new run folders.

    Raises:
        RegistryError: a run dir lacks a required file, two runs share a name, or a name is taken; no run
            and no option, or no run for a table that does not exist; a view names a set no run has.
    """
    _check_table_name(table)
    if paper is not None and paper not in PAPER_MODES:
        raise RegistryError(f"paper must be one of {PAPER_MODES}, got {paper!r}")
    dest = Path(registry) / table
    if not run_dirs and (reference, paper, views, include) == (None, None, None, None):
        raise RegistryError("nothing to add: give run directories or a table option")
    if not run_dirs and not dest.is_dir():
        raise RegistryError(f"{dest} does not exist; give run directories to create it")
    runs = [(Path(d), _check_run(Path(d))) for d in run_dirs]
    parsed = [parse_view(v) for v in views] if views is not None else None
    included = [str(i) for i in include] if include is not None else None
    extra = included_roots(Path(registry), table, included) if included is not None else None
    if parsed:
        if extra is None:
            extra = included_roots(Path(registry), table, table_options(dest).get("include", []))
        roots = ([dest] if dest.is_dir() else []) + extra
        sets = sets_of([m for _, m in runs] + [m for root in roots for _, m in load_metrics(root)])
        for view in parsed:
            _view_sets(view, sets, table)
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
    if (reference, paper, parsed, included) != (None, None, None, None):
        options = table_options(dest)
        given = (("reference", reference), ("paper", paper), ("views", parsed), ("include", included))
        options.update({k: v for k, v in given if v is not None})
        (dest / OPTIONS).write_text(json.dumps(options, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return added


# ---------------------------------------------------------------------------------------------- views
def parse_view(text: str) -> dict[str, str]:
    """``[TITLE=]SETS`` into a view: ``val`` → validation on ``val``, ``test (dev)=test``, ``a=x,y``.

    Raises:
        RegistryError: no sets or no title.
    """
    title, _, sets = text.rpartition("=")
    sets = sets.strip()
    title = title.strip() or VIEW_TITLES.get(sets, sets)
    if not sets or not title:
        raise RegistryError(f"--view {text!r}: expected [TITLE=]SETS, e.g. val or 'test (development)=test'")
    return {"title": title, "sets": sets}


def table_views(table_dir: Path, options: dict[str, Any]) -> list[dict[str, str]]:
    """The views of a table (``options["views"]``), checked: each an object with a title and sets."""
    views = options.get("views", [])
    if not isinstance(views, list):
        raise RegistryError(f"{table_dir / OPTIONS}: views must be a list")
    for i, view in enumerate(views):
        ok = isinstance(view, dict) and all(
            isinstance(view.get(k), str) and view[k] for k in ("title", "sets")
        )
        if not ok:
            raise RegistryError(f'{table_dir / OPTIONS}: views[{i}] must be {{"title": ..., "sets": ...}}')
    return views


def find_view(table_dir: Path, options: dict[str, Any], name: str) -> dict[str, str]:
    """The view of a table whose title, else whose sets spec, is ``name``."""
    views = table_views(table_dir, options)
    for key in ("title", "sets"):
        if found := next((v for v in views if v[key] == name), None):
            return found
    have = ", ".join(f"{v['title']!r} ({v['sets']})" for v in views) or "none"
    raise RegistryError(f"table {table_dir.name!r} has no view {name!r}; its views: {have}")


def sets_of(metrics: Sequence[dict[str, Any]]) -> list[str]:
    """The perplexity sets of some runs' pruned models, in the tables' order."""
    return ordered((s for m in metrics for s in (m.get("pruned") or {}).get("ppl", {})), PPL_ORDER)


def _view_sets(view: dict[str, str], sets: Sequence[str], table: str) -> list[str]:
    """The sets a view selects of ``sets``."""
    try:
        return select_sets(view["sets"], sets)
    except ValueError as err:
        raise RegistryError(f"{table}: view {view['title']!r}: {err}") from err


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


def included_roots(registry: Path, table: str, include: Sequence[str]) -> list[Path]:
    """The run folders ``include`` names (``TABLE/RUN`` below ``registry``), checked: each a registered run
    of another table.

    Raises:
        RegistryError: an entry that is not a string, not of the form ``TABLE/RUN``, names this table, or
            names no registered run.
    """
    roots = []
    for entry in include:
        parts = Path(entry).parts if isinstance(entry, str) else ()
        if len(parts) != 2 or not all(_NAME.match(p) for p in parts):
            raise RegistryError(f"{table}: include entry {entry!r}: expected TABLE/RUN, e.g. compare/run_s42")
        if parts[0] == table:
            raise RegistryError(f"{table}: include entry {entry!r} names a run of this table")
        root = registry / parts[0] / parts[1]
        if not (root / METRICS).is_file():
            raise RegistryError(f"{table}: include entry {entry!r}: {root} holds no registered run")
        roots.append(root)
    return roots


def table_roots(table_dir: Path, options: dict[str, Any]) -> list[Path]:
    """The folders a table's rows come from: its own and the runs it includes."""
    include = options.get("include", [])
    if not isinstance(include, list):
        raise RegistryError(f"{table_dir / OPTIONS}: include must be a list of TABLE/RUN paths")
    return [table_dir, *included_roots(table_dir.parent, table_dir.name, include)]


def _table_metrics(table_dir: Path, options: dict[str, Any]) -> list[tuple[Path, dict[str, Any]]]:
    return [found for root in table_roots(table_dir, options) for found in load_metrics(root)]


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


def table_command(table_dir: Path, registry: str | Path, options: dict[str, Any]) -> str:
    """The ``loraprune-table`` command that makes a table (``options``: paper, sets, reference)."""
    roots = [table_dir.name, *options.get("include", [])]
    command = (
        f"loraprune-table {' '.join(f'{Path(registry).as_posix()}/{r}' for r in roots)} "
        f"--paper {options.get('paper', 'none')}"
    )
    if options.get("sets"):
        command += f" --sets {options['sets']}"
    if options.get("reference"):
        command += f" --reference {json.dumps(str(options['reference']))}"
    return command


def table_header(
    table_dir: Path, registry: str | Path, options: dict[str, Any], *, command: bool = True
) -> list[str]:
    """The lines that open a table's section: where its numbers come from and how to make them again
    (the ``loraprune-table`` command unless ``command`` is false: a table with views gives it per view)."""
    found = _table_metrics(table_dir, options)
    metrics = [m for _, m in found]
    seq_lens = sorted({str((m.get("eval") or {}).get("seq_len")) for m in metrics})
    sets = sets_of(metrics)
    seeds = sorted({str(m["run"].get("seed")) for m in metrics if m["run"].get("seed") is not None})
    commits = sorted(
        {
            str(p.get("commit"))[:12] + (" (dirty)" if p.get("dirty") else "")
            for m in metrics
            if (p := m.get("provenance") or {}).get("commit")
        }
    )
    lines = [
        f"- Runs: {len(metrics)}; perplexity windows of {', '.join(seq_lens)} tokens.",
        f"- Sets: {_labels(sets)}.",
    ]
    if windows := _windows_text(metrics):
        lines.append(f"- Windows: {windows}.")
    lines += [
        f"- Seeds: {', '.join(seeds) or 'not recorded'}.",
        f"- Commits: {', '.join(commits) or 'not recorded'}.",
    ]
    if command:
        lines.append(f"- Table: `{table_command(table_dir, registry, options)}`")
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


def _labels(sets: Sequence[str]) -> str:
    return ", ".join(PPL_LABELS.get(s, s) for s in sets) or "none"


def view_header(
    table_dir: Path, registry: str | Path, options: dict[str, Any], view: dict[str, str]
) -> list[str]:
    """The lines that open a view's subsection: the sets it shows, the command that makes it."""
    sets = _view_sets(view, sets_of([m for _, m in _table_metrics(table_dir, options)]), table_dir.name)
    return [
        f"- Sets: {_labels(sets)}.",
        f"- Table: `{table_command(table_dir, registry, {**options, 'sets': view['sets']})}`",
    ]


def _tables_markdown(table_dir: Path, options: dict[str, Any], *, demote: int = 0) -> str:
    """The tables of one table folder as Markdown (headings ``demote`` levels deeper)."""
    rows = collect_rows(table_roots(table_dir, options))
    if not rows:
        raise RegistryError(f"{table_dir} holds no run")
    try:
        tables = build_tables(
            rows, options.get("paper", "none"), reference=options.get("reference"), sets=options.get("sets")
        )
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
        views = table_views(table_dir, options)
        header = table_header(table_dir, registry, options, command=not views)
        parts += ["", f"## {table_dir.name}", "", *header]
        if not views:
            parts += ["", _tables_markdown(table_dir, options).rstrip("\n")]
        for view in views:
            parts += ["", f"### {view['title']}", "", *view_header(table_dir, registry, options, view), ""]
            view_options = {**options, "sets": view["sets"]}
            parts.append(_tables_markdown(table_dir, view_options, demote=1).rstrip("\n"))
    return "\n".join(parts) + "\n"


def headline_attrs(attrs: str) -> dict[str, str]:
    """``table=NAME view=test reference="ROW"`` into a dict."""
    return {m.group(1): m.group(2) if m.group(2) is not None else m.group(3) for m in _ATTR.finditer(attrs)}


def rewrite_headlines(text: str, registry: str | Path = REGISTRY) -> str:
    """``text`` with every headline block filled from the registry (unchanged when it has none).

    Raises:
        RegistryError: a block names no table, a table the registry lacks, or a view the table lacks.
    """

    def fill(match: re.Match) -> str:
        attrs = headline_attrs(match.group("attrs"))
        name = attrs.get("table")
        if not name:
            raise RegistryError(f"headline block {match.group(1)!r} names no table (table=NAME)")
        table_dir = Path(registry) / name
        if not table_dir.is_dir():
            raise RegistryError(f"headline block names table {name!r}, which {registry} lacks")
        options = table_options(table_dir)
        if "view" in attrs:
            options["sets"] = find_view(table_dir, options, attrs["view"])["sets"]
        options.update({k: v for k, v in attrs.items() if k not in ("table", "view")})
        body = _tables_markdown(table_dir, options, demote=1).rstrip("\n")
        return f"{match.group(1)}\n{body}\n{match.group(4)}"

    return HEADLINE.sub(fill, text)
