"""Kill and resume: a run SIGKILLed mid-run and mid-checkpoint, resumed, ends as an uninterrupted one."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import OFFLINE_ENV, compose

from loraprune.run.pipeline import run, to_config
from loraprune.run.resolve import ConfigError, resolve
from loraprune.train import resume

# 24 steps, a checkpoint every 4; 16 samples in micro-batches of 1, 2 per step: reshuffled every 8 steps
RUN = ("debug=tiny", "trainer.steps=24", "trainer.save_every=4", "lora.dropout=0.1")
ENV = {**OFFLINE_ENV, "OMP_NUM_THREADS": "1"}  # the in-process reference runs on one thread too


def _start(out: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "loraprune", *RUN, f"output_dir={out}", *extra]
    return subprocess.Popen(
        cmd, cwd=out.parent, env=env or ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _steps(run_dir: Path) -> list[dict]:
    path = run_dir / "steps.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line being written
            out.append(json.loads(line))
    return out


def _kill_after_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 240) -> None:
    """SIGKILL ``proc`` as soon as its step log passes ``step``."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if any(r["step"] >= step for r in _steps(run_dir)):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)


def _one_thread(cfg) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(cfg)
    finally:
        torch.set_num_threads(threads)


def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path, caplog):
    out = tmp_path / "run"
    out.mkdir()
    # 1. killed while writing the checkpoint of step 8: step 4's stays the latest complete one
    first = _start(out, env={**ENV, resume.KILL_IN_WRITE_ENV: "8"})
    assert first.wait(timeout=300) == -signal.SIGKILL, first.stderr.read().decode()[-2000:]
    assert [p.name for p in resume.checkpoint_dirs(out)] == ["step-00000004"]
    assert (out / "checkpoints" / ".tmp-step-00000008").is_dir()  # the interrupted write
    assert len(_steps(out)) == 8
    # the same command without resume=true is refused: the run is unfinished
    with pytest.raises(ConfigError, match="unfinished run \\(checkpoint at step 4\\).*resume=true"):
        resolve(to_config(compose(*RUN, f"output_dir={out}")))
    # 2. resumed, then SIGKILLed from outside mid-run
    second = _start(out, "resume=true")
    _kill_after_step(second, out, 11)
    assert second.returncode == -signal.SIGKILL, second.stderr.read().decode()[-2000:]
    assert not (out / "metrics.json").exists()
    latest = resume.latest_checkpoint(out)
    assert resume.checkpoint_step(latest) >= 8
    # the checkpoint carries the fine-tuning time of the processes before it
    before = torch.load(latest / "state.pt", map_location="cpu", weights_only=True)["loop"]["seconds"]
    assert before > 0
    # 3. resumed to the end (in this process, on one thread as the killed ones): the dense model's
    # metrics come from the checkpoint, not a second evaluation
    with caplog.at_level(logging.INFO, logger="loraprune"):
        metrics = _one_thread(compose(*RUN, f"output_dir={out}", "resume=true"))
    assert "resumed from" in caplog.text and "dense ppl" not in caplog.text
    assert metrics == json.loads((out / "metrics.json").read_text())

    reference = _one_thread(compose(*RUN, "trainer.save_every=0", f"output_dir={tmp_path / 'reference'}"))
    ref_dir = tmp_path / "reference"
    ref_steps, got_steps = _steps(ref_dir), _steps(out)
    assert [r["step"] for r in got_steps] == list(range(1, 25))  # each step logged once
    assert [r["ratio"] for r in got_steps] == [r["ratio"] for r in ref_steps]
    assert [r["tokens"] for r in got_steps] == [r["tokens"] for r in ref_steps]
    assert [r["loss"] for r in got_steps] == pytest.approx([r["loss"] for r in ref_steps], rel=1e-6)
    assert json.loads((out / "model" / "pruning_plan.json").read_text()) == json.loads(
        (ref_dir / "model" / "pruning_plan.json").read_text()
    )  # identical masks
    assert metrics["kept_per_layer"] == reference["kept_per_layer"]
    assert metrics["pruned"]["ppl"] == pytest.approx(reference["pruned"]["ppl"], rel=1e-6)
    assert metrics["dense"] == reference["dense"]
    # the resumed run says so, and its fine-tuning time includes that of the killed processes
    assert metrics["train"]["resumed_from_step"] == resume.checkpoint_step(latest)
    assert reference["train"]["resumed_from_step"] == 0
    assert metrics["train"]["seconds"] > before
    untimed = {k: v for k, v in metrics["train"].items() if k not in ("seconds", "resumed_from_step")}
    assert untimed == pytest.approx({k: reference["train"][k] for k in untimed}, rel=1e-6)
    assert [r.get("masks") for r in got_steps] == [r.get("masks") for r in ref_steps]
    assert not (out / "checkpoints").exists()  # a finished run keeps no checkpoint

    # the finished run: the same command refuses, resume=true reports it again without work
    with pytest.raises(ConfigError, match="already holds a finished run.*resume=true"):
        resolve(to_config(compose(*RUN, f"output_dir={out}")))
    again = run(compose(*RUN, f"output_dir={out}", "resume=true"))
    assert again == metrics


def test_resume_refuses_another_config(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "step-00000004").mkdir(parents=True)
    cfg = to_config(compose(*RUN, f"output_dir={out}"))
    from omegaconf import OmegaConf

    (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    assert resolve(to_config(compose(*RUN, f"output_dir={out}", "resume=true", "trainer.save_every=2")))
    with pytest.raises(ConfigError, match="another config \\(prune.ratio, trainer.lr differ\\)"):
        resolve(
            to_config(compose(*RUN, f"output_dir={out}", "resume=true", "prune.ratio=0.3", "trainer.lr=1e-3"))
        )
    assert resolve(to_config(compose(*RUN, f"output_dir={out}", "overwrite=true", "prune.ratio=0.3")))


@pytest.mark.parametrize(
    "overrides",
    [("prune=nm",), ("method=random",)],
    ids=["nm_2of4", "random"],
)
def test_crashed_run_resumes_in_process(tmp_path, monkeypatch, overrides):
    """N:M (masks held by the LoRA updates, zeroed weights) and the random criterion (its generator) come
    back from a checkpoint as they were: a run that crashed at step 3 ends as the uninterrupted one."""
    from loraprune.run.loggers import JsonlLogger

    base = ("debug=tiny", "trainer.steps=6", "trainer.save_every=2", "save_model=false", *overrides)
    reference = _one_thread(compose(*base, f"output_dir={tmp_path / 'reference'}"))
    log_step = JsonlLogger.log_step

    def crash_at_5(self, record):
        if record["step"] == 3:
            raise RuntimeError("crash")
        log_step(self, record)

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(JsonlLogger, "log_step", crash_at_5)
        with pytest.raises(RuntimeError, match="crash"):
            _one_thread(compose(*base, f"output_dir={out}"))
    assert resume.checkpoint_step(resume.latest_checkpoint(out)) == 2
    metrics = _one_thread(compose(*base, f"output_dir={out}", "resume=true"))
    assert [r["loss"] for r in _steps(out)] == [r["loss"] for r in _steps(tmp_path / "reference")]
    assert metrics["kept_per_layer"] == reference["kept_per_layer"]
    assert metrics.get("semistructured", {}).get("sparsity") == reference.get("semistructured", {}).get(
        "sparsity"
    )
    assert metrics["pruned"]["ppl"] == reference["pruned"]["ppl"]
