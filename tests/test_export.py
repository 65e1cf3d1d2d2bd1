"""Self-contained checkpoints: per-layer widths load with trust_remote_code where loraprune cannot be
imported (MHA, GQA, q/k/v bias, Qwen2-style bias, 2:4), uniform widths load as stock LLaMA, the card, the
export command, lm-eval's own CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import OFFLINE_ENV

from loraprune import load_pruned, save_pruned
from loraprune.cli import export as cli
from loraprune.core.nm import is_nm_sparse, nm_keep_mask
from loraprune.core.plan import LayerKeep, PruningPlan
from loraprune.core.structure import ALL_PROJECTIONS, Geometry, decoder_layers, projection
from loraprune.core.surgery import apply_plan
from loraprune.export.card import ModelCard, front_matter
from loraprune.models.loading import TinySpec, load_model

CASES = {
    "mha": TinySpec(num_heads=4, num_kv_heads=4),
    "gqa": TinySpec(num_heads=8, num_kv_heads=2),
    "gqa_bias": TinySpec(num_heads=8, num_kv_heads=2, attention_bias=True),
}
NEW_TOKENS = 8

# Runs in a fresh interpreter where importing loraprune fails: loads each saved directory with
# trust_remote_code and records logits, greedy generations (dynamic and static cache) and zero masks.
REMOTE_SCRIPT = r"""
import importlib.abc, json, sys


class NoLoraprune(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "loraprune" or name.startswith("loraprune."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
        return None


sys.meta_path.insert(0, NoLoraprune())
try:
    import loraprune  # noqa: F401
    raise SystemExit("loraprune is importable")
except ModuleNotFoundError:
    pass

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

jobs = json.loads(sys.argv[1])
for job in jobs:
    model = AutoModelForCausalLM.from_pretrained(job["dir"], trust_remote_code=True, dtype=torch.float32)
    model.eval()
    ids = torch.load(job["ids"])
    mask = torch.ones_like(ids)
    kwargs = dict(attention_mask=mask, max_new_tokens=job["new_tokens"], min_new_tokens=job["new_tokens"],
                  do_sample=False, pad_token_id=model.config.eos_token_id)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    tokenizer = AutoTokenizer.from_pretrained(job["dir"], trust_remote_code=True)
    result = {
        "class": type(model).__name__,
        "transformers": transformers.__version__,
        "logits": logits,
        "dynamic": model.generate(ids, **kwargs),
        "static": model.generate(ids, cache_implementation="static", **kwargs),
        "zeros": {n: (p == 0) for n, p in model.named_parameters() if n.endswith("proj.weight")},
        "loraprune_modules": sorted(m for m in sys.modules if m.split(".")[0] == "loraprune"),
        "tokens": tokenizer("Pruned models travel.").input_ids,
    }
    torch.save(result, job["out"])
"""


def pythons() -> list[str]:
    """This interpreter, plus those in ``LORAPRUNE_TEST_PYTHONS`` (e.g. a venv with transformers 4.57)."""
    extra = [p for p in os.environ.get("LORAPRUNE_TEST_PYTHONS", "").split(os.pathsep) if p]
    return [sys.executable, *extra]


def random_plan(geo: Geometry, seed: int, unit: str = "kv_group") -> PruningPlan:
    """Different kept heads and channels per layer; layer 0 untouched (as the default exclusion)."""
    g = torch.Generator().manual_seed(seed)
    layers = {}
    rep = geo.queries_per_kv
    for i in range(1, geo.num_layers):
        n_kv = max(1, geo.num_kv_heads - i % geo.num_kv_heads) if rep > 1 else geo.num_kv_heads
        kv = sorted(torch.randperm(geo.num_kv_heads, generator=g)[:n_kv].tolist())
        if rep > 1:
            q = [k * rep + j for k in kv for j in range(rep)]
        else:
            q = sorted(torch.randperm(geo.num_heads, generator=g)[: geo.num_heads - i].tolist())
            kv = q
        ch = sorted(
            torch.randperm(geo.intermediate_size, generator=g)[: geo.intermediate_size // (i + 1)].tolist()
        )
        layers[i] = LayerKeep(q_heads=q, kv_heads=kv, channels=ch)
    return PruningPlan(geo, unit, layers)


def pruned_tiny(spec: TinySpec, seed: int = 0):
    model, tok = load_model("tiny", tiny=spec, dtype="float32", device="cpu")
    plan = random_plan(Geometry.from_config(model.config), seed)
    return apply_plan(model, plan), tok, plan


def two_four_tiny():
    """A tiny GQA model whose layers 1.. follow 2:4 exactly (no group removed)."""
    model, tok = load_model("tiny", tiny=CASES["gqa_bias"], dtype="float32", device="cpu")
    g = torch.Generator().manual_seed(3)
    layers = decoder_layers(model)
    with torch.no_grad():
        for i in range(1, len(layers)):
            for name in ALL_PROJECTIONS:
                w = projection(layers[i], name).weight
                w.mul_(nm_keep_mask(torch.rand(w.shape, generator=g), 2, 4))
    return model, tok, PruningPlan(Geometry.from_config(model.config))


def expected(model, ids):
    mask = torch.ones_like(ids)
    kwargs = dict(
        attention_mask=mask,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=model.config.eos_token_id,
    )
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    return {
        "logits": logits,
        "dynamic": model.generate(ids, **kwargs),
        "static": model.generate(ids, cache_implementation="static", **kwargs),
        "zeros": {n: (p == 0) for n, p in model.named_parameters() if n.endswith("proj.weight")},
    }


def run_without_loraprune(python: str, jobs: list[dict], tmp: Path) -> None:
    env = {**OFFLINE_ENV, "HF_MODULES_CACHE": str(tmp / "hf_modules"), "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [python, "-c", REMOTE_SCRIPT, json.dumps(jobs)],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def remote_results(tmp_path_factory):
    """Every case saved, loaded by every interpreter with loraprune hidden: (expected, {python: result})."""
    tmp = tmp_path_factory.mktemp("remote")
    ids = torch.randint(3, 259, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.save(ids, tmp / "ids.pt")
    cases = {name: pruned_tiny(spec, seed=i) for i, (name, spec) in enumerate(CASES.items())}
    cases["2:4"] = two_four_tiny()
    wanted, jobs = {}, []
    for name, (model, tok, plan) in cases.items():
        folder = tmp / name.replace(":", "of")
        save_pruned(model, tok, plan, folder)
        wanted[name] = {**expected(model, ids), "tokens": tok("Pruned models travel.").input_ids}
        for k in range(len(pythons())):
            jobs.append(
                {
                    "dir": str(folder),
                    "ids": str(tmp / "ids.pt"),
                    "out": str(tmp / f"{folder.name}_{k}.pt"),
                    "new_tokens": NEW_TOKENS,
                }
            )
    got = {}
    for k, python in enumerate(pythons()):
        run_without_loraprune(python, [j for j in jobs if j["out"].endswith(f"_{k}.pt")], tmp)
        for name in cases:
            got[(name, python)] = torch.load(tmp / f"{name.replace(':', 'of')}_{k}.pt")
    return wanted, got


@pytest.mark.parametrize("case", [*CASES, "2:4"])
def test_checkpoint_loads_without_loraprune(remote_results, case):
    wanted, got = remote_results
    for python in pythons():
        result = got[(case, python)]
        assert result["loraprune_modules"] == []
        assert result["class"] == ("LlamaForCausalLM" if case == "2:4" else "PrunedLlamaForCausalLM")
        where = f"{case} with transformers {result['transformers']}"
        assert torch.allclose(result["logits"], wanted[case]["logits"], atol=1e-5, rtol=0), where
        assert torch.equal(result["dynamic"], wanted[case]["dynamic"]), where
        assert torch.equal(result["static"], wanted[case]["static"]), where
        assert torch.equal(wanted[case]["dynamic"], wanted[case]["static"])
        assert result["tokens"] == wanted[case]["tokens"], where
        zeros = result["zeros"]
        assert zeros.keys() == wanted[case]["zeros"].keys()
        assert all(torch.equal(zeros[n], wanted[case]["zeros"][n]) for n in zeros), where


def test_uniform_widths_give_a_stock_checkpoint(tmp_path, tokens):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    model, tok = load_model("tiny", tiny=CASES["gqa_bias"], dtype="float32", device="cpu")
    geo = Geometry.from_config(model.config)
    keep = LayerKeep(q_heads=[0, 1, 4, 5], kv_heads=[0, 1], channels=list(range(0, 128, 2)))
    plan = PruningPlan(geo, "query_head", {i: keep for i in range(geo.num_layers)})
    apply_plan(model, plan)
    save_pruned(model, tok, plan, tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert not any(f.endswith(".py") for f in files)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "auto_map" not in config
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]) == (
        4,
        2,
        64,
    )
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert type(plain) is LlamaForCausalLM
    with torch.no_grad():
        assert torch.equal(plain(input_ids=tokens).logits, model(input_ids=tokens).logits)


@pytest.mark.parametrize("case", sorted(CASES))
def test_in_memory_config_states_the_pruned_widths(case, tokens):
    model, _, plan = pruned_tiny(CASES[case])
    summary = plan.summary()
    config = model.config
    assert config.layer_num_attention_heads == [summary[str(i)]["q_heads"] for i in range(4)]
    assert config.layer_num_key_value_heads == [summary[str(i)]["kv_heads"] for i in range(4)]
    assert config.layer_intermediate_size == [summary[str(i)]["channels"] for i in range(4)]
    # what sizes from the config works: a static cache (per layer) equals the dynamic one
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=2)
    ids = tokens[:1]
    assert torch.equal(
        model.generate(ids, **kwargs), model.generate(ids, cache_implementation="static", **kwargs)
    )


def test_qwen2_style_bias_keeps_o_proj_without_bias(tmp_path, tokens):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=259,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config).eval()
    plan = random_plan(Geometry.from_config(config), seed=5)
    apply_plan(model, plan)
    save_pruned(model, None, plan, tmp_path / "q")
    saved = json.loads((tmp_path / "q" / "config.json").read_text())
    assert saved["attention_bias"] is True and saved["attention_out_bias"] is False
    reloaded = load_pruned(tmp_path / "q")
    assert reloaded.model.layers[1].self_attn.o_proj.bias is None
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=tokens).logits, model(input_ids=tokens).logits, atol=1e-5)


def test_load_pruned_reads_every_form(tmp_path, tokens):
    model, tok, plan = pruned_tiny(CASES["gqa_bias"])
    save_pruned(model, tok, plan, tmp_path / "per_layer")
    reloaded = load_pruned(tmp_path / "per_layer")
    assert reloaded.config.layer_num_attention_heads == model.config.layer_num_attention_heads
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=tokens).logits, model(input_ids=tokens).logits)
    with pytest.raises(ValueError, match="different widths"):
        save_pruned(model, tok, plan, tmp_path / "stock", form="stock")


def test_auto_classes_in_a_loraprune_process(tmp_path, tokens):
    """With loraprune imported (``pruned_llama`` registered with AutoConfig), the Auto classes read a
    per-layer checkpoint without a question, and ``trust_remote_code=True`` loads its saved code as before."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from loraprune.export.configuration_pruned_llama import PrunedLlamaConfig

    model, tok, plan = pruned_tiny(CASES["gqa"])
    save_pruned(model, tok, plan, tmp_path / "m")
    assert type(AutoConfig.from_pretrained(tmp_path / "m")) is PrunedLlamaConfig
    assert AutoTokenizer.from_pretrained(tmp_path / "m")("abc").input_ids == tok("abc").input_ids
    remote = AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=True, dtype=torch.float32)
    assert type(remote).__name__ == "PrunedLlamaForCausalLM"
    assert not type(remote).__module__.startswith("loraprune")  # the copy saved next to the weights
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "m", trust_remote_code=True)
    assert tokenizer("abc").input_ids == tok("abc").input_ids
    with torch.no_grad():
        assert torch.equal(remote(input_ids=tokens).logits, model(input_ids=tokens).logits)


def _card_inputs():
    metrics = {
        "run": {
            "model": "tiny_gqa",
            "method": "loraprune",
            "criterion": "loraprune",
            "ratio": 0.5,
            "target": "groups",
            "group_ratio": 0.5,
            "attention_unit": "kv_group",
            "steps": 3,
        },
        "dense": {"ppl": {"wiki_embedded": 31.25}},
        "pruned": {
            "ppl": {"wiki_embedded": 45.5},
            "zeroshot": {
                "tasks": {
                    "arc_easy": {
                        "acc": 0.5,
                        "paper_metric": "acc",
                        "paper_value": 0.5,
                        "split": "validation",
                        "n": 4,
                    }
                },
                "average_acc": 0.5,
                "source": "offline",
            },
        },
        "params": {
            "total_before": 1000,
            "total_after": 700,
            "decoder_before": 800,
            "decoder_after": 500,
            "removed_fraction_total": 0.3,
            "removed_fraction_decoder": 0.375,
        },
        "kept_per_layer": {"0": {"q_heads": 8, "kv_heads": 2, "channels": 128}},
    }
    config = {
        "model": {"name": "smollm2_135m", "source": "embedded"},
        "prune": {"ratio": 0.5, "pattern": None},
    }
    return metrics, config


def test_model_card_is_hub_metadata_with_results_command_and_config(tmp_path):
    model, tok, plan = pruned_tiny(CASES["gqa"])
    metrics, config = _card_inputs()
    save_pruned(
        model, tok, plan, tmp_path / "m", metrics=metrics, config=config, command="loraprune prune.ratio=0.5"
    )
    text = (tmp_path / "m" / "README.md").read_text()
    meta = front_matter(text)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["library_name"] == "transformers" and meta["license"] == "apache-2.0"
    assert {"pruned", "structured-pruning", "loraprune"} <= set(meta["tags"])
    for needle in (
        "31.250",
        "45.500",
        "1,000",
        "700",
        "30.00 %",
        "arc_easy",
        "loraprune prune.ratio=0.5",
        "trust_remote_code=True",
        "lm_eval --model hf",
        "ratio: 0.5",
    ):
        assert needle in text, needle
    card = ModelCard.from_dict(json.loads((tmp_path / "m" / "loraprune_card.json").read_text()))
    assert card.command == "loraprune prune.ratio=0.5"


def test_two_four_card_and_bf16_export_keep_the_pattern(tmp_path):
    model, tok, plan = two_four_tiny()
    save_pruned(model, tok, plan, tmp_path / "run" / "model")
    text = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "2:4 sparse kernels" in text and "to_sparse_semi_structured" in text
    assert "2-of-4-sparsity" in front_matter(text)["tags"]
    cli.main([str(tmp_path / "run"), "--out", str(tmp_path / "bf16"), "--dtype", "bf16"])
    exported = load_pruned(tmp_path / "bf16")
    assert next(exported.parameters()).dtype == torch.bfloat16
    for (name, w), (_, w0) in zip(exported.named_parameters(), model.named_parameters(), strict=True):
        if name.endswith("proj.weight"):
            assert torch.equal(w == 0, w0 == 0), name
            if ".layers.0." not in name:
                assert is_nm_sparse(w, 2, 4)


def test_export_command_rewrites_a_run(tmp_path, tokens):
    model, tok, plan = pruned_tiny(CASES["mha"])
    metrics, config = _card_inputs()
    run = tmp_path / "run"
    save_pruned(model, tok, plan, run / "model", metrics=metrics, config=config, command="loraprune x=1")
    cli.main([str(run), "--out", str(tmp_path / "out"), "--dtype", "bf16"])
    out = tmp_path / "out"
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert "loraprune x=1" in (out / "README.md").read_text()
    reloaded = load_pruned(out, dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=tokens).logits, model(input_ids=tokens).logits, atol=0.1)
    with pytest.raises(SystemExit) as stop:
        cli.main([str(run), "--out", str(tmp_path / "s"), "--form", "stock"])
    assert stop.value.code == 2


def test_push_to_hub_fails_clearly_offline_or_without_token(tmp_path, monkeypatch, capsys):
    model, tok, plan = pruned_tiny(CASES["mha"])
    save_pruned(model, tok, plan, tmp_path / "m")
    args = [str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--push-to-hub", "me/pruned"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit):
        cli.main(args)
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(SystemExit):
        cli.main(args)
    assert "hf auth login" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_lm_eval_cli_runs_on_an_exported_checkpoint(tmp_path):
    model, tok, plan = pruned_tiny(CASES["gqa_bias"])
    save_pruned(model, tok, plan, tmp_path / "m")
    env = {**OFFLINE_ENV, "HF_MODULES_CACHE": str(tmp_path / "hf_modules")}
    include = subprocess.run(
        [sys.executable, "-m", "loraprune.export.tasks", str(tmp_path / "tasks"), "--tasks", "arc_easy"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    proc = subprocess.run(
        [
            "lm_eval",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={tmp_path / 'm'},trust_remote_code=True",
            "--tasks",
            "arc_easy",
            "--include_path",
            include,
            "--limit",
            "4",
            "--batch_size",
            "4",
            "--device",
            "cpu",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "arc_easy" in proc.stdout and "acc" in proc.stdout


def test_card_from_saved_config_yaml_text():
    card = ModelCard.from_run(
        {}, yaml.safe_dump({"model": {"source": "tiny", "name": "tiny_llama"}}), ["loraprune", "a=1"]
    )
    assert card.base_model is None and card.base_name == "tiny_llama" and card.command == "loraprune a=1"


def test_cli_command_is_the_hydra_jobs_own_overrides():
    from conftest import CONF
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from loraprune.config.schema import register_configs
    from loraprune.export.card import cli_command

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["prune.ratio=0.3"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        assert cli_command() == "loraprune prune.ratio=0.3"
    finally:
        HydraConfig.instance().cfg = None
    assert cli_command(["/bin/loraprune", "a=1"]) == "loraprune a=1"


def test_a_per_layer_checkpoint_with_uniform_widths_exports_stock(tmp_path, tokens):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    model, tok = load_model("tiny", tiny=CASES["mha"], dtype="float32", device="cpu")
    geo = Geometry.from_config(model.config)
    keep = LayerKeep(q_heads=[1, 3], kv_heads=[1, 3], channels=list(range(64)))
    plan = PruningPlan(geo, "kv_group", {i: keep for i in range(geo.num_layers)})
    apply_plan(model, plan)
    save_pruned(model, tok, plan, tmp_path / "run" / "model", form="per_layer")
    assert (tmp_path / "run" / "model" / "modeling_pruned_llama.py").is_file()
    cli.main([str(tmp_path / "run"), "--out", str(tmp_path / "stock"), "--form", "stock"])
    config = json.loads((tmp_path / "stock" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert "auto_map" not in config and "layer_num_attention_heads" not in config
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "stock")
    assert type(plain) is LlamaForCausalLM
    with torch.no_grad():
        assert torch.equal(plain(input_ids=tokens).logits, model(input_ids=tokens).logits)


def test_export_completes_a_bare_card_from_the_run_files(tmp_path):
    model, tok, plan = pruned_tiny(CASES["gqa"])
    run = tmp_path / "run"
    save_pruned(model, tok, plan, run / "model")  # no card content, as the pipeline before #13's keywords
    metrics, config = _card_inputs()
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["prune.ratio=0.5", "output_dir=/tmp/x y"]))
    cli.main([str(run), "--out", str(tmp_path / "out")])
    text = (tmp_path / "out" / "README.md").read_text()
    assert front_matter(text)["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "45.500" in text and "loraprune prune.ratio=0.5 'output_dir=/tmp/x y'" in text


def test_model_card_of_a_parameter_target_says_the_budget(tmp_path):
    # budget selection: the group ratio is where the schedule ends, the budget what was removed
    model, tok, plan = pruned_tiny(CASES["gqa"])
    metrics, config = _card_inputs()
    metrics["run"].update(target="params", ratio=0.35, selection="budget", param_budget=350)
    save_pruned(model, tok, plan, tmp_path / "m", metrics=metrics, config=config)
    text = (tmp_path / "m" / "README.md").read_text()
    assert "| group ratio the schedule ends at | 0.500 |" in text
    assert "| parameters removed (budget) | 350 |" in text
    assert "group ratio per prunable layer" not in text


def test_model_card_of_a_local_parameter_target_says_the_counts(tmp_path):
    model, tok, plan = pruned_tiny(CASES["gqa"])
    metrics, config = _card_inputs()
    metrics["run"].update(target="params", ratio=0.35, selection="local", unit_counts={"attn": 1, "mlp": 40})
    save_pruned(model, tok, plan, tmp_path / "m", metrics=metrics, config=config)
    text = (tmp_path / "m" / "README.md").read_text()
    assert "| group ratio the schedule ends at | 0.500 |" in text
    assert "| units removed per prunable layer | attn 1, mlp 40 |" in text
