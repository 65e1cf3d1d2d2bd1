"""The tokenizer of a GGUF export: a byte-level BPE (GPT-2 style, as SmolLM2's) written the way llama.cpp
reads it (``tokenizer.ggml.model = gpt2``), with merges, token types, special ids, whether BOS/EOS are
added, and the chat template.

The pre-tokenizer llama.cpp applies is named in ``tokenizer.ggml.pre``. It is chosen from the structure of
the tokenizer's own ``pre_tokenizer`` (``tokenizer.json``), so llama.cpp splits text as the saved tokenizer
does; a pre-tokenizer with no known llama.cpp counterpart is refused rather than guessed.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import gguf

from loraprune.export.gguf_errors import GGUFExportError

# llama.cpp's LLaMA-3 and Qwen2 split patterns (as tokenizer.json states them)
_LLAMA3_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
_QWEN2_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)


def _steps(pre: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not pre:
        return []
    return list(pre.get("pretokenizers", [])) if pre.get("type") == "Sequence" else [pre]


def bpe_pre_type(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name (``tokenizer.ggml.pre``) for the pre-tokenizer of a byte-level BPE.

    Raises:
        GGUFExportError: the pre-tokenizer has no known llama.cpp counterpart.
    """
    steps = _steps(tokenizer_json.get("pre_tokenizer"))
    kinds = [s.get("type") for s in steps]
    byte_level_regex = (
        bool(steps) and steps[-1].get("type") == "ByteLevel" and steps[-1].get("use_regex", True)
    )
    if kinds == ["ByteLevel"] and byte_level_regex and not steps[0].get("add_prefix_space"):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and byte_level_regex:
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        named = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}.get(pattern)
        if named:
            return named
    raise GGUFExportError(
        f"the tokenizer's pre-tokenizer ({json.dumps(tokenizer_json.get('pre_tokenizer'))[:200]}) has no "
        "known llama.cpp counterpart (known: GPT-2 byte level, SmolLM digits + byte level, LLaMA-3, Qwen2)"
    )


def _adds(tokenizer) -> tuple[bool, bool]:
    """Whether encoding plain text puts ``bos`` first / ``eos`` last."""
    ids = tokenizer("a", add_special_tokens=True).input_ids
    plain = tokenizer("a", add_special_tokens=False).input_ids
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    extra = len(ids) - len(plain)
    add_bos = extra > 0 and bos is not None and ids[0] == bos
    add_eos = extra > 0 and eos is not None and ids[-1] == eos and plain[-1:] != [eos]
    return add_bos, add_eos


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer, vocab_size: int) -> dict[str, Any]:
    """Write ``tokenizer`` (a fast byte-level BPE tokenizer) into ``writer``; returns what was written
    (``pre``, ``tokens``, ``merges``, ``add_bos``, ``add_eos``, ``chat_template``).

    Args:
        writer: the GGUF being written.
        tokenizer: the model's transformers tokenizer (a ``PreTrainedTokenizerFast``).
        vocab_size: rows of the model's embedding; ids the tokenizer lacks become unused ``[PAD<i>]``.

    Raises:
        GGUFExportError: the tokenizer is not a byte-level BPE llama.cpp can reproduce.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise GGUFExportError("a GGUF export needs a fast (tokenizers) tokenizer; this one has none")
    data = json.loads(backend.to_str())
    model = data.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise GGUFExportError(
            f"only byte-level BPE tokenizers (GPT-2 style) are exported to GGUF, not {model.get('type')} "
            f"{'with byte fallback (SentencePiece style)' if model.get('byte_fallback') else ''}".strip()
        )
    pre = bpe_pre_type(data)
    vocab: dict[str, int] = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise GGUFExportError(
            f"the tokenizer has ids up to {max(vocab.values())}, the model {vocab_size} rows"
        )
    reverse = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            special = added[i].special or (reverse[i].startswith("<|") and reverse[i].endswith("|>"))
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory(prefix="loraprune-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        special = gguf.SpecialVocab(Path(tmp), load_merges=True, n_vocab=vocab_size)
    add_bos, add_eos = _adds(tokenizer)
    special.add_special_token = {"bos": add_bos, "eos": add_eos}
    chat_template = getattr(tokenizer, "chat_template", None)
    if isinstance(chat_template, str):
        special.chat_template = chat_template
    if model.get("merges") and not special.merges:
        raise GGUFExportError("the tokenizer's merges could not be read for the GGUF")
    if not special.merges:
        raise GGUFExportError("llama.cpp reads a BPE tokenizer only with merges, and this one has none")
    special.add_to_gguf(writer, quiet=True)
    return {
        "pre": pre,
        "tokens": len(tokens),
        "merges": len(special.merges),
        "add_bos": add_bos,
        "add_eos": add_eos,
        "special_ids": dict(special.special_token_ids),
        "chat_template": special.chat_template is not None,
    }
