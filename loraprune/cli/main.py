"""``loraprune [overrides]``: the Hydra entry point (``python -m loraprune`` is the same command)."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

import loraprune.run.quiet  # noqa: F401 - silences third-party import noise
from loraprune.config.schema import register_configs
from loraprune.report.preflight import hydra_errors_raised, refuse
from loraprune.report.sweep import last_outcome
from loraprune.run.pipeline import run
from loraprune.run.resolve import ConfigError, MachineError
from loraprune.train.failure import first_line, write_failure

register_configs()
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _main(cfg: DictConfig) -> float | None:
    multirun = _in_multirun()
    if cfg.resume is None:  # a sweep re-launched in its directory skips finished cells, resumes the others
        cfg.resume = multirun
    try:
        return run(cfg)["objective"]
    except ConfigError as e:  # a bad input: one clear line, no traceback, nothing left behind
        if multirun and not isinstance(e, MachineError):  # a cell's own problem: the others go on
            return _record_failure(e, cfg)
        _discard_hydra_only_run_dir()
        print(f"loraprune: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as e:  # in a sweep one failing job does not stop the others
        if multirun:
            return _record_failure(e, cfg)
        raise


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


def _record_failure(error: Exception, cfg: DictConfig) -> float:
    """Write ``failed.json`` into the job's run dir, log the error's first line; NaN for the sweeper."""
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(cfg.output_dir or HydraConfig.get().runtime.output_dir)
    path = write_failure(run_dir, error, cfg)
    logging.getLogger("loraprune").error("job failed: %s (%s)", first_line(error), path)
    return float("nan")


def _discard_hydra_only_run_dir() -> None:
    """Remove the run directory Hydra made for a run refused at validation, if it holds only Hydra's own
    files (``.hydra/`` and the job log): a refused run leaves nothing behind, and a directory with
    anything else in it (a finished run) is never touched."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    hydra_files = {".hydra", f"{hc.job.name}.log"}
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= hydra_files:
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> None:
    with hydra_errors_raised() as ours:  # Hydra's composition errors: one line, exit 2 (report.preflight)
        try:
            _main()
        except (HydraException, OmegaConfBaseException) as e:
            if not ours:
                raise
            refuse(e)
    outcome = last_outcome()  # a sweep's failed jobs went on recording; the launch as a whole failed
    if outcome is not None and outcome.failed:
        print(f"loraprune: error: {outcome.message()}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
