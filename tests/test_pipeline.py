"""The runner end to end on tiny models: CLI, outputs, reload, sweeps."""

import json

import pytest
import torch
from conftest import REPO, compose, run_cli

from loraprune import load_pruned
from loraprune.run.pipeline import run


def test_cli_run_writes_everything(tmp_path):
    out = tmp_path / "run"
    run_cli("debug=tiny", f"output_dir={out}", f"hydra.run.dir={tmp_path / 'hydra'}", cwd=tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["dense"]["ppl"]) == {"news_embedded"}
    assert metrics["pruned"]["ppl"]["news_embedded"] > 1
    assert metrics["params"]["total_after"] < metrics["params"]["total_before"]
    assert metrics["memory"]["cpu_peak_rss_gib"] > 0
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert steps[-1]["ratio"] == pytest.approx(0.2)
    assert {"loss", "lr", "ratio", "grad_norm"} <= set(steps[0])
    assert all(0 < s["grad_norm"] < float("inf") for s in steps)  # before clipping (max_grad_norm 1)
    assert (out / "config.yaml").is_file()
    # nothing written to the working directory but hydra's own folder we pointed at tmp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hydra", "run"]
    model = load_pruned(out / "model")
    assert sum(p.numel() for p in model.parameters()) == metrics["params"]["total_after"]
    card = (out / "model" / "README.md").read_text()  # the run's own card: results, command, config
    assert f"| news_embedded | {metrics['dense']['ppl']['news_embedded']:.3f} |" in card
    assert f"loraprune debug=tiny output_dir={out}" in card and "Resolved config" in card


def test_run_reports_exact_parameter_reduction(tmp_path):
    metrics = run(
        compose(
            "debug=tiny",
            "model=tiny_gqa",
            "prune.ratio=0.5",
            "prune.selection=local",
            f"output_dir={tmp_path}",
        )
    )
    kept = metrics["kept_per_layer"]
    # tiny_gqa: 4 layers, layer 3 excluded; 8 heads / 2 KV groups -> one KV group (4 query heads) removed
    assert [kept[str(i)]["q_heads"] for i in range(4)] == [4, 4, 4, 8]
    assert [kept[str(i)]["channels"] for i in range(4)] == [64, 64, 64, 128]
    hidden, hd = 64, 8
    per_layer = (
        4 * hd * hidden * 2 + 4 * hd + 2 * (hd * hidden + hd) + 64 * 3 * hidden
    )  # q,o + q bias; k,v; mlp
    assert metrics["params"]["total_before"] - metrics["params"]["total_after"] == 3 * per_layer
    assert metrics["achieved_ratio"] == {"q_heads": 0.5, "kv_heads": 0.5, "channels": 0.5}
    assert metrics["objective"] == metrics["pruned"]["ppl"]["news_embedded"]


def test_param_target_hits_requested_fraction(tmp_path):
    # 16 heads of width 4: one head per layer is ~2% of all parameters, so 0.3 is reachable within 1%
    metrics = run(
        compose(
            "debug=tiny",
            "prune.target=params",
            "prune.ratio=0.3",
            "prune.exclude_layers=[]",
            "model.tiny.num_heads=16",
            "model.tiny.num_kv_heads=16",
            f"output_dir={tmp_path}",
        )
    )
    assert metrics["params"]["removed_fraction_total"] == pytest.approx(0.3, abs=0.01)
    assert 0 < metrics["run"]["group_ratio"] < 1


def test_param_target_is_met_by_budget_and_by_local_selection(tmp_path):
    # 2 KV groups per layer: a uniform group ratio moves each layer's attention in halves, and the nearest
    # one removes 10%. Budget selection (the default method's) removes the fraction itself, to one channel;
    # local selection cuts every layer alike, by counts of each kind that remove it to half a channel a layer
    args = (
        "debug=tiny",
        "model.tiny.num_kv_heads=2",
        "prune.target=params",
        "prune.ratio=0.15",
        "save_model=false",
    )
    local = run(compose(*args, "prune.selection=local", f"output_dir={tmp_path / 'local'}"))
    budget = run(compose(*args, f"output_dir={tmp_path / 'budget'}"))
    assert local["run"]["param_budget"] is None and budget["run"]["unit_counts"] is None
    assert budget["run"]["group_ratio"] == local["run"]["group_ratio"]  # the schedule's end, for both
    before, after = budget["params"]["total_before"], budget["params"]["total_after"]
    assert budget["run"]["param_budget"] == round(0.15 * before)
    assert 0 <= budget["run"]["param_budget"] - (before - after) < 3 * 64  # within one channel (gate/up/down)
    counts = local["run"]["unit_counts"]
    pruned = [k for k in local["kept_per_layer"].values() if k["channels"] < 128]
    assert pruned and all(
        k
        == {
            "q_heads": 4 - 2 * counts["attn"],
            "kv_heads": 2 - counts["attn"],
            "channels": 128 - counts["mlp"],
        }
        for k in pruned
    )
    removed = local["params"]["total_before"] - local["params"]["total_after"]
    assert abs(removed - 0.15 * before) <= len(pruned) * 3 * 64 / 2


def test_magnitude_and_grad_methods_run(tmp_path):
    for method in ("magnitude", "grad"):
        metrics = run(
            compose("debug=tiny", f"method={method}", "save_model=false", f"output_dir={tmp_path / method}")
        )
        assert metrics["run"]["criterion"] == method
        assert metrics["achieved_ratio"]["channels"] == pytest.approx(0.2, abs=0.01)


def test_sweep_runs_each_combination(tmp_path):
    run_cli(
        "-m",
        "debug=tiny",
        "method=loraprune,magnitude",
        "prune.ratio=0.25,0.5",
        "save_model=false",
        f"hydra.sweep.dir={tmp_path}/sweep",
        "trainer.steps=2",
        cwd=REPO,
        timeout=600,
    )
    runs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert len(runs) == 4
    seen = {
        (json.loads(p.read_text())["run"]["method"], json.loads(p.read_text())["run"]["ratio"]) for p in runs
    }
    assert seen == {("loraprune", 0.25), ("loraprune", 0.5), ("magnitude", 0.25), ("magnitude", 0.5)}


def test_masked_training_reaches_target_even_without_steps(tmp_path):
    metrics = run(
        compose(
            "debug=tiny", "trainer.steps=0", "method=magnitude", "save_model=false", f"output_dir={tmp_path}"
        )
    )
    assert metrics["achieved_ratio"]["channels"] == pytest.approx(0.2, abs=0.01)
    assert torch.isfinite(torch.tensor(metrics["pruned"]["ppl"]["news_embedded"]))


def test_cli_bad_input_is_one_clear_line(tmp_path):
    import subprocess
    import sys

    from conftest import OFFLINE_ENV

    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "loraprune", "debug=tiny", "prune.ratio=1.5", f"output_dir={out}"],
        cwd=tmp_path,
        env=OFFLINE_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "loraprune: error: prune.ratio must be in [0, 1), got 1.5"
    assert "Traceback" not in proc.stderr
    assert not out.exists()
