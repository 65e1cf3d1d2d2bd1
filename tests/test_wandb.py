"""W&B logging of a tiny sweep, offline: the run's W&B directory holds the resolved config, per-step values,
the final metrics, the per-layer and results tables, and the sweep as its group.

wandb >= 0.2x writes an offline run only as a transaction log (``run-<id>.wandb``: a LevelDB-style log of
protobuf ``Record``s, what ``wandb sync`` uploads) plus table files under ``files/media``; the summary and
config are read back from that log here.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from conftest import CONF, run_cli

from loraprune.run.loggers import hydra_sweep_group

pytest.importorskip("wandb")

_BLOCK = 32768  # LevelDB log block size used by the W&B transaction log
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_wandb_records(path: Path) -> list[Any]:
    """Every protobuf ``Record`` of a ``.wandb`` transaction log."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B", ident
    pos, pending, chunks = 7, b"", []
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # zero padding up to the end of the block
            pos += left
            continue
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            chunks.append(payload)
        elif kind == _FIRST:
            pending = payload
        elif kind == _MIDDLE:
            pending += payload
        elif kind == _LAST:
            chunks.append(pending + payload)
    records = []
    for chunk in chunks:
        record = pb.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


def _put(target: dict, item: Any) -> None:
    keys = [item.key] if item.key else list(item.nested_key)
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = json.loads(item.value_json)


def offline_run_contents(run_dir: Path) -> dict[str, Any]:
    """``{"group", "config", "summary", "history"}`` folded from an offline run's transaction log."""
    (log_path,) = run_dir.glob("*.wandb")
    out: dict[str, Any] = {"group": None, "config": {}, "summary": {}, "history": []}
    for record in read_wandb_records(log_path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["group"] = record.run.run_group
        elif kind == "config":
            for item in record.config.update:
                _put(out["config"], item)
        elif kind == "summary":
            for item in record.summary.update:
                _put(out["summary"], item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _put(row, item)
            out["history"].append(row)
    return out


def test_offline_wandb_sweep_run_holds_config_steps_metrics_tables_and_group(tmp_path):
    sweep = tmp_path / "multirun" / "2024-05-01" / "14-03-22"
    home = tmp_path / "wandb_home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_SILENT="true",
        WANDB_DISABLE_GIT="true",
        WANDB_CONFIG_DIR=str(home / "config"),
        WANDB_CACHE_DIR=str(home / "cache"),
        WANDB_DATA_DIR=str(home / "data"),
        WANDB_ARTIFACT_DIR=str(home / "artifacts"),
    )
    run_cli(
        "-m",
        "debug=tiny",
        "method=loraprune",
        "logger=wandb",
        "logger.wandb.mode=offline",
        "logger.wandb.project=loraprune-test",
        "save_model=false",
        "prune.ratio=0.2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        env=env,
    )
    run_dir = sweep / "0_loraprune_r0.2"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (wandb_run,) = sorted((run_dir / "wandb").glob("offline-run-*"))
    # the run's W&B id is kept in its run dir, so resume=true continues the same W&B run
    assert wandb_run.name.endswith("-" + (run_dir / "wandb_run_id.txt").read_text())
    wb = offline_run_contents(wandb_run)

    # one group per sweep, named after the sweep directory
    assert wb["group"] == "2024-05-01_14-03-22"
    # the resolved config
    assert wb["config"]["prune"]["ratio"] == pytest.approx(0.2)
    assert wb["config"]["model"]["name"] == "tiny_llama"
    assert wb["config"]["method"]["criterion"] == "loraprune"
    assert wb["config"]["logger"]["wandb"]["mode"] == "offline"
    # per-step loss / lr / ratio
    steps = [h for h in wb["history"] if "train/loss" in h]
    assert [h["_step"] for h in steps] == [1, 2, 3, 4]
    assert all(h["train/lr"] >= 0 and h["train/loss"] > 0 for h in steps)
    assert steps[-1]["train/ratio"] == pytest.approx(0.2)
    # the final metrics in the summary
    summary = wb["summary"]
    ppl = metrics["pruned"]["ppl"]["news_embedded"]
    assert summary["pruned/ppl/news_embedded"] == pytest.approx(ppl)
    assert summary["dense/ppl/news_embedded"] == pytest.approx(metrics["dense"]["ppl"]["news_embedded"])
    assert summary["params/total_after"] == metrics["params"]["total_after"]
    assert summary["params/removed_fraction_total"] == pytest.approx(
        metrics["params"]["removed_fraction_total"]
    )
    assert summary["achieved_ratio/q_heads"] == pytest.approx(metrics["achieved_ratio"]["q_heads"])
    assert summary["memory/cpu_peak_rss_gib"] == pytest.approx(metrics["memory"]["cpu_peak_rss_gib"])
    assert summary["run/method"] == "loraprune" and summary["run/ratio"] == pytest.approx(0.2)
    assert not any(key.startswith("kept_per_layer/") for key in summary)  # a table, not summary keys
    # the per-layer widths and the results row as tables
    files = wandb_run / "files"
    tables = {}
    for name in ("kept_per_layer", "results"):
        assert summary[name]["_type"] == "table-file"
        tables[name] = json.loads((files / summary[name]["path"]).read_text())
    kept = tables["kept_per_layer"]
    assert kept["columns"] == ["layer", "q_heads", "kv_heads", "channels"]
    assert kept["data"] == [
        [i, *(metrics["kept_per_layer"][str(i)][k] for k in ("q_heads", "kv_heads", "channels"))]
        for i in range(4)
    ]
    row = dict(zip(tables["results"]["columns"], tables["results"]["data"][0], strict=True))
    assert row["method"] == "loraprune" and row["ratio"] == pytest.approx(0.2)
    assert row["News (emb.)"] == pytest.approx(ppl)
    assert row["Params removed (%)"] == pytest.approx(100 * metrics["params"]["removed_fraction_total"])


def test_sweep_group_is_none_outside_a_multirun(tmp_path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from loraprune.config.schema import register_configs

    assert hydra_sweep_group() is None  # not inside a Hydra app
    register_configs()
    sweep = tmp_path / "2024-05-01" / "14-03-22"

    def hydra_cfg(mode):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            overrides = [f"hydra.sweep.dir={sweep}", f"hydra.mode={mode}"]
            return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)

    try:
        HydraConfig.instance().set_config(hydra_cfg("RUN"))
        assert hydra_sweep_group() is None
        HydraConfig.instance().set_config(hydra_cfg("MULTIRUN"))
        assert hydra_sweep_group() == "2024-05-01_14-03-22"
    finally:
        HydraConfig.instance().cfg = None
