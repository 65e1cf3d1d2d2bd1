"""Data parallelism: 2 gloo processes against one, the micro-batch split, a decision taken over."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from conftest import OFFLINE_ENV, compose

from loraprune import load_pruned
from loraprune.config.schema import LoraConfig
from loraprune.core.schedule import build_schedule
from loraprune.core.structure import Geometry
from loraprune.criteria import build_criterion
from loraprune.models.adapters import add_lora
from loraprune.models.loading import TinySpec, load_model
from loraprune.pruners import PrunerSettings, build_pruner
from loraprune.run.pipeline import run, to_config
from loraprune.run.resolve import ConfigError
from loraprune.train import distributed
from loraprune.train.loop import _local_share

COMMON = ["debug=tiny", "lora.dropout=0", "eval.dense=false", "trainer.steps=3", "eval.max_windows=2"]
COMMON += ["trainer.batch_size=4"]  # 4 micro-batches of 1 a step: 2 per rank (one under no_sync)


def _steps(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]


def _rank(rank: int, port: int, out: str, extra: tuple[str, ...] = ()) -> None:
    """One rank of a 2-process run, as torchrun would start it (forked: the imports are inherited)."""
    import os

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    run(compose(*COMMON, *extra, f"output_dir={out}"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process(out, extra: tuple[str, ...] = ()) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: the same float reductions
    try:
        return run(compose(*COMMON, *extra, f"output_dir={out}"))
    finally:
        torch.set_num_threads(threads)


def _assert_equal_runs(ddp, one, single: dict) -> None:
    metrics = json.loads((ddp / "metrics.json").read_text())
    assert metrics["distributed"] == {
        "processes": 2,
        "backend": "gloo",
        "final_mismatch": 0,
        "weights_max_abs_diff": 0.0,
    }
    got, want = _steps(ddp), _steps(one)
    assert [s["step"] for s in got] == [1, 2, 3]
    assert [s.get("mismatch") for s in got] == [0, 0, None]  # masks changed (and were compared) at 1, 2
    assert [s.get("masks") for s in got] == [s.get("masks") for s in want]
    assert want[0]["masks"] != want[1]["masks"]  # the digest follows the masks
    for g, w in zip(got, want, strict=True):
        assert g["tokens"] == w["tokens"] and g["ratio"] == w["ratio"]
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-6)
    assert metrics["kept_per_layer"] == single["kept_per_layer"]
    assert metrics["pruned"]["ppl"] == pytest.approx(single["pruned"]["ppl"], rel=1e-5)
    a, b = load_pruned(ddp / "model").state_dict(), load_pruned(one / "model").state_dict()
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in one.iterdir())  # rank 1: nothing


@pytest.mark.parametrize("extra", [(), ("method=mask_fisher",)], ids=["loraprune", "mask_fisher"])
def test_two_gloo_processes_equal_one_process(tmp_path, extra):
    """2 processes on gloo (CPU): at every step the ranks agree on the masks (no mismatch) and rank 0's
    masks, loss and tokens are the single-process run's on the same global batch (4 micro-batches a
    step: two per rank); the final models are equal and only rank 0 wrote. mask_fisher gathers its
    statistics from each rank's own samples: summed over the ranks, they are the single process's."""
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    mp.start_processes(_rank, args=(_free_port(), str(ddp), extra), nprocs=2, start_method="fork")
    _assert_equal_runs(ddp, one, _single_process(one, extra))


@pytest.mark.slow
def test_torchrun_cli_equals_one_process(tmp_path):
    """The same through the command line: ``torchrun --nproc_per_node 2 -m loraprune ...``."""
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "loraprune", *COMMON, f"output_dir={ddp}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env={**OFFLINE_ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_equal_runs(ddp, one, _single_process(one))


def test_each_rank_takes_a_contiguous_share_of_the_step():
    """8 micro-batches a step on 4 processes: rank r computes micro-batches 2r and 2r+1."""
    shares = [list(_local_share(8, SimpleNamespace(num_processes=4, process_index=r))) for r in range(4)]
    assert shares == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert list(_local_share(8, None)) == list(range(8))


def test_uneven_split_is_refused_before_loading(monkeypatch):
    cfg = to_config(compose("debug=tiny", "trainer.batch_size=3", "trainer.micro_batch_size=1"))
    assert "3 micro-batches per step cannot be shared equally by 2 processes" in distributed.check(cfg, 2)
    assert distributed.check(cfg, 1) is None and distributed.check(cfg, 3) is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="shared equally"):
        run(compose("debug=tiny", "trainer.batch_size=3", "trainer.micro_batch_size=1"))


@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_a_pruner_takes_over_another_decision(pattern):
    """What a rank does on a mismatch: two pruners decide differently (random scores, other seeds);
    the second adopts the first's decision (and, for N:M, its zeroed weights) and then computes the same."""
    spec = TinySpec(num_layers=3, num_heads=4, num_kv_heads=4)
    pruners, models = [], []
    for seed in (0, 1):
        torch.manual_seed(0)
        model, _ = load_model("tiny", tiny=spec, dtype="float32", device="cpu")
        pm = add_lora(model, LoraConfig(r=2, dropout=0.0))
        settings = PrunerSettings(ratio=0.5 if pattern is None else 0.0, pattern=pattern)
        goal = 1.0 if pattern else 0.5
        pruner = build_pruner(
            pm, Geometry.from_config(model.config), build_criterion("random", {"seed": seed}), settings,
            build_schedule("one_shot", goal, 4, 0.0, 0.0, 0),
        )  # fmt: skip
        pruner.advance_to(goal)
        pruners.append(pruner)
        models.append(pm)
    first, second = pruners
    assert first.decision_digest() != second.decision_digest()
    second.adopt_decision(first.decision())
    with torch.no_grad():
        for mine, theirs in zip(second.decision_weights(), first.decision_weights(), strict=True):
            mine.copy_(theirs)
    assert second.decision_digest() == first.decision_digest()
    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(models[0](input_ids=ids).logits, models[1](input_ids=ids).logits)


def test_launch_problems_are_refused_in_one_line(monkeypatch):
    cfg = to_config(compose("debug=tiny", "trainer.device_map=auto"))
    assert "model.source embedded or hub, not 'tiny'" in distributed.check(cfg, 1)
    hub = to_config(
        compose("debug=tiny", "model.source=hub", "model.path=org/name", "trainer.device_map=auto")
    )
    assert distributed.check(hub, 1) is None
    assert "cannot be combined with 2 processes" in distributed.check(hub, 2)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert distributed.check(to_config(compose("debug=tiny")), 2).startswith("FSDP is not supported")


def test_device_map_loads_through_accelerate_dispatch(tmp_path, monkeypatch):
    """``trainer.device_map=auto`` (one process, layers over its GPUs; all on the CPU here) reaches
    ``from_pretrained``; the run passes it on."""
    from loraprune.run import pipeline

    model, tokenizer = load_model("tiny", tiny=TinySpec(num_layers=4), dtype="float32", device="cpu")
    model.save_pretrained(tmp_path / "hub")
    tokenizer.save_pretrained(tmp_path / "hub")
    loaded, _ = load_model("hub", str(tmp_path / "hub"), dtype="float32", device_map="auto")
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)

    def loading(*args, **kwargs):
        raise LookupError(kwargs["device_map"])

    monkeypatch.setattr(pipeline, "load_model", loading)
    overrides = [
        f"model.path={tmp_path / 'hub'}",
        "trainer.device_map=auto",
        f"output_dir={tmp_path / 'run'}",
    ]
    with pytest.raises(LookupError, match="auto"):
        run(compose(*COMMON, "model.source=hub", *overrides))
