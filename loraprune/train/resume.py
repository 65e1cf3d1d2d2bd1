"""Checkpoints of the fine-tuning loop, and what a run directory holds (fresh, unfinished, finished).

Every ``trainer.save_every`` optimizer steps the loop's whole state goes to ``<run_dir>/checkpoints/
step-<N>/``: the LoRA weights (peft's adapter state dict, safetensors), and in ``state.pt`` (torch.save)
the optimizer and LR scheduler, the pruner (masks, importance moving averages, schedule position, the
criterion's own state), the RNG states (torch CPU and CUDA, Python, NumPy) and the loop's counters (step,
micro-batches drawn, tokens, first loss). A checkpoint is written into a hidden temporary directory and
renamed into place (atomic on one file system), then older ones are removed: a kill at any moment leaves
the previous complete checkpoint or the new one, never a partial one that looks complete.

``resume=true`` rebuilds the run as it started (seeded: model, LoRA init, pruner, calibration), then
:meth:`Checkpointer.restore` puts the saved state back and the loop continues at the next step, drawing the
same micro-batches and dropout masks an uninterrupted run would.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from loraprune.train.failure import FAILED, TRACEBACK

log = logging.getLogger("loraprune")

CHECKPOINTS = "checkpoints"
PREFIX = "step-"
STEPS_LOG = "steps.jsonl"
METRICS_SO_FAR = "metrics_so_far.json"
# test hook: SIGKILL this process in the middle of writing the checkpoint of this step
KILL_IN_WRITE_ENV = "LORAPRUNE_TEST_KILL_IN_CHECKPOINT"

WANDB_RUN_ID = "wandb_run_id.txt"  # the W&B run a resumed run continues


@dataclass
class LoopState:
    """The loop's counters after optimizer step ``step`` (0: nothing done yet)."""

    step: int = 0
    micro_batches: int = 0  # the data position: micro-batches drawn so far
    tokens: int = 0
    first_loss: float | None = None
    last_loss: float = float("nan")
    seconds: float = 0.0  # fine-tuning time so far, over every process that ran it


# ---------------------------------------------------------------------------------- run directory
def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """The complete checkpoints of ``run_dir``, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(PREFIX) :])


def run_state(run_dir: Path) -> str:
    """``finished`` (metrics.json), ``unfinished`` (a checkpoint to resume from) or ``fresh``."""
    if (Path(run_dir) / "metrics.json").exists():
        return "finished"
    return "unfinished" if latest_checkpoint(run_dir) is not None else "fresh"


def config_differences(run_dir: Path, config: dict[str, Any]) -> list[str]:
    """The dotted config keys in which ``config`` differs from the run's saved ``config.yaml``, leaving
    aside what does not change the results (``resume``, ``overwrite``, ``trainer.save_every``,
    ``logger.*``); empty when they agree or none was saved."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return []
    saved = _flatten(OmegaConf.to_container(OmegaConf.load(path)))
    now = _flatten(OmegaConf.to_container(OmegaConf.create(OmegaConf.to_yaml(config))))  # same round trip
    keys = {k for k in set(saved) | set(now) if k not in FREE_KEYS and not k.startswith("logger.")}
    return sorted(k for k in keys if saved.get(k) != now.get(k))


FREE_KEYS = {"resume", "overwrite", "trainer.save_every"}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def start_fresh(run_dir: Path) -> None:
    """Forget what an earlier attempt left: its checkpoints, step log and failure record."""
    shutil.rmtree(Path(run_dir) / CHECKPOINTS, ignore_errors=True)
    for name in (STEPS_LOG, "metrics.json", FAILED, TRACEBACK, WANDB_RUN_ID):
        (Path(run_dir) / name).unlink(missing_ok=True)


def prepare_resume(run_dir: Path) -> int:
    """Before a resumed run opens its loggers: drop the step log's records after the checkpoint (the
    steps an interrupted attempt logged past it run again) and the failure record. Returns the step."""
    ckpt = latest_checkpoint(run_dir)
    step = checkpoint_step(ckpt) if ckpt is not None else 0
    if ckpt is None:
        start_fresh(run_dir)
        return 0
    path = Path(run_dir) / STEPS_LOG
    if path.exists():
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):  # a line cut short by the kill
                continue
        path.write_text("".join(kept), encoding="utf-8")
    for name in (FAILED, TRACEBACK):
        (Path(run_dir) / name).unlink(missing_ok=True)
    return step


def earlier_metrics(run_dir: Path) -> dict[str, Any]:
    """The metrics the run had measured when its latest checkpoint was written (the dense model's, ...),
    so a resumed run need not evaluate them again; empty without a checkpoint."""
    ckpt = latest_checkpoint(run_dir)
    path = ckpt / METRICS_SO_FAR if ckpt is not None else None
    return json.loads(path.read_text(encoding="utf-8")) if path is not None and path.exists() else {}


def remove_checkpoints(run_dir: Path) -> None:
    """A finished run's checkpoints are no longer needed (its model and metrics are saved)."""
    shutil.rmtree(Path(run_dir) / CHECKPOINTS, ignore_errors=True)


# ------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from (dropout, shuffles)."""
    import numpy as np

    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------- checkpointer
class Checkpointer:
    """Saves the loop's state every ``every`` steps into ``run_dir/checkpoints`` and restores the latest.

    Args:
        run_dir: the run directory.
        every: save after every ``every``-th optimizer step (0: never).
        resume: restore the latest checkpoint at the start of the loop.
        record: the run's metrics so far (JSON-able), saved with each checkpoint (:func:`earlier_metrics`).
    """

    def __init__(
        self, run_dir: Path, every: int, resume: bool = False, record: dict[str, Any] | None = None
    ) -> None:
        self.root = Path(run_dir) / CHECKPOINTS
        self.every, self.resume, self.record = every, resume, record

    def restore(self, model, optimizer, scheduler, hooks) -> LoopState:
        """Load the latest checkpoint into the model's LoRA weights, the optimizer, the scheduler and the
        hooks (the pruner), set the RNGs; returns the loop's counters (step 0 when there is none)."""
        ckpt = latest_checkpoint(self.root.parent) if self.resume else None
        if ckpt is None:
            return LoopState()
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        device = next(p for p in model.parameters() if p.requires_grad).device
        result = set_peft_model_state_dict(model, load_file(ckpt / "adapter_model.safetensors", str(device)))
        if getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"{ckpt}: unexpected adapter weights {result.unexpected_keys[:3]}")
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        hooks.load_state_dict(state["hooks"])
        set_rng_state(state["rng"])
        loop = LoopState(**state["loop"])
        log.info("resumed from %s (step %d)", ckpt, loop.step)
        return loop

    def maybe_save(self, loop: LoopState, model, optimizer, scheduler, hooks) -> None:
        """Save after step ``loop.step`` when it is due."""
        if self.every > 0 and loop.step % self.every == 0:
            self.save(loop, model, optimizer, scheduler, hooks)

    def save(self, loop: LoopState, model, optimizer, scheduler, hooks) -> Path:
        """Write the checkpoint of ``loop.step`` atomically; keep only it."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"{PREFIX}{loop.step:08d}"
        tmp = self.root / f".tmp-{final.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        adapter = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()}
        save_file(adapter, tmp / "adapter_model.safetensors")
        if os.environ.get(KILL_IN_WRITE_ENV) == str(loop.step):
            os.kill(os.getpid(), signal.SIGKILL)
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "hooks": hooks.state_dict(),
            "rng": rng_state(),
            "loop": asdict(loop),
        }
        torch.save(state, tmp / "state.pt")
        (tmp / "loop.json").write_text(json.dumps(asdict(loop)) + "\n", encoding="utf-8")
        if self.record is not None:
            (tmp / METRICS_SO_FAR).write_text(
                json.dumps(self.record, indent=1, default=str) + "\n", encoding="utf-8"
            )
        if final.exists():  # the same step saved again (a resumed run): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(self.root.parent):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return final
