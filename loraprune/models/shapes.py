"""Known shapes of real architectures with random weights (``model.source=shape``), no download.

For benchmarks and GPU checks where perplexity means nothing but memory and speed are real: the
published ``config.json`` geometry of each checkpoint (hidden and MLP widths, layers, heads, KV heads,
vocabulary, positions, norm epsilon, RoPE, bias, tied embeddings) built into the architecture's own HF
class, initialised N(0, 0.02) (norms 1, biases 0) directly on the target device in the target dtype.
The tokenizer is the embedded SmolLM2 one (49,152 tokens; cut to the first 32,000 for the LLaMA-1/2,
TinyLlama and Mistral vocabularies, :func:`fit_tokenizer`), so the special-token ids of these configs
are its ids; the vocabulary keeps the architecture's size, so the embedding and LM-head memory is real.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# The embedded SmolLM2 tokenizer's <|im_start|>, <|im_end|> (also its padding).
TOKENIZER_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
INIT_STD = 0.02

_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
}


@dataclass(frozen=True)
class Shape:
    """One known architecture: its HF ``model_type``, the checkpoints it copies, its config fields."""

    model_type: str
    hub_ids: tuple[str, ...]
    fields: dict[str, Any] = field(default_factory=dict)


def _llama(hub_ids: tuple[str, ...], **fields: Any) -> Shape:
    return Shape("llama", hub_ids, {"attention_bias": False, "tie_word_embeddings": False} | fields)


# fmt: off
SHAPES: dict[str, Shape] = {
    "llama_7b": _llama(
        ("huggyllama/llama-7b",),
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6,
        rope_theta=10000.0,
    ),
    "llama_13b": _llama(
        ("huggyllama/llama-13b",),
        hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
        num_key_value_heads=40, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6,
        rope_theta=10000.0,
    ),
    "llama_30b": _llama(
        ("huggyllama/llama-30b",),
        hidden_size=6656, intermediate_size=17920, num_hidden_layers=60, num_attention_heads=52,
        num_key_value_heads=52, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6,
        rope_theta=10000.0,
    ),
    "llama_65b": _llama(
        ("huggyllama/llama-65b",),
        hidden_size=8192, intermediate_size=22016, num_hidden_layers=80, num_attention_heads=64,
        num_key_value_heads=64, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5,
        rope_theta=10000.0,
    ),
    "llama2_7b": _llama(
        ("meta-llama/Llama-2-7b-hf",),
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
        rope_theta=10000.0,
    ),
    "llama2_13b": _llama(
        ("meta-llama/Llama-2-13b-hf",),
        hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
        num_key_value_heads=40, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
        rope_theta=10000.0,
    ),
    "llama3_8b": _llama(
        ("meta-llama/Meta-Llama-3-8B",),
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=500000.0,
    ),
    "llama3_2_1b": _llama(
        ("meta-llama/Llama-3.2-1B",),
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE, tie_word_embeddings=True,
    ),
    "tinyllama_1b": _llama(
        ("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", "TinyLlama/TinyLlama_v1.1",
         "TinyLlama/TinyLlama-1.1B-Chat-v1.0"),
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
        num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5,
        rope_theta=10000.0,
    ),
    "smollm2_135m": _llama(
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M"),
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=100000.0, tie_word_embeddings=True,
    ),
    "mistral_7b": Shape(
        "mistral",
        ("mistralai/Mistral-7B-v0.1",),
        dict(
            hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768, rms_norm_eps=1e-5,
            rope_theta=10000.0, sliding_window=4096, tie_word_embeddings=False,
        ),
    ),
    "qwen2_0_5b": Shape(
        "qwen2",
        ("Qwen/Qwen2-0.5B",),
        dict(
            hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
            num_key_value_heads=2, vocab_size=151936, max_position_embeddings=131072, rms_norm_eps=1e-6,
            rope_theta=1000000.0, sliding_window=131072, max_window_layers=24, use_sliding_window=False,
            tie_word_embeddings=True,
        ),
    ),
}
# fmt: on


def known_shapes() -> list[str]:
    """The names of the known shapes."""
    return sorted(SHAPES)


def shape_key(name: str | None) -> str:
    """The known shape called ``name`` or copied from hub id ``name``; a one-line ValueError otherwise."""
    if name in SHAPES:
        return name
    for key, shape in SHAPES.items():
        if name in shape.hub_ids:
            return key
    what = f"unknown model shape {name!r}" if name else "model.source=shape needs model.shape"
    raise ValueError(f"{what}; known shapes: {', '.join(known_shapes())} (or one of their hub ids)")


def shape_of(model_cfg: Any) -> str:
    """The shape a model config selects: ``shape``, else the preset's ``name``, else its hub ``path``."""
    if getattr(model_cfg, "shape", None):
        return shape_key(model_cfg.shape)
    for candidate in (getattr(model_cfg, "name", None), getattr(model_cfg, "path", None)):
        try:
            return shape_key(candidate)
        except ValueError:
            pass
    return shape_key(getattr(model_cfg, "name", None))  # raises, naming the preset


def weights_kind(model_cfg: Any) -> str:
    """``random`` for random weights (``source`` shape or tiny), else ``pretrained``."""
    return "random" if getattr(model_cfg, "source", None) in ("shape", "tiny") else "pretrained"


def shape_config(name: str, **overrides: Any):
    """The HF config of shape ``name`` (or a hub id it copies); ``overrides`` replace fields, e.g.
    ``num_hidden_layers=2`` for a truncated model (an unknown field is a ValueError)."""
    from transformers import AutoConfig

    shape = SHAPES[shape_key(name)]
    fields = shape.fields | TOKENIZER_IDS | {"initializer_range": INIT_STD}
    unknown = sorted(k for k in overrides if not hasattr(AutoConfig.for_model(shape.model_type, **fields), k))
    if unknown:
        raise ValueError(f"unknown {shape.model_type} config field(s) {unknown} in the shape overrides")
    # built once more so that derived fields (layer_types, head_dim) follow the overrides
    config = AutoConfig.for_model(shape.model_type, **(fields | overrides))
    config.architectures = [_model_class(config).__name__]
    return config


def fit_tokenizer(tokenizer, vocab_size: int):
    """``tokenizer`` if its ids fit ``vocab_size``, else the same byte-level BPE keeping only the tokens
    with ids below ``vocab_size`` (and the merges that make them): a real subword tokenizer whose ids fit
    the embedding (the embedded SmolLM2's 49,152 tokens exceed LLaMA-1/2's and Mistral's 32,000)."""
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if len(tokenizer) <= vocab_size:
        return tokenizer
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    bpe = state["model"]
    if bpe["type"] != "BPE":
        raise ValueError(f"cannot fit a {bpe['type']} tokenizer to a vocabulary of {vocab_size}")
    bpe["vocab"] = {token: i for token, i in bpe["vocab"].items() if i < vocab_size}
    pairs = (m.split(" ", 1) if isinstance(m, str) else m for m in bpe["merges"])
    bpe["merges"] = [[a, b] for a, b in pairs if a + b in bpe["vocab"]]  # a merge's parts come first
    state["added_tokens"] = [t for t in state["added_tokens"] if t["id"] < vocab_size]
    specials = {k: getattr(tokenizer, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(state)), **specials)


def _model_class(config) -> type[nn.Module]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM._model_mapping[type(config)]


def random_model(
    config,
    dtype: torch.dtype,
    device: str | torch.device,
    seed: int = 0,
    attn_implementation: str | None = None,
) -> nn.Module:
    """The model ``config`` describes, created directly on ``device`` in ``dtype`` (no float32 copy on
    the CPU first) and initialised from its own generator seeded with ``seed`` (the global RNG is left
    untouched): Linear and embedding weights N(0, initializer_range), norms 1, biases 0."""
    try:
        from transformers.initialization import no_init_weights  # transformers 5.x
    except ImportError:  # 4.57
        from transformers.modeling_utils import no_init_weights

    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    device = torch.device(device)
    with device, no_init_weights():
        model = _model_class(config)._from_config(config, dtype=dtype, **kwargs)
    model.tie_weights()  # skipped with the initialisation; shared parameters are then drawn once
    if device.type != "meta":
        std = getattr(config, "initializer_range", INIT_STD)
        gen = torch.Generator(device=device).manual_seed(seed)
        seen: set[int] = set()
        with torch.no_grad():
            for module in model.modules():
                norm = "Norm" in type(module).__name__
                for pname, param in module.named_parameters(recurse=False):
                    if id(param) in seen:
                        continue
                    seen.add(id(param))
                    if norm and pname == "weight":
                        param.fill_(1.0)
                    elif pname == "bias":
                        param.zero_()
                    else:
                        param.normal_(0.0, std, generator=gen)
    return model.eval()
