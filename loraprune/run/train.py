"""The plain LoRA fine-tuning loop, with a pruning hook between gradient accumulation and the step."""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from loraprune.data import collate
from loraprune.pruners import Pruner
from loraprune.run.config import DistillConfig, TrainerConfig
from loraprune.run.resume import Checkpointer, LoopState


def steps_for(epochs: float, num_samples: int, batch_size: int) -> int:
    """Optimizer steps needed for ``epochs`` passes over ``num_samples``."""
    return max(1, math.ceil(epochs * num_samples / batch_size))


def cycle_batches(samples: Sequence[dict], micro_batch_size: int, seed: int) -> Iterator[list[dict]]:
    """Shuffled micro-batches, reshuffled every epoch, forever."""
    rng = random.Random(seed)
    order = list(range(len(samples)))
    while True:
        rng.shuffle(order)
        for i in range(0, len(order) - micro_batch_size + 1, micro_batch_size):
            yield [samples[j] for j in order[i : i + micro_batch_size]]


class StepHooks:
    """What the loop calls around each optimizer step (the pruner plugs in here)."""

    def after_micro_batch(self, step: int, index: int, count: int) -> None:
        """Micro-batch ``index`` of ``count`` of this step has added its gradients."""

    def after_accumulation(self, step: int) -> None:
        """Gradients of this step are complete; the optimizer has not stepped yet."""

    def unpruned(self) -> contextlib.AbstractContextManager[None]:
        """A context in which the model runs unpruned (the distillation teacher)."""
        return contextlib.nullcontext()

    def after_step(self, step: int) -> dict[str, float]:
        """The optimizer has stepped; returns extra values to log."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the hooks."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class PruningHooks(StepHooks):
    """A pruner in the loop: it observes the accumulated gradients and follows its schedule."""

    def __init__(self, pruner: Pruner, total_steps: int) -> None:
        self.pruner, self.total_steps = pruner, total_steps

    def after_micro_batch(self, step: int, index: int, count: int) -> None:
        self.pruner.observe_micro_batch(index, count)

    def after_accumulation(self, step: int) -> None:
        self.pruner.observe()

    def unpruned(self) -> contextlib.AbstractContextManager[None]:
        return self.pruner.unpruned()

    def after_step(self, step: int) -> dict[str, float]:
        before = self.pruner.progress
        extra = {"ratio": self.pruner.step(step, final_step=step == self.total_steps)}
        if self.pruner.progress != before:
            extra.update(self.decided())
        return extra

    def decided(self) -> dict[str, int]:
        """The masks changed at this step: a digest of them (``masks`` in ``steps.jsonl``)."""
        return {"masks": self.pruner.decision_digest()}

    def state_dict(self) -> dict[str, Any]:
        return {"pruner": self.pruner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pruner.load_state_dict(state["pruner"])


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]


def distillation_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """T²·KL(p_teacher ‖ p_student) of the softened next-token distributions, averaged over the
    attended positions."""
    t = temperature
    log_p = torch.log_softmax(teacher_logits.float() / t, dim=-1)
    log_q = torch.log_softmax(student_logits.float() / t, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    mask = attention_mask.to(kl.dtype)
    return t * t * (kl * mask).sum() / mask.sum().clamp(min=1)


def distilled_loss(
    model: nn.Module,
    batch: dict,
    distill: DistillConfig,
    unpruned: contextlib.AbstractContextManager,
    student: nn.Module | None = None,
) -> torch.Tensor:
    """Cross-entropy + ``distill.weight`` · :func:`distillation_kl` against the dense teacher: the same
    model with LoRA disabled (peft's ``disable_adapter``) and the masks lifted (``unpruned``), one
    extra forward without gradients. ``student``: the model's trainable wrapper (DDP), if any."""
    if not hasattr(model, "disable_adapter"):
        raise ValueError("distillation needs a peft model (the teacher is the model with LoRA disabled)")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad(), unpruned, model.disable_adapter():
        teacher = model(**inputs).logits
    out = (student or model)(**batch)
    kl = distillation_kl(out.logits, teacher, batch["attention_mask"], distill.temperature)
    return out.loss + distill.weight * kl


def finetune(
    model: nn.Module,
    samples: Sequence[dict],
    settings: TrainerConfig,
    steps: int,
    pad_token_id: int,
    hooks: StepHooks | None = None,
    log: Callable[[dict], None] | None = None,
    checkpoints: Checkpointer | None = None,
    accelerator=None,
) -> dict[str, float]:
    """Fine-tune the LoRA parameters for ``steps`` optimizer steps (batching, learning rate, clipping
    and seed from ``settings``), saving and resuming through ``checkpoints``. Returns summary values:
    steps, tokens seen, first and last loss, seconds.

    With an ``accelerate.Accelerator`` of N processes the model trains under DDP: each rank computes its
    share of every step's micro-batches (:func:`_local_share`), the gradients are averaged once, at its
    last backward, and the logged loss and tokens are global. Only the main process saves checkpoints;
    every rank restores from them.
    """
    if steps == 0:
        return {"steps": 0, "tokens": 0}
    if len(samples) < settings.micro_batch_size:
        raise ValueError(
            f"{len(samples)} fine-tune samples are fewer than one micro-batch ({settings.micro_batch_size})"
        )
    hooks = hooks or StepHooks()
    params = trainable_parameters(model)
    if not params:
        raise ValueError("no trainable LoRA parameters found")
    device = params[0].device
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, settings.warmup_steps, steps)
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    batches = cycle_batches(samples, settings.micro_batch_size, settings.seed)
    accumulation = settings.batch_size // settings.micro_batch_size
    mine = _local_share(accumulation, accelerator)
    ddp = accelerator.prepare_model(model) if accelerator else model
    start = checkpoints.restore(model, optimizer, scheduler, hooks) if checkpoints else LoopState()
    batches = itertools.islice(batches, start.micro_batches, None)  # the data position
    model.train()
    tokens, first_loss, loss_value = start.tokens, start.first_loss, start.last_loss
    started = time.perf_counter()
    bar = tqdm(
        range(start.step + 1, steps + 1),
        desc="fine-tune",
        leave=False,
        initial=start.step,
        total=steps,
        disable=not _is_main(accelerator),
    )
    distill = settings.distill
    for step in bar:
        loss_value, step_tokens = 0.0, 0
        for j in range(accumulation):
            micro_batch = next(batches)  # every rank walks the whole sequence, computes its own share
            if j not in mine:
                continue
            batch = {k: v.to(device) for k, v in collate(micro_batch, pad_token_id).items()}
            sync = j == mine[-1] or accelerator is None  # DDP averages gradients at the last backward
            with contextlib.nullcontext() if sync else accelerator.no_sync(ddp):
                if distill.weight > 0:
                    loss = distilled_loss(model, batch, distill, hooks.unpruned(), student=ddp) / len(mine)
                else:
                    loss = ddp(**batch).loss / len(mine)
                loss.backward()
            hooks.after_micro_batch(step, j - mine[0], len(mine))
            loss_value += loss.item()
            step_tokens += int(batch["attention_mask"].sum())
        if accelerator is not None:
            loss_value, step_tokens = _global_loss_and_tokens(loss_value, step_tokens, accelerator)
        tokens += step_tokens
        if not settings.observe_after_clip:
            hooks.after_accumulation(step)
        grad_norm = {}
        if settings.max_grad_norm > 0:  # the norm before clipping: clipping acts where it exceeds the bound
            grad_norm["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm))
        if settings.observe_after_clip:  # the reference reads the LoRA gradients after clipping
            hooks.after_accumulation(step)
        optimizer.step()
        scheduler.step()
        model.zero_grad(set_to_none=True)
        extra = hooks.after_step(step)
        first_loss = loss_value if first_loss is None else first_loss
        record = {
            "step": step,
            "loss": loss_value,
            "lr": scheduler.get_last_lr()[0],
            "tokens": tokens,
            **grad_norm,
            **extra,
        }
        bar.set_postfix(loss=f"{loss_value:.3f}", **{k: f"{v:.3f}" for k, v in extra.items() if k == "ratio"})
        if log:
            log(record)
        if checkpoints and _is_main(accelerator):
            loop = LoopState(step, step * accumulation, tokens, first_loss, loss_value)
            checkpoints.maybe_save(loop, model, optimizer, scheduler, hooks)
    model.eval()
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    seconds = round(time.perf_counter() - started, 3)
    return {
        "steps": steps,
        "tokens": tokens,
        "first_loss": first_loss,
        "last_loss": loss_value,
        "seconds": seconds,
    }


def _local_share(accumulation: int, accelerator) -> range:
    """Which of a step's ``accumulation`` micro-batches this process computes: a contiguous
    ``accumulation / N`` share, rank 0 first (all of them in a single process)."""
    if accelerator is None:
        return range(accumulation)
    share = accumulation // accelerator.num_processes
    return range(accelerator.process_index * share, (accelerator.process_index + 1) * share)


def _is_main(accelerator) -> bool:
    return accelerator is None or accelerator.is_main_process


def _global_loss_and_tokens(loss: float, tokens: int, accelerator) -> tuple[float, int]:
    """The step's loss averaged over ranks (each rank's is the mean of its equal share) and its tokens
    summed: what a single process logs for the same global batch."""
    t = torch.tensor([loss, float(tokens)], dtype=torch.float64, device=accelerator.device)
    t = accelerator.reduce(t, reduction="sum")
    return float(t[0]) / accelerator.num_processes, int(t[1])
