"""Paper tables and plots from a fixture multirun directory; the reference numbers; the sweep presets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import CONF, compose

from loraprune.cli.table import main
from loraprune.report.latex import to_latex
from loraprune.report.layout import SetsError, build_tables, select_sets
from loraprune.report.markdown import to_markdown
from loraprune.report.plots import plot_kept_widths, plot_ppl_vs_ratio, write_plots
from loraprune.report.reference import load_reference, reference_rows
from loraprune.report.rows import METHOD_LABELS, METHOD_ORDER, collect_rows
from loraprune.report.uncertainty import UncertaintyError
from loraprune.report.windows import WindowLossesError, read_window_losses
from loraprune.run import results
from loraprune.run.results import TASKS, flat_result

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EMBEDDED_SETS = ("wiki_embedded", "news_embedded")  # the fake runs' sets
EMBEDDED_TEST_SETS = ("wiki_embedded", "news_embedded", "drama_embedded", "tech_embedded")  # eval=embedded
PAPER_SETS = ("wikitext2", "ptb")


def _zeroshot(base: float, stderr: float | None = None) -> dict:
    """A well-formed zeroshot summary: task i scores base + i/100 on its paper metric (standard error
    ``stderr`` on each metric when given)."""
    tasks = {}
    for i, name in enumerate(TASKS):
        metric = "acc_norm" if name in ("hellaswag", "arc_challenge", "openbookqa") else "acc"
        value = round(base + i / 100, 4)
        tasks[name] = {
            "acc": value if metric == "acc" else value - 0.01,
            "acc_norm": value if metric == "acc_norm" else None,
            "paper_metric": metric,
            "paper_value": value,
            "n": 100,
            "split": "validation",
            "source": "offline",
        }
        if stderr is not None:
            tasks[name].update({"acc_stderr": stderr, "acc_norm_stderr": stderr})
    values = [t["paper_value"] for t in tasks.values()]
    return {"tasks": tasks, "average_acc": sum(values) / len(values), "source": "offline", "limit": 100}


def fake_metrics(
    run_dir: Path,
    *,
    model: str = "smollm2_135m",
    method: str,
    ratio: float,
    ppl: float,
    sets: tuple[str, ...] = EMBEDDED_SETS,
    seq_len: int = 128,
    seed: int = 42,
    zeroshot: float | None = 0.5,
    one_shot: bool = False,
    cuda_gib: float | None = None,
    layers: int = 4,
) -> dict:
    """A metrics.json as loraprune.run.pipeline writes it (the keys the tables read, and then some)."""
    kept_heads = round(8 * (1 - ratio))
    metrics = {
        "run": {
            "dir": str(run_dir),
            "model": model,
            "method": method,
            "criterion": method,
            "ratio": ratio,
            "seed": seed,
        },
        "eval": {"seq_len": seq_len, "max_windows": 64, "sets": list(sets)},
        "dense": {"ppl": {s: 10.0 + i for i, s in enumerate(sets)}},
        "pruned": {"ppl": {s: ppl + i for i, s in enumerate(sets)}},
        "params": {
            "total_before": 1000,
            "total_after": int(1000 * (1 - ratio / 2)),
            "removed_fraction_total": ratio / 2,
            "removed_fraction_decoder": ratio * 0.6,
        },
        "achieved_ratio": {"q_heads": ratio, "kv_heads": ratio, "channels": ratio},
        "kept_per_layer": {
            str(i): (
                {"q_heads": 8, "kv_heads": 2, "channels": 64}
                if i == layers - 1
                else {
                    "q_heads": kept_heads,
                    "kv_heads": max(1, kept_heads // 4),
                    "channels": int(64 * (1 - ratio)),
                }
            )
            for i in range(layers)
        },
        "memory": {"cpu_peak_rss_gib": 1.25, "cuda_max_allocated_gib": cuda_gib},
        "wall_time_s": 100.0 * (1 + ratio),
        "objective": ppl,
    }
    if zeroshot is not None:
        metrics["dense"]["zeroshot"] = _zeroshot(0.6)
        metrics["pruned"]["zeroshot"] = _zeroshot(zeroshot)
    if one_shot:
        metrics["pruned_before_recovery"] = {"ppl": {s: 2 * ppl + i for i, s in enumerate(sets)}}
    return metrics


def write_run(root: Path, name: str, **kwargs) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(fake_metrics(run_dir, **kwargs)))
    return run_dir


@pytest.fixture
def multirun(tmp_path) -> Path:
    """A sweep directory like Hydra's, one run per subdirectory, plus a re-run seed further down and some
    files that are not runs."""
    root = tmp_path / "multirun" / "2024-05-01" / "14-03-22"
    specs = [
        ("loraprune", 0.2, 20.0, 0.55),
        ("loraprune", 0.5, 30.0, 0.50),
        ("llm_pruner", 0.2, 24.0, 0.52),
        ("llm_pruner", 0.5, 40.0, 0.45),
        ("magnitude", 0.2, 26.0, 0.51),
        ("magnitude", 0.5, 50.0, 0.44),
        ("random", 0.2, 28.0, 0.50),
        ("random", 0.5, 60.0, 0.40),
    ]
    for i, (method, ratio, ppl, zs) in enumerate(specs):
        one_shot = method in ("llm_pruner", "random")
        write_run(
            root,
            f"{i}_{method}_r{ratio}",
            method=method,
            ratio=ratio,
            ppl=ppl,
            zeroshot=zs,
            one_shot=one_shot,
        )
    # a second seed of LoRAPrune 20%, two levels down: found recursively and averaged with the first
    write_run(
        root, "seeds/1/0_loraprune_r0.2", method="loraprune", ratio=0.2, ppl=22.0, zeroshot=0.57, seed=1
    )
    (root / "multirun.yaml").write_text("hydra: {}\n")
    (root / "broken").mkdir()
    (root / "broken" / "metrics.json").write_text("{not json")
    (root / "other").mkdir()
    (root / "other" / "metrics.json").write_text(json.dumps({"loss": 1.0}))
    return root


def _labels(table) -> list[tuple[str, str]]:
    return [(f"{100 * r.ratio:g}%", r.label) for r in table.rows]


def test_rows_are_read_recursively_aggregated_and_in_paper_order(multirun):
    rows = collect_rows(multirun)
    assert [(f"{100 * r.ratio:g}%", r.label) for r in rows] == [
        ("0%", "Dense"),
        ("20%", "Random"),
        ("20%", "Magnitude"),
        ("20%", "LLM-Pruner"),
        ("20%", "LoRAPrune (n=2)"),
        ("50%", "Random"),
        ("50%", "Magnitude"),
        ("50%", "LLM-Pruner"),
        ("50%", "LoRAPrune"),
    ]
    lora = rows[4]
    assert lora.n_runs == 2 and len(lora.run_dirs) == 2
    assert lora.ppl == {"wiki_embedded": pytest.approx(21.0), "news_embedded": pytest.approx(22.0)}
    assert lora.tasks["boolq"] == pytest.approx(56.0)  # mean of 55 % and 57 %, in percent
    assert lora.tasks["openbookqa"] == pytest.approx(62.0)
    assert lora.average == pytest.approx(59.0)
    assert lora.params_removed == pytest.approx(10.0)
    assert lora.memory_gib == pytest.approx(1.25) and lora.memory_device == "cpu"
    assert lora.wall_time_s == pytest.approx(120.0)
    dense = rows[0]
    assert dense.ppl == {"wiki_embedded": 10.0, "news_embedded": 11.0}
    assert dense.average == pytest.approx(63.0) and dense.params_removed == 0.0
    with_before = collect_rows(multirun, before_recovery=True)
    assert ("LLM-Pruner w/o tune", 48.0) in [(r.label, r.ppl.get("wiki_embedded")) for r in with_before]
    assert len(with_before) == len(rows) + 4  # llm_pruner and random at two ratios


def test_markdown_layout_numbers_and_separate_reference_block(multirun):
    tabs = build_tables(collect_rows(multirun))
    assert [t.title for t in tabs][0] == "smollm2_135m"
    assert tabs[1].title.startswith("Published: LoRAPrune paper, llama_7b")
    md = to_markdown(tabs)
    lines = md.splitlines()
    header = (
        "| Ratio | Method | Wiki (emb.) | News (emb.) | Geo. mean | BoolQ | PIQA | HellaSwag | WinoGrande "
        "| ARC-e | ARC-c | OBQA | Average | Params removed | Peak mem (GiB) | Wall time |"
    )
    assert lines[2] == header
    assert lines[3].count("|") == header.count("|")
    assert (
        "| 0% | Dense | 10.00 | 11.00 | 10.49 | 60.00 | 61.00 | 62.00 | 63.00 | 64.00 | 65.00 | 66.00 "
        "| 63.00 | 0.0% | – | – |" in lines
    )
    assert (
        "| 50% | LoRAPrune | 30.00 | 31.00 | 30.50 | 50.00 | 51.00 | 52.00 | 53.00 | 54.00 | 55.00 | 56.00 "
        "| 53.00 | 25.0% | 1.2† | 2.5 min |"
    ) in lines
    # two seeds: mean ± std over seeds (perplexity 20 and 22, geometric means sqrt(420) and sqrt(506))
    assert "| 20% | LoRAPrune (n=2) | 21.00 ± 1.41 | 22.00 ± 1.41 | 21.49 ± 1.41 | 56.00 ± 1.41 |" in md
    assert any(line.startswith("- Peak memory marked †") for line in lines)
    # the published block: clearly labelled, only verifiable rows, the unverifiable ones named
    assert (
        "| 50% | LoRAPrune [paper] | 11.60 | 17.39 | 14.20 | – | – | – | – | – | – | – | 54.81 | – "
        "| 18.3 | – |" in md
    )
    assert "| 50% | LLM-Pruner [paper] | 16.41 | 20.85 |" in md
    assert "not verifiable, left out: LLaMA-7B (dense) 0%, LLM-Pruner 20%, LoRAPrune 20%" in md
    assert "[paper]" not in "\n".join(lines[: lines.index("### " + tabs[1].title)])
    # no reference at all
    assert "[paper]" not in to_markdown(build_tables(collect_rows(multirun), paper="none"))


def test_latex_is_well_formed(multirun):
    tex = to_latex(build_tables(collect_rows(multirun)))
    assert tex.count(r"\begin{table*}") == tex.count(r"\end{table*}") == 2
    assert tex.count(r"\begin{tabular}{ll" + "r" * 14 + "}") == 2  # 2 ppl + geo + 7 tasks + avg + 3, both
    body = tex.split(r"\midrule", 1)[1].split(r"\bottomrule", 1)[0]
    rows = [line for line in body.splitlines() if line.endswith(r"\\")]
    assert len(rows) == 9 and all(line.count("&") == 15 for line in rows)
    assert r"50\% & LoRAPrune & 30.00 & 31.00" in tex
    assert r"1.2$^\dagger$ & 2.5 min \\" in tex
    assert r"\caption{smollm2\_135m. " in tex
    assert body.count(r"\midrule") == 2  # dense | 20% | 50%
    assert r"\textit{50\%} & \textit{LoRAPrune [paper]} & \textit{11.60}" in tex
    assert "–" not in tex and "_emb" not in tex


def test_llama7b_runs_get_the_paper_rows_inline(tmp_path):
    root = tmp_path / "sweep"
    for method, ppl in (("loraprune", 12.0), ("llm_pruner", 17.0)):
        write_run(
            root,
            f"{method}_r0.5",
            model="llama_7b",
            method=method,
            ratio=0.5,
            ppl=ppl,
            sets=PAPER_SETS,
            seq_len=2048,
            cuda_gib=20.0,
        )
    (table,) = build_tables(collect_rows(root))
    assert _labels(table) == [
        ("0%", "Dense"),
        ("50%", "LLM-Pruner"),
        ("50%", "LLM-Pruner [paper]"),
        ("50%", "LoRAPrune"),
        ("50%", "LoRAPrune [paper]"),
        ("50%", "LoRAPrune (8-bit base) [paper]"),
    ]
    assert table.ppl_sets == ["wikitext2", "ptb"]
    lora = table.rows[3]
    assert lora.memory_gib == 20.0 and lora.memory_device == "cuda"
    md = to_markdown([table])
    assert "| 50% | LoRAPrune | 12.00 | 13.00 |" in md and "| 20.0 |" in md
    assert not any("not comparable" in n for n in table.notes)
    # 128-token windows are flagged against the paper's 2048
    other = tmp_path / "short"
    write_run(other, "a", model="llama_7b", method="loraprune", ratio=0.5, ppl=30.0, sets=PAPER_SETS)
    (short,) = build_tables(collect_rows(other))
    assert any("[128]-token perplexity windows, the paper 2048" in n for n in short.notes)
    # forced separate block
    assert len(build_tables(collect_rows(root), paper="separate")) == 2


def test_semistructured_runs_are_labelled_by_their_pattern(tmp_path):
    root = tmp_path / "nm"
    write_run(root, "groups", method="loraprune", ratio=0.5, ppl=30.0, zeroshot=None)
    for method, ppl in (("loraprune", 25.0), ("wanda", 27.0)):
        run_dir = write_run(root, f"{method}_24", method=method, ratio=0.2, ppl=ppl, zeroshot=None)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        metrics["params"]["removed_fraction_total"] = 0.0
        metrics["semistructured"] = {"pattern": "2:4", "projections": 21, "sparsity": 0.5, "exact": True}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    rows = collect_rows(root)
    assert [(r.ratio_label, r.label) for r in rows] == [
        ("0%", "Dense"),
        ("50%", "LoRAPrune"),
        ("2:4", "Wanda"),
        ("2:4", "LoRAPrune"),
    ]
    md = to_markdown(build_tables(rows, paper="none"))
    assert "| 2:4 | Wanda | 27.00 | 28.00 | 27.50 | 50.0% zeroed |" in md
    assert rows[2].kept_per_layer is None  # nothing removed: no width plot
    assert [p.name for p in write_plots(rows, tmp_path / "plots")] == [
        "ppl_vs_ratio_smollm2_135m.png",
        "kept_smollm2_135m_loraprune_r0.5.png",
    ]


def test_plots_are_valid_pngs(multirun, tmp_path):
    import matplotlib.image

    rows = collect_rows(multirun)
    paths = write_plots(rows, tmp_path / "plots")
    names = sorted(p.name for p in paths)
    assert names[0] == "kept_smollm2_135m_llm_pruner_r0.2.png"
    assert "ppl_vs_ratio_smollm2_135m.png" in names and len(names) == 9  # 1 + 8 (method, ratio)
    for path in paths:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        height, width, _ = matplotlib.image.imread(path).shape
        assert height > 100 and width > 100
    # one panel per perplexity set: two panels are wider than one
    one = plot_ppl_vs_ratio([*rows], tmp_path / "two.png")
    for r in rows:
        r.ppl.pop("news_embedded", None)
    single = plot_ppl_vs_ratio(rows, tmp_path / "one.png")
    assert matplotlib.image.imread(one).shape[1] > matplotlib.image.imread(single).shape[1]
    with pytest.raises(ValueError, match="kept_per_layer"):
        plot_kept_widths(rows[0], tmp_path / "dense.png")  # the dense row has no widths


def test_cli_writes_markdown_latex_and_plots(multirun, tmp_path, capsys):
    out, tex, plots = tmp_path / "docs" / "t.md", tmp_path / "docs" / "t.tex", tmp_path / "docs" / "plots"
    assert main([str(multirun), "--out", str(out), "--latex", str(tex), "--plots", str(plots)]) == 0
    assert out.read_text().startswith("### smollm2_135m\n")
    assert tex.read_text().startswith(r"\begin{table*}")
    assert (plots / "ppl_vs_ratio_smollm2_135m.png").read_bytes()[:8] == PNG_SIGNATURE
    assert main([str(multirun), "--reference", "none"]) == 0
    printed = capsys.readouterr().out
    assert "| 20% | LoRAPrune (n=2) |" in printed and "[paper]" not in printed
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2


# ------------------------------------------------------------------------------------- uncertainty
WINDOW_FORMAT = "loraprune.window_losses/1"


def window_entry(nll: list[float], document: list[int]) -> dict:
    """One set's entry of window_losses.json: windows 0..n-1 of twice as many."""
    return {
        "windows_total": 2 * len(nll),
        "documents_total": len(set(document)) + 1,
        "window": list(range(len(nll))),
        "document": list(document),
        "nll": list(nll),
    }


def write_windowed_run(
    root: Path,
    name: str,
    *,
    method: str,
    ratio: float = 0.2,
    sets: dict[str, tuple[list[float], list[int]]],
    seed: int = 42,
    tokens_per_window: int = 1,
    run: dict | None = None,
    **kwargs,
) -> Path:
    """A run dir with metrics.json and window_losses.json (pruned and dense stages) of the given windows;
    its perplexities are those of the windows, the dense model's the pruned windows less 1 nat/token."""
    dense = {k: ([x - tokens_per_window for x in nll], doc) for k, (nll, doc) in sets.items()}

    def ppl(entry):
        return math.exp(sum(entry[0]) / (len(entry[0]) * tokens_per_window))

    run_dir = write_run(
        root, name, method=method, ratio=ratio, ppl=1.0, sets=tuple(sets), seed=seed, **kwargs
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["pruned"]["ppl"] = {k: ppl(v) for k, v in sets.items()}
    metrics["dense"]["ppl"] = {k: ppl(v) for k, v in dense.items()}
    metrics["run"].update(run or {})
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    stages = {
        stage: {k: window_entry(*v) for k, v in d.items()}
        for stage, d in (("pruned", sets), ("dense", dense))
    }
    data = {"format": WINDOW_FORMAT, "seq_len": tokens_per_window + 1, "tokens_per_window": tokens_per_window}
    (run_dir / "window_losses.json").write_text(json.dumps({**data, "stages": stages}))
    return run_dir


def _row_line(md: str, prefix: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(prefix))


def test_a_single_runs_perplexity_shows_its_document_bootstrap_interval(tmp_path):
    # doc 0: two windows of NLL 1, doc 1: one of NLL 4 (1 token per window): ppl e^2, and the bootstrap
    # replicates are e^1, e^2, e^4 with mass 1/4, 1/2, 1/4, so the 95% interval is [e^1, e^4]
    write_windowed_run(
        tmp_path, "a", method="loraprune", sets={"wiki_embedded": ([1.0, 1.0, 4.0], [0, 0, 1])}
    )
    (table,) = build_tables(collect_rows(tmp_path), paper="none")
    md = to_markdown([table])
    assert "| 20% | LoRAPrune | 7.39 [2.72, 54.60] |" in md
    assert "| 0% | Dense | 2.72 [1.00, 20.09] |" in md  # the dense stage's windows (1 nat less)
    assert "Geo. mean" not in md  # one set
    assert any(n.startswith("[a, b]: 95% bootstrap interval") for n in table.notes)
    assert "- Evaluated: Wiki (emb.) 3 of 6 windows (2 of 3 documents)." in md


def test_geometric_mean_column_and_its_interval(tmp_path):
    sets = {"wiki_embedded": ([1.0, 1.0], [0, 1]), "news_embedded": ([3.0, 3.0], [0, 1])}
    write_windowed_run(tmp_path, "a", method="loraprune", sets=sets, zeroshot=None)
    md = to_markdown(build_tables(collect_rows(tmp_path), paper="none"))
    assert "| Ratio | Method | Wiki (emb.) | News (emb.) | Geo. mean |" in md
    # every document has the same NLL: zero-width intervals; geo mean e^2
    assert "| 20% | LoRAPrune | 2.72 [2.72, 2.72] | 20.09 [20.09, 20.09] | 7.39 [7.39, 7.39] |" in md


def _pair_fixture(root: Path) -> None:
    """mask_fisher and loraprune at 20% on the same windows (2 sets, 40 documents of varying difficulty);
    loraprune is 0.1 nat/token worse on every window; wanda_sp without window losses at 50%."""
    docs = list(range(40))
    base = {
        "wiki_embedded": ([1.0 + (d % 7) / 3 for d in docs], docs),
        "news_embedded": ([2.0 + (d % 5) / 4 for d in docs], docs),
    }
    worse = {k: ([x + 0.1 for x in nll], doc) for k, (nll, doc) in base.items()}
    write_windowed_run(root, "fisher", method="mask_fisher", sets=base, zeroshot=None)
    write_windowed_run(root, "lora", method="loraprune", sets=worse, zeroshot=None)
    write_run(root, "wanda", method="wanda_sp", ratio=0.5, ppl=30.0, zeroshot=None)


def test_reference_column_pairs_rows_at_the_same_ratio(tmp_path):
    _pair_fixture(tmp_path)
    (table,) = build_tables(collect_rows(tmp_path), paper="none", reference="mask_fisher")
    assert table.reference == "LoRA + mask Fisher"
    md = to_markdown([table])
    assert "| Geo. mean | Δ% vs LoRA + mask Fisher |" in md
    # 0.1 nat/token on every window: Δ = 100 (e^0.1 - 1) in every replicate, so the interval has no width
    delta = f"{100 * math.expm1(0.1):+.2f}"
    assert _row_line(md, "| 20% | LoRAPrune |").split(" | ")[5] == f"{delta} [{delta}, {delta}]*"
    assert _row_line(md, "| 20% | LoRA + mask Fisher |").split(" | ")[5] == "ref."
    assert _row_line(md, "| 50% | Wanda-sp |").split(" | ")[5] == "–"  # no reference at 50%
    assert _row_line(md, "| 0% | Dense |").split(" | ")[5] == "–"
    assert any(n.startswith("Δ vs LoRA + mask Fisher: each row against") for n in table.notes)
    # the Method cell as shown, any case, with a ratio
    again = build_tables(collect_rows(tmp_path), paper="none", reference="lora + MASK fisher@20%")
    assert to_markdown(again) == md
    tex = to_latex([table])
    assert r"$\Delta$\% vs LoRA + mask Fisher" in tex and "+10.52 [+10.52, +10.52]*" in tex


# the validation and test sets: the reference's NLL per token on every window, and how much worse LoRAPrune is
VAL_TEST_NLL = {
    "wiki_embedded_val": 1.0,
    "news_embedded_val": 3.0,
    "wiki_embedded": 2.0,
    "news_embedded": 4.0,
}
VAL_TEST_SHIFT = {
    "wiki_embedded_val": 0.1,
    "news_embedded_val": 0.3,
    "wiki_embedded": 0.2,
    "news_embedded": 0.4,
}


def write_val_test_pair(root: Path, extra: dict[str, tuple[float, float]] | None = None) -> None:
    """mask_fisher and loraprune at 20% on two validation and two test sets (and ``extra``: set → (NLL,
    shift)), 10 documents of one window each. Every window of a set has the same NLL, so every interval
    has no width: mask_fisher's perplexity on a set is e^NLL, LoRAPrune's e^(NLL + shift), and LoRAPrune's
    paired Δ% over some sets is 100·(e^(mean shift) − 1)."""
    docs = list(range(10))
    spec = {k: (VAL_TEST_NLL[k], VAL_TEST_SHIFT[k]) for k in VAL_TEST_NLL} | (extra or {})
    for name, method, shifted in (("fisher", "mask_fisher", False), ("lora", "loraprune", True)):
        sets = {k: ([nll + shifted * shift for _ in docs], docs) for k, (nll, shift) in spec.items()}
        write_windowed_run(root, name, method=method, sets=sets, zeroshot=None)


def _delta(shift: float) -> str:
    """A zero-width Δ% cell of a mean shift of ``shift`` nat/token."""
    d = f"{100 * math.expm1(shift):+.2f}"
    return f"{d} [{d}, {d}]*"


def test_select_sets_keeps_validation_or_test_sets_or_names_in_table_order():
    have = ["wikitext2", "wiki_embedded_val", "news_embedded_val", "wiki_embedded", "news_embedded"]
    assert select_sets("val", have) == ["wiki_embedded_val", "news_embedded_val"]
    assert select_sets("test", have) == ["wikitext2", "wiki_embedded", "news_embedded"]
    assert select_sets(" news_embedded , wiki_embedded_val", have) == ["wiki_embedded_val", "news_embedded"]
    assert select_sets("val,news_embedded", have) == [
        "wiki_embedded_val",
        "news_embedded_val",
        "news_embedded",
    ]
    assert select_sets("ptb,val", have, strict=False) == ["wiki_embedded_val", "news_embedded_val"]
    with pytest.raises(
        SetsError, match=r"^--sets: unknown set 'ptb'; the runs have wikitext2, wiki_embedded_val"
    ):
        select_sets("val,ptb", have)
    with pytest.raises(SetsError, match="^--sets 'val' selects none of the runs' sets; they have wikitext2$"):
        select_sets("val", ["wikitext2"])
    with pytest.raises(SetsError, match="names no set"):
        select_sets(" , ", have)


def test_sets_show_those_columns_with_the_geo_mean_and_delta_over_them(tmp_path):
    write_val_test_pair(tmp_path)
    rows = collect_rows(tmp_path)

    def table(sets):
        (t,) = build_tables(rows, paper="none", reference="mask_fisher", sets=sets)
        return t, to_markdown([t])

    val, md = table("val")
    assert val.ppl_sets == ["wiki_embedded_val", "news_embedded_val"]
    assert "| Ratio | Method | Wiki val | News val | Geo. mean | Δ% vs LoRA + mask Fisher | Params" in md
    # e^1, e^3, geo mean e^2; LoRAPrune 0.1 and 0.3 worse: e^1.1, e^3.3, e^2.2, Δ 100 (e^0.2 − 1)
    assert (
        "| 20% | LoRA + mask Fisher | 2.72 [2.72, 2.72] | 20.09 [20.09, 20.09] | 7.39 [7.39, 7.39] | ref. |"
        in md
    )
    assert (
        f"| 20% | LoRAPrune | 3.00 [3.00, 3.00] | 27.11 [27.11, 27.11] | 9.03 [9.03, 9.03] | {_delta(0.2)} |"
        in md
    )
    assert "Wiki (emb.)" not in md and "- Evaluated: Wiki val 10 of 20 windows" in md
    test, md = table("test")
    assert test.ppl_sets == ["wiki_embedded", "news_embedded"]
    assert (
        "| 20% | LoRA + mask Fisher | 7.39 [7.39, 7.39] | 54.60 [54.60, 54.60] | 20.09 [20.09, 20.09] |" in md
    )
    assert _row_line(md, "| 20% | LoRAPrune |").split(" | ")[5] == _delta(0.3)
    assert "val" not in md.split("\n\n")[1]  # the header
    # a comma list, shown in the table's order (validation first), Δ over those two: (0.3 + 0.2) / 2
    mixed, md = table("wiki_embedded,news_embedded_val")
    assert mixed.ppl_sets == ["news_embedded_val", "wiki_embedded"]
    assert _row_line(md, "| 20% | LoRAPrune |").split(" | ")[5] == _delta(0.25)
    # every set (the default): the geometric mean and Δ over all four mix validation and test
    every, md = table(None)
    assert every.ppl_sets == list(VAL_TEST_NLL)
    assert _row_line(md, "| 20% | LoRA + mask Fisher |").split(" | ")[6] == "12.18 [12.18, 12.18]"  # e^2.5
    assert _row_line(md, "| 20% | LoRAPrune |").split(" | ")[7] == _delta(0.25)


def test_up_to_four_sets_get_a_per_set_delta_table_under_the_main_one(tmp_path):
    write_val_test_pair(tmp_path, extra={"drama_embedded": (5.0, 0.5)})
    rows = collect_rows(tmp_path)
    (val,) = build_tables(rows, paper="none", reference="mask_fisher", sets="val")
    companion = val.per_set
    assert companion is not None and companion.kind == "deltas" and companion.ppl_sets == val.ppl_sets
    md = to_markdown([val])
    assert md.index("### smollm2_135m\n") < md.index(
        "### smollm2_135m: paired Δ% per set vs LoRA + mask Fisher\n"
    )
    assert "| Ratio | Method | Wiki val | News val | Geo. mean |\n|:--|:--|--:|--:|--:|\n" in md
    lora = f"| 20% | LoRAPrune | {_delta(0.1)} | {_delta(0.3)} | {_delta(0.2)} |"
    assert lora in md and "| 20% | LoRA + mask Fisher | ref. | ref. | ref. |" in md
    assert "| 0% | Dense | –" not in md.split("paired Δ% per set")[1]  # compared rows only
    assert any(n.startswith("Each set alone: 100·(ppl/ppl_ref − 1)") for n in companion.notes)
    tex = to_latex([val])
    assert tex.count(r"\begin{table*}") == 2 and r"\begin{tabular}{llrrr}" in tex
    assert rf"20\% & LoRAPrune & {_delta(0.1)} & {_delta(0.3)} & {_delta(0.2)} \\" in tex
    assert r"\caption{smollm2\_135m: paired $\Delta$\% per set vs LoRA + mask Fisher." in tex
    # three test sets: a column each; five sets (all): too many, the geo-mean Δ column only
    (test,) = build_tables(rows, paper="none", reference="mask_fisher", sets="test")
    assert [
        c.split(" [")[0]
        for c in _row_line(to_markdown([test.per_set]), "| 20% | LoRAPrune |").split(" | ")[2:]
    ] == [f"{100 * math.expm1(s):+.2f}" for s in (0.2, 0.4, 0.5, 1.1 / 3)]
    (every,) = build_tables(rows, paper="none", reference="mask_fisher")
    assert len(every.ppl_sets) == 5 and every.per_set is None and "per set" not in to_markdown([every])
    # one set: its Δ is the Δ column; no reference: no Δ at all
    (one,) = build_tables(rows, paper="none", reference="mask_fisher", sets="wiki_embedded")
    assert one.per_set is None and one.rows[-1].set_deltas == {}
    assert build_tables(rows, paper="none", sets="val")[0].per_set is None


def test_a_per_set_delta_whose_interval_holds_zero_has_no_star(tmp_path):
    # news: half the documents 0.2 nat/token better, half 0.2 worse: Δ 0 on news, its interval around 0;
    # wiki 0.1 worse everywhere
    docs = list(range(20))
    base = {"wiki_embedded": ([1.0] * 20, docs), "news_embedded": ([2.0 + d % 3 / 2 for d in docs], docs)}
    worse = {
        "wiki_embedded": ([1.1] * 20, docs),
        "news_embedded": (
            [x + (0.2 if d % 2 else -0.2) for x, d in zip(*base["news_embedded"], strict=True)],
            docs,
        ),
    }
    write_windowed_run(tmp_path, "fisher", method="mask_fisher", sets=base, zeroshot=None)
    write_windowed_run(tmp_path, "lora", method="loraprune", sets=worse, zeroshot=None)
    (table,) = build_tables(collect_rows(tmp_path), paper="none", reference="mask_fisher")
    lora = next(r for r in table.rows if r.method == "loraprune")
    news = lora.set_deltas["news_embedded"]
    assert news.estimate == pytest.approx(0.0, abs=1e-9) and news.low < 0 < news.high
    cells = _row_line(to_markdown([table.per_set]), "| 20% | LoRAPrune |").split(" | ")
    assert cells[2] == _delta(0.1)
    assert cells[3].startswith(("+0.00 [-", "-0.00 [-")) and not cells[3].endswith("*")


def test_cli_sets_and_its_errors(tmp_path, capsys):
    write_val_test_pair(tmp_path)
    assert main([str(tmp_path), "--paper", "none", "--sets", "test", "--reference", "mask_fisher"]) == 0
    out = capsys.readouterr().out
    assert "| Wiki (emb.) | News (emb.) | Geo. mean | Δ% vs LoRA + mask Fisher |" in out
    assert "### smollm2_135m: paired Δ% per set vs LoRA + mask Fisher" in out and "Wiki val" not in out
    assert main([str(tmp_path), "--paper", "none", "--sets", "val,wiki"]) == 2
    assert capsys.readouterr().err.strip() == (
        "loraprune-table: error: --sets: unknown set 'wiki'; the runs have "
        "wiki_embedded_val, news_embedded_val, wiki_embedded, news_embedded"
    )
    write_run(tmp_path / "old", "a", method="loraprune", ratio=0.2, ppl=20.0, zeroshot=None)
    assert main([str(tmp_path / "old"), "--sets", "val"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.endswith("--sets 'val' selects none of the runs' sets; they have wiki_embedded, news_embedded")
    # the published block shows the sets of its own that are selected: test here
    assert main([str(tmp_path / "old"), "--sets", "test"]) == 0
    assert "| Ratio | Method | WikiText2 | PTB | Geo. mean |" in capsys.readouterr().out
    # plots: a panel per set shown
    import matplotlib.image

    widths = []
    for spec in ("val", "wiki_embedded_val"):
        assert main([str(tmp_path), "--sets", spec, "--plots", str(tmp_path / spec)]) == 0
        widths.append(matplotlib.image.imread(tmp_path / spec / "ppl_vs_ratio_smollm2_135m.png").shape[1])
    assert widths[0] > widths[1]


def test_window_losses_are_read_by_the_run_layer_and_bad_files_named(tmp_path, capsys):
    write_val_test_pair(tmp_path)
    stages = read_window_losses(tmp_path / "lora")
    assert set(stages) == {"pruned", "dense"} and stages["pruned"].tokens_per_window == 1
    wiki = stages["pruned"].sets["wiki_embedded_val"]
    assert (
        wiki.window == list(range(10)) and wiki.nll == [pytest.approx(1.1)] * 10 and wiki.windows_total == 20
    )
    assert read_window_losses(tmp_path) is None  # no file
    path = tmp_path / "lora" / "window_losses.json"
    good = json.loads(path.read_text())

    def broken(change) -> str:
        data = json.loads(json.dumps(good))
        change(data)
        path.write_text(json.dumps(data))
        with pytest.raises(WindowLossesError) as err:
            read_window_losses(tmp_path / "lora")
        return str(err.value)

    assert broken(lambda d: d["stages"]["pruned"]["news_embedded"].pop("nll")) == (
        f"{path}: set 'news_embedded' lacks window/document/nll/windows_total/documents_total"
    )
    assert broken(lambda d: d["stages"]["dense"]["wiki_embedded"]["nll"].pop()) == (
        f"{path}: set 'wiki_embedded' has window/document/nll of different lengths"
    )
    assert broken(lambda d: d.update(format="other/1")) == f"{path} is not a loraprune.window_losses/1 file"
    assert broken(lambda d: d.pop("tokens_per_window")) == f"{path}: lacks tokens_per_window or stages"
    path.write_text("{not json")
    assert main([str(tmp_path), "--paper", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"loraprune-table: error: {path}: Expecting")


def test_multi_seed_rows_show_std_and_pair_on_shared_seeds(tmp_path):
    docs = list(range(10))
    nll = [1.0 + d / 10 for d in docs]

    def shifted(shift):
        return {"wiki_embedded": ([x + shift for x in nll], docs)}

    for seed in (1, 2):
        write_windowed_run(
            tmp_path, f"ref{seed}", method="mask_fisher", sets=shifted(0.0), seed=seed, zeroshot=None
        )
    # seeds 1 and 2 are 0.1 and 0.3 nat/token worse; seed 3 (not in the reference) 1.0 worse
    for seed, shift in ((1, 0.1), (2, 0.3), (3, 1.0)):
        write_windowed_run(
            tmp_path, f"lp{seed}", method="loraprune", sets=shifted(shift), seed=seed, zeroshot=None
        )
    (table,) = build_tables(collect_rows(tmp_path), paper="none", reference="LoRA + mask Fisher (n=2)")
    lora = next(r for r in table.rows if r.method == "loraprune")
    assert lora.label == "LoRAPrune (n=3)" and lora.seeds == [1, 2, 3]
    # paired on seeds 1 and 2 only: mean shift 0.2 nat/token
    assert lora.delta.estimate == pytest.approx(100 * math.expm1(0.2))
    assert lora.delta.width == pytest.approx(0.0, abs=1e-9)
    ppl = [math.exp(1.45 + s) for s in (0.1, 0.3, 1.0)]
    mean, std = sum(ppl) / 3, (sum((p - sum(ppl) / 3) ** 2 for p in ppl) / 2) ** 0.5
    md = to_markdown([table])
    assert f"| 20% | LoRAPrune (n=3) | {mean:.2f} ± {std:.2f} |" in md


def test_zero_shot_cells_carry_lm_evals_standard_error(tmp_path):
    run_dir = write_run(tmp_path, "a", method="loraprune", ratio=0.2, ppl=20.0, sets=("wiki_embedded",))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["pruned"]["zeroshot"] = _zeroshot(0.5, stderr=0.02)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    md = to_markdown(build_tables(collect_rows(tmp_path), paper="none"))
    # 7 tasks of standard error 2%: the average's is 2 * sqrt(7) / 7
    average = f"{2 * math.sqrt(7) / 7:.2f}"
    assert "| 20% | LoRAPrune | 20.00 | 50.00 ± 2.00 | 51.00 ± 2.00 |" in md
    assert f"| 53.00 ± {average} | 10.0% |" in md
    assert "| 0% | Dense | 10.00 | 60.00 | 61.00 |" in md  # no standard error stored: none shown


def test_rows_differing_in_a_setting_stay_apart_and_say_so(tmp_path):
    budget = write_run(tmp_path / "a", "budget", method="wanda_sp", ratio=0.2, ppl=30.0, zeroshot=None)
    (budget / "config.yaml").write_text("prune:\n  selection: budget\nmethod:\n  selection: local\n")
    write_run(tmp_path / "b", "local", method="wanda_sp", ratio=0.2, ppl=40.0, zeroshot=None)
    (tmp_path / "b" / "local" / "config.yaml").write_text(
        "prune:\n  selection: null\nmethod:\n  selection: local\n"
    )
    for seed in (1, 2):  # differ only in the seed: one row
        d = write_run(
            tmp_path / "b", f"lp{seed}", method="loraprune", ratio=0.2, ppl=20.0 + seed, zeroshot=None
        )
        metrics = json.loads((d / "metrics.json").read_text())
        metrics["run"].update({"selection": "local", "seed": seed})
        (d / "metrics.json").write_text(json.dumps(metrics))
    write_run(tmp_path / "b", "lp50", method="loraprune", ratio=0.5, ppl=50.0, zeroshot=None)
    rows = collect_rows(
        [tmp_path / "a", tmp_path / "b", tmp_path / "b"]
    )  # several dirs; a repeat counts once
    assert [r.label for r in rows] == [
        "Dense",
        "Wanda-sp (budget)",
        "Wanda-sp (local)",
        "LoRAPrune (local, n=2)",
        "LoRAPrune",  # alone at 50%: nothing to tell apart
    ]
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--paper", "none"]) == 0


def test_a_selection_other_than_the_methods_own_is_named_alone(tmp_path):
    budget = write_run(tmp_path, "wanda", method="wanda_sp", ratio=0.2, ppl=30.0, zeroshot=None)
    (budget / "config.yaml").write_text("prune:\n  selection: budget\nmethod:\n  selection: local\n")
    fisher = write_run(tmp_path, "fisher", method="mask_fisher", ratio=0.2, ppl=25.0, zeroshot=None)
    (fisher / "config.yaml").write_text("prune:\n  selection: null\nmethod:\n  selection: budget\n")
    for d in (budget, fisher):  # both select by budget: the rows do not differ in it
        metrics = json.loads((d / "metrics.json").read_text())
        metrics["run"]["selection"] = "budget"
        (d / "metrics.json").write_text(json.dumps(metrics))
    labels = [r.label for r in collect_rows(tmp_path)]
    assert labels == ["Dense", "Wanda-sp (budget)", "LoRA + mask Fisher"]


def test_runs_on_other_fine_tune_data_are_not_averaged_with_the_defaults_seeds(tmp_path):
    for name, data, seed, ppl in (
        ("wiki42", "wiki_embedded", 42, 20.0),
        ("wiki1", "wiki_embedded", 1, 22.0),
        ("mixed42", "mixed_embedded", 42, 30.0),
    ):
        d = write_run(tmp_path, name, method="mask_fisher", ratio=0.2, ppl=ppl, zeroshot=None, seed=seed)
        metrics = json.loads((d / "metrics.json").read_text())
        metrics["run"]["data"] = data
        (d / "metrics.json").write_text(json.dumps(metrics))
    rows = collect_rows(tmp_path)
    assert [r.label for r in rows] == [
        "Dense",
        "LoRA + mask Fisher (data mixed_embedded)",
        "LoRA + mask Fisher (data wiki_embedded, n=2)",
    ]
    assert [r.n_runs for r in rows[1:]] == [1, 2]
    assert rows[2].ppl["wiki_embedded"] == pytest.approx(21.0)  # the two Wikipedia seeds only


def test_rows_differing_in_reconstruction_say_so(tmp_path):
    for name, reconstruct, ppl in (("plain", "none", 30.0), ("ls", "least_squares", 28.0)):
        d = write_run(tmp_path, name, method="wanda_sp", ratio=0.2, ppl=ppl, zeroshot=None)
        metrics = json.loads((d / "metrics.json").read_text())
        metrics["run"]["reconstruct"] = reconstruct
        (d / "metrics.json").write_text(json.dumps(metrics))
    labels = sorted(r.label for r in collect_rows(tmp_path))
    assert labels == ["Dense", "Wanda-sp (no reconstruction)", "Wanda-sp (reconstruction least_squares)"]


def test_cli_reference_errors_are_one_line(tmp_path, capsys):
    _pair_fixture(tmp_path)
    assert main([str(tmp_path), "--paper", "none", "--reference", "sparsegpt"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("loraprune-table: error: --reference 'sparsegpt' matches no row; rows: ")
    assert "LoRA + mask Fisher@20%" in err and "Wanda-sp@50%" in err
    # a compared run without window_losses.json
    write_run(tmp_path, "wanda20", method="wanda_sp", ratio=0.2, ppl=30.0, zeroshot=None)
    assert main([str(tmp_path), "--paper", "none", "--reference", "mask_fisher"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Wanda-sp at 20% has no per-window losses" in err
    # the former --reference auto|separate|none still works, as --paper
    assert main([str(tmp_path), "--reference", "none"]) == 0
    captured = capsys.readouterr()
    assert "--reference none is now --paper none" in captured.err and "[paper]" not in captured.out
    assert main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip().endswith("missing does not exist")


def test_flat_result_is_one_paper_row(tmp_path):
    metrics = fake_metrics(tmp_path, method="loraprune", ratio=0.5, ppl=30.0, cuda_gib=2.0)
    row = flat_result(metrics)
    assert list(row)[:5] == ["model", "method", "ratio", "Wiki (emb.)", "News (emb.)"]
    assert row["BoolQ"] == pytest.approx(50.0) and row["Average"] == pytest.approx(53.0)
    assert row["Params removed (%)"] == pytest.approx(25.0)
    assert row["Peak mem (GiB, cuda)"] == 2.0 and row["Wall time (s)"] == 150.0


# ----------------------------------------------------------------------------------- reference data
def test_reference_numbers_ship_with_sources_and_match_the_abstract():
    ref = load_reference()
    assert ref["paper"]["arxiv"] == "2305.18403" and ref["protocol"]["ppl_seq_len"] == 2048
    statuses = set(ref["verification"])
    by_key = {}
    for entry in ref["rows"]:
        assert entry["status"] in statuses
        assert set(entry["tasks"]) == set(TASKS) and set(entry["ppl"]) == set(PAPER_SETS)
        numbers = [*entry["ppl"].values(), *entry["tasks"].values(), entry["average"], entry["memory_gb"]]
        if entry["status"] == "unverified":
            assert all(v is None for v in numbers), entry["label"]  # never invented
        by_key[(entry["method"], entry["ratio"])] = entry
    lora, llmp = by_key[("loraprune", 0.5)], by_key[("llm_pruner", 0.5)]
    # arXiv 2305.18403 v5 abstract: -4.81 WikiText2, -3.46 PTB, -52.6 % memory against LLM-Pruner at 50 %
    assert llmp["ppl"]["wikitext2"] - lora["ppl"]["wikitext2"] == pytest.approx(4.81)
    assert llmp["ppl"]["ptb"] - lora["ppl"]["ptb"] == pytest.approx(3.46)
    assert 1 - lora["memory_gb"] / llmp["memory_gb"] == pytest.approx(0.526, abs=5e-4)
    rows, missing = reference_rows(ref)
    assert [r.label for r in rows] == [
        "LLM-Pruner [paper]",
        "LoRAPrune [paper]",
        "LoRAPrune (8-bit base) [paper]",
    ]
    assert "Magnitude" in missing and "Random" in missing


def test_task_order_matches_the_zeroshot_module():
    from loraprune.evaluation.zeroshot import PAPER_TASKS

    assert results.TASKS == PAPER_TASKS
    assert set(results.TASK_LABELS) == set(PAPER_TASKS)


# -------------------------------------------------------------------------------------- presets
def _sweep_params(experiment: str) -> dict[str, list[str]]:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from loraprune.config.schema import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(
            config_name="config", overrides=[f"experiment={experiment}"], return_hydra_config=True
        )
    return {key: str(value).split(",") for key, value in cfg.hydra.sweeper.params.items()}


def test_embedded_grid_composes_and_every_grid_point_validates():
    from loraprune.run.pipeline import to_config
    from loraprune.run.resolve import validate

    cfg = compose("experiment=embedded_grid")
    assert cfg.model.name == "smollm2_135m" and cfg.model.source == "embedded"
    assert list(cfg.eval.ppl_sets) == list(EMBEDDED_TEST_SETS)
    assert cfg.eval.zeroshot.enabled and cfg.eval.zeroshot.limit == 100
    assert list(cfg.eval.zeroshot.tasks) == list(TASKS)
    params = _sweep_params("embedded_grid")
    assert params == {
        "method": ["loraprune", "llm_pruner", "magnitude", "random"],
        "prune.ratio": ["0.2", "0.5"],
    }
    for method in params["method"]:
        assert (CONF / "method" / f"{method}.yaml").is_file()
        for ratio in params["prune.ratio"]:
            point = compose("experiment=embedded_grid", f"method={method}", f"prune.ratio={ratio}")
            assert point.method.name == method and point.prune.ratio == float(ratio)
            validate(to_config(point))


def test_paper_preset_carries_the_papers_setting():
    cfg = compose("experiment=paper_llama7b")
    assert cfg.model.name == "llama_7b" and cfg.data.name == "lamini"
    assert list(cfg.eval.ppl_sets) == list(PAPER_SETS) and cfg.eval.seq_len == 2048
    assert cfg.eval.max_windows is None and cfg.eval.zeroshot.enabled and cfg.eval.zeroshot.limit is None
    t = cfg.trainer
    assert (t.steps, t.epochs, t.batch_size, t.micro_batch_size, t.lr, t.warmup_steps) == (
        None,
        2,
        128,
        2,
        1e-4,
        0,
    )
    assert t.device == "cuda"
    assert (cfg.data.cutoff_len, cfg.lora.r, cfg.lora.alpha, cfg.prune.prune_freq) == (512, 8, 16, 10)
    assert (cfg.prune.ratio, cfg.prune.target, cfg.prune.selection) == (0.5, "groups", "local")
    assert _sweep_params("paper_llama7b") == _sweep_params("embedded_grid")


def test_eval_groups_compose():
    from loraprune.run.pipeline import to_config

    zs = to_config(compose("eval=zeroshot")).eval
    assert zs.ppl_sets == [] and zs.zeroshot.enabled and zs.zeroshot.limit is None
    paper = to_config(compose("eval=paper")).eval
    assert (paper.ppl_sets, paper.seq_len, paper.zeroshot.tasks) == (list(PAPER_SETS), 2048, list(TASKS))
    emb = to_config(compose("eval=embedded_zeroshot")).eval
    assert emb.zeroshot.limit == 100 and emb.ppl_sets == list(EMBEDDED_TEST_SETS)


def test_random_weight_runs_are_marked(tmp_path):
    """Runs on random weights (model.source=shape or tiny) say so in every row and table."""
    run_dir = write_run(tmp_path / "shape", "r", method="loraprune", ratio=0.2, ppl=48000.0, zeroshot=None)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["run"]["weights"] = "random"
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    rows = collect_rows(tmp_path / "shape")
    assert rows and all(r.model.endswith("(random weights)") for r in rows)
    assert "(random weights)" in to_markdown(build_tables(rows, paper="none"))


def test_reconstruction_of_runs_from_before_the_option_comes_from_their_config(tmp_path):
    """A run whose metrics predate run.reconstruct: its config says (prune/method.reconstruct), and a
    config from before the option means none (FLAP: its bias compensation unless options.bias is off)."""
    configs = {
        "old": "method:\n  criterion: mask_fisher\n",
        "flap_old": "method:\n  criterion: flap\n  options:\n    bias: true\n",
        "flap_nobias": "method:\n  criterion: flap\n  options:\n    bias: false\n",
        "cfg_ls": "method:\n  reconstruct: none\nprune:\n  reconstruct: least_squares\n",
    }
    expected = {
        "old": "no reconstruction",
        "flap_old": "reconstruction bias",
        "flap_nobias": "no reconstruction",
        "cfg_ls": "reconstruction least_squares",
    }
    for name, text in configs.items():
        method = "flap" if name.startswith("flap") else "mask_fisher"
        d = write_run(tmp_path / name, name, method=method, ratio=0.2, ppl=30.0, zeroshot=None)
        (d / "config.yaml").write_text(text)
        row = next(r for r in collect_rows(tmp_path / name) if r.kind == "run")
        assert dict(row.settings)["reconstruction"] == expected[name], name
    # without a config nothing is known: the setting is left out
    d = write_run(tmp_path / "bare", "bare", method="mask_fisher", ratio=0.2, ppl=30.0, zeroshot=None)
    assert "reconstruction" not in dict(next(r for r in collect_rows(d) if r.kind == "run").settings)


def test_every_method_preset_has_a_label_and_a_place():
    """A new method preset gets a row label (not its config name) and a place in the tables' order."""
    presets = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
    assert [m for m in presets if m not in METHOD_LABELS] == []
    assert [m for m in presets if m not in METHOD_ORDER] == []


def test_a_reference_may_name_a_method_by_some_of_its_settings(tmp_path):
    """``mask_fisher (no reconstruction)`` names the one row of that method showing that setting, whatever
    else its label shows; a setting no row shows matches nothing; the bare key stays ambiguous."""
    docs = list(range(20))
    base = {"wiki_embedded": ([1.0 + (d % 4) / 2 for d in docs], docs)}
    better = {k: ([x - 0.1 for x in nll], doc) for k, (nll, doc) in base.items()}
    for name, sets, reconstruct in (("plain", base, "none"), ("ls", better, "least_squares")):
        write_windowed_run(tmp_path, name, method="mask_fisher", sets=sets, zeroshot=None)
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        metrics["run"].update(reconstruct=reconstruct, steps=100 if name == "plain" else 0)
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    rows = collect_rows(tmp_path)
    labels = [r.label for r in rows if r.kind == "run"]
    assert labels == [
        "LoRA + mask Fisher (no recovery, reconstruction least_squares)",
        "LoRA + mask Fisher (100 steps, no reconstruction)",
    ]
    for spec in ("mask_fisher (no reconstruction)", "LoRA + mask Fisher (No Reconstruction)"):
        (table,) = build_tables(rows, paper="none", reference=spec)
        assert table.reference == labels[1]
    spec = "mask_fisher (no recovery, reconstruction least_squares)"
    (table,) = build_tables(rows, paper="none", reference=spec)
    assert table.reference == labels[0]
    with pytest.raises(ValueError, match="matches no row"):
        build_tables(rows, paper="none", reference="mask_fisher (reconstruction bias)")
    with pytest.raises(ValueError, match="name one of them as shown"):
        build_tables(rows, paper="none", reference="mask_fisher")


def test_parameter_targets_are_their_own_block_and_say_so(tmp_path):
    """A run at 15% of the parameters is neither averaged nor paired with one at 15% of the groups; its
    Ratio cell says ``params``, the dense model stays one row, and ``@15% params`` picks its block."""
    docs = list(range(20))
    base = {"wiki_embedded": ([1.0 + (d % 3) / 2 for d in docs], docs)}
    worse = {k: ([x + 0.2 for x in nll], doc) for k, (nll, doc) in base.items()}
    for name, method, sets, target in (
        ("fisher_groups", "mask_fisher", base, "groups"),
        ("wanda_groups", "wanda_sp", worse, "groups"),
        ("fisher_params", "mask_fisher", worse, "params"),
        ("wanda_params", "wanda_sp", base, "params"),
    ):
        write_windowed_run(
            tmp_path, name, method=method, ratio=0.15, sets=sets, zeroshot=None, run={"target": target}
        )
    rows = collect_rows(tmp_path)
    assert [(r.ratio_label, r.label) for r in rows] == [
        ("0%", "Dense"),
        ("15%", "Wanda-sp"),
        ("15%", "LoRA + mask Fisher"),
        ("15% params", "Wanda-sp"),
        ("15% params", "LoRA + mask Fisher"),
    ]
    assert all(r.n_runs == 1 for r in rows)
    (table,) = build_tables(rows, paper="none", reference="mask_fisher")
    md = to_markdown([table])
    shift = f"{100 * math.expm1(0.2):+.2f}"
    back = f"{100 * math.expm1(-0.2):+.2f}"
    assert _row_line(md, "| 15% | Wanda-sp |").split(" | ")[3] == f"{shift} [{shift}, {shift}]*"
    assert _row_line(md, "| 15% params | Wanda-sp |").split(" | ")[3] == f"{back} [{back}, {back}]*"
    (params_only,) = build_tables(rows, paper="none", reference="mask_fisher@15% params")
    md = to_markdown([params_only])
    assert _row_line(md, "| 15% | Wanda-sp |").split(" | ")[3] == "–"
    assert _row_line(md, "| 15% params | LoRA + mask Fisher |").split(" | ")[3] == "ref."
    with pytest.raises(UncertaintyError, match="not a ratio"):
        build_tables(rows, paper="none", reference="mask_fisher@15% layers")
    # the kept-width plots of the two blocks do not overwrite each other
    names = sorted(p.name for p in write_plots(rows, tmp_path / "plots", reference=False))
    assert "kept_smollm2_135m_mask_fisher_r0.15.png" in names
    assert "kept_smollm2_135m_mask_fisher_params_r0.15.png" in names


def test_resumed_runs_mark_their_memory_and_wall_time(tmp_path):
    """A resumed run's peak memory and wall time are its last process's: marked ‡ with a note, on the row
    of every seed group holding one; a run from before ``resumed_from_step`` was recorded is read from
    its config's ``resume: true``."""
    for name, method, seed, train, resume in (
        ("plain", "wanda_sp", 42, {"seconds": 60.0}, False),
        ("resumed", "mask_fisher", 42, {"seconds": 60.0, "resumed_from_step": 50}, True),
        ("fresh_seed", "mask_fisher", 1, {"seconds": 60.0}, False),
        ("older", "grad", 42, {"seconds": 0.03}, True),
    ):
        d = write_run(tmp_path, name, method=method, ratio=0.2, ppl=30.0, zeroshot=None, seed=seed)
        metrics = json.loads((d / "metrics.json").read_text())
        metrics["train"] = train
        (d / "metrics.json").write_text(json.dumps(metrics))
        (d / "config.yaml").write_text(f"resume: {str(resume).lower()}\n")
    md = to_markdown(build_tables(collect_rows(tmp_path), paper="none"))
    assert _row_line(md, "| 20% | Wanda-sp |").endswith("| 1.2† | 2.0 min |")
    assert _row_line(md, "| 20% | LoRA + mask Fisher (n=2) |").endswith("| 1.2†‡ | 2.0 min‡ |")
    assert _row_line(md, "| 20% | Grad |").endswith("| 1.2†‡ | 2.0 min‡ |")
    assert "- ‡ resumed from a checkpoint" in md
    d = tmp_path / "resumed"
    metrics = json.loads((d / "metrics.json").read_text())
    metrics["train"]["resumed_from_step"] = 0  # started with resume=true, nothing to resume
    (d / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "older").rename(tmp_path.parent / "older_elsewhere")
    md = to_markdown(build_tables(collect_rows(tmp_path), paper="none"))
    assert "‡" not in md
