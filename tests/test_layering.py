"""The package's import graph has no cycles and every layer imports only the layers below it.

Every module under ``loraprune/`` is parsed with :mod:`ast`; nothing is imported. Every import statement
counts wherever it stands (module level, inside a function, under ``if TYPE_CHECKING:``), and so does
``importlib.import_module("loraprune...")`` with a literal name. An import names the most specific
module it reaches: ``from loraprune.core import plan`` is an edge to ``loraprune.core.plan``,
``from loraprune.core import PruningPlan`` one to ``loraprune.core`` (its ``__init__``); relative
imports are resolved. Edges to a package's ``__init__`` that Python runs implicitly on the way to a
submodule are not counted (they would put every module on a cycle through ``loraprune/__init__.py``).

Layers (a module's layer is its subpackage under ``loraprune``), lowest first::

    core, data < criteria < pruners < evaluation < export < models < config < train < run < bench
        < report < cli < top

``models`` loads models and sets up LoRA; ``config`` is the typed schema; ``train`` the loop, data
parallelism, checkpoints and resume; ``run`` resolves a config and runs the recipe; ``cli`` holds every
console entry point.

``ALLOWED`` below is the rule, exactly: which layers each layer may import. ``loraprune/__init__.py``
and ``loraprune/__main__.py`` are the top and may import anything; no other module may import them. A
new subpackage (or a new module directly in ``loraprune/``) fails here until its layer is declared: add it
to ``LAYERS`` (``run`` and ``report`` may then import it) and say in ``ALLOWED`` what it may import.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "loraprune"
ROOT = "loraprune"
TOP = "top"
LAYERS = (
    "core",
    "data",
    "criteria",
    "pruners",
    "evaluation",
    "export",
    "models",
    "config",
    "train",
    "run",
    "bench",
    "report",
    "cli",
)
_BELOW_MODELS = {"core", "data", "criteria", "pruners", "evaluation", "export"}
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "data": {"data"},
    "criteria": {"core", "criteria"},
    "pruners": {"core", "data", "criteria", "pruners"},
    "evaluation": {"core", "data", "evaluation"},
    "export": {"core", "data", "evaluation", "export"},  # checkpoint files and cards; used by train and run
    "models": _BELOW_MODELS | {"models"},
    "config": _BELOW_MODELS | {"models", "config"},
    "train": _BELOW_MODELS | {"models", "config", "train"},
    "run": _BELOW_MODELS | {"models", "config", "train", "run"},
    "bench": _BELOW_MODELS | {"models", "config", "train", "run", "bench"},
    "report": set(LAYERS) - {"cli"},
    "cli": set(LAYERS),
    TOP: {*LAYERS, TOP},
}


# Copied verbatim into saved checkpoints (custom-architecture code that loads without loraprune): they
# import nothing from loraprune (checked below). They are export's all the same: core may not import them.
STANDALONE = {"loraprune.export.configuration_pruned_llama", "loraprune.export.modeling_pruned_llama"}


class Edge(NamedTuple):
    """``src`` imports ``dst`` at ``src``'s line ``line``."""

    src: str
    dst: str
    line: int

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst} ({module_path(self.src)}:{self.line})"


def module_name(path: Path) -> str:
    """``loraprune/core/plan.py`` -> ``loraprune.core.plan``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_path(name: str) -> str:
    """The repo-relative file of module ``name`` (for messages)."""
    rel = Path(*name.split("."))
    if (REPO / rel).is_dir():
        return (rel / "__init__.py").as_posix()
    return rel.with_suffix(".py").as_posix()


def all_modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def layer_of(name: str) -> str:
    """``top`` for ``loraprune`` and ``loraprune.__main__``, else the subpackage's (or module's) name."""
    parts = name.split(".")
    if len(parts) == 1 or name == f"{ROOT}.__main__":
        return TOP
    return parts[1]


def _resolve(name: str, modules: set[str]) -> str:
    """The longest prefix of ``name`` that is one of ``modules``."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if (candidate := ".".join(parts[:n])) in modules:
            return candidate
    return name


def imports_of(source: str, name: str, modules: set[str], is_package: bool = False) -> list[Edge]:
    """The package-internal imports of module ``name`` whose code is ``source``.

    Args:
        source: the module's code.
        name: its dotted name.
        modules: the names of every module of the package (to tell a submodule from an attribute).
        is_package: ``name`` is a package (its ``__init__``), the base of its own relative imports.

    Returns:
        One edge per imported package module, in source order; self-imports are left out.
    """
    base = name if is_package else name.rpartition(".")[0]
    targets: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.split(".")[: len(base.split(".")) - (node.level - 1)]
                mod = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                targets.append((sub if sub in modules else mod, node.lineno))
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id == "import_module")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            targets.append((node.args[0].value, node.lineno))
    edges = []
    for target, line in targets:
        if target != ROOT and not target.startswith(f"{ROOT}."):
            continue
        dst = _resolve(target, modules)
        if dst != name:
            edges.append(Edge(name, dst, line))
    return sorted(set(edges), key=lambda e: (e.line, e.dst))


def import_graph() -> list[Edge]:
    """Every package-internal import edge of the package."""
    modules = all_modules()
    names = set(modules)
    return [
        edge
        for name, path in modules.items()
        for edge in imports_of(path.read_text(), name, names, is_package=path.name == "__init__.py")
    ]


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.src, set()).add(e.dst)
        graph.setdefault(e.dst, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def layer_violations(edges: list[Edge], modules: list[str] | None = None) -> list[str]:
    """What breaks the layer rule, one line each.

    Args:
        edges: the import graph.
        modules: every module name (default: the sources of ``edges``), to find undeclared layers.

    Returns:
        One line per layer missing from ``ALLOWED`` (its own imports cannot be judged until it has a
        place), then one per edge from a declared layer to a layer it may not import or to an
        undeclared one.
    """
    names = modules if modules is not None else sorted({e.src for e in edges})
    undeclared: dict[str, int] = {}
    for name in names:
        if (layer := layer_of(name)) not in ALLOWED:
            undeclared[layer] = undeclared.get(layer, 0) + 1
    problems = [f"layer {lay!r} ({n} modules) is not declared in ALLOWED" for lay, n in undeclared.items()]
    for e in edges:
        src, dst = layer_of(e.src), layer_of(e.dst)
        if src not in ALLOWED or src == TOP:  # top may import anything
            continue
        if dst not in ALLOWED:
            problems.append(f"{e}: {src} imports the undeclared layer {dst}")
        elif dst not in ALLOWED[src]:
            problems.append(f"{e}: {src} may not import {dst}")
    return problems


def test_the_parser_sees_every_kind_of_import():
    modules = {
        "loraprune",
        "loraprune.core",
        "loraprune.core.plan",
        "loraprune.run",
        "loraprune.run.checkpoint",
        "loraprune.export",
        "loraprune.export.card",
    }
    source = (
        "import os\n"
        "import loraprune.core.plan\n"
        "from loraprune.core import PruningPlan\n"
        "from .. import run\n"
        "from ..run.checkpoint import save\n"
        "from . import card\n"
        "def f():\n"
        "    from loraprune import load_pruned\n"
        "    importlib.import_module('loraprune.run')\n"
    )
    edges = imports_of(source, "loraprune.export.cli", modules)
    assert [(e.dst, e.line) for e in edges] == [
        ("loraprune.core.plan", 2),
        ("loraprune.core", 3),
        ("loraprune.run", 4),
        ("loraprune.run.checkpoint", 5),
        ("loraprune.export.card", 6),
        ("loraprune", 8),
        ("loraprune.run", 9),
    ]
    assert imports_of("from . import plan", "loraprune.core", modules, is_package=True) == [
        Edge("loraprune.core", "loraprune.core.plan", 1)
    ]
    assert cycles([Edge("a", "b", 1), Edge("b", "c", 1), Edge("c", "a", 1), Edge("c", "d", 1)]) == [
        ["a", "b", "c"]
    ]
    assert layer_violations([Edge("loraprune.core.plan", "loraprune.run", 3)]) == [
        "loraprune.core.plan -> loraprune.run (loraprune/core/plan.py:3): core may not import run"
    ]
    standalone = Edge("loraprune.core.widths", "loraprune.export.configuration_pruned_llama", 5)
    assert layer_violations([standalone]) == [f"{standalone}: core may not import export"]
    new = Edge("loraprune.core.plan", "loraprune.newpkg.x", 3)
    assert layer_violations([new], ["loraprune.newpkg.x"]) == [
        "layer 'newpkg' (1 modules) is not declared in ALLOWED",
        f"{new}: core imports the undeclared layer newpkg",
    ]


def test_no_import_cycles():
    edges = import_graph()
    assert len(edges) > 50  # the parser found the package's imports
    found = cycles(edges)
    detail = [
        "cycle: " + ", ".join(c) + "".join(f"\n    {e}" for e in edges if e.src in c and e.dst in c)
        for c in found
    ]
    assert not found, "\n" + "\n".join(detail)


def test_every_layer_imports_only_layers_below_it():
    problems = layer_violations(import_graph(), sorted(all_modules()))
    assert not problems, "\n" + "\n".join(problems)


def test_standalone_checkpoint_files_import_nothing_else_from_loraprune():
    modules = all_modules()
    for name in sorted(STANDALONE):
        assert name in modules, name
        edges = imports_of(modules[name].read_text(), name, set(modules))
        assert {e.dst for e in edges} <= STANDALONE, name  # only each other (relative, as in a checkpoint)


def test_standalone_config_repeats_the_width_fields_core_owns():
    """``configuration_pruned_llama.py`` cannot import core's field names; its copy must agree."""
    from loraprune.core import widths
    from loraprune.export import configuration_pruned_llama as standalone

    assert standalone.LAYER_WIDTH_FIELDS == widths.LAYER_WIDTH_FIELDS
    assert standalone.PrunedLlamaConfig.model_type == widths.PER_LAYER_MODEL_TYPE
