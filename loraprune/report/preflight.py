"""The front door: a run's config is checked before Hydra makes a directory or a model is loaded.

:class:`Preflight` is a Hydra callback (``conf/config.yaml``): at ``on_run_start`` (after composition,
before Hydra's own ``mkdir`` of the run dir) it resolves the task config with the run dir Hydra is about
to make (:func:`loraprune.run.resolve.resolve`: every check, the model's config read, no weights), and at
``on_multirun_start`` it checks that the sweep dir can be made; a refusal is one ``loraprune: error:``
line and exit status 2. Hydra's own composition errors (an unknown preset or key, a value of the wrong
type) are raised to the entry point while :func:`hydra_errors_raised` is in force and shortened to one
line by :func:`one_line`. (It lives here, not in the run layer, because Hydra cannot locate a
``_target_`` under ``loraprune.run``: that attribute of the package is the :func:`loraprune.run`
function.)
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from loraprune.run.pipeline import to_config
from loraprune.run.resolve import ConfigError, check_creatable, resolve
from loraprune.train import distributed

FULL_ERROR = "HYDRA_FULL_ERROR"
_OURS = "_LORAPRUNE_SET_HYDRA_FULL_ERROR"  # set while FULL_ERROR is ours, not the user's


def refuse(error: Exception) -> NoReturn:
    """One ``loraprune: error:`` line on stderr, exit status 2."""
    print(f"loraprune: error: {one_line(error)}", file=sys.stderr)
    raise SystemExit(2)


def one_line(error: BaseException) -> str:
    """``error`` (and an OmegaConf cause Hydra wraps) as one line: Hydra's multi-line messages joined,
    the lists of available options comma-separated, the config search path and key details dropped."""
    parts: list[str] = []
    for e in (error, error.__cause__):
        if e is None:
            continue
        text = str(e).split("Config search path:")[0]
        lines = [line.strip() for line in text.splitlines()]
        details = ("full_key:", "reference_type=", "object_type=")
        lines = [line for line in lines if line and not line.startswith(details)]
        segments: list[str] = []
        listing = False  # after a line ending in ':' (Hydra's "Available options in 'model':")
        for line in lines:
            if listing and not line.endswith(":"):
                segments[-1] += (" " if segments[-1].endswith(":") else ", ") + line
            else:
                segments.append(line.rstrip("."))
                listing = line.endswith(":")
        part = "; ".join(segments)
        if part and part not in " ".join(parts):
            parts.append(part)
    return "; ".join(parts) or type(error).__name__


@contextlib.contextmanager
def hydra_errors_raised() -> Iterator[bool]:
    """Make Hydra raise its composition errors (``HYDRA_FULL_ERROR``) until :class:`Preflight` starts
    the run, unless the user set it; yields whether they are ours to shorten."""
    ours = FULL_ERROR not in os.environ
    if ours:
        os.environ[FULL_ERROR] = os.environ[_OURS] = "1"
    try:
        yield ours
    finally:
        restore_hydra_errors()


def restore_hydra_errors() -> None:
    """Hydra's own error report again (for errors of the run itself), if we changed it."""
    if os.environ.pop(_OURS, None):
        os.environ.pop(FULL_ERROR, None)


def task_config(config: DictConfig, run_dir: str) -> DictConfig:
    """The run's own config (no ``hydra`` node), its ``output_dir`` the run dir Hydra will make."""
    task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    with open_dict(task):
        task.output_dir = run_dir
        if task.get("resume") is None:
            task.resume = False  # a single run (a sweep's cells are checked in their jobs)
    return task


class Preflight(Callback):
    """Refuses a run's bad config before Hydra makes its directory (see the module)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        restore_hydra_errors()
        try:
            plan = resolve(to_config(task_config(config, str(config.hydra.run.dir))))
            problem = distributed.check(plan.cfg, distributed.world_size())
            if problem:
                raise ConfigError(problem)
        except ConfigError as e:
            refuse(e)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        restore_hydra_errors()
        try:
            check_creatable(Path(str(config.hydra.sweep.dir)), "sweep directory")
        except ConfigError as e:
            refuse(e)
