"""Text sources for perplexity evaluation and fine-tune / calibration data.

Sources are named by a string:

* hub sets (need the Hugging Face hub or its local cache): ``wikitext2`` (``Salesforce/wikitext``,
  ``wikitext-2-raw-v1``, test, field ``text``) and ``ptb`` (``ptb-text-only/ptb_text_only``, validation,
  field ``sentence``) for evaluation; ``lamini`` (``MBZUAI/LaMini-instruction``) and ``alpaca``
  (``yahma/alpaca-cleaned``) for instruction fine-tuning;
* offline stand-ins built from text shipped in ``gensim`` (see :mod:`loraprune.data.embedded_corpora`):
  ``wiki_embedded`` (Wikipedia articles) and ``news_embedded`` (news documents); evaluation uses only
  their test side, fine-tuning only their fine-tune side;
* a local file: ``.txt`` (whole file), ``.jsonl`` / ``.json`` / ``.parquet`` (records, read with
  ``datasets``).

Evaluation text follows LLM-Pruner: the rows of a split joined by ``"\\n\\n"`` into one string.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loraprune.data.embedded_corpora import embedded_news_split, embedded_wiki_split

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
EMBEDDED_SOURCES = ("wiki_embedded", "news_embedded")
FILE_EXTENSIONS = (".txt", ".jsonl", ".json", ".parquet")
_OFFLINE_HINT = "offline? use the embedded stand-ins 'wiki_embedded' or 'news_embedded' instead"


@dataclass(frozen=True)
class HubSource:
    """A dataset on the Hugging Face hub.

    Attributes:
        path: Repository id.
        config: Configuration name, if any.
        split: Default split.
        field: Default text field (evaluation sets).
        revision: Git revision (``refs/convert/parquet`` for sets whose main branch is a loading script).
    """

    path: str
    config: str | None
    split: str
    field: str = "text"
    revision: str | None = None


EVAL_HUB_SOURCES: dict[str, HubSource] = {
    "wikitext2": HubSource("Salesforce/wikitext", "wikitext-2-raw-v1", "test", "text"),
    # the main branch holds a loading script, which datasets>=4 refuses; the parquet export is equivalent
    "ptb": HubSource("ptb-text-only/ptb_text_only", None, "validation", "sentence", "refs/convert/parquet"),
}
INSTRUCTION_HUB_SOURCES: dict[str, HubSource] = {
    "lamini": HubSource("MBZUAI/LaMini-instruction", None, "train"),
    "alpaca": HubSource("yahma/alpaca-cleaned", None, "train"),
}


@dataclass(frozen=True)
class PromptTemplate:
    """Prompt strings with ``{instruction}`` / ``{input}`` placeholders; the response follows the prompt."""

    prompt_input: str
    prompt_no_input: str

    def render(self, instruction: str, input_text: str = "") -> str:
        """Prompt text for one record (the with-input variant iff ``input_text`` is non-empty)."""
        if input_text:
            return self.prompt_input.format(instruction=instruction, input=input_text)
        return self.prompt_no_input.format(instruction=instruction)


PROMPT_TEMPLATES: dict[str, PromptTemplate] = {
    # alpaca-lora templates/alpaca.json
    "alpaca": PromptTemplate(
        prompt_input=(
            "Below is an instruction that describes a task, paired with an input that provides further "
            "context. Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        ),
        prompt_no_input=(
            "Below is an instruction that describes a task. Write a response that appropriately completes "
            "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
        ),
    ),
    "none": PromptTemplate(prompt_input="{instruction}\n{input}\n", prompt_no_input="{instruction}\n"),
}


# --------------------------------------------------------------------------------------------- sources
def _file_path(name: str) -> Path | None:
    """The path meant by ``name`` if it looks like a file (has a suffix or a separator), else None."""
    path = Path(name).expanduser()
    return path if path.suffix or "/" in name or "\\" in name else None


def validate_text_source(name: str, *, purpose: str = "eval") -> None:
    """Cheap checks on a source name, loading nothing (use before loading a model).

    Args:
        name: Source name or local file path.
        purpose: ``"eval"`` (perplexity text) or ``"finetune"`` (fine-tune / calibration data).

    Raises:
        ValueError: Unknown name, unsupported file extension or unknown purpose.
        FileNotFoundError: A file path that does not exist.
    """
    if purpose == "eval":
        known = (*EVAL_HUB_SOURCES, *EMBEDDED_SOURCES)
    elif purpose == "finetune":
        known = (*INSTRUCTION_HUB_SOURCES, *EMBEDDED_SOURCES)
    else:
        raise ValueError(f"unknown purpose {purpose!r}; expected 'eval' or 'finetune'")
    if name in known:
        return
    path = _file_path(name)
    if path is None:
        raise ValueError(
            f"unknown {purpose} text source {name!r}; expected one of {', '.join(known)} "
            f"or a path ending in {', '.join(FILE_EXTENSIONS)}"
        )
    if path.suffix.lower() not in FILE_EXTENSIONS:
        raise ValueError(
            f"unsupported file extension {path.suffix!r} for {path}; use {', '.join(FILE_EXTENSIONS)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"text source file not found: {path}")


def _load_hub(source: HubSource, split: str | None = None) -> Any:
    """Load a hub split; any failure becomes a RuntimeError that points to the offline stand-ins."""
    try:
        import datasets

        return datasets.load_dataset(
            source.path, source.config, split=split or source.split, revision=source.revision
        )
    except Exception as exc:  # network, auth, missing cache: all mean "not usable here"
        raise RuntimeError(
            f"could not load hub dataset {source.path!r} ({type(exc).__name__}: {exc}); {_OFFLINE_HINT}"
        ) from exc


def _load_records(path: Path) -> Any:
    """Read a .jsonl / .json / .parquet file as a ``datasets.Dataset``."""
    import datasets

    builder = "parquet" if path.suffix.lower() == ".parquet" else "json"
    return datasets.load_dataset(builder, data_files=str(path), split="train")


def _column(ds: Any, field: str, where: str) -> list[str]:
    if field not in ds.column_names:
        raise ValueError(f"{where} has no field {field!r}; available fields: {', '.join(ds.column_names)}")
    return ["" if v is None else str(v) for v in ds[field]]


def _embedded_docs(name: str, side: str) -> list[str]:
    if side not in ("test", "finetune"):
        raise ValueError(f"split of {name!r} must be 'test' or 'finetune', got {side!r}")
    if name == "wiki_embedded":
        finetune, test = embedded_wiki_split()
        return [a.text for a in (test if side == "test" else finetune)]
    finetune_docs, test_docs = embedded_news_split()
    return test_docs if side == "test" else finetune_docs


def _file_texts(path: Path, field: str) -> list[str]:
    if path.suffix.lower() == ".txt":
        return [path.read_text(encoding="utf-8")]
    return _column(_load_records(path), field, str(path))


def load_eval_text(name: str, *, field: str | None = None, split: str | None = None) -> str:
    """Whole evaluation split as one string, rows joined by ``"\\n\\n"`` (LLM-Pruner protocol).

    Args:
        name: ``wikitext2``, ``ptb``, ``wiki_embedded``, ``news_embedded`` or a local file path.
        field: Text field; defaults to the set's own (``text`` for files).
        split: Hub split (defaults: wikitext2 ``test``, ptb ``validation``); ``test`` (default) or
            ``finetune`` for the embedded sets; ignored for files.

    Raises:
        ValueError: Unknown name, unsupported extension, missing field or empty text.
        FileNotFoundError: Missing file.
        RuntimeError: A hub set that cannot be loaded (e.g. offline).
    """
    validate_text_source(name, purpose="eval")
    if name in EVAL_HUB_SOURCES:
        source = EVAL_HUB_SOURCES[name]
        texts = _column(_load_hub(source, split), field or source.field, f"{name} ({source.path})")
    elif name in EMBEDDED_SOURCES:
        texts = _embedded_docs(name, split or "test")
    else:
        texts = _file_texts(Path(name).expanduser(), field or "text")
    text = "\n\n".join(texts)
    if not text.strip():
        raise ValueError(f"evaluation text source {name!r} contains no text")
    logger.info("eval text %s: %d rows, %d characters", name, len(texts), len(text))
    return text


# ------------------------------------------------------------------------------------ fine-tune data
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
        seed: Seed of the sample selection.
        field: Text field of record files for ``kind="text"``.
    """

    name: str
    kind: str = "auto"
    nsamples: int | None = None
    cutoff_len: int = 128
    prompt_template: str = "alpaca"
    train_on_inputs: bool = True
    seed: int = 0
    field: str = "text"

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


def validate_finetune_spec(spec: FinetuneDataSpec) -> None:
    """Cheap checks of ``spec`` (see :func:`validate_text_source`); loads nothing."""
    validate_text_source(spec.name, purpose="finetune")
    fixed_kind = "text" if spec.name in EMBEDDED_SOURCES or spec.name.lower().endswith(".txt") else None
    if spec.name in INSTRUCTION_HUB_SOURCES:
        fixed_kind = "instruction"
    if fixed_kind and spec.kind not in ("auto", fixed_kind):
        raise ValueError(f"{spec.name!r} only supports kind={fixed_kind!r}, got kind={spec.kind!r}")


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


def build_finetune_dataset(spec: FinetuneDataSpec, tokenizer: Any) -> list[dict[str, list[int]]]:
    """Tokenized fine-tune / calibration samples ``{"input_ids", "labels"}``, each <= ``cutoff_len`` tokens.

    Raises:
        ValueError: Unknown name, bad extension, kind not supported by the source, missing field.
        FileNotFoundError: Missing file.
        RuntimeError: A hub set that cannot be loaded (e.g. offline).
    """
    validate_finetune_spec(spec)
    if spec.name in EMBEDDED_SOURCES:
        return text_blocks("\n\n".join(_embedded_docs(spec.name, "finetune")), tokenizer, spec)
    path = None if spec.name in INSTRUCTION_HUB_SOURCES else Path(spec.name).expanduser()
    if path is not None and path.suffix.lower() == ".txt":
        return text_blocks(path.read_text(encoding="utf-8"), tokenizer, spec)
    ds = _load_hub(INSTRUCTION_HUB_SOURCES[spec.name]) if path is None else _load_records(path)
    where = spec.name if path is None else str(path)
    kind = spec.kind
    if kind == "auto":
        kind = "instruction" if "instruction" in ds.column_names else "text"
    if kind == "text":
        return text_blocks("\n\n".join(_column(ds, spec.field, where)), tokenizer, spec)
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
