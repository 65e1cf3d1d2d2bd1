"""GGUF export for llama.cpp on tiny random models: architecture (``llama`` uniform, ``deci`` per layer),
metadata and tensor shapes against the pruning plan, the rotary order of q/k, the tokenizer, depth cuts,
zero widths, and bad inputs refused with one line and nothing left behind. llama.cpp itself runs the
files in ``test_gguf_llamacpp.py`` (slow, needs llama-cpp-python)."""

from __future__ import annotations

import sys

import gguf
import numpy as np
import pytest
import torch

from loraprune import save_pruned
from loraprune.cli import export as cli
from loraprune.core.nm import nm_keep_mask
from loraprune.core.plan import LayerKeep, PruningPlan
from loraprune.core.structure import ALL_PROJECTIONS, Geometry, decoder_layers, projection
from loraprune.core.surgery import apply_plan, slice_linear
from loraprune.export.card import ModelCard
from loraprune.export.gguf_errors import GGUFExportError
from loraprune.export.gguf_model import hf_order, layout_of, rotary_order, write_gguf
from loraprune.export.gguf_vocab import bpe_pre_type
from loraprune.models.loading import TinySpec, tiny_model

GQA = TinySpec(num_heads=8, num_kv_heads=2, num_layers=4, attention_bias=True)
TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"


def bpe_tokenizer():
    """A byte-level BPE with two merges (llama.cpp needs merges) and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {ch: i + 3 for i, ch in enumerate(alphabet)}
    vocab |= {"Ġt": len(vocab), "he": len(vocab) + 1}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "t"), ("h", "e")], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    tok.chat_template = TEMPLATE
    return tok


def tiny(spec: TinySpec = GQA):
    tok = bpe_tokenizer()
    return tiny_model(spec, vocab_size=len(tok)), tok


def per_layer_plan(geo: Geometry) -> PruningPlan:
    """Layer 0 whole, then 1 and 2 KV groups and a different number of channels per layer."""
    rep = geo.queries_per_kv
    layers = {}
    for i in range(1, geo.num_layers):
        kv = list(range(i % geo.num_kv_heads, geo.num_kv_heads))
        layers[i] = LayerKeep(
            q_heads=[k * rep + j for k in kv for j in range(rep)],
            kv_heads=kv,
            channels=list(range(0, geo.intermediate_size, i + 1)),
        )
    return PruningPlan(geo, "kv_group", layers)


def uniform_plan(geo: Geometry) -> PruningPlan:
    rep = geo.queries_per_kv
    keep = LayerKeep(
        q_heads=list(range(rep)), kv_heads=[0], channels=list(range(1, geo.intermediate_size, 2))
    )
    return PruningPlan(geo, "kv_group", {i: keep for i in range(geo.num_layers)})


def read(path) -> tuple[dict, dict]:
    """(fields as Python values, {tensor name: (shape in transformers' order, float32 array)})."""
    reader = gguf.GGUFReader(str(path))
    fields = {}
    for key, f in reader.fields.items():
        try:
            fields[key] = f.contents()
        except Exception:  # noqa: BLE001 - header fields without a value
            continue
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        tensors[t.name] = (shape, np.asarray(t.data, dtype=np.float32).reshape(shape))
    return fields, tensors


def test_per_layer_widths_write_deci_with_the_plans_widths(tmp_path):
    model, tok = tiny()
    geo = Geometry.from_config(model.config)
    plan = per_layer_plan(geo)
    apply_plan(model, plan)
    result = write_gguf(model, tok, tmp_path / "m.gguf", quant="f32", plan=plan)
    fields, tensors = read(tmp_path / "m.gguf")
    summary = plan.summary()
    q = [summary[str(i)]["q_heads"] for i in range(geo.num_layers)]
    kv = [summary[str(i)]["kv_heads"] for i in range(geo.num_layers)]
    ch = [summary[str(i)]["channels"] for i in range(geo.num_layers)]
    assert result["arch"] == fields["general.architecture"] == "deci"
    assert fields["deci.block_count"] == geo.num_layers
    assert fields["deci.attention.head_count"] == q
    assert fields["deci.attention.head_count_kv"] == kv
    assert fields["deci.feed_forward_length"] == ch
    assert fields["deci.attention.key_length"] == fields["deci.attention.value_length"] == geo.head_dim
    assert fields["deci.rope.dimension_count"] == geo.head_dim
    assert fields["deci.embedding_length"] == geo.hidden_size
    assert fields["general.file_type"] == gguf.LlamaFileType.ALL_F32
    h, hd = geo.hidden_size, geo.head_dim
    for i in range(geo.num_layers):
        assert tensors[f"blk.{i}.attn_q.weight"][0] == (q[i] * hd, h)
        assert tensors[f"blk.{i}.attn_k.weight"][0] == (kv[i] * hd, h)
        assert tensors[f"blk.{i}.attn_v.weight"][0] == (kv[i] * hd, h)
        assert tensors[f"blk.{i}.attn_q.bias"][0] == (q[i] * hd,)
        assert tensors[f"blk.{i}.attn_output.weight"][0] == (h, q[i] * hd)
        assert tensors[f"blk.{i}.ffn_gate.weight"][0] == (ch[i], h)
        assert tensors[f"blk.{i}.ffn_up.weight"][0] == (ch[i], h)
        assert tensors[f"blk.{i}.ffn_down.weight"][0] == (h, ch[i])
        assert tensors[f"blk.{i}.attn_norm.weight"][0] == (h,)
    assert tensors["token_embd.weight"][0] == (model.config.vocab_size, h)
    assert "output.weight" in tensors  # the tiny model's head is not tied
    assert fields["loraprune.layers"] == list(range(geo.num_layers))
    assert PruningPlan.from_dict(__import__("json").loads(fields["loraprune.plan"])).summary() == summary


def test_uniform_widths_write_llama_f16(tmp_path):
    model, tok = tiny()
    geo = Geometry.from_config(model.config)
    apply_plan(model, uniform_plan(geo))
    write_gguf(model, tok, tmp_path / "m.gguf", quant="f16")
    fields, tensors = read(tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert fields["general.architecture"] == "llama"
    assert fields["llama.attention.head_count"] == geo.queries_per_kv
    assert fields["llama.attention.head_count_kv"] == 1
    assert fields["llama.feed_forward_length"] == geo.intermediate_size // 2
    assert fields["llama.attention.key_length"] == geo.head_dim
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32  # 1-D tensors stay f32
    assert types["blk.0.attn_q.bias"] == gguf.GGMLQuantizationType.F32
    down = decoder_layers(model)[2].mlp.down_proj.weight.detach().numpy()
    np.testing.assert_allclose(tensors["blk.2.ffn_down.weight"][1], down, atol=1e-3, rtol=1e-3)


def test_rotary_permutation_against_a_hand_computation(tmp_path):
    # two heads of size 4: transformers pairs dimension j with j + 2; llama.cpp pairs 2j with 2j + 1
    rows = torch.arange(8.0)[:, None]
    assert rotary_order(rows, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert torch.equal(hf_order(rotary_order(rows, 2), 2), rows)
    # rotating the permuted vector by adjacent pairs = rotating the original by halves, permuted
    hd, theta = 8, torch.tensor([0.3, 1.1, 2.0, 0.7])
    x = torch.randn(hd, generator=torch.Generator().manual_seed(0))
    cos, sin = torch.cat([theta.cos()] * 2), torch.cat([theta.sin()] * 2)
    halves = x * cos + torch.cat([-x[hd // 2 :], x[: hd // 2]]) * sin  # transformers' rotate_half
    y = rotary_order(x[:, None], 1)[:, 0]
    pairs = y.clone()
    pairs[0::2] = y[0::2] * theta.cos() - y[1::2] * theta.sin()
    pairs[1::2] = y[0::2] * theta.sin() + y[1::2] * theta.cos()
    assert torch.allclose(pairs, rotary_order(halves[:, None], 1)[:, 0], atol=1e-6)
    # the file's q/k rows and biases: the inverse permutation gives transformers' weights back
    model, tok = tiny()
    geo = Geometry.from_config(model.config)
    plan = per_layer_plan(geo)
    apply_plan(model, plan)
    write_gguf(model, tok, tmp_path / "m.gguf", quant="f32")
    _, tensors = read(tmp_path / "m.gguf")
    for i, layer in enumerate(decoder_layers(model)):
        attn = layer.self_attn
        n_q, n_kv = attn.q_proj.out_features // geo.head_dim, attn.k_proj.out_features // geo.head_dim
        for name, module, heads in (("attn_q", attn.q_proj, n_q), ("attn_k", attn.k_proj, n_kv)):
            for suffix in ("weight", "bias"):
                stored = torch.tensor(tensors[f"blk.{i}.{name}.{suffix}"][1])
                assert not torch.equal(stored, getattr(module, suffix).detach())
                assert torch.equal(hf_order(stored, heads), getattr(module, suffix).detach())
        v = torch.tensor(tensors[f"blk.{i}.attn_v.weight"][1])
        assert torch.equal(v, attn.v_proj.weight.detach())  # v and o are not rotated


def test_tokenizer_and_chat_template_are_carried(tmp_path):
    model, tok = tiny()
    write_gguf(model, tok, tmp_path / "m.gguf", quant="f32")
    fields, _ = read(tmp_path / "m.gguf")
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "gpt-2"
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == len(fields["tokenizer.ggml.token_type"]) == model.config.vocab_size
    assert tokens[: len(tok)] == [tok.convert_ids_to_tokens(i) for i in range(len(tok))]
    assert fields["tokenizer.ggml.merges"] == ["Ġ t", "h e"]
    assert tok("the t").input_ids == [tok.convert_tokens_to_ids(t) for t in ("t", "he", "Ġt")]
    assert fields["tokenizer.ggml.bos_token_id"] == tok.bos_token_id
    assert fields["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert fields["tokenizer.ggml.padding_token_id"] == tok.pad_token_id
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.chat_template"] == TEMPLATE
    types = fields["tokenizer.ggml.token_type"]
    assert types[tok.eos_token_id] == gguf.TokenType.CONTROL and types[10] == gguf.TokenType.NORMAL


def test_pre_tokenizer_names():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert bpe_pre_type({"pre_tokenizer": byte_level}) == "gpt-2"
    smollm = {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level],
    }
    assert bpe_pre_type({"pre_tokenizer": smollm}) == "smollm"
    with pytest.raises(GGUFExportError, match="no known llama.cpp counterpart"):
        bpe_pre_type({"pre_tokenizer": {"type": "Whitespace"}})


def test_depth_cut_writes_fewer_blocks(tmp_path):
    model, tok = tiny()
    geo = Geometry.from_config(model.config)
    apply_plan(model, PruningPlan(geo, removed_layers=[1, 2]))
    result = write_gguf(model, tok, tmp_path / "m.gguf", quant="f32")
    fields, tensors = read(tmp_path / "m.gguf")
    assert result["arch"] == "llama" and fields["llama.block_count"] == 2
    assert fields["llama.attention.head_count"] == geo.num_heads
    assert {n.split(".")[1] for n in tensors if n.startswith("blk.")} == {"0", "1"}


def _empty(model, layer: int, heads: bool, channels: bool) -> None:
    e = torch.tensor([], dtype=torch.long)
    target = decoder_layers(model)[layer]
    if heads:
        for name in ("q_proj", "k_proj", "v_proj"):
            slice_linear(getattr(target.self_attn, name), e, 0)
        slice_linear(target.self_attn.o_proj, e, 1)
    if channels:
        for name in ("gate_proj", "up_proj"):
            slice_linear(getattr(target.mlp, name), e, 0)
        slice_linear(target.mlp.down_proj, e, 1)


def test_zero_widths_written_only_as_the_same_function(tmp_path):
    model, tok = tiny(TinySpec(num_heads=4, num_kv_heads=2, num_layers=5))
    _empty(model, 1, heads=True, channels=False)  # attention-free: head_count 0
    _empty(model, 2, heads=False, channels=True)  # MLP-free: one zero channel (deci's 0 skips the layer)
    _empty(model, 3, heads=True, channels=True)  # the identity: left out
    with torch.no_grad():  # transformers runs it: the empty blocks add nothing
        model(torch.randint(3, 200, (1, 6)))
    layout = layout_of(model)
    assert layout.arch == "deci" and layout.layers == (0, 1, 2, 4) and layout.dropped == (3,)
    assert layout.q_heads == (4, 0, 4, 4) and layout.kv_heads == (2, 0, 2, 2)
    assert layout.channels[2] == 1 and layout.padded == (2,)
    write_gguf(model, tok, tmp_path / "m.gguf", quant="f32")
    fields, tensors = read(tmp_path / "m.gguf")
    assert fields["deci.attention.head_count"] == [4, 0, 4, 4]
    assert fields["deci.feed_forward_length"][2] == 1
    assert "blk.1.attn_q.weight" not in tensors and "blk.1.ffn_up.weight" in tensors
    assert not tensors["blk.2.ffn_down.weight"][1].any() and tensors["blk.2.ffn_down.weight"][0] == (64, 1)
    assert fields["loraprune.identity_layers_dropped"] == [3]
    # an attention-free layer whose o_proj has a bias: llama.cpp would drop the bias
    model, tok = tiny(TinySpec(num_heads=4, num_kv_heads=2))
    _empty(model, 1, heads=True, channels=False)
    o = decoder_layers(model)[1].self_attn.o_proj
    o.bias = torch.nn.Parameter(torch.ones(o.out_features))
    with pytest.raises(GGUFExportError, match="o_proj has a bias"):
        layout_of(model)


# ---- the command line ---------------------------------------------------------------------------------


@pytest.fixture
def saved_run(tmp_path):
    """A run directory with a per-layer model and a card."""
    model, tok = tiny()
    plan = per_layer_plan(Geometry.from_config(model.config))
    apply_plan(model, plan)
    card = ModelCard(
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
        method="mask_fisher",
        run={"ratio": 0.2, "target": "params", "attention_unit": "kv_group"},
        params={"total_before": 1000, "total_after": 800, "removed_fraction_total": 0.2},
        ppl={"dense": {"wikitext2": 30.0}, "pruned": {"wikitext2": 35.0}},
    )
    save_pruned(model, tok, plan, tmp_path / "run" / "model", card=card)
    return tmp_path / "run"


def test_cli_writes_gguf_with_its_card(saved_run, tmp_path, capsys):
    out = tmp_path / "out" / "pruned.gguf"
    cli.main([str(saved_run), "--form", "gguf", "--out", str(out), "--quant", "F16"])
    assert capsys.readouterr().out.strip() == str(out)
    fields, _ = read(out)
    assert fields["general.architecture"] == "deci"
    assert fields["general.base_model.0.name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (
        fields["general.base_model.0.repo_url"]
        == "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    assert fields["general.license"] == "apache-2.0"
    assert "mask_fisher" in fields["general.tags"] and "pruned" in fields["general.tags"]
    assert "mask_fisher 20%" in fields["general.name"] and "f16" in fields["general.name"]
    assert fields["loraprune.method"] == "mask_fisher" and fields["loraprune.quantization"] == "f16"
    assert fields["loraprune.ratio"] == pytest.approx(0.2)
    assert fields["loraprune.params.total_after"] == 800
    assert fields["loraprune.ppl.pruned.wikitext2"] == pytest.approx(35.0)
    assert sorted(p.name for p in out.parent.iterdir()) == ["pruned.gguf"]


def _refused(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()  # (weight-loading progress bars above it)
    assert lines[-1].startswith("loraprune-export: error: ")
    assert sum("error" in line for line in lines) == 1
    return lines[-1]


def test_bad_inputs_one_line_nothing_written(saved_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    target = str(out / "m.gguf")
    assert "unknown GGUF type 'q9_z'" in _refused(
        capsys, [str(saved_run), "--form", "gguf", "--out", target, "--quant", "q9_z"]
    )
    assert "holds no saved pruned model" in _refused(
        capsys, [str(tmp_path / "nothing"), "--form", "gguf", "--out", target]
    )
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # the binding not installed
    err = _refused(capsys, [str(saved_run), "--form", "gguf", "--out", target, "--quant", "q4_k_m"])
    assert "llama-cpp-python" in err
    assert "--quant applies to --form gguf" in _refused(
        capsys, [str(saved_run), "--out", target, "--quant", "f16"]
    )
    assert list(out.iterdir()) == []
    # a 2:4 model: GGUF would store the zeros densely
    model, tok = tiny()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in decoder_layers(model):
            for name in ALL_PROJECTIONS:
                w = projection(layer, name).weight
                w.mul_(nm_keep_mask(torch.rand(w.shape, generator=g), 2, 4))
    save_pruned(model, tok, PruningPlan(Geometry.from_config(model.config)), tmp_path / "sparse" / "model")
    err = _refused(capsys, [str(tmp_path / "sparse"), "--form", "gguf", "--out", target])
    assert "2:4" in err and "GGUF cannot express the sparsity" in err
    assert list(out.iterdir()) == []
