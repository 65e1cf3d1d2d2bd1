"""Functions a reader can hold in mind: none in the package is over :data:`MAX_LINES` lines.

Parsed with :mod:`ast`, nothing imported. A function's length runs from its ``def`` line to its last line
(docstring and comments included, decorators not); nested functions and methods count on their own and
within their parent.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "loraprune"
MAX_LINES = 80


def long_functions(source: str, max_lines: int = MAX_LINES) -> list[tuple[str, int, int]]:
    """``(qualified name, line, length)`` of every function in ``source`` longer than ``max_lines``."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}."
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                length = child.end_lineno - child.lineno + 1
                if length > max_lines:
                    found.append((name[:-1], child.lineno, length))
            visit(child, name)

    visit(ast.parse(source), "")
    return found


def test_the_scan_measures_functions_and_methods():
    source = (
        "def f():\n    a = 1\n    b = 2\n\n    return a + b\n"
        "class C:\n    @property\n    def m(self):\n        return 1\n"
        "def g():\n    def inner():\n        pass\n    return inner\n"
    )
    assert long_functions(source, max_lines=5) == []
    assert long_functions(source, max_lines=3) == [("f", 1, 5), ("g", 10, 4)]
    assert long_functions(source, max_lines=1) == [
        ("f", 1, 5),
        ("C.m", 8, 2),
        ("g", 10, 4),
        ("g.inner", 11, 2),
    ]


def test_no_function_in_the_package_is_over_the_limit():
    files = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
    assert len(files) > 50
    problems = [
        f"{path.relative_to(PACKAGE.parent)}:{line} {name} is {length} lines (at most {MAX_LINES})"
        for path in files
        for name, line, length in long_functions(path.read_text())
    ]
    assert not problems, "\n" + "\n".join(problems)
