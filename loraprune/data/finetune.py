"""Fine-tune / calibration samples: text cut into blocks, or instruction records rendered with a prompt.

Samples are ``{"input_ids", "labels"}`` lists of token ids; :func:`collate` pads a batch of them.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loraprune.data.hub import INSTRUCTION_HUB_SOURCES
from loraprune.data.mirror import MirrorPath
from loraprune.data.prompts import PROMPT_TEMPLATES
from loraprune.data.readers import column, embedded_docs, load_hub_split, load_records, read_text_file
from loraprune.data.sources import EMBEDDED_SOURCES, finetune_corpora, validate_finetune_source

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass
class FinetuneDataSpec:
    """What to fine-tune / calibrate on.

    Attributes:
        name: ``wiki_embedded``, ``news_embedded``, ``lamini``, ``alpaca`` or a local
            .txt/.jsonl/.json/.parquet path.
        kind: ``text`` (the text cut into blocks of ``cutoff_len`` tokens), ``instruction`` (records with
            ``instruction``, optional ``input``, and ``output`` or ``response``) or ``auto``.
        nsamples: Number of samples returned (None: all), chosen deterministically from ``seed``.
        cutoff_len: Block length (text) or maximum length (instruction), in tokens.
        prompt_template: Key of :data:`PROMPT_TEMPLATES`.
        train_on_inputs: If False, prompt tokens of instruction records get label -100.
        seed: Seed of the sample selection (a run sets it to ``trainer.seed``).
        field: Text field of record files for ``kind="text"``.
        mirror: Local hub mirror folder (None: ``$LORAPRUNE_HUB_MIRROR``, then the hub).
        holdout_val: An embedded corpus fine-tunes without its validation documents (evaluation sets
            ``wiki_embedded_val`` / ``news_embedded_val``); null (the default): true for the embedded
            corpora, false for other sources; true for another source is an error.

    This is also the ``data`` config node of a run.
    """

    name: str = "wiki_embedded"
    kind: str = "auto"
    nsamples: int | None = None
    cutoff_len: int = 128
    prompt_template: str = "alpaca"
    train_on_inputs: bool = True
    seed: int = 0
    field: str = "text"
    mirror: str | None = None
    holdout_val: bool | None = None

    @property
    def holds_out_val(self) -> bool:
        """Whether the validation documents are kept out of fine-tuning (:func:`holds_out_val`)."""
        return holds_out_val(self.name, self.holdout_val)

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "text", "instruction"):
            raise ValueError(f"kind must be 'auto', 'text' or 'instruction', got {self.kind!r}")
        if self.cutoff_len < 1:
            raise ValueError(f"cutoff_len must be >= 1, got {self.cutoff_len}")
        if self.nsamples is not None and self.nsamples < 1:
            raise ValueError(f"nsamples must be >= 1 or None, got {self.nsamples}")
        if self.prompt_template not in PROMPT_TEMPLATES:
            raise ValueError(
                f"unknown prompt_template {self.prompt_template!r}; "
                f"expected one of {', '.join(PROMPT_TEMPLATES)}"
            )


def holds_out_val(name: str, holdout_val: bool | None) -> bool:
    """Whether fine-tuning on ``name`` keeps the validation documents out: ``holdout_val``, or when it is
    None, whether ``name`` is an embedded corpus (they have a validation half)."""
    return holdout_val if holdout_val is not None else bool(finetune_corpora(name))


def validate_finetune_spec(spec: FinetuneDataSpec, *, mirror: MirrorPath = None) -> None:
    """Cheap checks of ``spec`` (:func:`~loraprune.data.sources.validate_finetune_source`); loads nothing."""
    validate_finetune_source(spec.name, kind=spec.kind, mirror=mirror)
    if spec.holdout_val is True and not finetune_corpora(spec.name):
        raise ValueError(
            f"data.holdout_val: {spec.name!r} has no validation split (only the embedded corpora)"
        )
    path = Path(spec.name).expanduser()
    if spec.name not in EMBEDDED_SOURCES and path.suffix.lower() == ".jsonl":
        _check_first_record(path, spec)


def _check_first_record(path: Path, spec: FinetuneDataSpec) -> None:
    """The first record of a ``.jsonl`` file has the fields ``spec`` reads (the rest is read at load)."""
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        line = next((line for line in f if line.strip()), "{}")
    try:
        columns = list(json.loads(line))
    except json.JSONDecodeError:
        return  # reported by the head check
    kind = spec.kind if spec.kind != "auto" else ("instruction" if "instruction" in columns else "text")
    if kind == "instruction":
        _instruction_columns(columns, str(path))
    elif spec.field not in columns:
        raise ValueError(f"{path} has no field {spec.field!r}; available fields: {', '.join(columns)}")


def _choose(n: int, nsamples: int | None, seed: int, what: str) -> list[int]:
    """Sorted indices of ``nsamples`` of ``n`` items drawn with ``seed`` (all when None or too few)."""
    if nsamples is None or nsamples >= n:
        if nsamples is not None and nsamples > n:
            logger.warning("%s: asked for %d samples, only %d available", what, nsamples, n)
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), nsamples))


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _bos_prefix(tokenizer: Any) -> list[int]:
    """``[bos]`` if the tokenizer prepends BOS by default (LLaMA does, SmolLM2 does not), else ``[]``."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return [bos] if len(with_special) > len(without) and with_special[0] == bos else []


def text_blocks(text: str, tokenizer: Any, spec: FinetuneDataSpec) -> list[dict[str, list[int]]]:
    """Tokenize ``text`` once (no special tokens) and cut non-overlapping ``cutoff_len`` blocks.

    The remainder shorter than ``cutoff_len`` is dropped; labels equal input_ids.
    """
    ids = _encode(tokenizer, [text])[0] if text else []
    size = spec.cutoff_len
    n_blocks = len(ids) // size
    if n_blocks == 0:
        raise ValueError(f"{spec.name}: {len(ids)} tokens of text, fewer than cutoff_len={size}")
    chosen = _choose(n_blocks, spec.nsamples, spec.seed, spec.name)
    logger.info("%s: %d tokens -> %d blocks of %d, %d kept", spec.name, len(ids), n_blocks, size, len(chosen))
    return [
        {"input_ids": ids[i * size : (i + 1) * size], "labels": ids[i * size : (i + 1) * size]}
        for i in chosen
    ]


def instruction_samples(
    records: Sequence[dict[str, Any]], tokenizer: Any, spec: FinetuneDataSpec
) -> list[dict[str, list[int]]]:
    """Render records with the prompt template, tokenize prompt + response + EOS, truncate to cutoff_len.

    Args:
        records: Mappings with ``instruction``, optional ``input`` and ``output`` or ``response``.
        tokenizer: Hugging Face tokenizer.
        spec: Template, cutoff, ``train_on_inputs``.

    Returns:
        One sample per record; prompt labels are -100 unless ``spec.train_on_inputs``.
    """
    template = PROMPT_TEMPLATES[spec.prompt_template]
    prompts, responses = [], []
    for rec in records:
        response = rec.get("output", rec.get("response"))
        prompts.append(template.render(str(rec["instruction"] or ""), str(rec.get("input") or "")))
        responses.append("" if response is None else str(response))
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    bos = _bos_prefix(tokenizer)
    samples = []
    for p_ids, r_ids in zip(_encode(tokenizer, prompts), _encode(tokenizer, responses), strict=True):
        prompt_ids, answer_ids = bos + p_ids, r_ids + eos
        input_ids = (prompt_ids + answer_ids)[: spec.cutoff_len]
        labels = input_ids if spec.train_on_inputs else [IGNORE_INDEX] * len(prompt_ids) + answer_ids
        samples.append({"input_ids": input_ids, "labels": list(labels[: spec.cutoff_len])})
    return samples


def _instruction_columns(columns: Sequence[str], where: str) -> None:
    if "instruction" not in columns or not ({"output", "response"} & set(columns)):
        raise ValueError(
            f"{where} is not an instruction set: needs fields 'instruction' and 'output' or 'response'; "
            f"available fields: {', '.join(columns)}"
        )


def build_finetune_dataset(
    spec: FinetuneDataSpec, tokenizer: Any, *, mirror: MirrorPath = None
) -> list[dict[str, list[int]]]:
    """Tokenized fine-tune / calibration samples ``{"input_ids", "labels"}``, each <= ``cutoff_len`` tokens.

    Args:
        spec: What to build.
        tokenizer: Hugging Face tokenizer.
        mirror: Hub mirror folder for ``lamini`` / ``alpaca`` (default ``$LORAPRUNE_HUB_MIRROR``; see
            :mod:`loraprune.data.mirror`).

    Raises:
        ValueError: Unknown name, bad or missing file, kind not supported by the source, missing field,
            set missing from a mirror.
        RuntimeError: A hub set that cannot be loaded (e.g. offline, no mirror).
    """
    validate_finetune_spec(spec, mirror=mirror)
    if spec.name in EMBEDDED_SOURCES:
        docs = embedded_docs(spec.name, "finetune", holdout_val=spec.holds_out_val)
        return text_blocks("\n\n".join(docs), tokenizer, spec)
    path = None if spec.name in INSTRUCTION_HUB_SOURCES else Path(spec.name).expanduser()
    if path is not None and path.suffix.lower() == ".txt":
        return text_blocks(read_text_file(path), tokenizer, spec)
    if path is None:
        ds = load_hub_split(INSTRUCTION_HUB_SOURCES[spec.name], mirror=mirror)
    else:
        ds = load_records(path)
    where = spec.name if path is None else str(path)
    kind = spec.kind
    if kind == "auto":
        kind = "instruction" if "instruction" in ds.column_names else "text"
    if kind == "text":
        return text_blocks("\n\n".join(column(ds, spec.field, where)), tokenizer, spec)
    _instruction_columns(ds.column_names, where)
    chosen = _choose(len(ds), spec.nsamples, spec.seed, where)
    samples = instruction_samples(ds.select(chosen), tokenizer, spec)
    logger.info("%s: %d instruction samples (of %d records)", where, len(samples), len(ds))
    return samples


def collate(batch: Sequence[dict[str, Sequence[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad samples to the batch maximum length.

    Returns:
        ``input_ids`` (padded with ``pad_token_id``), ``attention_mask`` and ``labels`` (padded with -100),
        all ``torch.long`` of shape ``(batch, max_len)``.
    """
    if not batch:
        raise ValueError("collate got an empty batch")
    width = max(len(item["input_ids"]) for item in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, item in enumerate(batch):
        n = len(item["input_ids"])
        input_ids[row, :n] = torch.as_tensor(item["input_ids"], dtype=torch.long)
        labels[row, :n] = torch.as_tensor(item.get("labels", item["input_ids"]), dtype=torch.long)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
