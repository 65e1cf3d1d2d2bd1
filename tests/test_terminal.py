"""In a terminal, the project's own commands ask nothing, wait for nothing and print no import noise on
its own checkpoints: ``loraprune-export`` and ``loraprune.load_pruned`` run under a pseudo-terminal whose
input stays open (a question would wait there for an answer), on a tiny model with per-layer widths (the
form whose ``config.json`` names custom code in ``auto_map``)."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import OFFLINE_ENV

from loraprune import save_pruned
from loraprune.core.plan import LayerKeep, PruningPlan
from loraprune.core.structure import Geometry
from loraprune.core.surgery import apply_plan
from loraprune.models.loading import TinySpec, load_model

# transformers' remote-code question ("Do you wish to run the custom code? [y/N]") or any other [y/n] prompt
QUESTION = re.compile(r"\[y/n\]|do you wish|trust_remote_code", re.IGNORECASE)
NOISE = (
    "You are using a model of type",  # the bare-config fallback after an unanswered question
    "Could not load this library",  # torchao's CUDA-only kernels on a CPU build
    "Failed to load",
    "register_constant",  # torch's deprecation of torchao's enum registrations
    "Detected no triton",
)
DEADLINE_S = 180  # a few seconds when nothing waits; generous for a loaded machine


def in_terminal(argv: list[str], cwd: Path, deadline_s: float = DEADLINE_S) -> tuple[int | None, str, float]:
    """Run ``argv`` with stdin, stdout and stderr on a new pseudo-terminal whose input is never written
    nor closed. Stops at the first question or at the deadline (the process is then killed).

    Returns ``(exit code or None when it was stopped, everything it printed, seconds)``.
    """
    master, slave = os.openpty()
    start = time.monotonic()
    env = {**OFFLINE_ENV, "TERM": "xterm", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env)
    os.close(slave)
    output, asked = b"", False
    try:
        while (left := deadline_s - (time.monotonic() - start)) > 0:
            ready, _, _ = select.select([master], [], [], min(left, 0.5))
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal has closed it
                chunk = b""
            if not chunk:  # the process is exiting: let it finish
                proc.wait(timeout=max(1.0, deadline_s - (time.monotonic() - start)))
                break
            output += chunk
            if QUESTION.search(output.decode(errors="replace")):
                asked = True
                break
    except subprocess.TimeoutExpired:
        pass
    finally:
        code = None if asked else proc.poll()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, output.decode(errors="replace").replace("\r\n", "\n"), time.monotonic() - start


def check_quiet(code: int | None, output: str, seconds: float) -> None:
    """Fail on a question, a wait (stopped before it ended), a failure or known noise."""
    tail = output[-3000:]
    assert not QUESTION.search(output), f"asked a question in the terminal:\n{tail}"
    assert code is not None, f"still running after {seconds:.0f} s (waiting for input?):\n{tail}"
    assert code == 0, f"exit code {code}:\n{tail}"
    printed = [n for n in NOISE if n in output]
    assert not printed, f"printed {printed}:\n{tail}"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory whose ``model/`` is a tiny MHA model with different widths in every layer."""
    model, tok = load_model("tiny", tiny=TinySpec(num_heads=4, num_kv_heads=4), dtype="float32", device="cpu")
    geo = Geometry.from_config(model.config)
    plan = PruningPlan(
        geo,
        "kv_group",
        {
            1: LayerKeep(q_heads=[0, 2], kv_heads=[0, 2], channels=list(range(0, 128, 2))),
            2: LayerKeep(q_heads=[1, 2, 3], kv_heads=[1, 2, 3], channels=list(range(96))),
            3: LayerKeep(q_heads=[3], kv_heads=[3], channels=list(range(32, 80))),
        },
    )
    run = tmp_path_factory.mktemp("terminal") / "run"
    save_pruned(apply_plan(model, plan), tok, plan, run / "model")
    assert "auto_map" in json.loads((run / "model" / "config.json").read_text())  # the form that asked
    return run


def test_harness_sees_the_question_transformers_asks(run_dir):
    """Without loraprune, transformers asks before running the checkpoint's code: the harness stops there."""
    script = f"from transformers import AutoConfig; AutoConfig.from_pretrained({str(run_dir / 'model')!r})"
    code, output, _ = in_terminal([sys.executable, "-c", script], cwd=run_dir)
    assert code is None and QUESTION.search(output), output[-2000:]


def test_harness_stops_a_wait_for_input(tmp_path):
    """A read of the terminal that never returns is stopped at the deadline and reported as a wait."""
    code, _, seconds = in_terminal([sys.executable, "-c", "input()"], cwd=tmp_path, deadline_s=3)
    assert code is None and 3 <= seconds < 30
    with pytest.raises(AssertionError, match="waiting for input"):
        check_quiet(code, "", seconds)


def test_export_cli_asks_nothing_in_a_terminal(run_dir):
    out = run_dir.parent / "bf16"
    argv = [
        sys.executable,
        "-m",
        "loraprune.cli.export",
        str(run_dir),
        "--out",
        str(out),
        "--dtype",
        "bf16",
    ]
    check_quiet(*in_terminal(argv, cwd=run_dir.parent))
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_load_pruned_asks_nothing_in_a_terminal(run_dir):
    script = (
        "import loraprune\n"
        f"model, tok = loraprune.load_pruned({str(run_dir / 'model')!r}, with_tokenizer=True)\n"
        "print('loaded', type(model).__name__, len(tok('a terminal').input_ids))\n"
    )
    code, output, seconds = in_terminal([sys.executable, "-c", script], cwd=run_dir.parent)
    check_quiet(code, output, seconds)
    assert "loaded PrunedLlamaForCausalLM" in output, output[-2000:]
