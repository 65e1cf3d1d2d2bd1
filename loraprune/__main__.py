"""The Hydra entry point: ``loraprune [overrides]`` / ``python -m loraprune [overrides]``."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from loraprune.config import register_configs
from loraprune.pipeline import run

register_configs()
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _main(cfg: DictConfig) -> float | None:
    return run(cfg)["objective"]


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
