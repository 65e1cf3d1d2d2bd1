"""The plain LoRA fine-tuning loop, with a pruning hook between gradient accumulation and the step."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from loraprune.data import collate
from loraprune.pruners import Pruner
from loraprune.run.config import DistillConfig, TrainerConfig


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
        return {"ratio": self.pruner.step(step, final_step=step == self.total_steps)}


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
    model: nn.Module, batch: dict, distill: DistillConfig, unpruned: contextlib.AbstractContextManager
) -> torch.Tensor:
    """Cross-entropy + ``distill.weight`` · :func:`distillation_kl` against the dense teacher: the same
    model with LoRA disabled (peft's ``disable_adapter``) and the masks lifted (``unpruned``), one
    extra forward without gradients."""
    if not hasattr(model, "disable_adapter"):
        raise ValueError("distillation needs a peft model (the teacher is the model with LoRA disabled)")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad(), unpruned, model.disable_adapter():
        teacher = model(**inputs).logits
    out = model(**batch)
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
) -> dict[str, float]:
    """Fine-tune the LoRA parameters for ``steps`` optimizer steps (batching, learning rate, clipping
    and seed from ``settings``). Returns summary values: steps, tokens seen, first and last loss."""
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
    model.train()
    tokens, first_loss, loss_value = 0, None, float("nan")
    bar = tqdm(range(1, steps + 1), desc="fine-tune", leave=False)
    distill = settings.distill
    for step in bar:
        loss_value = 0.0
        for index in range(accumulation):
            batch = {k: v.to(device) for k, v in collate(next(batches), pad_token_id).items()}
            if distill.weight > 0:
                loss = distilled_loss(model, batch, distill, hooks.unpruned()) / accumulation
            else:
                loss = model(**batch).loss / accumulation
            loss.backward()
            hooks.after_micro_batch(step, index, accumulation)
            loss_value += loss.item()
            tokens += int(batch["attention_mask"].sum())
        if not settings.observe_after_clip:
            hooks.after_accumulation(step)
        if settings.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
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
            **extra,
        }
        bar.set_postfix(loss=f"{loss_value:.3f}", **{k: f"{v:.3f}" for k, v in extra.items()})
        if log:
            log(record)
    model.eval()
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    return {"steps": steps, "tokens": tokens, "first_loss": first_loss, "last_loss": loss_value}
