"""Known shapes (``model.source=shape``): the published geometry, exact parameter counts (on the meta
device, no weights), and a truncated 1B shape that loads in bf16 and trains."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONF, compose, run_cli

from loraprune.models import shapes
from loraprune.models.loading import load_config, load_model, model_location

# name: (class, layers, hidden, intermediate, heads, kv heads, head_dim, vocab, tied, q/k/v bias, params)
# from each checkpoint's published config.json; params are the published totals.
PUBLISHED = {
    "llama_7b": ("LlamaForCausalLM", 32, 4096, 11008, 32, 32, 128, 32000, False, False, 6_738_415_616),
    "llama_13b": ("LlamaForCausalLM", 40, 5120, 13824, 40, 40, 128, 32000, False, False, 13_015_864_320),
    "llama_30b": ("LlamaForCausalLM", 60, 6656, 17920, 52, 52, 128, 32000, False, False, 32_528_943_616),
    "llama_65b": ("LlamaForCausalLM", 80, 8192, 22016, 64, 64, 128, 32000, False, False, 65_285_660_672),
    "llama2_7b": ("LlamaForCausalLM", 32, 4096, 11008, 32, 32, 128, 32000, False, False, 6_738_415_616),
    "llama2_13b": ("LlamaForCausalLM", 40, 5120, 13824, 40, 40, 128, 32000, False, False, 13_015_864_320),
    "llama3_8b": ("LlamaForCausalLM", 32, 4096, 14336, 32, 8, 128, 128256, False, False, 8_030_261_248),
    "llama3_2_1b": ("LlamaForCausalLM", 16, 2048, 8192, 32, 8, 64, 128256, True, False, 1_235_814_400),
    "tinyllama_1b": ("LlamaForCausalLM", 22, 2048, 5632, 32, 4, 64, 32000, False, False, 1_100_048_384),
    "smollm2_135m": ("LlamaForCausalLM", 30, 576, 1536, 9, 3, 64, 49152, True, False, 134_515_008),
    "mistral_7b": ("MistralForCausalLM", 32, 4096, 14336, 32, 8, 128, 32000, False, False, 7_241_732_096),
    "qwen2_0_5b": ("Qwen2ForCausalLM", 24, 896, 4864, 14, 2, 64, 151936, True, True, 494_032_768),
}
ROPE_THETA = {"llama3_8b": 500000.0, "llama3_2_1b": 500000.0, "smollm2_135m": 100000.0, "qwen2_0_5b": 1e6}


def test_every_known_shape_is_checked():
    assert sorted(PUBLISHED) == shapes.known_shapes()


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_shape_has_the_published_geometry(name):
    cls, layers, hidden, inter, heads, kv, head_dim, vocab, tied, bias, params = PUBLISHED[name]
    config = load_config("shape", name)
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (layers, hidden, inter)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (heads, kv, vocab)
    assert config.tie_word_embeddings is tied and config.architectures == [cls]
    assert config.rope_parameters["rope_theta"] == ROPE_THETA.get(name, 10000.0)
    model = shapes.random_model(config, torch.bfloat16, "meta")
    attn = model.model.layers[0].self_attn
    assert type(model).__name__ == cls and attn.head_dim == head_dim
    assert attn.q_proj.out_features == heads * head_dim and attn.k_proj.out_features == kv * head_dim
    assert (attn.q_proj.bias is not None) is bias and model.model.layers[0].mlp.up_proj.out_features == inter
    assert sum(p.numel() for p in model.parameters()) == params
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_llama3_2_rope_scaling():
    rope = load_config("shape", "llama3_2_1b").rope_parameters
    assert rope["rope_type"] == "llama3" and rope["factor"] == 32.0
    assert rope["original_max_position_embeddings"] == 8192


def test_bad_shape_is_a_one_line_error_naming_the_known_shapes():
    with pytest.raises(ValueError, match="known shapes: .*llama_7b") as e:
        model_location("shape", "llama_70b")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="num_hidden_layerz"):
        shapes.shape_config("llama_7b", num_hidden_layerz=2)


def test_bad_shape_fails_validation_before_loading():
    from loraprune.run.resolve import ConfigError, validate

    with pytest.raises(ConfigError, match="known shapes"):
        validate(compose("model=tiny_llama", "model.source=shape"))


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
def test_every_real_preset_selects_its_shape(preset):
    m = compose(f"model={preset}", "model.source=shape").model
    if m.name.startswith("tiny_"):
        with pytest.raises(ValueError, match="known shapes"):
            shapes.shape_of(m)
        return
    assert shapes.weights_kind(m) == "random"
    assert shapes.shape_of(m) == m.name.removesuffix("_hub")
    if m.path:  # a hub preset names its shape by its hub id too
        assert model_location(m.source, m.path) == shapes.shape_of(m)
    assert shapes.weights_kind(compose(f"model={preset}").model) == "pretrained"


def test_explicit_shape_wins():
    m = compose("model=llama_7b", "model.source=shape", "model.shape=mistral_7b").model
    assert shapes.shape_of(m) == "mistral_7b"


def test_resolve_reads_a_7b_shape_without_weights(tmp_path):
    from loraprune.run.resolve import resolve

    plan = resolve(compose("model=llama_7b", "model.source=shape", f"output_dir={tmp_path / 'run'}"))
    assert plan.geometry.num_layers == 32 and plan.params_total == 6_738_415_616


def test_truncated_1b_shape_trains_in_bf16_on_cpu():
    model, tok = load_model(
        "shape", "tinyllama_1b", dtype="bf16", device="cpu", shape_overrides={"num_hidden_layers": 2}
    )
    assert len(model.model.layers) == 2 and model.dtype == torch.bfloat16
    q = model.model.layers[0].self_attn.q_proj.weight
    assert torch.isfinite(q).all() and 0.018 < q.float().std().item() < 0.022
    # two tokens: bf16 backward matmuls on a CPU without bf16 instructions take ~0.1 s per token each
    ids = tok("The quick brown fox", return_tensors="pt").input_ids[:, :2]
    model.train()
    for name, param in model.named_parameters():  # frozen weights, as under LoRA; the norms learn
        param.requires_grad_("norm" in name)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss) and 5 < out.loss.item() < 20
    grad = model.model.layers[0].input_layernorm.weight.grad  # through every layer and the LM head
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_tokenizer_fits_a_32k_vocabulary():
    from transformers import AutoTokenizer

    from loraprune.models.loading import embedded_model_dir

    full = AutoTokenizer.from_pretrained(embedded_model_dir())
    assert shapes.fit_tokenizer(full, 128256) is full
    small = shapes.fit_tokenizer(full, 32000)
    text = "Pruning LLaMA-7B with LoRA's gradients: naïve café, 1234567 tokens.\n\nA new paragraph."
    ids = small(text).input_ids
    assert len(small) == 32000 and max(ids) < 32000 and small.decode(ids) == text
    assert len(ids) <= 1.3 * len(full(text).input_ids)  # still a subword tokenizer, not bytes
    assert (small.eos_token_id, small.pad_token_id) == (full.eos_token_id, full.pad_token_id)


def test_random_weights_are_seeded():
    config = shapes.shape_config("smollm2_135m", num_hidden_layers=1)
    a, b, c = (shapes.random_model(config, torch.float32, "cpu", seed=s) for s in (0, 0, 1))
    w = [m.model.layers[0].mlp.gate_proj.weight for m in (a, b, c)]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])
    assert a.lm_head.weight is a.model.embed_tokens.weight  # tied, as published


@pytest.mark.slow
def test_cli_runs_a_1b_shape_on_cpu(tmp_path):
    out = tmp_path / "run"
    run_cli(
        *("model=tinyllama_1b", "model.source=shape", "trainer.steps=3", "trainer.batch_size=1"),
        *("trainer.micro_batch_size=1", "trainer.dtype=bf16", "data.nsamples=8", "data.cutoff_len=64"),
        *("eval.max_windows=2", "eval.seq_len=64", f"output_dir={out}"),
        cwd=tmp_path,
        timeout=7200,  # ~50 min on 2 busy AVX2 cores: bf16 GEMMs there have no fast kernels
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"]["total_before"] == 1_100_048_384
