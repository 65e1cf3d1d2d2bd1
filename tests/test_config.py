"""Every config composes and validates; bad input fails at start with a clear message."""

from pathlib import Path

import pytest
import torch
from conftest import CONF, compose
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from loraprune.run.pipeline import run, to_config
from loraprune.run.resolve import ConfigError, validate

GROUPS = sorted(
    p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("experiment", "debug", "local")
)
# Options valid only with another, and the fix their refusal names: SparseGPT prunes N:M patterns only.
NEEDS = {"method=sparsegpt": ("prune=nm", "use prune=nm")}


def validate_here(cfg) -> None:
    """``validate(cfg)`` on this machine: a config on CUDA where there is none must be refused at the
    device check; the rest of it is then validated for the CPU."""
    if cfg.trainer.device.startswith("cuda") and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            validate(cfg)
        cfg.trainer.device = "cpu"
    validate(cfg)


@pytest.mark.parametrize(
    "override",
    [f"{g}={p.stem}" for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
    + [f"experiment={p.stem}" for p in sorted((CONF / "experiment").glob("*.yaml"))]
    + [f"debug={p.stem}" for p in sorted((CONF / "debug").glob("*.yaml"))],
)
def test_every_config_composes_to_a_typed_config_and_validates(override):
    cfg = to_config(compose(override))
    if cfg.prune.pattern is None:
        assert 0 <= cfg.prune.ratio < 1
    else:  # N:M fixes the sparsity itself
        assert cfg.prune.ratio is None and cfg.prune.pattern == "2:4"
    if override in NEEDS:
        with pytest.raises(ConfigError, match=NEEDS[override][1]):
            validate(cfg)
        cfg = to_config(compose(override, NEEDS[override][0]))
    validate_here(cfg)


def test_unknown_key_fails():
    with pytest.raises((ConfigCompositionException, ValidationError), match="nonexistent"):
        compose("prune.nonexistent=1")


def test_wrong_type_fails():
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose("prune.ratio=lots")


BAD = [
    (["prune.ratio=1.0"], "prune.ratio"),
    (["prune.ratio=-0.2"], "prune.ratio"),
    (["method.criterion=nope"], "unknown method criterion"),
    (["model.source=hub", "model.path=/does/not/exist"], "config.json"),
    (["model.source=hub", "model.path=not-a-hub-id"], "unknown model"),
    (["data.name=no_such_set"], "no_such_set"),
    (["eval.ppl_sets=[/tmp/missing_file_xyz.txt]"], "missing_file_xyz"),
    (["prune.schedule=exp"], "prune.schedule"),
    (["prune.attention_unit=head"], "attention_unit"),
    (["trainer.batch_size=3", "trainer.micro_batch_size=2"], "multiple"),
    (["lora.target_modules=[q_proj,foo]"], "foo"),
]


@pytest.mark.parametrize("overrides,message", BAD)
def test_bad_input_is_rejected_before_loading(overrides, message):
    cfg = to_config(compose("debug=tiny", *overrides))
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_evaluating_on_the_fine_tune_file_is_refused(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("some words " * 200)
    cfg = to_config(compose("debug=tiny", f"data.name={text}", f"eval.ppl_sets=[{text}]"))
    with pytest.raises(ConfigError, match="held-out"):
        validate(cfg)


def test_bad_input_writes_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError):
        run(compose("debug=tiny", "prune.ratio=1.5", f"output_dir={out}"))
    assert not out.exists()


def test_excluded_layers_out_of_range(tmp_path):
    with pytest.raises(ConfigError, match="exclude_layers"):
        run(compose("debug=tiny", "prune.exclude_layers=[0,7]", f"output_dir={tmp_path / 'r'}"))


def test_gqa_ratio_that_cannot_be_met(tmp_path):
    cfg = compose("debug=tiny", "model=tiny_gqa", "prune.ratio=0.9", f"output_dir={tmp_path / 'r'}")
    with pytest.raises(ConfigError, match="every attention unit"):
        run(cfg)
    assert not (tmp_path / "r").exists()


def test_existing_results_are_not_lost_by_a_bad_rerun(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError):
        run(compose("debug=tiny", "prune.ratio=2", f"output_dir={out}"))
    assert Path(out / "metrics.json").read_text() == "{}"


def test_criterion_options_are_typed_at_compose_time():
    """A method preset's options are its criterion's options dataclass: a typo fails when composing."""
    cfg = to_config(compose("method=llm_pruner", "method.options.taylor=mix"))
    assert cfg.method.options.taylor == "mix"
    validate(cfg)
    with pytest.raises((ConfigCompositionException, ValidationError), match="taylr"):
        compose("method=llm_pruner", "method.options.taylr=mix")
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose("method=sparsegpt", "method.options.blocksize=many")
