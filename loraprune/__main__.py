"""The Hydra entry point: ``loraprune [overrides]`` / ``python -m loraprune [overrides]``."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from loraprune.run.config import register_configs
from loraprune.run.pipeline import run
from loraprune.run.resolve import ConfigError

register_configs()
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _main(cfg: DictConfig) -> float | None:
    try:
        return run(cfg)["objective"]
    except ConfigError as e:  # a bad input: one clear line, no traceback
        print(f"loraprune: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
