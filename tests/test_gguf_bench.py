"""The ``gguf`` figure of ``loraprune-bench`` and GGUF perplexity (:mod:`loraprune.evaluation.gguf_ppl`)
at tiny size; the llama.cpp parts skip without llama-cpp-python. No assertion on speed.

Perplexity parity: llama.cpp's f32 file with an f32 KV cache gives each window's summed NLL within
1e-3 relative of transformers' on the same windows (float32 on both sides, different kernels; measured
1e-7 on the tiny models, 3e-6 on SmolLM2-135M), and the perplexity within 1e-4 relative (measured 8e-6
on SmolLM2).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from loraprune.bench import tables
from loraprune.bench.inference import measure_inference
from loraprune.cli import bench as cli
from loraprune.cli import gguf_ppl as gguf_ppl_cli
from loraprune.core.structure import Geometry, decoder_layers
from loraprune.core.surgery import apply_plan
from loraprune.evaluation import gguf_ppl
from loraprune.evaluation.ppl import TokenStream, window_losses
from loraprune.models.loading import TinySpec, tiny_model

sys.path.insert(0, str(Path(__file__).parent))


def test_missing_binding_is_one_clean_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", "tiny", "--figures", "gguf"])
    message = str(e.value.code)
    assert message.startswith("loraprune: error: the gguf figure") and "llama-cpp-python" in message
    assert "\n" not in message
    with pytest.raises(SystemExit) as e:
        gguf_ppl_cli.main(["missing.gguf"])
    assert str(e.value.code).startswith("loraprune: error: GGUF perplexity") and "pip install" in str(
        e.value.code
    )
    assert capsys.readouterr().out == ""


def test_bad_gguf_options_fail_before_work(tmp_path):
    pytest.importorskip("llama_cpp")
    with pytest.raises(SystemExit, match="unknown GGUF type 'q9_z'"):
        cli.main(["--model", "tiny", "--figures", "gguf", "--gguf-quants", "f16,q9_z"])
    with pytest.raises(SystemExit, match="--gguf-run: .* holds no saved pruned model"):
        cli.main(["--model", "tiny", "--figures", "gguf", "--gguf-run", str(tmp_path)])
    with pytest.raises(SystemExit):
        cli.parse_args(["--round-to", "none,abc"])


def test_inference_rows_with_and_without_rounding():
    model = tiny_model(TinySpec(intermediate_size=128, num_layers=4))
    out = measure_inference(
        model, [0.5], batch=1, seq_len=8, prompt_len=2, new_tokens=2, repeats=1, round_to=[None, 32]
    )
    rows = out["rows"]
    assert [(r["ratio"], r["round_to"]) for r in rows] == [(0.0, None), (0.5, None), (0.5, 32)]
    assert all(r["param_ratio"] < 1 for r in rows[1:])
    assert "| round_to |" in tables.inference_lines(out)[2]


def _tiny():
    from test_gguf_export import tiny

    model, tok = tiny(TinySpec(num_heads=4, num_kv_heads=2, num_layers=4, intermediate_size=96))
    return model.eval(), tok


def _stream(vocab: int, n: int = 200) -> TokenStream:
    ids = torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(1))
    return TokenStream(ids, (0, 70, 140))


def test_gguf_figure_at_tiny_size(tmp_path):
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (pip install 'loraprune[llamacpp]')")
    from loraprune.bench.llamacpp import measure_gguf

    model, tok = _tiny()
    stream = _stream(len(tok))
    out = measure_gguf(
        model,
        tok,
        ratios=[0.5],
        quants=["f32", "q8_0"],
        round_to=[None, 32],
        pp_tokens=16,
        prompt_len=4,
        new_tokens=4,
        repeats=1,
        threads=1,
        ppl_windows=3,
        seq_len=16,
        streams={"random": stream},
        keep_dir=tmp_path,
    )
    rows = out["rows"]
    assert [(r["model"], r["quant"]) for r in rows] == [
        (m, q) for m in ("dense", "pruned 50%", "pruned 50%, round_to 32") for q in ("f32", "q8_0")
    ]
    assert {r["arch"] for r in rows[2:]} == {"deci"} and rows[0]["arch"] == "llama"
    for r in rows:
        assert r["pp_tokens_per_s"] > 0 and r["tg_tokens_per_s"] > 0 and r["mib"] > 0
        assert np.isfinite(r["ppl"]["random"]) and r["ppl"]["random"] > 1
        assert (r["param_ratio"] == 1) == (r["model"] == "dense")
    assert rows[1]["mib"] < rows[0]["mib"] and rows[2]["size_ratio"] < 1
    markdown = "\n".join(tables.gguf_lines(out))
    assert "### 5. GGUF in llama.cpp" in markdown and "| pruned 50%, round_to 32 | q8_0 | deci |" in markdown


@pytest.mark.parametrize("pruned", [False, True])
def test_llama_cpp_perplexity_equals_transformers(tmp_path, pruned):
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (pip install 'loraprune[llamacpp]')")
    from test_gguf_export import per_layer_plan

    from loraprune.export.gguf_model import write_gguf

    model, tok = _tiny()
    if pruned:
        apply_plan(model, per_layer_plan(Geometry.from_config(model.config)))
        assert len({layer.mlp.down_proj.in_features for layer in decoder_layers(model)}) > 1
    path = tmp_path / "model.gguf"
    write_gguf(model, tok, path, quant="f32")
    stream = _stream(len(tok))
    want = window_losses(model, stream, seq_len=24, max_windows=5, batch_size=2)
    got = gguf_ppl.gguf_window_losses(path, stream, seq_len=24, max_windows=5, threads=1, kv_cache="f32")
    assert got.window == want.window and got.document == want.document
    np.testing.assert_allclose(got.nll, want.nll, rtol=1e-3)
    assert got.ppl == pytest.approx(want.ppl, rel=1e-4)
    rows = gguf_ppl.gguf_perplexities([path], {"random": stream}, 24, 5, threads=1, kv_cache="f32")
    assert rows[0]["ppl"]["random"] == pytest.approx(got.ppl) and rows[0]["params"] > 0
    assert "| model.gguf |" in gguf_ppl.render(rows, ["random"])
