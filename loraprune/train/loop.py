"""The plain LoRA fine-tuning loop, with a pruning hook between gradient accumulation and the step."""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from loraprune.config.schema import DistillConfig, TrainerConfig
from loraprune.data import collate
from loraprune.pruners import Pruner
from loraprune.train.resume import Checkpointer, LoopState


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
    steps, tokens seen, first and last loss, seconds (summed over the processes of a resumed run), and
    ``resumed_from_step`` (0: it did not resume).

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
    loop = _Loop(model, samples, settings, steps, pad_token_id, hooks or StepHooks(), accelerator)
    start = loop.restore(checkpoints)
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
    for step in bar:
        done = loop.step(step)
        loss_value, tokens = done.loss, tokens + done.tokens
        first_loss = loss_value if first_loss is None else first_loss
        record = {"step": step, "loss": loss_value, "lr": done.lr, "tokens": tokens, **done.values}
        ratio = {k: f"{v:.3f}" for k, v in done.values.items() if k == "ratio"}
        bar.set_postfix(loss=f"{loss_value:.3f}", **ratio)
        if log:
            log(record)
        if checkpoints and _is_main(accelerator):
            seconds = start.seconds + time.perf_counter() - started
            state = LoopState(step, step * loop.accumulation, tokens, first_loss, loss_value, seconds)
            loop.save(checkpoints, state)
    loop.finish()
    return {
        "steps": steps,
        "tokens": tokens,
        "first_loss": first_loss,
        "last_loss": loss_value,
        "seconds": round(start.seconds + time.perf_counter() - started, 3),
        "resumed_from_step": start.step,
    }


@dataclass(frozen=True)
class StepDone:
    """What one optimizer step logs: its (global) loss and tokens, the learning rate after it, and the
    other values (``grad_norm``, the hooks' ``ratio`` and ``masks``)."""

    loss: float
    tokens: int
    lr: float
    values: dict[str, float]


class _Loop:
    """One fine-tuning run's parts (optimizer, schedule, data position, DDP wrapper) and its named steps:
    :meth:`accumulate` the micro-batches, :meth:`clip_and_observe` in the configured order, then
    :meth:`advance` the optimizer and the hooks."""

    def __init__(
        self,
        model: nn.Module,
        samples: Sequence[dict],
        settings: TrainerConfig,
        steps: int,
        pad_token_id: int,
        hooks: StepHooks,
        accelerator=None,
    ) -> None:
        from transformers import get_linear_schedule_with_warmup

        self.model, self.settings, self.hooks, self.accelerator = model, settings, hooks, accelerator
        self.pad_token_id = pad_token_id
        self.params = trainable_parameters(model)
        if not self.params:
            raise ValueError("no trainable LoRA parameters found")
        self.device = self.params[0].device
        self.optimizer = torch.optim.AdamW(self.params, lr=settings.lr, weight_decay=settings.weight_decay)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, settings.warmup_steps, steps)
        if settings.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        self.batches: Iterator[list[dict]] = cycle_batches(samples, settings.micro_batch_size, settings.seed)
        self.accumulation = settings.batch_size // settings.micro_batch_size
        self.mine = _local_share(self.accumulation, accelerator)
        self.ddp = accelerator.prepare_model(model) if accelerator else model

    def restore(self, checkpoints: Checkpointer | None) -> LoopState:
        """Resume from the latest checkpoint, if any: the parts' states and the data position."""
        parts = (self.model, self.optimizer, self.scheduler, self.hooks)
        start = checkpoints.restore(*parts) if checkpoints else LoopState()
        self.batches = itertools.islice(self.batches, start.micro_batches, None)
        return start

    def step(self, step: int) -> StepDone:
        """One optimizer step: accumulate, clip and observe, advance."""
        loss, tokens = self.accumulate(step)
        grad_norm = self.clip_and_observe(step)
        extra = self.advance(step)
        return StepDone(loss, tokens, self.scheduler.get_last_lr()[0], {**grad_norm, **extra})

    def accumulate(self, step: int) -> tuple[float, int]:
        """Backward this process's share of the step's micro-batches; the loss and tokens, global."""
        loss_value, step_tokens = 0.0, 0
        for j in range(self.accumulation):
            micro_batch = next(self.batches)  # every rank walks the whole sequence, computes its own share
            if j not in self.mine:
                continue
            batch = {k: v.to(self.device) for k, v in collate(micro_batch, self.pad_token_id).items()}
            loss = self.backward(batch, sync=j == self.mine[-1] or self.accelerator is None)
            self.hooks.after_micro_batch(step, j - self.mine[0], len(self.mine))
            loss_value += loss.item()
            step_tokens += int(batch["attention_mask"].sum())
        if self.accelerator is not None:
            return _global_loss_and_tokens(loss_value, step_tokens, self.accelerator)
        return loss_value, step_tokens

    def backward(self, batch: dict, sync: bool) -> torch.Tensor:
        """One micro-batch's share of the step's loss (distilled, when configured), backpropagated; DDP
        averages the gradients only when ``sync`` (the process's last backward of the step)."""
        distill, share = self.settings.distill, len(self.mine)
        with contextlib.nullcontext() if sync else self.accelerator.no_sync(self.ddp):
            if distill.weight > 0:
                loss = distilled_loss(self.model, batch, distill, self.hooks.unpruned(), student=self.ddp)
                loss = loss / share
            else:
                loss = self.ddp(**batch).loss / share
            loss.backward()
        return loss

    def clip_and_observe(self, step: int) -> dict[str, float]:
        """Clip the gradients (returns ``grad_norm``, the norm before clipping, when clipping is on) and
        let the hooks observe them before or after, as ``observe_after_clip`` says (the reference reads
        the LoRA gradients after clipping)."""
        settings, grad_norm = self.settings, {}
        if not settings.observe_after_clip:
            self.hooks.after_accumulation(step)
        if settings.max_grad_norm > 0:  # clipping acts where the norm exceeds the bound
            grad_norm["grad_norm"] = float(
                torch.nn.utils.clip_grad_norm_(self.params, settings.max_grad_norm)
            )
        if settings.observe_after_clip:
            self.hooks.after_accumulation(step)
        return grad_norm

    def advance(self, step: int) -> dict[str, float]:
        """Step the optimizer and the learning rate, clear the gradients; the hooks' values to log."""
        self.optimizer.step()
        self.scheduler.step()
        self.model.zero_grad(set_to_none=True)
        return self.hooks.after_step(step)

    def save(self, checkpoints: Checkpointer, loop: LoopState) -> None:
        """Save a checkpoint if one is due at ``loop.step``."""
        checkpoints.maybe_save(loop, self.model, self.optimizer, self.scheduler, self.hooks)

    def finish(self) -> None:
        """Back to evaluation mode, without gradient checkpointing."""
        self.model.eval()
        if self.settings.gradient_checkpointing:
            self.model.gradient_checkpointing_disable()


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
