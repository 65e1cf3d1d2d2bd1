"""Evaluation text for perplexity: a whole split as its documents, joined into one stream by the caller
(LLM-Pruner's protocol joins rows by ``"\\n\\n"``)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from loraprune.data.domain_corpora import drama_documents, tech_documents
from loraprune.data.hub import EVAL_HUB_SOURCES
from loraprune.data.mirror import MirrorPath
from loraprune.data.readers import column, embedded_docs, file_texts, load_hub_split
from loraprune.data.sources import (
    DOMAIN_SOURCES,
    EMBEDDED_SOURCES,
    EMBEDDED_VALIDATION,
    validate_eval_source,
)

logger = logging.getLogger(__name__)

_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = \s*$")
"""A WikiText article's title row (`` = Title = ``); section rows have two or more ``=``."""
_DOMAIN_READERS = {"drama": drama_documents, "tech": tech_documents}


def group_wikitext_articles(rows: list[str]) -> list[str]:
    """WikiText rows grouped into articles, each starting at its title row; the rows of an article are
    joined by ``"\\n\\n"``, so joining the articles the same way gives the rows' stream back."""
    articles: list[list[str]] = []
    for row in rows:
        if not articles or _WIKITEXT_TITLE.match(row):
            articles.append([])
        articles[-1].append(row)
    return ["\n\n".join(a) for a in articles]


def load_eval_documents(
    name: str,
    *,
    field: str | None = None,
    split: str | None = None,
    mirror: MirrorPath = None,
) -> list[str]:
    """The documents of an evaluation split, in order (joined by ``"\\n\\n"`` they are the split's text).

    Documents are what intervals resample (:mod:`loraprune.evaluation.intervals`): articles for the
    Wikipedia sets (WikiText-2's grouped at its title rows), news documents, play scenes, reference
    topics; PTB and a ``.txt`` file are one document (their windows then count as independent).

    Args:
        name: ``wikitext2``, ``ptb``, an embedded set (``wiki_embedded``, ``news_embedded``,
            ``drama_embedded``, ``tech_embedded``), a validation set (the same with ``_val``) or a local
            file path.
        field: Text field; defaults to the set's own (``text`` for wikitext2 and files, ``sentence`` for
            ptb).
        split: Hub split (defaults: wikitext2 ``test``, ptb ``validation``); ``test`` (default) or
            ``finetune`` for the embedded sets; ignored for files.
        mirror: Hub mirror folder (default ``$LORAPRUNE_HUB_MIRROR``; see :mod:`loraprune.data.mirror`).

    Raises:
        ValueError: Unknown name, bad or missing file, missing field, no text, set missing from a mirror.
        RuntimeError: A hub set that cannot be loaded (e.g. offline, no mirror), a package missing.
    """
    validate_eval_source(name, split=split, mirror=mirror)
    if name in EVAL_HUB_SOURCES:
        source = EVAL_HUB_SOURCES[name]
        ds = load_hub_split(source, split, mirror=mirror)
        rows = column(ds, field or source.field, f"{name} ({source.path})")
        docs = group_wikitext_articles(rows) if name == "wikitext2" else ["\n\n".join(rows)]
    elif name in EMBEDDED_SOURCES:
        docs = embedded_docs(name, split or "test")
    elif name in EMBEDDED_VALIDATION:
        docs = embedded_docs(EMBEDDED_VALIDATION[name], "validation")
    elif name in DOMAIN_SOURCES:
        kind, side = DOMAIN_SOURCES[name]
        docs = _DOMAIN_READERS[kind](side)
    else:
        docs = ["\n\n".join(file_texts(Path(name).expanduser(), field or "text"))]
    if not "".join(docs).strip():
        raise ValueError(f"evaluation text source {name!r} contains no text")
    logger.info("eval text %s: %d documents, %d characters", name, len(docs), sum(map(len, docs)))
    return docs


def load_eval_text(
    name: str,
    *,
    field: str | None = None,
    split: str | None = None,
    mirror: MirrorPath = None,
) -> str:
    """Whole evaluation split as one string: :func:`load_eval_documents` joined by ``"\\n\\n"``."""
    return "\n\n".join(load_eval_documents(name, field=field, split=split, mirror=mirror))
