"""Perplexity windows: every window or an even spread, per-window losses with their documents, the chunked
loss equal to the full-logits loss, the dense cache, and the evaluation sets of other domains."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import compose

from loraprune import data
from loraprune.data.domain_corpora import clean_play_line, play_scenes
from loraprune.data.eval_text import group_wikitext_articles
from loraprune.evaluation.ppl import (
    TokenStream,
    perplexity,
    select_windows,
    stream_windows,
    tokenize_documents,
    window_losses,
    window_nll,
)
from loraprune.models.loading import TinySpec, load_model
from loraprune.run.evaluate import EvalRecord, read_window_losses
from loraprune.run.pipeline import to_config
from loraprune.run.resolve import ConfigError, validate


@pytest.fixture(scope="module")
def tiny_pair():
    return load_model("tiny", tiny=TinySpec(), dtype="float32", device="cpu")


@pytest.fixture
def tiny_model(tiny_pair):
    return tiny_pair[0]


@pytest.fixture
def tiny_tokenizer(tiny_pair):
    return tiny_pair[1]


def test_select_windows_every_window_or_evenly_spread():
    assert select_windows(10, None) == list(range(10))
    assert select_windows(10, 20) == list(range(10))
    assert select_windows(10, 5) == [0, 2, 4, 6, 8]  # every 2nd, not the first five
    assert select_windows(1000, 4) == [0, 250, 500, 750]
    spread = select_windows(1019, 64)
    assert len(spread) == 64 == len(set(spread)) and spread[-1] > 1000
    with pytest.raises(ValueError, match="max_windows must be >= 1"):
        select_windows(10, 0)


def test_windows_record_their_documents():
    ids = torch.arange(40)
    stream = TokenStream(ids, (0, 12, 30))  # documents start at tokens 0, 12 and 30
    windows, info = stream_windows(stream, 10, None)  # 4 windows: starts 0, 10, 20, 30
    assert windows.shape == (4, 10) and torch.equal(windows[1], torch.arange(10, 20))
    assert info.document == [0, 0, 1, 2] and info.windows_total == 4 and info.documents_total == 3
    _, spread = stream_windows(stream, 10, 2)
    assert spread.window == [0, 2] and spread.document == [0, 1]
    assert spread.coverage() == {"windows": 2, "of": 4, "documents": 2, "of_documents": 3}
    # unknown boundaries: every window is its own unit
    _, alone = stream_windows(TokenStream(ids), 10, None)
    assert alone.document == [0, 1, 2, 3] and alone.documents_total == 4
    with pytest.raises(ValueError, match="shorter than one window"):
        stream_windows(TokenStream(torch.arange(5)), 10, None)


def test_tokenize_documents_keeps_the_stream_and_finds_starts(tiny_tokenizer):
    docs = ["The first document is here.", "A second one follows it.", "And a third, last."]
    stream = tokenize_documents(docs, tiny_tokenizer)
    joined = tiny_tokenizer("\n\n".join(docs), add_special_tokens=False)["input_ids"]
    assert stream.ids.tolist() == joined
    assert len(stream.doc_starts) == 3 and stream.doc_starts[0] == 0
    for k in (1, 2):  # the text before a start decodes to the documents before it
        head = tiny_tokenizer.decode(stream.ids[: stream.doc_starts[k]].tolist())
        assert head.rstrip().endswith(docs[k - 1][-6:].rstrip()) and docs[k][:5] not in head


def test_chunked_loss_equals_full_logits(tiny_model):
    torch.manual_seed(0)
    batch = torch.randint(0, tiny_model.config.vocab_size, (3, 17))
    with torch.no_grad():
        logits = tiny_model(input_ids=batch).logits[:, :-1].float()
        full = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none").sum(1)
        chunked = window_nll(tiny_model, batch, chunk_tokens=5)  # chunks cross window boundaries
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-4)


def test_perplexity_is_exp_mean_nll_of_the_windows(tiny_model):
    ids = torch.randint(0, tiny_model.config.vocab_size, (8 * 16 + 5,))
    wl = window_losses(tiny_model, ids, seq_len=16, max_windows=None, batch_size=3)
    assert len(wl.nll) == 8 and wl.tokens_per_window == 15
    with torch.no_grad():
        w = ids[: 8 * 16].view(8, 16)
        logits = tiny_model(input_ids=w).logits[:, :-1]
        mean = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1)).item()
    assert math.isclose(wl.ppl, math.exp(mean), rel_tol=1e-5)
    assert math.isclose(perplexity(tiny_model, ids, 16, None, 8), wl.ppl, rel_tol=1e-9)


def test_window_losses_file_round_trip(tmp_path, tiny_model):
    ids = torch.randint(0, tiny_model.config.vocab_size, (64,))
    wl = window_losses(tiny_model, TokenStream(ids, (0, 40)), seq_len=16)
    record = EvalRecord(tmp_path, 16)
    record.add("dense", {"a": wl})
    raw = json.loads((tmp_path / "window_losses.json").read_text())
    assert raw["format"] == "loraprune.window_losses/1" and raw["tokens_per_window"] == 15
    back = read_window_losses(tmp_path / "window_losses.json")["dense"]["a"]
    assert back.window == wl.window and back.document == [0, 0, 0, 1]  # window 2 starts at token 32
    assert math.isclose(back.ppl, wl.ppl, rel_tol=1e-6)
    assert EvalRecord(tmp_path, 16, resume=True).stages["dense"]["a"].document == [0, 0, 0, 1]


def test_wikitext_rows_grouped_into_articles():
    rows = [" = A = \n", " text of a \n", " = = Section = = \n", " more \n", " = B = \n", " b text \n"]
    arts = group_wikitext_articles(rows)
    assert len(arts) == 2 and arts[1].startswith(" = B = ")
    assert "\n\n".join(arts) == "\n\n".join(rows)


def test_play_markdown_to_scenes():
    md = "# Play\n\n## ACT I\n\n### SCENE I. A room.\n\n_Enter HAMLET_\n\n**HAMLET**  \nTo be, or not.  \n\n"
    md += "### SCENE II. Elsewhere.\n\n**OPHELIA**  \nGood my lord.\n"
    scenes = play_scenes(md)
    assert scenes == [
        "SCENE I. A room.\n\nEnter HAMLET\n\nHAMLET\nTo be, or not.",
        "SCENE II. Elsewhere.\n\nOPHELIA\nGood my lord.",
    ]
    assert clean_play_line("**KING**  ") == "KING"


def test_domain_sets_are_split_and_disjoint():
    for name in ("drama", "tech"):
        test = data.load_eval_documents(f"{name}_embedded")
        val = data.load_eval_documents(f"{name}_embedded_val")
        assert len(test) >= 20 and len(val) >= 10 and not set(test) & set(val)
    news_test = set(data.load_eval_documents("news_embedded"))
    news_val = set(data.load_eval_documents("news_embedded_val"))
    assert news_val and not news_val & news_test
    from loraprune.data.readers import embedded_docs

    assert not news_val & set(embedded_docs("news_embedded", "finetune", holdout_val=True))
    assert news_val <= set(embedded_docs("news_embedded", "finetune"))


def test_domain_sets_are_evaluation_only():
    with pytest.raises(ValueError, match="evaluation text, not fine-tune data"):
        data.validate_finetune_source("drama_embedded")


def test_mixed_fine_tune_text_alternates_domains_in_equal_measure():
    from loraprune.data.readers import mixed_docs

    wiki = ["= A =\n\nfirst para of A\n\nsecond para of A", "= B =\n\nb text"]
    out = mixed_docs(wiki, ["news one is long enough", "n2"])
    assert out == ["news one is long enough", "= A =\n\nfirst para of A\n\nsecond para of A", "n2", "= B ="]
    assert data.finetune_corpora("mixed_embedded") == ("wiki_embedded", "news_embedded")
    assert data.finetune_corpora("lamini") == ()


def test_mixed_fine_tune_holds_both_validation_halves_out():
    cfg = to_config(compose("data=mixed_embedded", "data.holdout_val=false", "eval=embedded_val"))
    with pytest.raises(ConfigError, match="fine-tune data unless held out"):
        validate(cfg)
    validate(to_config(compose("data=mixed_embedded", "eval=embedded_val")))
