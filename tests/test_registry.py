"""The results registry: adding runs (all or nothing, never weights), rendering its tables, README blocks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_tables import write_run, write_val_test_pair, write_windowed_run

import loraprune.cli.results as results_cli
from loraprune.cli.results import main
from loraprune.report.registry import (
    RegistryError,
    headline_attrs,
    parse_view,
    render_registry,
    rewrite_headlines,
)

DOCS = list(range(20))
BASE = {
    "wiki_embedded": ([1.0 + (d % 4) / 2 for d in DOCS], DOCS),
    "news_embedded": ([2.0 for _ in DOCS], DOCS),
}


def _runs(root: Path) -> tuple[Path, Path]:
    """Two finished runs at 20%: mask_fisher (its command in the provenance) and loraprune (its command in
    Hydra's overrides), each with a model folder that must never be copied."""
    fisher = write_windowed_run(root, "fisher_s1", method="mask_fisher", sets=BASE, seed=1, zeroshot=None)
    worse = {k: ([x + 0.05 for x in nll], doc) for k, (nll, doc) in BASE.items()}
    lora = write_windowed_run(root, "lora_s1", method="loraprune", sets=worse, seed=1, zeroshot=None)
    metrics = json.loads((fisher / "metrics.json").read_text())
    metrics["provenance"] = {
        "commit": "0123456789abcdef",
        "dirty": False,
        "command": "loraprune method=mask_fisher",
    }
    metrics["eval"]["windows"] = {
        "wiki_embedded": {"windows": 20, "of": 40, "documents": 20, "of_documents": 21},
        "news_embedded": {"windows": 20, "of": 40, "documents": 20, "of_documents": 21},
    }
    (fisher / "metrics.json").write_text(json.dumps(metrics))
    (lora / ".hydra").mkdir()
    (lora / ".hydra" / "overrides.yaml").write_text("- method=loraprune\n- prune.ratio=0.2\n")
    for run in (fisher, lora):
        (run / "config.yaml").write_text("trainer:\n  seed: 1\n")
        (run / "model").mkdir()
        (run / "model" / "model.safetensors").write_bytes(b"weights")
    return fisher, lora


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_add_copies_the_records_and_never_weights(tmp_path):
    fisher, lora = _runs(tmp_path / "outputs")
    registry = tmp_path / "results"
    assert main(["add", str(fisher), str(lora), "--table", "compare_r20", "--registry", str(registry)]) == 0
    assert _tree(registry) == [
        "compare_r20",
        *[
            f"compare_r20/{run}{f}"
            for run in ("fisher_s1", "lora_s1")
            for f in ("", "/command.txt", "/config.yaml", "/metrics.json", "/window_losses.json")
        ],
    ]
    table = registry / "compare_r20"
    assert (table / "fisher_s1" / "command.txt").read_text() == "loraprune method=mask_fisher\n"
    assert (table / "lora_s1" / "command.txt").read_text() == "loraprune method=loraprune prune.ratio=0.2\n"
    assert (table / "lora_s1" / "window_losses.json").read_bytes() == (
        lora / "window_losses.json"
    ).read_bytes()
    # table options are recorded when given
    other = write_windowed_run(tmp_path / "more", "x", method="wanda_sp", sets=BASE, zeroshot=None)
    assert (
        main(["add", str(other), "--table", "t2", "--registry", str(registry), "--reference", "Wanda-sp"])
        == 0
    )
    assert json.loads((registry / "t2" / "table.json").read_text()) == {"reference": "Wanda-sp"}


@pytest.mark.parametrize("missing", ["window_losses.json", "metrics.json"])
def test_add_refuses_an_incomplete_run_and_copies_nothing(tmp_path, capsys, missing):
    fisher, lora = _runs(tmp_path / "outputs")
    (lora / missing).unlink()
    registry = tmp_path / "results"
    assert main(["add", str(fisher), str(lora), "--table", "t", "--registry", str(registry)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"loraprune-results: error: {lora} has no {missing}; only finished runs can be registered"
    assert not (registry / "t" / "fisher_s1").exists()


def test_add_refuses_a_name_already_taken(tmp_path, capsys):
    fisher, lora = _runs(tmp_path / "outputs")
    registry = tmp_path / "results"
    assert main(["add", str(fisher), "--table", "t", "--registry", str(registry)]) == 0
    before = _tree(registry)
    assert main(["add", str(lora), str(fisher), "--table", "t", "--registry", str(registry)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1] == f"loraprune-results: error: {registry / 't' / 'fisher_s1'} already exists; "
        "remove it first to replace it"
    )
    assert _tree(registry) == before  # lora_s1 was not copied either
    assert main(["add", str(lora), "--table", "../up", "--registry", str(registry)]) == 2


def test_render_writes_every_table_with_its_header_and_is_idempotent(tmp_path, capsys):
    fisher, lora = _runs(tmp_path / "outputs")
    registry, out = tmp_path / "results", tmp_path / "docs" / "tables.md"
    main(
        [
            "add",
            str(fisher),
            str(lora),
            "--table",
            "compare_r20",
            "--registry",
            str(registry),
            "--reference",
            "mask_fisher",
        ]
    )
    write_run(tmp_path / "solo", "a", method="wanda_sp", ratio=0.5, ppl=30.0, zeroshot=None)
    (tmp_path / "solo" / "a" / "window_losses.json").write_text((fisher / "window_losses.json").read_text())
    main(["add", str(tmp_path / "solo" / "a"), "--table", "another", "--registry", str(registry)])
    args = ["render", "--registry", str(registry), "--out", str(out), "--readme", str(tmp_path / "none.md")]
    assert main(args) == 0
    text = out.read_text()
    assert text.index("## another") < text.index("## compare_r20")  # sections by name
    section = text[text.index("## compare_r20") :]
    assert "- Runs: 2; perplexity windows of 128 tokens.\n" in section
    assert "- Sets: Wiki (emb.), News (emb.).\n" in section
    assert (
        "- Windows: Wiki (emb.): 20 of 40 windows, 20 of 21 docs; "
        "News (emb.): 20 of 40 windows, 20 of 21 docs.\n" in section
    )
    assert "- Seeds: 1.\n- Commits: 0123456789ab.\n" in section
    assert (
        f'- Table: `loraprune-table {registry.as_posix()}/compare_r20 --paper none --reference "mask_fisher"`'
        in section
    )
    assert "  loraprune method=loraprune prune.ratio=0.2\n  loraprune method=mask_fisher\n" in section
    assert "| Δ% vs LoRA + mask Fisher |" in section and "| ref. |" in section
    assert "- Commits: not recorded." in text[: text.index("## compare_r20")]
    capsys.readouterr()
    assert main(args) == 0  # again: nothing changes
    assert out.read_text() == text and capsys.readouterr().err.strip() == f"unchanged {out}"
    assert render_registry(registry) == text
    # --check: 0 while the file is current; 1 naming it once it is not, and nothing is written
    assert main([*args, "--check"]) == 0
    out.write_text(text.replace("| ref. |", "| 0.00 |"))
    assert main([*args, "--check"]) == 1
    assert f"{out} is not what the registry renders" in capsys.readouterr().err
    assert "| 0.00 |" in out.read_text()


def test_render_fills_the_readme_headline_block(tmp_path):
    fisher, lora = _runs(tmp_path / "outputs")
    registry = tmp_path / "results"
    main(["add", str(fisher), str(lora), "--table", "compare_r20", "--registry", str(registry)])
    start = '<!-- results:headline:start table=compare_r20 reference="LoRA + mask Fisher" -->'
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# Title\n\nBefore.\n\n{start}\nold numbers\n<!-- results:headline:end -->\n\nAfter.\n"
    )
    args = ["render", "--registry", str(registry), "--out", str(tmp_path / "t.md"), "--readme", str(readme)]
    assert main(args) == 0
    text = readme.read_text()
    assert text.startswith(f"# Title\n\nBefore.\n\n{start}\n#### smollm2_135m\n")
    assert text.endswith("\n<!-- results:headline:end -->\n\nAfter.\n")
    assert "old numbers" not in text and "| Δ% vs LoRA + mask Fisher |" in text
    delta = [line for line in text.splitlines() if line.startswith("| 20% | LoRAPrune |")][0]
    assert "+5.13 [+5.13, +5.13]*" in delta  # 0.05 nat/token on every window: 100 (e^0.05 - 1)
    assert main(args) == 0
    assert readme.read_text() == text  # idempotent
    assert rewrite_headlines("no markers\n", registry) == "no markers\n"
    other = tmp_path / "results.md"  # several files at once, each block filled the same way
    other.write_text(f"# Results\n\n{start}\n<!-- results:headline:end -->\n")
    assert main([*args, str(other)]) == 0
    assert "+5.13 [+5.13, +5.13]*" in other.read_text() and readme.read_text() == text


def test_render_writes_nothing_when_a_readme_is_edited_while_it_renders(tmp_path, capsys, monkeypatch):
    fisher, lora = _runs(tmp_path / "outputs")
    registry = tmp_path / "results"
    main(["add", str(fisher), str(lora), "--table", "compare_r20", "--registry", str(registry)])
    readme = tmp_path / "README.md"
    block = "<!-- results:headline:start table=compare_r20 -->\nold\n<!-- results:headline:end -->\n"
    readme.write_text(f"# Title\n\n{block}")
    out = tmp_path / "t.md"
    build = results_cli.rewrite_headlines

    def build_then_edit(text, registry):  # someone saves the README while the tables are being built
        filled = build(text, registry)
        readme.write_text(f"# Title\n\nA sentence written meanwhile.\n\n{block}")
        return filled

    monkeypatch.setattr(results_cli, "rewrite_headlines", build_then_edit)
    capsys.readouterr()
    assert main(["render", "--registry", str(registry), "--out", str(out), "--readme", str(readme)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"loraprune-results: error: {readme} changed while rendering; nothing written, "
        "run loraprune-results render again"
    )
    assert "A sentence written meanwhile." in readme.read_text() and "\nold\n" in readme.read_text()
    assert not out.exists()
    monkeypatch.setattr(results_cli, "rewrite_headlines", build)
    assert main(["render", "--registry", str(registry), "--out", str(out), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "A sentence written meanwhile." in text and "\nold\n" not in text and out.exists()


def test_headline_attributes_and_errors(tmp_path, capsys):
    assert headline_attrs(' table=a_b reference="LoRA + mask Fisher@20%" ') == {
        "table": "a_b",
        "reference": "LoRA + mask Fisher@20%",
    }
    fisher, _ = _runs(tmp_path / "outputs")
    registry = tmp_path / "results"
    main(["add", str(fisher), "--table", "t", "--registry", str(registry)])
    capsys.readouterr()
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:headline:start table=nope -->\n<!-- results:headline:end -->\n")
    out = tmp_path / "t.md"
    assert main(["render", "--registry", str(registry), "--out", str(out), "--readme", str(readme)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"loraprune-results: error: headline block names table 'nope', which {registry} lacks"
    )
    assert not out.exists()  # nothing written on error
    assert main(["render", "--registry", str(tmp_path / "absent"), "--out", str(out)]) == 2
    assert "is not a directory (no registry there)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ views
VIEWS = [{"sets": "val", "title": "validation"}, {"sets": "test", "title": "test (development)"}]


def _delta(shift: float) -> str:
    d = f"{100 * math.expm1(shift):+.2f}"
    return f"{d} [{d}, {d}]*"


def _val_test_table(tmp_path: Path, *views: str) -> Path:
    """The registry with table 'vt': test_tables' validation/test pair, compared against mask_fisher."""
    write_val_test_pair(tmp_path / "outputs")
    registry = tmp_path / "results"
    args = ["add", str(tmp_path / "outputs" / "fisher"), str(tmp_path / "outputs" / "lora"), "--table", "vt"]
    args += ["--registry", str(registry), "--reference", "mask_fisher"]
    assert main(args + [a for v in views for a in ("--view", v)]) == 0
    return registry


def test_parse_view():
    assert parse_view("val") == {"title": "validation", "sets": "val"}
    assert parse_view("test") == {"title": "test", "sets": "test"}
    assert parse_view("test (development)=test") == {"title": "test (development)", "sets": "test"}
    assert parse_view(" wiki = wiki_embedded,wiki_embedded_val ") == {
        "title": "wiki",
        "sets": "wiki_embedded,wiki_embedded_val",
    }
    assert parse_view("=val") == {"title": "validation", "sets": "val"}
    with pytest.raises(RegistryError, match="expected \\[TITLE=\\]SETS"):
        parse_view("title=")


def test_add_records_views_checked_against_the_runs_sets(tmp_path, capsys):
    registry = _val_test_table(tmp_path, "val", "test (development)=test")
    options = json.loads((registry / "vt" / "table.json").read_text())
    assert options == {"reference": "mask_fisher", "views": VIEWS}
    # options of an existing table, without runs: views replaced, the rest kept
    assert main(["add", "--table", "vt", "--registry", str(registry), "--view", "news=news_embedded"]) == 0
    options = json.loads((registry / "vt" / "table.json").read_text())
    assert options == {"reference": "mask_fisher", "views": [{"title": "news", "sets": "news_embedded"}]}
    capsys.readouterr()
    # a set no run has: one error line, nothing copied
    other = write_windowed_run(tmp_path / "more", "x", method="wanda_sp", sets=BASE, zeroshot=None)
    assert main(["add", str(other), "--table", "vt", "--registry", str(registry), "--view", "tech_val"]) == 2
    assert capsys.readouterr().err.strip() == (
        "loraprune-results: error: vt: view 'tech_val': --sets: unknown set 'tech_val'; the runs have "
        "wiki_embedded_val, news_embedded_val, wiki_embedded, news_embedded"
    )
    assert not (registry / "vt" / "x").exists()
    assert main(["add", "--table", "vt", "--registry", str(registry)]) == 2
    assert capsys.readouterr().err.strip().endswith("nothing to add: give run directories or a table option")
    assert main(["add", "--table", "new", "--registry", str(registry), "--view", "val"]) == 2
    assert "does not exist; give run directories to create it" in capsys.readouterr().err


def test_render_gives_one_subsection_per_view_and_is_idempotent(tmp_path, capsys):
    registry = _val_test_table(tmp_path, "val", "test (development)=test")
    out = tmp_path / "tables.md"
    args = ["render", "--registry", str(registry), "--out", str(out), "--readme", str(tmp_path / "none.md")]
    assert main(args) == 0
    text = out.read_text()
    common, val = text.split("\n### validation\n")
    val, test = val.split("\n### test (development)\n")
    assert "- Sets: Wiki val, News val, Wiki (emb.), News (emb.).\n" in common and "- Table:" not in common
    table = f"loraprune-table {registry.as_posix()}/vt --paper none"
    assert val.startswith(
        f'\n- Sets: Wiki val, News val.\n- Table: `{table} --sets val --reference "mask_fisher"`\n\n'
        "#### smollm2_135m\n\n| Ratio | Method | Wiki val | News val | Geo. mean | Δ% vs LoRA + mask Fisher |"
    )
    assert test.startswith(f"\n- Sets: Wiki (emb.), News (emb.).\n- Table: `{table} --sets test --reference")
    # each view's Δ over its own sets (LoRAPrune 0.1, 0.3 nat/token worse on validation, 0.2, 0.4 on test)
    lora = [line for line in val.splitlines() if line.startswith("| 20% | LoRAPrune |")]
    assert lora[0].split(" | ")[5] == _delta(0.2)
    assert lora[1] == f"| 20% | LoRAPrune | {_delta(0.1)} | {_delta(0.3)} | {_delta(0.2)} |"  # per set
    assert "#### smollm2_135m: paired Δ% per set vs LoRA + mask Fisher" in val
    lora = [line for line in test.splitlines() if line.startswith("| 20% | LoRAPrune |")]
    assert lora[0].split(" | ")[5] == _delta(0.3)
    assert lora[1] == f"| 20% | LoRAPrune | {_delta(0.2)} | {_delta(0.4)} | {_delta(0.3)} |"
    assert "Wiki val" not in test and "Wiki (emb.)" not in val
    capsys.readouterr()
    assert main(args) == 0 and out.read_text() == text
    assert capsys.readouterr().err.strip() == f"unchanged {out}"
    # a malformed view
    (registry / "vt" / "table.json").write_text(json.dumps({"views": [{"title": "x"}]}))
    assert main(args) == 2
    assert (
        capsys.readouterr().err.strip().endswith('table.json: views[0] must be {"title": ..., "sets": ...}')
    )


def test_a_headline_block_may_name_a_view(tmp_path, capsys):
    registry = _val_test_table(tmp_path, "val", "test (development)=test")
    readme = tmp_path / "README.md"
    blocks = [
        '<!-- results:headline:start table=vt view=test reference="LoRA + mask Fisher@20%" -->',
        "<!-- results:headline:start table=vt view=validation -->",
        "<!-- results:headline:start table=vt sets=news_embedded_val,news_embedded -->",
    ]
    readme.write_text("".join(f"{b}\nold\n<!-- results:headline:end -->\n\n" for b in blocks))
    args = ["render", "--registry", str(registry), "--out", str(tmp_path / "t.md"), "--readme", str(readme)]
    assert main(args) == 0
    text = readme.read_text()
    by_sets, by_title, by_list = (text.split(b)[1].split("<!-- results:headline:end -->")[0] for b in blocks)
    assert by_sets.startswith(
        "\n#### smollm2_135m\n\n| Ratio | Method | Wiki (emb.) | News (emb.) | Geo. mean |"
    )
    assert "| Ratio | Method | Wiki val | News val | Geo. mean |" in by_title
    assert "| Ratio | Method | News val | News (emb.) | Geo. mean |" in by_list
    for body, shift in ((by_sets, 0.3), (by_title, 0.2), (by_list, 0.35)):
        line = next(x for x in body.splitlines() if x.startswith("| 20% | LoRAPrune |"))
        assert line.split(" | ")[5] == _delta(shift)
    assert main(args) == 0 and readme.read_text() == text  # idempotent
    readme.write_text("<!-- results:headline:start table=vt view=dev -->\n<!-- results:headline:end -->\n")
    capsys.readouterr()
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == (
        "loraprune-results: error: table 'vt' has no view 'dev'; its views: 'validation' (val), "
        "'test (development)' (test)"
    )


def test_a_table_may_include_runs_of_another(tmp_path, capsys):
    """A table of candidates shows the reference registered in another table, without copying it: its rows,
    header, Δ column and loraprune-table command all count the included run."""
    fisher, lora = _runs(tmp_path / "outputs")
    registry = tmp_path / "results"
    reg = ["--registry", str(registry)]
    assert main(["add", str(fisher), "--table", "compare", *reg]) == 0
    add = ["add", str(lora), "--table", "select", *reg, "--reference", "mask_fisher"]
    assert main([*add, "--include", "compare/fisher_s1"]) == 0
    options = json.loads((registry / "select" / "table.json").read_text())
    assert options == {"include": ["compare/fisher_s1"], "reference": "mask_fisher"}
    assert sorted(p.name for p in (registry / "select").iterdir()) == ["lora_s1", "table.json"]
    section = render_registry(registry).split("## select\n")[1]
    assert "- Runs: 2; perplexity windows of 128 tokens.\n" in section
    command = (
        f"loraprune-table {registry.as_posix()}/select {registry.as_posix()}/compare/fisher_s1 --paper none"
    )
    assert f'- Table: `{command} --reference "mask_fisher"`' in section
    lora_row = next(line for line in section.splitlines() if line.startswith("| 20% | LoRAPrune |"))
    assert f"| {_delta(0.05)} |" in lora_row  # 0.05 nat/token worse than the included reference
    assert "| 20% | LoRA + mask Fisher |" in section
    capsys.readouterr()
    # bad entries: one error line, the table's options unchanged
    for entry, message in [
        ("compare/nope", "select: include entry 'compare/nope': "),
        ("select/lora_s1", "select: include entry 'select/lora_s1' names a run of this table"),
        ("fisher_s1", "select: include entry 'fisher_s1': expected TABLE/RUN"),
    ]:
        assert main(["add", "--table", "select", *reg, "--include", entry]) == 2
        assert capsys.readouterr().err.strip().startswith(f"loraprune-results: error: {message}")
    assert json.loads((registry / "select" / "table.json").read_text()) == options
    # --include with no value: none any more
    assert main(["add", "--table", "select", *reg, "--include"]) == 0
    assert json.loads((registry / "select" / "table.json").read_text())["include"] == []
