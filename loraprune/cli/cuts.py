"""``python scripts/compare_cuts.py RUN_DIR [RUN_DIR ...]``: where each run cut (see
:mod:`loraprune.report.cuts`), as a Markdown table on stdout."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from loraprune.config.schema import ModelConfig
from loraprune.core.structure import Geometry
from loraprune.models.loading import load_config, model_path
from loraprune.report.cuts import cut_table, profile_from_metrics


def _label(metrics: dict) -> str:
    run = metrics.get("run", {})
    selection = f" ({run['selection']})" if run.get("selection") else ""
    return f"{run.get('method')}{selection} r{run.get('ratio')} s{run.get('seed')}"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the per-layer cut of each run; exit 2 with one error line on a run that cannot be read."""
    ap = argparse.ArgumentParser(prog="compare_cuts", description=__doc__)
    ap.add_argument("run_dirs", type=Path, nargs="+", help="run (or registry) directories")
    args = ap.parse_args(argv)
    profiles = []
    for run_dir in args.run_dirs:
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
            model = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["model"]
        except (OSError, ValueError, KeyError) as err:
            print(f"compare_cuts: error: {run_dir}: {err}", file=sys.stderr)
            return 2
        m = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), model))
        geo = Geometry.from_config(load_config(m.source, model_path(m), m.tiny, m.revision))
        profiles.append(profile_from_metrics(_label(metrics), metrics, geo))
    print(cut_table(profiles, (geo.num_kv_heads, geo.intermediate_size)), end="")
    return 0
