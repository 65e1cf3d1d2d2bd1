"""Text sources by name, and cheap checks of them that load nothing (run them before loading a model).

A source is one of:

* a hub set (:mod:`loraprune.data.hub`): ``wikitext2`` and ``ptb`` for evaluation, ``lamini`` and
  ``alpaca`` for instruction fine-tuning; read from the hub, or from a local mirror
  (:mod:`loraprune.data.mirror`, ``$LORAPRUNE_HUB_MIRROR``);
* an offline stand-in built from text shipped in ``gensim`` (:mod:`loraprune.data.embedded_corpora`):
  ``wiki_embedded`` and ``news_embedded`` (and ``mixed_embedded``, both alternating by document), usable
  for both purposes (disjoint fine-tune and test sides),
  and ``wiki_embedded_val`` for evaluation only (validation articles; fine-tune with
  ``data.holdout_val=true`` to hold them out);
* ``drama_embedded`` / ``tech_embedded`` (and ``*_val``): text of other domains shipped by packages
  (:mod:`loraprune.data.domain_corpora`), for evaluation only;
* a local file: ``.txt`` (whole file, UTF-8), ``.jsonl`` / ``.json`` / ``.parquet`` (records).

Every check raises a ``ValueError`` whose message is one line that names the source and the fix.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path

from loraprune.data.errors import SourceFileNotFoundError, first_line
from loraprune.data.hub import EVAL_HUB_SOURCES, INSTRUCTION_HUB_SOURCES
from loraprune.data.mirror import MirrorPath, check_mirror, mirror_root

EMBEDDED_SOURCES = ("wiki_embedded", "news_embedded", "mixed_embedded")
MIXED_PARTS = ("wiki_embedded", "news_embedded")
"""``mixed_embedded``: the documents of both corpora, alternating (each side of the split)."""
EMBEDDED_VALIDATION = {"wiki_embedded_val": "wiki_embedded", "news_embedded_val": "news_embedded"}
"""Evaluation-only names: the validation documents held out of an embedded corpus's fine-tune side."""
DOMAIN_SOURCES = {
    "drama_embedded": ("drama", "test"),
    "drama_embedded_val": ("drama", "validation"),
    "tech_embedded": ("tech", "test"),
    "tech_embedded_val": ("tech", "validation"),
}
"""Evaluation-only sets of other domains (:mod:`loraprune.data.domain_corpora`): ``(set, side)``."""
EVAL_ONLY_SOURCES = (*EMBEDDED_VALIDATION, *DOMAIN_SOURCES)

FILE_EXTENSIONS = (".txt", ".jsonl", ".json", ".parquet")
KINDS = ("auto", "text", "instruction")
HEAD_BYTES = 1 << 16
"""Bytes of a text file read by the checks (the whole file when it is smaller)."""


def finetune_corpora(name: str) -> tuple[str, ...]:
    """The embedded corpora whose fine-tune side ``name`` fine-tunes on (none for other sources)."""
    if name == "mixed_embedded":
        return MIXED_PARTS
    return (name,) if name in EMBEDDED_SOURCES else ()


def file_path(name: str) -> Path | None:
    """The path meant by ``name`` if it looks like a file (has a suffix or a separator), else None."""
    path = Path(name).expanduser()
    return path if path.suffix or "/" in name or "\\" in name else None


def _unknown(name: str, purpose: str, known: tuple[str, ...], other_purpose_names: dict) -> ValueError:
    hint = ""
    if name in other_purpose_names and purpose == "finetune":
        hint = " (evaluation text, not fine-tune data)"
    elif name in other_purpose_names:
        hint = " (fine-tune data, not evaluation text)"
    return ValueError(
        f"unknown {purpose} text source {name!r}{hint}; expected one of {', '.join(known)} "
        f"or a path ending in {', '.join(FILE_EXTENSIONS)}"
    )


def _check_kind(name: str, kind: str, fixed: str | None) -> None:
    """``kind`` must be a known kind, and ``fixed`` (or auto) for a source that gives only ``fixed``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if fixed is not None and kind not in ("auto", fixed):
        raise ValueError(f"{name!r} only supports kind={fixed!r}, got kind={kind!r}")


def validate_finetune_source(name: str, *, kind: str = "auto", mirror: MirrorPath = None) -> None:
    """Check a fine-tune / calibration source: an embedded corpus, ``lamini``, ``alpaca`` or a local file.

    Args:
        name: Source name or file path.
        kind: ``auto``, ``text`` or ``instruction`` (hub sets are instruction sets, embedded corpora and
            ``.txt`` files are text).
        mirror: Hub mirror folder (default ``$LORAPRUNE_HUB_MIRROR``); when one is in effect a hub set
            must be in it.

    Raises:
        ValueError: Unknown name, kind the source cannot give, bad or missing file (a
            :class:`SourceFileNotFoundError`), hub set missing from the mirror.
    """
    if name in INSTRUCTION_HUB_SOURCES:
        _check_kind(name, kind, "instruction")
        root = mirror_root(mirror)
        if root is not None:
            check_mirror(INSTRUCTION_HUB_SOURCES[name], root)
        return
    if name in EMBEDDED_SOURCES:
        _check_kind(name, kind, "text")
        return
    path = file_path(name)
    if path is None:
        other = {**EVAL_HUB_SOURCES, **dict.fromkeys(EVAL_ONLY_SOURCES)}
        raise _unknown(name, "finetune", (*EMBEDDED_SOURCES, *INSTRUCTION_HUB_SOURCES), other)
    _check_kind(name, kind, "text" if path.suffix.lower() == ".txt" else None)
    check_text_file(path)


def validate_eval_source(name: str, *, split: str | None = None, mirror: MirrorPath = None) -> None:
    """Check a perplexity text source: an embedded corpus, ``wikitext2``, ``ptb`` or a local file.

    Args:
        name: Source name or file path.
        split: Hub split to check in a mirror (default: the set's own).
        mirror: Hub mirror folder (default ``$LORAPRUNE_HUB_MIRROR``); when one is in effect a hub set
            must be in it.

    Raises:
        ValueError: Unknown name, bad or missing file (a :class:`SourceFileNotFoundError`), hub set
            missing from the mirror.
    """
    if name in EVAL_HUB_SOURCES:
        root = mirror_root(mirror)
        if root is not None:
            check_mirror(EVAL_HUB_SOURCES[name], root, split)
        return
    if name in EMBEDDED_SOURCES or name in EVAL_ONLY_SOURCES:
        return
    path = file_path(name)
    if path is None:
        known = (*EVAL_HUB_SOURCES, *EMBEDDED_SOURCES, *EVAL_ONLY_SOURCES)
        raise _unknown(name, "eval", known, INSTRUCTION_HUB_SOURCES)
    check_text_file(path)


def validate_text_source(name: str, *, purpose: str = "eval", mirror: MirrorPath = None) -> None:
    """:func:`validate_eval_source` (``purpose="eval"``) or :func:`validate_finetune_source`."""
    if purpose == "eval":
        validate_eval_source(name, mirror=mirror)
    elif purpose == "finetune":
        validate_finetune_source(name, mirror=mirror)
    else:
        raise ValueError(f"unknown purpose {purpose!r}; expected 'eval' or 'finetune'")


# ------------------------------------------------------------------------------------------- files
def check_text_file(path: Path) -> None:
    """Cheap checks of a local source file: extension, existence, and its head (or parquet footer).

    Reads at most :data:`HEAD_BYTES` of a text file: it must be UTF-8 without NUL bytes and not blank;
    a ``.jsonl`` file's first line must be a JSON object and a ``.json`` file must start with ``[`` or
    ``{``. A parquet file must have the parquet magic and at least one row.

    Raises:
        ValueError: The first problem found, in one line (:class:`SourceFileNotFoundError` if missing).
    """
    suffix = path.suffix.lower()
    if suffix not in FILE_EXTENSIONS:
        raise ValueError(
            f"unsupported file extension {path.suffix!r} for {path}; use {', '.join(FILE_EXTENSIONS)}"
        )
    if not path.exists():
        raise SourceFileNotFoundError(f"text source file not found: {path}")
    if not path.is_file():
        raise ValueError(f"text source {path} is not a file")
    if suffix == ".parquet":
        _check_parquet(path)
    else:
        _check_text_head(path, suffix)


def _check_text_head(path: Path, suffix: str) -> None:
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    whole = len(head) < HEAD_BYTES
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=whole)
    except UnicodeDecodeError as e:
        raise ValueError(
            f"text source file {path} is not UTF-8 text (byte 0x{head[e.start]:02x} at offset {e.start}); "
            "convert it to UTF-8"
        ) from None
    if "\x00" in text:
        raise ValueError(f"text source file {path} is not text (it contains NUL bytes)")
    text = text.lstrip("\ufeff")
    if whole and not text.strip():
        raise ValueError(f"text source file {path} contains no text (it is empty or blank)")
    if suffix == ".jsonl":
        _check_first_json_line(path, text, whole)
    elif suffix == ".json" and text.strip() and text.lstrip()[0] not in "[{":
        raise ValueError(f"text source file {path} is not JSON (it starts with {text.lstrip()[:20]!r})")


def _check_first_json_line(path: Path, text: str, whole: bool) -> None:
    lines = text.split("\n")
    complete = lines if whole else lines[:-1]  # the last piece of a head may be a cut line
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"text source file {path}: line {number} is not JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"text source file {path}: line {number} is not a JSON object")
        return


def _check_parquet(path: Path) -> None:
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(4)
        f.seek(max(size - 4, 0))
        tail = f.read(4)
    if size < 12 or head != b"PAR1" or tail != b"PAR1":
        raise ValueError(f"text source file {path} is not a parquet file")
    import pyarrow.parquet as pq

    try:
        rows = pq.read_metadata(path).num_rows
    except Exception as e:  # a damaged footer
        raise ValueError(f"cannot read parquet file {path}: {first_line(e)}") from None
    if rows == 0:
        raise ValueError(f"text source file {path} contains no rows")
