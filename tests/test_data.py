"""Tests of loraprune.data and loraprune.data.embedded_corpora (offline, tiny byte-level tokenizer).

The hub sets run through the real loading, prompt and tokenizing code on a fixture mirror
(:func:`loraprune.data.mirror.write_fixture_mirror`); only the download is replaced.
"""

from __future__ import annotations

import json

import datasets
import pyarrow.parquet as pq
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
from loraprune.data.mirror import MIRROR_ENV, split_file, write_fixture_mirror


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


@pytest.fixture(autouse=True)
def no_mirror_env(monkeypatch):
    """A mirror set in the caller's environment must not leak into the tests."""
    monkeypatch.delenv(MIRROR_ENV, raising=False)


@pytest.fixture(scope="module")
def hub_mirror(tmp_path_factory):
    return write_fixture_mirror(tmp_path_factory.mktemp("hub_mirror"))


def _rows(mirror, name: str, split: str | None = None) -> list[dict]:
    """The records the fixture mirror holds for ``name`` (read with pyarrow, not with the code under test)."""
    return pq.read_table(split_file(mirror, data.HUB_SOURCES[name], split)).to_pylist()


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
    with pytest.raises(RuntimeError, match="wiki_embedded") as err:
        load_eval_text("wikitext2")
    assert MIRROR_ENV in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(RuntimeError, match="MBZUAI/LaMini-instruction"):
        build_finetune_dataset(FinetuneDataSpec("lamini"), tok)


# -------------------------------------------------------------------------------- fine-tune data
def test_text_blocks_exact_length_and_finetune_side_only(tok):
    spec = FinetuneDataSpec("news_embedded", cutoff_len=64, holdout_val=False)  # the whole fine-tune side
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


# ------------------------------------------------------------------------------ hub sets via a mirror
def test_fixture_mirror_holds_every_hub_set(hub_mirror):
    for name in data.HUB_SOURCES:
        assert len(_rows(hub_mirror, name)) >= 20, name
    for name in data.EVAL_HUB_SOURCES:
        data.validate_eval_source(name, mirror=hub_mirror)
    for name in data.INSTRUCTION_HUB_SOURCES:
        data.validate_finetune_source(name, mirror=hub_mirror)
    assert set(_rows(hub_mirror, "lamini")[0]) == {"instruction", "response", "instruction_source"}
    assert set(_rows(hub_mirror, "alpaca")[0]) == {"instruction", "input", "output"}


def test_eval_text_through_mirror(hub_mirror):
    # LLM-Pruner: the split's rows joined by "\n\n" (wikitext's empty rows included), for both sets
    wikitext = load_eval_text("wikitext2", mirror=hub_mirror)
    rows = [r["text"] for r in _rows(hub_mirror, "wikitext2")]
    assert wikitext == "\n\n".join(rows) and "" in rows and " = River otter = \n" in rows
    train = [r["text"] for r in _rows(hub_mirror, "wikitext2", "train")]
    assert load_eval_text("wikitext2", split="train", mirror=hub_mirror) == "\n\n".join(train) != wikitext
    ptb = load_eval_text("ptb", mirror=str(hub_mirror))
    sentences = [r["sentence"] for r in _rows(hub_mirror, "ptb")]
    assert ptb == "\n\n".join(sentences) and len(sentences) == 40
    assert " N " in ptb and not any(ch.isdigit() for ch in ptb)  # PTB's spelling of numbers
    test = [r["sentence"] for r in _rows(hub_mirror, "ptb", "test")]
    assert load_eval_text("ptb", split="test", mirror=hub_mirror) == "\n\n".join(test)


def test_alpaca_through_mirror(hub_mirror, tok):
    records = _rows(hub_mirror, "alpaca")
    spec = FinetuneDataSpec("alpaca", cutoff_len=1024, train_on_inputs=False)
    samples = build_finetune_dataset(spec, tok, mirror=hub_mirror)
    assert len(samples) == len(records)
    with_input = next(i for i, r in enumerate(records) if r["input"])
    without_input = next(i for i, r in enumerate(records) if not r["input"])
    template = data.PROMPT_TEMPLATES["alpaca"]
    for i in (with_input, without_input):
        rec, sample = records[i], samples[i]
        prompt = template.render(rec["instruction"], rec["input"])
        assert ("### Input:\n" in prompt) == bool(rec["input"])
        assert tok.decode(sample["input_ids"]) == prompt + rec["output"] + "</s>"
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        labels, ids = sample["labels"], sample["input_ids"]
        assert labels[:n_prompt] == [-100] * n_prompt and labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(samples[with_input]["input_ids"]).startswith(
        "Below is an instruction that describes a task, paired with an input"
    )
    trained = build_finetune_dataset(FinetuneDataSpec("alpaca", cutoff_len=1024), tok, mirror=hub_mirror)
    assert all(s["labels"] == s["input_ids"] for s in trained)
    some = build_finetune_dataset(FinetuneDataSpec("alpaca", nsamples=5, seed=3), tok, mirror=hub_mirror)
    assert len(some) == 5 and all(len(s["input_ids"]) <= 128 for s in some)


def test_lamini_through_mirror(hub_mirror, tok):
    records = _rows(hub_mirror, "lamini")
    spec = FinetuneDataSpec("lamini", cutoff_len=1024, train_on_inputs=False)
    samples = build_finetune_dataset(spec, tok, mirror=hub_mirror)
    assert len(samples) == len(records)
    template = data.PROMPT_TEMPLATES["alpaca"]
    for rec, sample in zip(records, samples, strict=True):
        prompt = template.render(rec["instruction"])  # LaMini has no input: the no-input prompt
        assert tok.decode(sample["input_ids"]) == prompt + rec["response"] + "</s>"
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        assert sample["labels"][:n_prompt] == [-100] * n_prompt
        assert sample["labels"][n_prompt:] == sample["input_ids"][n_prompt:]


def test_mirror_from_env_and_parameter(hub_mirror, tmp_path, monkeypatch, tok):
    expected = "\n\n".join(r["sentence"] for r in _rows(hub_mirror, "ptb"))
    monkeypatch.setenv(MIRROR_ENV, str(hub_mirror))
    assert load_eval_text("ptb") == expected
    assert len(build_finetune_dataset(FinetuneDataSpec("lamini", nsamples=3), tok)) == 3
    empty = tmp_path / "empty_mirror"
    empty.mkdir()
    with pytest.raises(ValueError, match="has no copy of ptb-text-only/ptb_text_only"):
        load_eval_text("ptb", mirror=empty)  # the parameter wins over the variable
    monkeypatch.setenv(MIRROR_ENV, str(empty))
    assert load_eval_text("ptb", mirror=hub_mirror) == expected
    with pytest.raises(ValueError, match="has no copy of MBZUAI/LaMini-instruction"):
        build_finetune_dataset(FinetuneDataSpec("lamini"), tok)


def test_mirror_errors_are_one_line_and_early(hub_mirror, tmp_path, monkeypatch):
    def must_not_load(*args, **kwargs):
        raise AssertionError("validation must not load data")

    empty = tmp_path / "empty_mirror"
    empty.mkdir()
    monkeypatch.setattr(datasets, "load_dataset", must_not_load)
    cases = [
        (lambda: data.validate_eval_source("wikitext2", mirror=empty), "Salesforce/wikitext/wikitext-2"),
        (lambda: data.validate_finetune_source("alpaca", mirror=empty), "huggingface-cli download"),
        (lambda: data.validate_eval_source("ptb", split="train", mirror=hub_mirror), "no 'train' split"),
        (lambda: data.validate_eval_source("ptb", mirror=tmp_path / "nowhere"), "is not a directory"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=f"from {MIRROR_ENV}"):
        data.validate_text_source("wikitext2")
    data.validate_eval_source("wiki_embedded")  # a mirror matters only to hub sets


def test_mirror_of_main_branch_snapshot_and_old_ids(tmp_path):
    # a snapshot of alpaca-cleaned's main branch: one JSON array at the repository root
    repo = tmp_path / "yahma" / "alpaca-cleaned"
    repo.mkdir(parents=True)
    (repo / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# Alpaca cleaned\n")
    rows = [{"output": "Blue.", "input": "", "instruction": "Name a colour."}]
    (repo / "alpaca_data_cleaned.json").write_text(json.dumps(rows))
    data.validate_finetune_source("alpaca", mirror=tmp_path)
    # the older hub id as folder name, the split as a jsonl file in the parquet-export layout
    split_dir = tmp_path / "ptb_text_only" / "penn_treebank" / "validation"
    split_dir.mkdir(parents=True)
    (split_dir / "0000.jsonl").write_text('{"sentence": "a b"}\n{"sentence": "c d"}\n')
    assert load_eval_text("ptb", mirror=tmp_path) == "a b\n\nc d"


# ---------------------------------------------------------------------------- validation by purpose
def test_validation_by_purpose(tmp_path):
    for name in ("lamini", "alpaca", "wiki_embedded", "news_embedded"):
        data.validate_finetune_source(name)
    for name in ("wikitext2", "ptb", "wiki_embedded", "news_embedded"):
        data.validate_eval_source(name)
    with pytest.raises(ValueError, match=r"unknown eval text source 'lamini' \(fine-tune data, not"):
        data.validate_eval_source("lamini")
    with pytest.raises(ValueError, match="unknown finetune text source 'wikitext2' .evaluation text"):
        data.validate_finetune_source("wikitext2")
    with pytest.raises(ValueError, match="only supports kind='instruction'"):
        data.validate_finetune_source("lamini", kind="text")
    with pytest.raises(ValueError, match="only supports kind='text'"):
        data.validate_finetune_source("news_embedded", kind="instruction")
    with pytest.raises(ValueError, match="kind must be one of"):
        data.validate_finetune_source("alpaca", kind="chat")
    data.validate_text_source("lamini", purpose="finetune")
    with pytest.raises(ValueError, match="unknown purpose"):
        data.validate_text_source("lamini", purpose="train")


def test_bad_files_fail_early_in_one_line(tmp_path):
    def write(name: str, content: bytes):
        path = tmp_path / name
        path.write_bytes(content)
        return str(path)

    latin1 = "Caf\u00e9 au lait, na\u00efve r\u00e9sum\u00e9.\n".encode("latin-1")
    empty_parquet = tmp_path / "empty.parquet"
    datasets.Dataset.from_dict({"text": []}).to_parquet(str(empty_parquet))
    cases = {
        write("empty.jsonl", b""): "contains no text",
        write("blank.txt", b"\n  \n"): "contains no text",
        write("latin1.txt", latin1): r"is not UTF-8 text \(byte 0xe9 at offset 3\)",
        write("utf16.jsonl", '{"text": "hi"}\n'.encode("utf-16")): "is not UTF-8 text",
        write("nul.txt", b"abc\x00def"): "NUL bytes",
        write("bad.jsonl", b"\n{'text': 'single quotes'}\n"): "line 2 is not JSON",
        write("list.jsonl", b'["a", "b"]\n'): "line 1 is not a JSON object",
        write("csv.json", b"text\nhello\n"): "is not JSON",
        write("fake.parquet", b"not a parquet file at all"): "is not a parquet file",
        str(empty_parquet): "contains no rows",
        str(tmp_path / "missing.jsonl"): "not found: .*missing.jsonl",
        str(tmp_path / "notes.docx"): "unsupported file extension '.docx'",
        "c4": "unknown finetune text source 'c4'",
    }
    for name, message in cases.items():
        for validate in (data.validate_finetune_source, data.validate_eval_source):
            with pytest.raises(ValueError, match=message.replace("finetune", "(finetune|eval)")) as err:
                validate(name)
            assert "\n" not in str(err.value), name
    with pytest.raises(FileNotFoundError):  # a missing file is both kinds of error
        data.validate_finetune_source(str(tmp_path / "missing.jsonl"))
    good = write("good.jsonl", b'\xef\xbb\xbf{"text": "caf\xc3\xa9"}\n')  # UTF-8 with a byte-order mark
    data.validate_finetune_source(good)


def test_bad_fine_tune_file_fails_before_tokenizing(tmp_path):
    class NoTokenizer:
        def __getattr__(self, name):
            raise AssertionError("must fail before tokenizing")

    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="contains no text"):
        build_finetune_dataset(FinetuneDataSpec(str(empty)), NoTokenizer())
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": \n')  # bad past the first line: found when reading
    with pytest.raises(ValueError, match="cannot read records from .*broken.jsonl") as err:
        build_finetune_dataset(FinetuneDataSpec(str(broken)), NoTokenizer())
    assert "\n" not in str(err.value)
