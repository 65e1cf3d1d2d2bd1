"""How many jobs of a sweep (``loraprune -m``) failed, read from the sweep directory once all have ended.

Jobs may run in other processes (joblib, SLURM), so the count comes from the files they leave, stamped
after this launch began: every job rewrites ``.hydra/overrides.yaml`` in its directory, a failed one writes
``failed.json`` (:mod:`loraprune.train.failure`). Files from an earlier launch into the same
``hydra.sweep.dir`` are older and do not count: a cell skipped as finished, or one that is not in this
sweep, is judged by this launch only. :class:`SweepOutcome` is the Hydra callback (``conf/config.yaml``)
that takes the count; the entry point reads it with :func:`last_outcome` and sets the exit status. (It
lives here, not in the run layer, because Hydra cannot locate a ``_target_`` under ``loraprune.run``: that
attribute of the package is the :func:`loraprune.run` function.)
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from loraprune.train.failure import FAILED


@dataclass(frozen=True)
class Outcome:
    """``failed`` of the ``jobs`` jobs launched into ``sweep_dir`` failed."""

    sweep_dir: Path
    jobs: int
    failed: int

    def message(self) -> str:
        return (
            f"{self.failed} of {self.jobs} sweep jobs failed "
            f"(see {self.sweep_dir}/**/{FAILED}; loraprune-table shows them)"
        )


_last: Outcome | None = None


def last_outcome() -> Outcome | None:
    """The outcome of the sweep this process launched, None before one has ended."""
    return _last


def file_system_now(directory: Path) -> int:
    """Now (ns) on the clock that stamps files in ``directory`` (made if needed), which jobs on other
    machines share through the file system."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory) as f:
        return os.fstat(f.fileno()).st_mtime_ns


def count(sweep_dir: Path, since_ns: int, output_subdir: str | None = ".hydra") -> Outcome:
    """The jobs and failures under ``sweep_dir`` whose files were written at ``since_ns`` or later."""

    def dirs(pattern: str, up: int) -> set[Path]:
        return {p.parents[up] for p in sweep_dir.rglob(pattern) if p.stat().st_mtime_ns >= since_ns}

    failed = dirs(FAILED, 0)
    jobs = dirs(f"{output_subdir}/overrides.yaml", 1) if output_subdir else set()
    return Outcome(sweep_dir, len(jobs | failed), len(failed))


class SweepOutcome(Callback):
    """Counts the failed jobs of a multirun when it ends (in the launching process)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started_ns = file_system_now(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _last
        _last = count(Path(config.hydra.sweep.dir), self.started_ns, config.hydra.output_subdir)
