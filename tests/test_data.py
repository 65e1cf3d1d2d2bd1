"""Tests of loraprune.data and loraprune.data.embedded_corpora (offline, tiny byte-level tokenizer)."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from loraprune import data
from loraprune.data import FinetuneDataSpec, build_finetune_dataset, collate, load_eval_text
from loraprune.data.embedded_corpora import (
    embedded_news_documents,
    embedded_news_split,
    embedded_wiki_articles,
    embedded_wiki_split,
    is_news_test_document,
    is_wiki_test_title,
)


def _byte_tokenizer(add_bos: bool = False) -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte, plus <pad>=0, <s>=1, </s>=2."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{ch: i + 3 for i, ch in enumerate(alphabet)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return _byte_tokenizer()


@pytest.fixture
def instruction_jsonl(tmp_path):
    path = tmp_path / "inst.jsonl"
    rows = [
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "input": "", "output": "Hi there, friend!"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


# ------------------------------------------------------------------------------ embedded corpora
def test_wiki_split_disjoint_stable_and_clean():
    articles = embedded_wiki_articles()
    finetune, test = embedded_wiki_split()
    assert 60 <= len(articles) <= 150
    assert 10 <= len(test) <= 40 and len(finetune) + len(test) == len(articles)
    ft_titles, test_titles = [a.title for a in finetune], [a.title for a in test]
    assert not set(ft_titles) & set(test_titles)
    # the rule depends on the title only; pinned titles guard against silent changes of the split
    assert test_titles == [a.title for a in articles if is_wiki_test_title(a.title)]
    assert {"Albedo", "Abraham Lincoln", "Albert Einstein", "Algorithm"} <= set(test_titles)
    assert {"Anarchism", "Autism", "Alabama", "Aristotle"} <= set(ft_titles)
    ft_paragraphs = {p for a in finetune for p in a.paragraphs}
    assert not any(p in ft_paragraphs for a in test for p in a.paragraphs)
    for art in articles:
        assert art.text.startswith(f"= {art.title} =\n\n") and art.num_words >= 200
        for marker in ("[[", "]]", "{{", "}}", "<ref", "'''", "|", "Category:", "#REDIRECT"):
            assert marker not in art.text, (art.title, marker)


def test_news_split_disjoint():
    docs = embedded_news_documents()
    finetune, test = embedded_news_split()
    assert len(docs) == 300 and len(finetune) + len(test) == 300
    assert 100 <= len(test) <= 200 and not set(finetune) & set(test)
    assert all(is_news_test_document(d) for d in test)


# ------------------------------------------------------------------------------------ eval text
def test_eval_text_embedded():
    finetune, test = embedded_wiki_split()
    assert load_eval_text("wiki_embedded") == "\n\n".join(a.text for a in test)
    assert load_eval_text("wiki_embedded", split="finetune") == "\n\n".join(a.text for a in finetune)
    assert load_eval_text("news_embedded") == "\n\n".join(embedded_news_split()[1])
    with pytest.raises(ValueError, match="split"):
        load_eval_text("news_embedded", split="train")


def test_eval_text_local_files(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("hello world\nsecond line")
    assert load_eval_text(str(txt)) == "hello world\nsecond line"
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"text": "one", "body": "x"}\n{"text": "two", "body": "y"}\n')
    assert load_eval_text(str(jsonl)) == "one\n\ntwo"
    assert load_eval_text(str(jsonl), field="body") == "x\n\ny"
    parquet = tmp_path / "a.parquet"
    datasets.Dataset.from_dict({"sentence": ["a b", "c d"]}).to_parquet(str(parquet))
    assert load_eval_text(str(parquet), field="sentence") == "a b\n\nc d"
    with pytest.raises(ValueError, match="no field 'text'"):
        load_eval_text(str(parquet))


def test_source_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown eval text source 'wikitext3'"):
        load_eval_text("wikitext3")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_eval_text(str(tmp_path / "missing.txt"))
    bad = tmp_path / "a.csv"
    bad.write_text("text\nx\n")
    with pytest.raises(ValueError, match="unsupported file extension"):
        data.validate_text_source(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="no text"):
        load_eval_text(str(empty))
    for name in ("wikitext2", "ptb", "wiki_embedded", "news_embedded"):
        data.validate_text_source(name)  # cheap, loads nothing
    with pytest.raises(ValueError, match="unknown finetune text source 'ptb'"):
        data.validate_text_source("ptb", purpose="finetune")


def test_hub_failure_points_to_embedded(monkeypatch, tok):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="wiki_embedded"):
        load_eval_text("wikitext2")
    with pytest.raises(RuntimeError, match="MBZUAI/LaMini-instruction"):
        build_finetune_dataset(FinetuneDataSpec("lamini"), tok)


# -------------------------------------------------------------------------------- fine-tune data
def test_text_blocks_exact_length_and_finetune_side_only(tok):
    spec = FinetuneDataSpec("news_embedded", cutoff_len=64)
    blocks = build_finetune_dataset(spec, tok)
    finetune_text = "\n\n".join(embedded_news_split()[0])
    n_tokens = len(tok(finetune_text, add_special_tokens=False)["input_ids"])
    assert len(blocks) == n_tokens // 64
    assert all(len(b["input_ids"]) == 64 and b["labels"] == b["input_ids"] for b in blocks)
    assert all(1 not in b["input_ids"] for b in blocks)  # no special tokens
    assert tok.decode(blocks[3]["input_ids"])[4:-4] in finetune_text


def test_nsamples_caps_deterministically(tok):
    full = build_finetune_dataset(FinetuneDataSpec("news_embedded", cutoff_len=32), tok)
    a = build_finetune_dataset(FinetuneDataSpec("news_embedded", cutoff_len=32, nsamples=7, seed=1), tok)
    b = build_finetune_dataset(FinetuneDataSpec("news_embedded", cutoff_len=32, nsamples=7, seed=1), tok)
    c = build_finetune_dataset(FinetuneDataSpec("news_embedded", cutoff_len=32, nsamples=7, seed=2), tok)
    assert len(a) == 7 and a == b and a != c
    assert all(s in full for s in a)
    assert len(
        build_finetune_dataset(FinetuneDataSpec("news_embedded", cutoff_len=32, nsamples=10**6), tok)
    ) == len(full)


def test_instruction_masking(tok, instruction_jsonl):
    spec = FinetuneDataSpec(str(instruction_jsonl), cutoff_len=512, train_on_inputs=False)
    samples = build_finetune_dataset(spec, tok)
    assert len(samples) == 3
    prompt = data.PROMPT_TEMPLATES["alpaca"].render("Add the numbers.", "2 and 3")
    assert "### Input:\n2 and 3" in prompt
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    ids, labels = samples[1]["input_ids"], samples[1]["labels"]
    assert tok.decode(ids) == prompt + "5</s>" and ids[-1] == tok.eos_token_id
    assert labels[:n_prompt] == [-100] * n_prompt and labels[n_prompt:] == ids[n_prompt:]
    trained = build_finetune_dataset(FinetuneDataSpec(str(instruction_jsonl), cutoff_len=512), tok)
    assert all(s["labels"] == s["input_ids"] for s in trained)
    short = build_finetune_dataset(FinetuneDataSpec(str(instruction_jsonl), cutoff_len=20, nsamples=2), tok)
    assert len(short) == 2 and all(len(s["input_ids"]) == len(s["labels"]) == 20 for s in short)


def test_instruction_bos_and_none_template(instruction_jsonl):
    bos_tok = _byte_tokenizer(add_bos=True)
    spec = FinetuneDataSpec(
        str(instruction_jsonl), prompt_template="none", cutoff_len=512, train_on_inputs=False
    )
    sample = build_finetune_dataset(spec, bos_tok)[0]
    assert sample["input_ids"][0] == bos_tok.bos_token_id and sample["input_ids"].count(1) == 1
    assert bos_tok.decode(sample["input_ids"][1:]) == "Name a colour.\nBlue.</s>"
    assert sample["labels"][: 1 + len("Name a colour.\n")] == [-100] * (1 + len("Name a colour.\n"))


def test_lamini_fields_via_hub(monkeypatch, tok):
    rows = {"instruction": ["q1", "q2", "q3", "q4"], "response": ["a1", "a2", "a3", "a4"]}
    calls = []

    def fake_load(path, name=None, **kwargs):
        calls.append(path)
        return datasets.Dataset.from_dict(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    samples = build_finetune_dataset(FinetuneDataSpec("lamini", nsamples=2, prompt_template="none"), tok)
    assert calls == ["MBZUAI/LaMini-instruction"] and len(samples) == 2
    assert all(tok.decode(s["input_ids"]).startswith("q") for s in samples)


def test_local_text_kinds(tmp_path, tok):
    txt = tmp_path / "t.txt"
    txt.write_text("x" * 100)
    assert len(build_finetune_dataset(FinetuneDataSpec(str(txt), cutoff_len=30), tok)) == 3
    with pytest.raises(ValueError, match="fewer than cutoff_len=128"):
        build_finetune_dataset(FinetuneDataSpec(str(txt)), tok)
    parquet = tmp_path / "t.parquet"
    datasets.Dataset.from_dict({"content": ["y" * 50, "z" * 48]}).to_parquet(str(parquet))
    blocks = build_finetune_dataset(FinetuneDataSpec(str(parquet), cutoff_len=25, field="content"), tok)
    assert len(blocks) == 4  # 50 + 2 + 48 tokens
    with pytest.raises(ValueError, match="no field 'text'"):
        build_finetune_dataset(FinetuneDataSpec(str(parquet)), tok)
    with pytest.raises(ValueError, match="not an instruction set"):
        build_finetune_dataset(FinetuneDataSpec(str(parquet), kind="instruction"), tok)


def test_spec_errors(tmp_path, tok):
    with pytest.raises(ValueError, match="kind"):
        FinetuneDataSpec("wiki_embedded", kind="chat")
    with pytest.raises(ValueError, match="prompt_template"):
        FinetuneDataSpec("alpaca", prompt_template="vicuna")
    with pytest.raises(ValueError, match="nsamples"):
        FinetuneDataSpec("alpaca", nsamples=0)
    with pytest.raises(ValueError, match="only supports kind='instruction'"):
        build_finetune_dataset(FinetuneDataSpec("alpaca", kind="text"), tok)
    with pytest.raises(ValueError, match="unknown finetune text source 'c4'"):
        build_finetune_dataset(FinetuneDataSpec("c4"), tok)
    with pytest.raises(FileNotFoundError):
        build_finetune_dataset(FinetuneDataSpec(str(tmp_path / "nope.jsonl")), tok)


def test_collate_pads_right():
    batch = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    out = collate(batch, pad_token_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert all(t.dtype == torch.long for t in out.values())
