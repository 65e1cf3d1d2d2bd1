"""The front door (issue 23, item 6): bad input a newcomer might type ends in one ``loraprune: error:``
line, exit status 2, before Hydra makes a directory or a model is loaded; nothing is written."""

from __future__ import annotations

import re

import pytest
from conftest import cli, compose

from loraprune.report.preflight import one_line
from loraprune.run.pipeline import to_config
from loraprune.run.resolve import ConfigError, resolve

FAST = ("debug=tiny", "trainer.steps=1", "eval.max_windows=1", "eval.seq_len=32", "data.cutoff_len=32")

# Through the CLI: what only the entry point sees (Hydra's composition, its mkdir) and the cases the issue
# named. ``{tmp}`` is the test's directory; every case also sets output_dir (or the sweep dir) under it.
CLI_CASES = {
    "run dir under a file": (["output_dir={tmp}/a_file/run"], "cannot create the run directory"),
    "run dir in /proc": (["output_dir=/proc/loraprune/run"], "cannot create the run directory"),
    "sweep dir in /proc": (
        ["-m", "hydra.sweep.dir=/proc/loraprune", "prune.ratio=0.2,0.5"],
        "sweep directory",
    ),
    "lora.alpha=0": (["lora.alpha=0"], "lora.alpha must be > 0"),
    "eval.max_windows=0": (["eval.max_windows=0"], "eval.max_windows must be >= 1"),
    "trainer.batch_size=0": (["trainer.batch_size=0"], "trainer.batch_size must be >= 1"),
    "unknown preset": (["model=llama_8b"], "Could not find 'model/llama_8b'; Available options in 'model': "),
    "unknown key": (["trainer.stepz=10"], "Key 'stepz' not in 'TrainerConfig'"),
    "wrong type": (["trainer.steps=ten"], "could not be converted to Integer"),
    "record without the field": (
        ["data.name={tmp}/records.jsonl"],
        "has no field 'text'; available fields: body",
    ),
    "unknown device": (["trainer.device=tpu"], "unknown trainer.device 'tpu'"),
    "unknown method criterion": (["method.criterion=wandaa"], "unknown method criterion 'wandaa'"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path):
    args, message = CLI_CASES[case]
    (tmp_path / "a_file").write_text("not a directory")
    (tmp_path / "records.jsonl").write_text('{"body": "a"}\n{"body": "b"}\n')
    args = [a.format(tmp=tmp_path) for a in args]
    out = tmp_path / "out"
    placed = any(a.startswith(("output_dir=", "hydra.sweep.dir=")) for a in args)
    flags = [a for a in args if a.startswith("-")]  # Hydra's flags before the overrides
    overrides = [a for a in args if not a.startswith("-")] + ([] if placed else [f"output_dir={out}"])
    before = set(tmp_path.iterdir())
    proc = cli(*flags, *FAST, *overrides, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("loraprune: error: "), proc.stderr[-3000:]
    assert message in lines[0]
    assert set(tmp_path.iterdir()) == before  # no run dir, no outputs/, nothing else


# In process (resolve: the same checks the door runs): zero / negative counts and rates out of range.
RESOLVE_CASES = {
    "lora.alpha=-16": "lora.alpha must be > 0",
    "lora.dropout=1.0": "lora.dropout must be in [0, 1)",
    "lora.target_modules=[]": "lora.target_modules is empty",
    "lora.r=0": "lora.r must be >= 1",
    "trainer.steps=-1": "trainer.steps must be >= 0",
    "trainer.batch_size=-4": "trainer.batch_size must be >= 1",
    "trainer.micro_batch_size=0": "must be a multiple of trainer.micro_batch_size",
    "trainer.epochs=0": "trainer.epochs must be > 0",
    "trainer.warmup_steps=-1": "trainer.warmup_steps must be >= 0",
    "trainer.max_grad_norm=0": "trainer.max_grad_norm must be > 0",
    "trainer.weight_decay=-0.1": "trainer.weight_decay must be >= 0",
    "trainer.lr=0": "trainer.lr must be > 0",
    "data.nsamples=0": "nsamples must be >= 1",
    "data.cutoff_len=0": "cutoff_len must be >= 1",
    "eval.seq_len=0": "eval.seq_len must be >= 2",
    "eval.batch_size=0": "eval.batch_size must be >= 1",
    "method.calibration.samples=0": "method.calibration.samples must be >= 1",
    "prune.ratio=1.0": "prune.ratio must be in [0, 1)",
    "prune.ratio=-0.1": "prune.ratio must be in [0, 1)",
    "prune.prune_freq=0": "prune.prune_freq must be >= 1",
    "prune.at_step=-1": "prune.at_step must be >= 0",
    "prune.exclude_first_fraction=1.5": "prune.exclude_first_fraction must be in [0, 1)",
    "prune.exclude_last=-1": "prune.exclude_last must be >= 0",
    "prune.exclude_last=4": "nothing is left to prune",
    "logger.console_every=0": "logger.console_every must be >= 1",
    "model.tiny.num_layers=0": "model.tiny sizes must be >= 1",
    "model.tiny.num_heads=3": "must be a multiple of num_heads",
}


@pytest.mark.parametrize("override", sorted(RESOLVE_CASES))
def test_bad_count_is_refused_before_loading(override, tmp_path):
    with pytest.raises(ConfigError, match=re.escape(RESOLVE_CASES[override])):
        resolve(to_config(compose("debug=tiny", override, f"output_dir={tmp_path / 'run'}")))
    assert not (tmp_path / "run").exists()


def test_zero_shot_counts_are_checked_when_enabled(tmp_path):
    out = f"output_dir={tmp_path / 'run'}"
    with pytest.raises(ConfigError, match="eval.zeroshot.limit must be > 0"):
        resolve(to_config(compose("debug=tiny", "eval.zeroshot.enabled=true", "eval.zeroshot.limit=0", out)))
    offline = ("debug=tiny", "eval.zeroshot.enabled=true", "eval.zeroshot.source=offline")
    with pytest.raises(ConfigError, match=r"no offline copy of eval.zeroshot.tasks \['piqaa'\]"):
        resolve(to_config(compose(*offline, "eval.zeroshot.tasks=[piqa,piqaa]", out)))


def test_hydra_messages_become_one_line():
    error = ValueError(
        "In 'config': Could not find 'model/x'\n\nAvailable options in 'model':\n\ta\n\tb\n"
        "Config search path:\n\tprovider=main"
    )
    assert one_line(error) == "In 'config': Could not find 'model/x'; Available options in 'model': a, b"
    assert "\n" not in one_line(ValueError("Error merging\nValue 'x'\n    full_key: a.b\n"))
