"""The results registry: adding runs (all or nothing, never weights), rendering its tables, README blocks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_tables import write_run, write_windowed_run

from loraprune.report.registry import headline_attrs, render_registry, rewrite_headlines
from loraprune.report.registry_cli import main

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
