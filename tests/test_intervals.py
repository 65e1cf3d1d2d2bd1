"""Document-bootstrap intervals on perplexity: hand-enumerable cases, pairing, widths, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loraprune.evaluation.intervals import (
    Interval,
    bootstrap_ppl,
    geomean_ppl,
    paired_delta,
    paired_geomean_delta,
)


def _corpus(n_docs: int, windows_per_doc: int = 4, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Windows whose difficulty varies mostly between documents (as real text does)."""
    rng = np.random.default_rng(seed)
    level = rng.normal(3.0, 0.4, size=n_docs)  # per-token NLL of each document
    document = np.repeat(np.arange(n_docs), windows_per_doc)
    nll = 10 * (level[document] + rng.normal(0, 0.05, size=document.size))  # 10 tokens per window
    return nll, document


def test_interval_properties():
    iv = Interval(1.0, -0.5, 2.0)
    assert iv.width == 2.5 and not iv.excludes_zero
    assert Interval(1.0, 0.5, 2.0).excludes_zero and Interval(-1.0, -2.0, -0.1).excludes_zero


def test_two_documents_give_three_enumerable_replicates():
    # doc 0: two windows of NLL 1 per token; doc 1: one window of NLL 4 per token (1 token per window).
    # A replicate draws two documents: {0,0} -> mean NLL 1 (p=1/4), {0,1} -> (1+1+4)/3 = 2 (p=1/2),
    # {1,1} -> 4 (p=1/4). The estimate is the plain perplexity, exp(6/3).
    nll, document = [1.0, 1.0, 4.0], [7, 7, 9]
    iv = bootstrap_ppl(nll, document, 1, n_boot=4000)
    assert iv.estimate == pytest.approx(math.exp(2))
    # the 2.5% and 97.5% points fall inside the outer atoms (each of mass 1/4)
    assert (iv.low, iv.high) == (pytest.approx(math.exp(1)), pytest.approx(math.exp(4)))
    # the 30% and 70% points fall inside the middle atom (mass 1/4 .. 3/4)
    mid = bootstrap_ppl(nll, document, 1, n_boot=4000, level=0.4)
    assert (mid.low, mid.high) == (pytest.approx(math.exp(2)), pytest.approx(math.exp(2)))
    # tokens_per_window divides: the same windows over 2 tokens each
    half = bootstrap_ppl([2.0, 2.0, 8.0], document, 2, n_boot=4000)
    assert (half.estimate, half.low, half.high) == (
        pytest.approx(math.exp(2)),
        pytest.approx(math.exp(1)),
        pytest.approx(math.exp(4)),
    )


def test_interval_contains_the_estimate_and_narrows_with_more_documents():
    small = bootstrap_ppl(*_corpus(10), 10)
    large = bootstrap_ppl(*_corpus(160), 10)
    for iv in (small, large):
        assert iv.low < iv.estimate < iv.high
    assert large.width < small.width / 2  # ~ 1/sqrt(16) of the width
    assert bootstrap_ppl(*_corpus(10), 10) == small  # seeded: the same interval again
    assert bootstrap_ppl(*_corpus(10), 10, seed=1) != small


def test_one_document_has_no_spread():
    iv = bootstrap_ppl([3.0, 5.0], [0, 0], 2)
    assert iv == Interval(math.exp(2), math.exp(2), math.exp(2))


def test_a_run_paired_with_itself_has_delta_zero_and_zero_width():
    nll, document = _corpus(20)
    iv = paired_delta(nll, nll, document, 10)
    assert iv == Interval(0.0, 0.0, 0.0) and not iv.excludes_zero


def test_paired_delta_enumerable_case():
    # two documents, one window each; b is 1 nat/token worse on doc 0 only (1 token per window).
    # Replicates: {0,0} -> +1 nat, {0,1} -> +0.5, {1,1} -> 0; delta = 100 * (exp(diff) - 1).
    iv = paired_delta([1.0, 2.0], [2.0, 2.0], [0, 1], 1, n_boot=4000)
    assert iv.estimate == pytest.approx(100 * math.expm1(0.5))
    assert (iv.low, iv.high) == (pytest.approx(0.0), pytest.approx(100 * math.expm1(1.0)))
    assert not iv.excludes_zero  # the low end touches 0


def test_pairing_removes_the_shared_difficulty():
    nll_a, document = _corpus(30)
    rng = np.random.default_rng(5)
    nll_b = nll_a * 1.02 + rng.normal(0, 0.05, size=nll_a.size)  # 2% more NLL, the same hard documents
    paired = paired_delta(nll_a, nll_b, document, 10)
    alone = bootstrap_ppl(nll_b, document, 10)
    relative_width = 100 * alone.width / alone.estimate  # what an unpaired comparison would at least carry
    assert paired.width < relative_width / 5
    assert paired.excludes_zero and paired.low > 0
    assert paired.estimate == pytest.approx(
        100 * (math.exp(nll_b.sum() / 1200) / math.exp(nll_a.sum() / 1200) - 1)
    )


def test_geometric_mean_over_sets():
    # set 1: ppl e^1 everywhere; set 2: ppl e^3 everywhere -> geometric mean e^2 with no spread
    iv = geomean_ppl([([1.0, 1.0], [0, 1]), ([3.0, 3.0, 3.0], [0, 0, 1])], 1)
    assert iv == Interval(pytest.approx(math.exp(2)), pytest.approx(math.exp(2)), pytest.approx(math.exp(2)))
    # set 2 now has two documents (NLL 2 and 4): the geometric mean replicates are exp((1 + {2, 3, 4}) / 2)
    two = geomean_ppl([([1.0], [0]), ([2.0, 4.0], [0, 1])], 1, n_boot=4000)
    assert two.estimate == pytest.approx(math.exp(2))
    assert (two.low, two.high) == (pytest.approx(math.exp(1.5)), pytest.approx(math.exp(2.5)))
    nll, document = _corpus(12)
    assert geomean_ppl([(nll, document)], 10) == bootstrap_ppl(nll, document, 10)


def test_paired_geometric_mean_delta():
    nll, document = _corpus(12)
    same = paired_geomean_delta([(nll, nll, document), (nll[:8], nll[:8], document[:8])], 10)
    assert same == Interval(0.0, 0.0, 0.0)
    # b is 1 nat/token worse on set 1 and equal on set 2: geo ratio exp(1/2)
    iv = paired_geomean_delta([([1.0, 1.0], [2.0, 2.0], [0, 1]), ([3.0], [3.0], [0])], 1)
    assert iv.estimate == pytest.approx(100 * math.expm1(0.5))
    assert iv.width == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bootstrap_ppl([1.0, 2.0], [0], 1), "one length"),
        (lambda: bootstrap_ppl([], [], 1), "no windows"),
        (lambda: bootstrap_ppl([1.0], [0], 0), "tokens_per_window"),
        (lambda: bootstrap_ppl([1.0], [0], 1, level=1.0), "level"),
        (lambda: bootstrap_ppl([float("nan")], [0], 1), "non-finite"),
        (lambda: paired_delta([1.0, 2.0], [1.0], [0, 1], 1), "one length"),
        (lambda: paired_delta([1.0], [1.0], [0], 1, windows=([0], [1])), "different windows"),
        (lambda: geomean_ppl([], 1), "at least one set"),
    ],
)
def test_bad_input_raises_one_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
