"""Calibration windows: random stretches of plain text, as LLM-Pruner draws from bookcorpus.

LLM-Pruner's calibration takes ``n`` random windows of ``seq_len`` tokens of general text. Here the
text is the fine-tune text when that is plain text (the embedded Wikipedia articles, a ``.txt`` file),
else a plain-text source (default ``wiki_embedded``'s fine-tune side), so an instruction template's
boilerplate prompt never fills half of each window.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from loraprune.data.finetune import FinetuneDataSpec
from loraprune.data.readers import embedded_docs, read_text_file
from loraprune.data.sources import EMBEDDED_SOURCES, file_path

DEFAULT_PLAIN_TEXT = "wiki_embedded"
"""Plain text for windows when the fine-tune set is an instruction set (and no source is named)."""


def plain_text_source(spec: FinetuneDataSpec, source: str | None = None) -> str:
    """The name of the plain text windows are drawn from: ``source``, else the fine-tune data when it is
    an embedded corpus or a ``.txt`` file, else :data:`DEFAULT_PLAIN_TEXT`."""
    if source is not None:
        return source
    path = file_path(spec.name)
    if spec.name in EMBEDDED_SOURCES or (path is not None and path.suffix.lower() == ".txt"):
        return spec.name
    return DEFAULT_PLAIN_TEXT


def check_plain_text_source(name: str) -> None:
    """``name`` must be an embedded corpus (its fine-tune side) or a ``.txt`` file."""
    path = file_path(name)
    if name in EMBEDDED_SOURCES or (path is not None and path.suffix.lower() == ".txt"):
        return
    raise ValueError(
        f"method.calibration.text {name!r}: windows are drawn from plain text, "
        f"one of {', '.join(EMBEDDED_SOURCES)} or a .txt file"
    )


def plain_text(name: str, holdout_val: bool = False) -> str:
    """The text of plain-text source ``name`` (an embedded corpus's fine-tune side, or a ``.txt`` file)."""
    check_plain_text_source(name)
    if name in EMBEDDED_SOURCES:
        return "\n\n".join(embedded_docs(name, "finetune", holdout_val=holdout_val))
    return read_text_file(Path(name).expanduser())


def random_windows(ids: list[int], count: int, seq_len: int, seed: int) -> list[dict[str, list[int]]]:
    """``count`` windows of ``seq_len`` consecutive tokens of ``ids``, each starting at a uniformly drawn
    offset (``random.Random(seed)``); labels equal input_ids."""
    if len(ids) < seq_len:
        raise ValueError(f"calibration text has {len(ids)} tokens, fewer than one window of {seq_len}")
    rng = random.Random(seed)
    starts = [rng.randint(0, len(ids) - seq_len) for _ in range(count)]
    return [{"input_ids": ids[s : s + seq_len], "labels": ids[s : s + seq_len]} for s in starts]


def calibration_windows(
    spec: FinetuneDataSpec, tokenizer: Any, count: int, seq_len: int, source: str | None = None
) -> list[dict[str, list[int]]]:
    """Random windows of plain text for a criterion's calibration (see the module doc), seeded by
    ``spec.seed``; the text is tokenized whole without special tokens, as the fine-tune blocks are."""
    text = plain_text(plain_text_source(spec, source), holdout_val=spec.holds_out_val)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return random_windows(ids, count, seq_len, spec.seed)
