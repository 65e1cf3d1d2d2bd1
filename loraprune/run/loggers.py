"""Run loggers behind one small protocol: jsonl file, console, Weights & Biases."""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Protocol

from loraprune.train.resume import WANDB_RUN_ID

log = logging.getLogger("loraprune")


class Logger(Protocol):
    def log_config(self, config: dict[str, Any]) -> None: ...
    def log_step(self, record: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, Any]) -> None: ...
    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None: ...
    def close(self) -> None: ...


class JsonlLogger:
    """One JSON object per optimizer step in ``steps.jsonl`` (flushed as it goes)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "steps.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a", encoding="utf-8")

    def log_config(self, config: dict[str, Any]) -> None:
        pass

    def log_step(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        pass

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        pass

    def close(self) -> None:
        self._f.close()


class ConsoleLogger:
    """A line every ``every`` steps through the ``loraprune`` logger."""

    def __init__(self, every: int = 10) -> None:
        self.every = max(1, every)

    def log_config(self, config: dict[str, Any]) -> None:
        pass

    def log_step(self, record: dict[str, Any]) -> None:
        if record.get("step", 0) % self.every == 0:
            log.info("step %(step)d  loss %(loss).4f  lr %(lr).2e", record)

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        pass

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        pass

    def close(self) -> None:
        pass


class WandbLogger:
    """Weights & Biases: config, per-step values, per-layer kept widths, final metrics and tables.

    ``mode`` None lets ``WANDB_MODE`` decide (default online); ``offline`` writes under ``run_dir/wandb``.
    ``group`` None under a Hydra multirun groups the sweep's runs together (:func:`hydra_sweep_group`).
    Logged: the resolved config (``log_config``), ``train/loss``, ``train/lr``, ``train/ratio`` per step,
    the per-layer ``kept_per_layer`` table, every final metric in the summary (``pruned/ppl/<set>``,
    ``pruned/zeroshot/average_acc``, ``params/...``, ``memory/...``), and a one-row ``results`` table in
    the paper's layout (:func:`loraprune.report.tables.flat_result`).
    """

    def __init__(
        self,
        run_dir: Path,
        project: str,
        entity: str | None = None,
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        mode: str | None = None,
    ) -> None:
        import wandb

        mode = mode or os.environ.get("WANDB_MODE") or "online"
        if mode not in ("online", "offline", "disabled"):
            raise ValueError(f"logger.wandb.mode must be online, offline or disabled, got {mode!r}")
        self._wandb = wandb
        id_file = Path(run_dir) / WANDB_RUN_ID  # kept while the run dir is resumed (resume=true)
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        self.run = wandb.init(
            id=run_id,
            resume="allow",
            project=project,
            entity=entity,
            name=name,
            group=group or hydra_sweep_group(),
            tags=list(tags or []),
            mode=mode,
            dir=str(run_dir),
            reinit="finish_previous",
        )
        id_file.write_text(self.run.id)

    def log_config(self, config: dict[str, Any]) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_step(self, record: dict[str, Any]) -> None:
        self.run.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=record["step"])

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        # one summary update; kept_per_layer goes in as a table (pipeline's log_table), not 3 keys per layer
        flat = _flatten({k: v for k, v in metrics.items() if k != "kept_per_layer"})
        self.run.summary.update(flat)
        try:
            from loraprune.run.results import flat_result

            row = flat_result(metrics)
        except (KeyError, TypeError, ValueError) as err:  # partial metrics: the summary above still holds
            log.warning("W&B results table skipped: %s", err)
            return
        self.log_table("results", list(row), [list(row.values())])

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.run.log({name: self._wandb.Table(columns=columns, data=rows)})

    def close(self) -> None:
        self.run.finish()


def hydra_sweep_group() -> str | None:
    """One W&B group per Hydra sweep: under ``-m``, the sweep directory as ``<parent>_<name>``
    (``outputs/multirun/2024-05-01/14-03-22`` -> ``2024-05-01_14-03-22``); None outside a multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):  # no Hydra, or not inside a Hydra app
        return None
    if hydra_cfg.mode != RunMode.MULTIRUN or not hydra_cfg.sweep.dir:
        return None
    sweep = Path(str(hydra_cfg.sweep.dir))
    return f"{sweep.parent.name}_{sweep.name}" if sweep.parent.name else sweep.name


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


class MultiLogger:
    """Fans every call out to several loggers."""

    def __init__(self, *loggers: Logger) -> None:
        self.loggers = loggers

    def log_config(self, config: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.log_config(config)

    def log_step(self, record: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.log_step(record)

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.log_metrics(metrics)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        for lg in self.loggers:
            lg.log_table(name, columns, rows)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()


def build_logger(
    name: str, run_dir: Path, console_every: int = 10, wandb_kwargs: dict | None = None
) -> MultiLogger:
    """``jsonl`` (local files and console) or ``wandb`` (those plus W&B)."""
    base: list[Logger] = [JsonlLogger(run_dir), ConsoleLogger(console_every)]
    if name == "jsonl":
        return MultiLogger(*base)
    if name == "wandb":
        return MultiLogger(*base, WandbLogger(run_dir, **(wandb_kwargs or {})))
    raise ValueError(f"unknown logger {name!r}; expected jsonl or wandb")
