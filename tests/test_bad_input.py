"""Bad input ends with one clear line before any weight is loaded, and nothing already written is lost."""

from __future__ import annotations

import json

import pytest
from conftest import cli, compose

from loraprune.run.pipeline import to_config
from loraprune.run.resolve import ConfigError, resolve


def _resolve(*overrides: str):
    return resolve(to_config(compose("debug=tiny", *overrides)))


def test_output_dir_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot create the run directory"):
        _resolve(f"output_dir={blocker / 'run'}")


def test_eval_window_beyond_the_models_positions(tmp_path):
    expected = r"eval.seq_len 100000 exceeds the model's maximum positions \(2048\)"
    with pytest.raises(ConfigError, match=expected):
        _resolve("eval.seq_len=100000", f"output_dir={tmp_path / 'run'}")


def test_a_finished_run_is_not_replaced_unless_asked(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"objective": 1.0}))
    with pytest.raises(ConfigError, match="already holds a finished run.*overwrite=true"):
        _resolve(f"output_dir={run_dir}")
    assert _resolve(f"output_dir={run_dir}", "overwrite=true").run_dir == run_dir
    assert json.loads((run_dir / "metrics.json").read_text()) == {"objective": 1.0}  # resolve writes nothing


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"\xff\xfe caf\xe9 \x00\x81", "UTF-8")],
    ids=["empty", "not-utf8"],
)
def test_unusable_fine_tune_file_is_one_line_from_the_cli(tmp_path, content, message):
    data = tmp_path / "train.txt"
    data.write_bytes(content)
    out = tmp_path / "run"
    proc = cli("debug=tiny", f"data.name={data}", f"output_dir={out}", cwd=tmp_path)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("loraprune: error:") and message in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not out.exists()  # a refused run leaves nothing behind


def test_selection_follows_the_method_unless_set(tmp_path):
    out = f"output_dir={tmp_path / 'run'}"
    assert _resolve(out).pruner.selection == "budget"  # the default method, mask_fisher
    assert _resolve(out, "method=loraprune").pruner.selection == "local"  # and the baselines: as published
    assert _resolve(out, "method=mask_fisher", "prune.selection=local").pruner.selection == "local"
    assert _resolve(out, "method=wanda_sp", "prune.selection=global").pruner.selection == "global"
    assert _resolve(out, "prune.selection=budget").pruner.selection == "budget"


def test_global_selection_of_query_heads_on_gqa_is_refused_before_loading(tmp_path):
    with pytest.raises(ConfigError, match="query_head on a GQA model is not supported"):
        _resolve(
            "model=tiny_gqa",
            "method=mask_fisher",
            "prune.attention_unit=query_head",
            f"output_dir={tmp_path}",
        )
    with pytest.raises(ConfigError, match="budget selection .*query_head on a GQA model is not supported"):
        _resolve(
            "model=tiny_gqa",
            "prune.selection=budget",
            "prune.attention_unit=query_head",
            f"output_dir={tmp_path}",
        )
    with pytest.raises(ConfigError, match="prune.selection must be local / global / budget"):
        _resolve("prune.selection=everywhere", f"output_dir={tmp_path}")


def test_parameter_target_beyond_what_budget_selection_can_remove(tmp_path):
    # the embeddings stay: 90% of all parameters is more than every layer keeping one unit of each kind
    cfg = to_config(compose("debug=tiny", "prune.target=params", "prune.ratio=0.9", f"output_dir={tmp_path}"))
    with pytest.raises(ConfigError, match="more than the .* that budget selection can remove"):
        resolve(cfg)
