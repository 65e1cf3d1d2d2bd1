"""``loraprune-bench`` at tiny size produces every figure (no assertion on speed: CI machines vary)."""

from __future__ import annotations

import json

import pytest

from loraprune.bench.loop import PHASES
from loraprune.cli import bench as cli

TINY = ["--model", "tiny", "--steps", "2", "--batch", "2", "--seq-len", "16", "--threads", "1"]
TINY += ["--prefill-batch", "2", "--prefill-len", "16", "--prompt-len", "4", "--new-tokens", "3"]
TINY += ["--repeats", "1", "--ppl-windows", "2", "--eval-batch", "2", "--zeroshot-limit", "2"]


def test_bench_produces_every_figure_at_tiny_size(tmp_path, capsys):
    cli.main([*TINY, "--out", str(tmp_path)])
    result = json.loads((tmp_path / "bench.json").read_text())
    markdown = capsys.readouterr().out
    assert (tmp_path / "bench.md").read_text() == markdown
    assert result["settings"]["weights"] == "random" and "weights: random" in markdown
    assert result["machine"]["command"].startswith("loraprune-bench --model tiny")
    assert result["machine"]["date"] and result["machine"]["cores"] >= 1
    # 1 and 2: one process per variant, each with its own peak above its own loaded model
    loops = result["loops"]
    assert list(loops) == ["lora", "loraprune", "grad", "llm_pruner", "peft", "mask_fisher"]
    for run in loops.values():
        assert run["rss_baseline_gib"] > 0 and run["cpu_peak_rss_gib"] >= run["rss_baseline_gib"]
        assert run["tokens_per_s"] > 0 and set(run["phase_s"]) == set(PHASES)
    assert loops["lora"]["phase_s"]["scoring"] < loops["grad"]["step_s"]  # no pruner: nothing scored
    # plain peft: none of the project's phases, only forward, backward and optimizer
    assert {p for p, t in loops["peft"]["phase_s"].items() if t > 0} == {"forward", "backward", "optimizer"}
    # 3: dense and the two pruned models, smaller in parameters and FLOPs
    rows = result["inference"]["rows"]
    assert [r["ratio"] for r in rows] == [0.0, 0.2, 0.5]
    assert rows[0]["param_ratio"] == 1 and 1 > rows[1]["param_ratio"] > rows[2]["param_ratio"]
    assert 1 > rows[1]["flop_ratio"] > rows[2]["flop_ratio"]
    assert all(r["prefill_tokens_per_s"] > 0 for r in rows)
    # 4: perplexity and zero-shot throughput
    ev = result["evaluation"]
    assert ev["ppl_tokens_per_s"] > 0 and ev["ppl_tokens_per_s_before"] > 0 and ev["zeroshot_examples"] == 2
    assert "whole fp32 logits, batch 8 (before)" in markdown and "chunked loss" in markdown
    for title in ("1. Peak memory", "2. Loop throughput", "3. Pruned vs dense", "4. Evaluation throughput"):
        assert f"### {title}" in markdown
    assert "loraprune / grad" in markdown and "loraprune / llm_pruner" in markdown
    assert "loraprune / lora tokens/s" in markdown
    assert "mask_fisher / plain peft tokens/s" in markdown and "lora / plain peft tokens/s" in markdown


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "shape:llama_99b"], "unknown model shape 'llama_99b'"),
        (["--model", "./no/such/dir"], "has no config.json"),
        (["--quantize", "nf4", "--model", "tiny"], "model.quantize=nf4"),
    ],
)
def test_bad_input_is_one_line_before_any_work(args, message, capsys):
    with pytest.raises(SystemExit, match=f"loraprune: error: .*{message}"):
        cli.main(args)


def test_int8_variant_beside_the_unquantized_one(tmp_path, capsys):
    """``NAME:int8`` runs that loop on an int8 base in the same invocation, with its ratio line (here
    with gradient checkpointing on)."""
    pytest.importorskip("torchao")
    assert cli.split_variant("loraprune:int8", None) == ("loraprune", "int8")
    assert cli.split_variant("lora", "int8") == ("lora", "int8")
    args = ["--figures", "memory", "--variants", "loraprune,loraprune:int8", "--gradient-checkpointing"]
    cli.main([*TINY, *args, "--out", str(tmp_path)])
    loops = json.loads((tmp_path / "bench.json").read_text())["loops"]
    assert loops["loraprune"]["quantize"] is None and loops["loraprune:int8"]["quantize"] == "int8"
    assert all(r["gradient_checkpointing"] for r in loops.values())
    out = capsys.readouterr().out
    assert "loraprune:int8 / loraprune: peak above the model" in out and "gradient checkpointing)" in out


def test_micro_benchmarks_run_at_tiny_size(capsys):
    """The dropout and scoring side-by-sides produce both arms and their ratio (no speed asserted)."""
    from loraprune.bench import micro

    micro.main(["dropout", "--model", "tiny", "--steps", "2", "--batch", "2", "--seq-len", "16"])
    micro.main(["scoring", "--shape", "smollm2_135m", "--repeats", "1"])
    out = capsys.readouterr().out
    for key in (
        "torch:",
        "fast:",
        "fast/torch wall:",
        "materialised:",
        "blocked:",
        "blocked/materialised time:",
    ):
        assert key in out
