"""Rows of text sources: hub sets (from the hub or a mirror), local record files, embedded corpora.

Every hub read goes through ``datasets.load_dataset`` (looked up at call time, so tests can replace it).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from loraprune.data.embedded_corpora import (
    embedded_news_split,
    embedded_news_validation_split,
    embedded_wiki_split,
    embedded_wiki_validation_split,
)
from loraprune.data.errors import first_line
from loraprune.data.hub import HubSource
from loraprune.data.mirror import MIRROR_ENV, MirrorPath, load_from_mirror, mirror_root
from loraprune.data.sources import MIXED_PARTS

OFFLINE_HINT = (
    f"offline? set {MIRROR_ENV} to a local mirror of the hub, "
    "or use the embedded stand-ins 'wiki_embedded' or 'news_embedded' instead"
)


def load_hub_split(source: HubSource, split: str | None = None, *, mirror: MirrorPath = None) -> Any:
    """A split of a hub set as a ``datasets.Dataset``: from the mirror if one is in effect, else the hub.

    Args:
        source: The hub set.
        split: Split (default: the set's own).
        mirror: Mirror folder (default ``$LORAPRUNE_HUB_MIRROR``; see :mod:`loraprune.data.mirror`).

    Raises:
        ValueError: A mirror that lacks the set or split, or whose files cannot be read.
        RuntimeError: The hub cannot be reached (or the set is not in its cache); names the alternatives.
    """
    root = mirror_root(mirror)
    if root is not None:
        return load_from_mirror(source, root, split)
    try:
        import datasets

        return datasets.load_dataset(
            source.path, source.config, split=split or source.split, revision=source.revision
        )
    except Exception as exc:  # network, auth, missing cache: all mean "not usable here"
        raise RuntimeError(
            f"could not load hub dataset {source.path!r} ({type(exc).__name__}: {first_line(exc)}); "
            + OFFLINE_HINT
        ) from exc


def load_records(path: Path) -> Any:
    """Read a .jsonl / .json / .parquet file as a ``datasets.Dataset``.

    Raises:
        ValueError: The file cannot be parsed (one line naming the file).
    """
    import datasets

    builder = "parquet" if path.suffix.lower() == ".parquet" else "json"
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # malformed records deep in the file: the head check cannot see them
        cause = exc.__cause__ or exc
        raise ValueError(f"cannot read records from {path}: {first_line(cause)}") from exc


def read_text_file(path: Path) -> str:
    """The whole of a UTF-8 text file (a byte-order mark is dropped).

    Raises:
        ValueError: Bytes that are not UTF-8 past the head the cheap check reads.
    """
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"text source file {path} is not UTF-8 text (invalid byte at offset {e.start})"
        ) from None


def column(ds: Any, field: str, where: str) -> list[str]:
    """The values of ``field`` as strings (None as ``""``).

    Raises:
        ValueError: ``ds`` has no such field.
    """
    if field not in ds.column_names:
        raise ValueError(f"{where} has no field {field!r}; available fields: {', '.join(ds.column_names)}")
    return ["" if v is None else str(v) for v in ds[field]]


def embedded_docs(name: str, side: str, holdout_val: bool = False) -> list[str]:
    """Documents of the ``test``, ``finetune`` or ``validation`` side of an embedded corpus;
    ``holdout_val``: the fine-tune side without the validation documents."""
    if side not in ("test", "finetune", "validation"):
        raise ValueError(f"split of {name!r} must be 'test', 'finetune' or 'validation', got {side!r}")
    if name == "mixed_embedded":
        wiki, news = (embedded_docs(part, side, holdout_val) for part in MIXED_PARTS)
        return mixed_docs(wiki, news)
    if name != "wiki_embedded":
        if side == "test":
            return embedded_news_split()[1]
        if side == "finetune" and not holdout_val:
            return embedded_news_split()[0]
        rest, validation = embedded_news_validation_split()
        return validation if side == "validation" else rest
    if side == "test" or (side == "finetune" and not holdout_val):
        finetune, test = embedded_wiki_split()
        return [a.text for a in (test if side == "test" else finetune)]
    rest, validation = embedded_wiki_validation_split()
    return [a.text for a in (validation if side == "validation" else rest)]


def mixed_docs(wiki: list[str], news: list[str]) -> list[str]:
    """``mixed_embedded``: every news document, each followed by the opening of the next Wikipedia article
    (its leading blocks, as long as that news document), so each domain gives about half the text."""
    out: list[str] = []
    for doc, article in zip(news, itertools.cycle(wiki or [""])):
        excerpt, length = [], 0
        for block in article.split("\n\n"):
            if length >= len(doc):
                break
            excerpt.append(block)
            length += len(block)
        out += [doc] + (["\n\n".join(excerpt)] if excerpt else [])
    return out


def file_texts(path: Path, field: str) -> list[str]:
    """A ``.txt`` file as one text, or the ``field`` of every record of a record file."""
    if path.suffix.lower() == ".txt":
        return [read_text_file(path)]
    return column(load_records(path), field, str(path))
