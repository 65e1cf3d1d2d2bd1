"""llama.cpp itself runs the GGUF exports (slow, opt-in: ``pip install 'loraprune[llamacpp]'`` then
``python -m pytest -m slow tests/test_gguf_llamacpp.py``).

Next-token log-probabilities from llama.cpp (through llama-cpp-python) against transformers on the same
tokens, for tiny random models (uniform ``llama``, per-layer ``deci``, zero-width layers) and for the
embedded SmolLM2-135M-Instruct, dense and pruned with per-layer widths (no training: a plan applied by
the surgery). llama.cpp runs with a float32 KV cache here (its default, f16, rounds keys and values).
Tolerances per type, as max |Δ log p| over every position and vocabulary entry: f32 1e-3 (float32 on
both sides, different kernels and summation orders; measured 1.2e-4 on the pruned SmolLM2), f16 0.2
(weights rounded to half precision; measured 0.08, and 0.035 on the text's own next tokens), with the
same top-1 token everywhere; q8_0 0.5 with top-1 agreement of 90% or more (tiny models only). Greedy
generation is compared at f16 with llama.cpp's default f16 cache.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from loraprune import save_pruned
from loraprune.cli import export as cli
from loraprune.core.plan import LayerKeep, PruningPlan
from loraprune.core.structure import Geometry, decoder_layers
from loraprune.core.surgery import apply_plan
from loraprune.export.gguf_model import write_gguf

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="needs llama-cpp-python (pip install 'loraprune[llamacpp]')"
)
pytestmark = pytest.mark.slow
sys.path.insert(0, str(Path(__file__).parent))

TOLERANCE = {"f32": 1e-3, "f16": 0.2, "q8_0": 0.5}
TEXT = (
    "The committee met on Tuesday to review the budget for the new library. After a long discussion, "
    "the members agreed to fund the children's reading room and to extend the opening hours on weekends, "
    "while the request for a second parking lot was postponed until next year."
)


def log_probs(scores: np.ndarray) -> np.ndarray:
    scores = scores.astype(np.float64)
    top = scores.max(-1, keepdims=True)
    return scores - top - np.log(np.exp(scores - top).sum(-1, keepdims=True))


def llama_cpp_log_probs(path: Path, ids: list[int], cache: int = 0) -> np.ndarray:
    """llama.cpp's next-token log-probabilities; ``cache``: the KV cache's ggml type (0: f32, 1: f16)."""
    llm = llama_cpp.Llama(
        str(path), logits_all=True, n_ctx=256, n_threads=2, type_k=cache, type_v=cache, verbose=False
    )
    llm.eval(ids)
    out = log_probs(np.asarray(llm.scores[: len(ids)]))
    llm.close()
    return out


def transformers_log_probs(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits.double(), -1).numpy()


def check(path: Path, model, ids: list[int], quant: str) -> None:
    got, want = llama_cpp_log_probs(path, ids), transformers_log_probs(model, ids)
    diff = np.abs(got - want).max()
    agree = (got.argmax(-1) == want.argmax(-1)).mean()
    assert diff < TOLERANCE[quant], f"{path.name}: max |Δ log p| {diff:.4f} ≥ {TOLERANCE[quant]}"
    assert agree >= (1.0 if quant != "q8_0" else 0.9), f"{path.name}: top-1 agreement {agree:.2f}"


def test_tiny_models_in_llama_cpp(tmp_path):
    from test_gguf_export import _empty, per_layer_plan, tiny

    from loraprune.models.loading import TinySpec

    ids = torch.randint(3, 250, (20,), generator=torch.Generator().manual_seed(0)).tolist()
    model, tok = tiny()
    assert write_gguf(model, tok, tmp_path / "dense.gguf", quant="f32")["arch"] == "llama"
    check(tmp_path / "dense.gguf", model, ids, "f32")
    apply_plan(model, per_layer_plan(Geometry.from_config(model.config)))
    for quant in ("f32", "f16", "q8_0"):
        assert write_gguf(model, tok, tmp_path / f"deci-{quant}.gguf", quant=quant)["arch"] == "deci"
        check(tmp_path / f"deci-{quant}.gguf", model, ids, quant)
    model, tok = tiny(TinySpec(num_heads=4, num_kv_heads=2, num_layers=5))
    _empty(model, 1, heads=True, channels=False)
    _empty(model, 2, heads=False, channels=True)
    _empty(model, 3, heads=True, channels=True)
    write_gguf(model, tok, tmp_path / "zero.gguf", quant="f32")
    check(tmp_path / "zero.gguf", model, ids, "f32")


def magnitude_plan(model) -> PruningPlan:
    """Per-layer widths without training: layers 3..28 keep 2 or 3 KV groups and an odd number of MLP
    channels, the units of largest weight norm."""
    geo = Geometry.from_config(model.config)
    rep, hd = geo.queries_per_kv, geo.head_dim
    layers = {}
    for i, layer in enumerate(decoder_layers(model)):
        if not 3 <= i < geo.num_layers - 1:
            continue
        q = layer.self_attn.q_proj.weight.detach().view(geo.num_kv_heads, rep * hd, -1)
        n_kv = geo.num_kv_heads - (i % 2)
        kv = sorted(q.norm(dim=(1, 2)).argsort(descending=True)[:n_kv].tolist())
        norms = layer.mlp.gate_proj.weight.detach().norm(dim=1) * layer.mlp.up_proj.weight.detach().norm(
            dim=1
        )
        channels = sorted(norms.argsort(descending=True)[: geo.intermediate_size - 37 * (i % 9) - 1].tolist())
        layers[i] = LayerKeep(
            q_heads=[k * rep + j for k in kv for j in range(rep)], kv_heads=kv, channels=channels
        )
    return PruningPlan(geo, "kv_group", layers)


@pytest.fixture(scope="module")
def smollm(tmp_path_factory):
    """The embedded SmolLM2 dense and pruned (per-layer widths), each saved as a run's model."""
    from loraprune.models.loading import load_model

    tmp = tmp_path_factory.mktemp("smollm")
    out = {}
    for name in ("dense", "pruned"):
        model, tok = load_model("embedded", dtype="float32", device="cpu")
        plan = magnitude_plan(model) if name == "pruned" else PruningPlan(Geometry.from_config(model.config))
        apply_plan(model, plan)
        save_pruned(model, tok, plan, tmp / name / "model")
        out[name] = (model, tok, tmp / name)
    return out


@pytest.mark.parametrize("name", ["dense", "pruned"])
def test_smollm_in_llama_cpp(smollm, tmp_path, name):
    model, tok, run_dir = smollm[name]
    ids = tok(TEXT).input_ids
    for quant in ("f32", "f16"):
        path = tmp_path / f"{name}-{quant}.gguf"
        cli.main([str(run_dir), "--form", "gguf", "--out", str(path), "--quant", quant])
        check(path, model, ids, quant)
    llm = llama_cpp.Llama(str(tmp_path / f"{name}-f16.gguf"), n_ctx=256, n_threads=2, verbose=False)
    assert llm.metadata["general.architecture"] == ("deci" if name == "pruned" else "llama")
    assert llm.tokenize(TEXT.encode(), add_bos=False, special=True) == ids  # the same tokenizer
    prompt = tok("The capital of France is").input_ids
    expected = model.generate(
        torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=tok.eos_token_id
    )[0, len(prompt) :].tolist()
    got = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        got.append(token)
        if len(got) == len(expected):
            break
    llm.close()
    assert got == expected


def test_a_depth_cut_model_runs_in_llama_cpp(tmp_path):
    """Whole blocks removed (ShortGPT's cut): a stock llama with fewer blocks, the same function."""
    from test_gguf_export import tiny

    model, tok = tiny()
    apply_plan(model, PruningPlan(Geometry.from_config(model.config), removed_layers=[1, 2]))
    ids = tok(TEXT)["input_ids"][:40]
    path = tmp_path / "depth.gguf"
    assert write_gguf(model, tok, path, quant="f32")["arch"] == "llama"
    check(path, model.eval(), ids, "f32")
