"""Data parallelism through ``accelerate`` (DDP): who does what when a run has several processes.

Launched by ``torchrun`` or ``accelerate launch`` (``WORLD_SIZE`` > 1) a run starts an
:class:`accelerate.Accelerator`; alone it starts none and runs exactly as before.

- The global batch is the single-process one: every rank walks the same seeded micro-batch sequence and
  takes its own contiguous share of each step's ``batch_size / micro_batch_size`` micro-batches
  (``loraprune.train.loop``); DDP averages the gradients once per step, at the last local backward.
- The pruner reads the synchronized gradients (``after_accumulation`` runs after that backward), so every
  rank decides the same; as a safeguard rank 0's decision is broadcast whenever it may have changed and
  any rank that disagreed takes it over (:func:`sync_decision`; counted in ``steps.jsonl``).
- Only rank 0 evaluates and writes (run dir, model, metrics, logs, W&B); the other ranks stop after the
  pruner's final decision.
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from loraprune.config.schema import LoraPruneConfig
from loraprune.pruners import Pruner
from loraprune.train.loop import PruningHooks

log = logging.getLogger("loraprune")

# Ranks other than 0 wait in collectives while rank 0 evaluates the dense model: allow for long evaluations.
TIMEOUT = timedelta(hours=4)


def world_size() -> int:
    """The number of processes this run was launched with (``WORLD_SIZE``, set by torchrun/accelerate)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check(cfg: LoraPruneConfig, processes: int) -> str | None:
    """Why ``cfg`` cannot run as launched on ``processes`` processes, or ``None``."""
    t = cfg.trainer
    if t.device_map and cfg.model.source not in ("embedded", "hub"):
        return f"trainer.device_map applies to model.source embedded or hub, not {cfg.model.source!r}"
    if processes <= 1:
        return None
    engine = next((e for e in ("FSDP", "DEEPSPEED") if _env_flag(f"ACCELERATE_USE_{e}")), None)
    if engine:
        return (
            f"{engine} is not supported: the pruner scores whole gradients of each projection, which "
            f"{engine} shards; use DDP (docs/accelerate/ddp.yaml), or trainer.device_map=auto in one "
            "process for a model larger than one GPU"
        )
    if t.device_map:
        return (
            f"trainer.device_map={t.device_map!r} spreads one process's model over its GPUs; it cannot be "
            f"combined with {processes} processes (launch one process, or drop device_map for DDP)"
        )
    accumulation = t.batch_size // t.micro_batch_size
    if accumulation % processes:
        return (
            f"trainer.batch_size / trainer.micro_batch_size = {accumulation} micro-batches per step cannot "
            f"be shared equally by {processes} processes; make it a multiple of {processes}"
        )
    if t.device not in ("auto", "cpu", "cuda"):
        return f"trainer.device={t.device!r}: under several processes use auto, cpu or cuda (one GPU each)"
    return None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def start(cfg: LoraPruneConfig):
    """An ``Accelerator`` when launched on several processes, else ``None`` (a plain single-process run).

    CPU (``trainer.device=cpu``) uses the gloo backend, GPUs NCCL with one GPU per process.
    """
    if world_size() <= 1:
        return None
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    from loraprune.criteria import criterion_class

    # ∂L/∂W criteria turn the pretrained weights' gradients off once pruning is done: DDP must then
    # find those parameters unused instead of waiting for their gradients.
    weight_grads = criterion_class(cfg.method.criterion).needs.weight_grads
    accelerator = Accelerator(
        cpu=cfg.trainer.device == "cpu",
        kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=weight_grads),
            InitProcessGroupKwargs(timeout=TIMEOUT),
        ],
    )
    if not accelerator.is_main_process:
        logging.getLogger("loraprune").setLevel(logging.WARNING)  # rank 0 tells the story
    log.info(
        "data parallel: %d processes (%s, backend %s)",
        accelerator.num_processes,
        accelerator.distributed_type,
        dist.get_backend(),
    )
    return accelerator


def is_main(accelerator) -> bool:
    return accelerator is None or accelerator.is_main_process


def shared_path(path: Path, accelerator) -> Path:
    """Rank 0's ``path`` on every rank (Hydra's timestamped run dir may differ by a second per rank)."""
    if accelerator is None:
        return path
    box: list[Any] = [str(path)]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def share_trainable(model: nn.Module, accelerator) -> None:
    """Copy rank 0's trainable parameters (the LoRA initialisation) to every rank, so each rank starts
    from the single-process run's weights whatever its random state."""
    if accelerator is None:
        return
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                dist.broadcast(p.data, src=0)


def sync_decision(pruner: Pruner, accelerator, weights: bool = False) -> int:
    """Broadcast rank 0's pruning decision; a rank whose own decision differs takes rank 0's over.

    Returns the number of decision tensors that differed from rank 0's, summed over ranks (0 when the
    ranks agree, as synchronized gradients make them). On a disagreement, or with ``weights``, the
    weights the decision changed (:meth:`Pruner.decision_weights`, N:M) are broadcast too.
    """
    if accelerator is None:
        return 0
    device = accelerator.device
    local = pruner.decision()
    received: dict[str, torch.Tensor] = {}
    differing = torch.zeros(1, dtype=torch.int64, device=device)
    for key in sorted(local):
        mine = local[key].to(device)
        mine = mine.to(torch.uint8) if mine.dtype == torch.bool else mine  # gloo has no bool
        theirs = mine.clone()
        dist.broadcast(theirs, src=0)
        differing += int(not torch.equal(mine, theirs))
        received[key] = theirs.to(local[key].device, local[key].dtype)
    dist.all_reduce(differing)
    count = int(differing.item())
    if count:
        log.warning("pruning decisions differed from rank 0's in %d tensors: rank 0's adopted", count)
        pruner.adopt_decision(received)
    if count or weights:
        with torch.no_grad():
            for w in pruner.decision_weights():
                dist.broadcast(w.data, src=0)
    return count


def final_agreement(model: nn.Module, pruner: Pruner, accelerator) -> dict[str, Any]:
    """After the final decision: how far every rank's trainable and decision weights are from rank 0's
    (max abs difference over ranks; 0 under DDP), and how many decision tensors differed (see
    :func:`sync_decision`). Goes to ``metrics.json`` under ``distributed``."""
    mismatch = sync_decision(pruner, accelerator)
    tensors = [p for p in model.parameters() if p.requires_grad] + pruner.decision_weights()
    diff = torch.zeros(1, dtype=torch.float64, device=accelerator.device)
    with torch.no_grad():
        for t in tensors:
            theirs = t.detach().clone()
            dist.broadcast(theirs, src=0)
            diff = torch.maximum(diff, (t.detach() - theirs).abs().max().double().reshape(1))
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return {
        "processes": accelerator.num_processes,
        "backend": dist.get_backend(),
        "final_mismatch": mismatch,
        "weights_max_abs_diff": float(diff.item()),
    }


class SyncedPruningHooks(PruningHooks):
    """:class:`PruningHooks` whose decisions are rank 0's on every rank, broadcast whenever the masks
    changed (the schedule is the same on every rank); ``mismatch`` in the step record counts the
    disagreements (see :func:`sync_decision`)."""

    def __init__(self, pruner: Pruner, total_steps: int, accelerator) -> None:
        super().__init__(pruner, total_steps)
        self.accelerator = accelerator

    def decided(self) -> dict[str, int]:
        mismatch = sync_decision(self.pruner, self.accelerator)
        return {"mismatch": mismatch, **super().decided()}


def hooks(pruner: Pruner, total_steps: int, accelerator) -> PruningHooks:
    """The pruner's training hooks, synchronized across ranks when there are several."""
    if accelerator is None:
        return PruningHooks(pruner, total_steps)
    pruner.criterion.share_across_processes(_sum_over_ranks(accelerator.device), accelerator.num_processes)
    return SyncedPruningHooks(pruner, total_steps, accelerator)


def _sum_over_ranks(device: torch.device):
    """A tensor summed over every rank (all-reduce on ``device``), back where it was."""

    def total(t: torch.Tensor) -> torch.Tensor:
        out = t.to(device, copy=True)
        dist.all_reduce(out)
        return out.to(t.device)

    return total


def discard_own_hydra_dir(shared_run_dir: Path) -> None:
    """On a rank other than 0: remove the run dir Hydra made for this process when it is not the shared
    one and holds only Hydra's own files (the ranks started in different seconds)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return
    own = Path(hc.runtime.output_dir)
    if own.resolve() == shared_run_dir.resolve() or not own.is_dir():
        return
    if {p.name for p in own.iterdir()} <= {".hydra", f"{hc.job.name}.log"}:
        shutil.rmtree(own, ignore_errors=True)
