"""Evaluation text for perplexity: a whole split as one string (LLM-Pruner's protocol)."""

from __future__ import annotations

import logging
from pathlib import Path

from loraprune.data.hub import EVAL_HUB_SOURCES
from loraprune.data.mirror import MirrorPath
from loraprune.data.readers import column, embedded_docs, file_texts, load_hub_split
from loraprune.data.sources import EMBEDDED_SOURCES, EMBEDDED_VALIDATION, validate_eval_source

logger = logging.getLogger(__name__)


def load_eval_text(
    name: str,
    *,
    field: str | None = None,
    split: str | None = None,
    mirror: MirrorPath = None,
) -> str:
    """Whole evaluation split as one string, rows joined by ``"\\n\\n"`` (LLM-Pruner protocol, both sets).

    Args:
        name: ``wikitext2``, ``ptb``, ``wiki_embedded``, ``news_embedded``, ``wiki_embedded_val`` (the
            validation articles) or a local file path.
        field: Text field; defaults to the set's own (``text`` for wikitext2 and files, ``sentence`` for
            ptb).
        split: Hub split (defaults: wikitext2 ``test``, ptb ``validation``); ``test`` (default) or
            ``finetune`` for the embedded sets; ignored for files.
        mirror: Hub mirror folder (default ``$LORAPRUNE_HUB_MIRROR``; see :mod:`loraprune.data.mirror`).

    Raises:
        ValueError: Unknown name, bad or missing file, missing field, no text, set missing from a mirror.
        RuntimeError: A hub set that cannot be loaded (e.g. offline, no mirror).
    """
    validate_eval_source(name, split=split, mirror=mirror)
    if name in EVAL_HUB_SOURCES:
        source = EVAL_HUB_SOURCES[name]
        ds = load_hub_split(source, split, mirror=mirror)
        texts = column(ds, field or source.field, f"{name} ({source.path})")
    elif name in EMBEDDED_SOURCES:
        texts = embedded_docs(name, split or "test")
    elif name in EMBEDDED_VALIDATION:
        texts = embedded_docs(EMBEDDED_VALIDATION[name], "validation")
    else:
        texts = file_texts(Path(name).expanduser(), field or "text")
    text = "\n\n".join(texts)
    if not text.strip():
        raise ValueError(f"evaluation text source {name!r} contains no text")
    logger.info("eval text %s: %d rows, %d characters", name, len(texts), len(text))
    return text
