"""Peak memory, tokens/s and where the time goes in the fine-tune-and-prune loop, for one variant, in
this process.

Variants: ``peft`` (plain peft LoRA in the simplest loop a user would write: ``get_peft_model`` with
the project's default LoRA config and peft's own dropout, forward with labels, backward, clipping,
AdamW; none of the project's code), ``lora`` (the same LoRA through the project's loop, no pruner),
``llm_pruner`` (LLM-Pruner's scoring: ∂L/∂W over its calibration samples, one-shot at step 0, then
LoRA recovery) and any iterative criterion (``loraprune``, ``grad``, ...) on the cubic schedule. The
loop is the project's own (:func:`loraprune.train.loop.finetune`); phases are timed around it from the
outside: forward (a hook on the model), backward (to the end of accumulation), scoring
(``pruner.observe``), optimizer (clipping, AdamW, scheduler), mask updates (``pruner.step``) and data
(collation before the next forward).

``python -m loraprune.bench.loop --model shape:llama_7b --dtype bf16 --method loraprune --steps 20`` prints
one JSON line (used by :mod:`loraprune.bench.gpu_check`); :mod:`loraprune.cli.bench` runs every variant in a
process of its own. Batches are random token ids (memory and speed do not depend on their values).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from loraprune.bench.process import Peak, cpu_counters
from loraprune.config.schema import LoraConfig, TrainerConfig
from loraprune.core.lora import is_quantized
from loraprune.core.schedule import build_schedule
from loraprune.core.structure import Geometry, default_excluded_layers
from loraprune.criteria import build_criterion
from loraprune.models.adapters import add_lora
from loraprune.pruners import CalibrationData, PrunerSettings, build_pruner
from loraprune.train.loop import PruningHooks, StepHooks, finetune

LORA_ONLY = "lora"  # LoRA fine-tuning in the project's loop, no pruner
PLAIN_PEFT = "peft"  # LoRA fine-tuning in a user's plain loop: the reference the default's loop is held to
ONE_SHOT = ("llm_pruner",)  # scored once on calibration samples before step 0
PHASES = ("data", "forward", "backward", "scoring", "optimizer", "masks")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def load(spec: str, dtype: str = "fp32", device: str = "cpu", layers: int | None = None, quantize=None):
    """``(model, tokenizer, weights)`` for ``spec``: ``tiny`` (a tiny random LLaMA), ``embedded``,
    ``shape:<name>`` (random weights of a known architecture; ``layers`` keeps that many), a hub id or a
    local directory. ``weights`` is ``random`` or ``pretrained``. ``quantize``: ``int8``/``nf4`` base."""
    from loraprune.models.loading import TinySpec, load_model

    name = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, dtype)
    if spec.startswith("shape:"):
        overrides = {"num_hidden_layers": layers} if layers else None
        source, path = "shape", spec.split(":", 1)[1]
    elif spec in ("tiny", "embedded"):
        source, path, overrides = spec, None, None
    else:
        source, path, overrides = "hub", spec, None
    model, tok = load_model(
        source, path, tiny=TinySpec(), dtype=name, device=device, shape_overrides=overrides
    )
    if quantize:
        from loraprune.models.quantize import quantize_base

        quantize_base(model, quantize)
    return model, tok, "random" if source in ("tiny", "shape") else "pretrained"


def build_model(spec: str, dtype: torch.dtype, device: str, layers: int | None = None):
    """The model only (see :func:`load`); ``dtype`` a torch dtype."""
    name = next(k for k, v in DTYPES.items() if v == dtype)
    return load(spec, name, device, layers)[0]


def random_samples(vocab: int, n: int, seq_len: int, seed: int = 0) -> list[dict[str, list[int]]]:
    ids = torch.randint(3, vocab, (n, seq_len), generator=torch.Generator().manual_seed(seed)).tolist()
    return [{"input_ids": row, "labels": row} for row in ids]


def measure_loop(
    model,
    method: str,
    *,
    steps: int,
    batch: int,
    seq_len: int,
    ratio: float = 0.2,
    device: str = "cpu",
    calibration_samples: int | None = None,
    gradient_checkpointing: bool = False,
) -> dict[str, Any]:
    """Fine-tune (and prune, unless ``method == "lora"``) for ``steps`` steps of ``batch × seq_len``
    tokens; the peak memory of all of it above the loaded model, tokens/s and the time per phase (means
    over the steps after the first, a warm-up), CPU time and page faults per step."""
    samples = random_samples(model.config.vocab_size, max(batch * 2, 10), seq_len)
    trainer = TrainerConfig(
        batch_size=batch,
        micro_batch_size=batch,
        warmup_steps=0,
        seed=0,
        gradient_checkpointing=gradient_checkpointing,
    )
    touch_weights(model)
    peak = Peak(device)
    peak.start()
    started = time.perf_counter()
    peft_model = add_lora(model, LoraConfig())
    hooks: StepHooks = StepHooks()
    if method != LORA_ONLY:
        geo = Geometry.from_config(model.config)
        one_shot = method in ONE_SHOT
        settings = PrunerSettings(
            ratio=ratio,
            excluded_layers=default_excluded_layers(geo.num_layers),
            normalize=not one_shot,
            calibration_samples=calibration_samples,
            calibration_seq_len=seq_len,
        )
        schedule = build_schedule("one_shot" if one_shot else "cubic", ratio, steps, 0.05, 0.5)
        pruner = build_pruner(peft_model, geo, build_criterion(method), settings, schedule)
        pruner.prepare(CalibrationData(samples, 0, batch, device))
        hooks = PruningHooks(pruner, steps)
    prepare_s = time.perf_counter() - started
    timer = PhaseTimer(peft_model, hooks, device.startswith("cuda"))
    finetune(peft_model, samples, trainer, steps, 0, timer)
    timer.close()
    memory = peak.stop()
    return {
        "method": method,
        "steps": steps,
        "tokens_per_step": batch * seq_len,
        "tokens_per_s": timer.tokens_per_s(batch * seq_len),
        "prepare_s": prepare_s,
        **memory,
        **timer.summary(),
    }


def measure_plain_peft(
    model, *, steps: int, batch: int, seq_len: int, device: str = "cpu", dropout: float | None = None
) -> dict[str, Any]:
    """Plain peft LoRA fine-tuning of ``model``: the simplest loop (forward with labels, backward, clip
    to 1.0, AdamW), the project's default LoRA config with peft's own dropout (``dropout`` overrides it),
    no project code in the step. Same figures as :func:`measure_loop` (data and scoring and masks 0)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    lora = LoraConfig()
    samples = random_samples(model.config.vocab_size, max(batch * 2, 10), seq_len)
    ids = torch.tensor([s["input_ids"] for s in samples], device=device)
    touch_weights(model)
    peak = Peak(device)
    peak.start()
    started = time.perf_counter()
    peft_cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout if dropout is None else dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, peft_cfg)
    peft_model.train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-4, weight_decay=0.0)
    prepare_s = time.perf_counter() - started
    cuda = device.startswith("cuda")
    steps_s: list[dict[str, float]] = []
    counters = [cpu_counters()]

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    for step in range(steps):
        rows = torch.arange(step * batch, (step + 1) * batch) % ids.shape[0]
        x = ids[rows]
        t0 = now()
        loss = peft_model(input_ids=x, labels=x).loss
        t1 = now()
        loss.backward()
        t2 = now()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t3 = now()
        phases = dict.fromkeys(PHASES, 0.0)
        phases.update(forward=t1 - t0, backward=t2 - t1, optimizer=t3 - t2)
        steps_s.append(phases)
        counters.append(cpu_counters())
    memory = peak.stop()
    timed = steps_s[1:] or steps_s
    n = len(timed)
    phase_s = {p: sum(s[p] for s in timed) / n for p in PHASES}
    first = 1 if len(steps_s) > 1 else 0
    per_step = {k: (counters[-1][k] - counters[first][k]) / n for k in counters[0]}
    return {
        "method": PLAIN_PEFT,
        "steps": steps,
        "tokens_per_step": batch * seq_len,
        "tokens_per_s": batch * seq_len / sum(phase_s.values()),
        "prepare_s": prepare_s,
        **memory,
        "step_s": sum(phase_s.values()),
        "phase_s": phase_s,
        "cpu_user_s_per_step": per_step["user_s"],
        "cpu_sys_s_per_step": per_step["sys_s"],
        "minor_faults_per_step": per_step["minor_faults"],
        "timed_steps": n,
    }


@torch.no_grad()
def touch_weights(model: torch.nn.Module) -> None:
    """Read every weight once, so that weights loaded lazily (memory-mapped safetensors) are resident
    before the baseline is taken: the peak is then above the whole loaded model."""
    for p in model.parameters():
        if not is_quantized(p):  # a quantized weight was written in memory by the quantization
            p.sum()


class PhaseTimer(StepHooks):
    """Times each phase of every optimizer step around the inner hooks (see the module doc); forward
    from hooks on ``model``. Step 1 is a warm-up: the summary averages steps 2.. (step 1 if alone)."""

    def __init__(self, model: torch.nn.Module, inner: StepHooks, cuda: bool) -> None:
        self.inner, self.cuda = inner, cuda
        self.steps: list[dict[str, float]] = []
        self.counters: list[dict[str, float]] = [cpu_counters()]
        self._current = dict.fromkeys(PHASES, 0.0)
        self._mark = time.perf_counter()
        self._handles = [
            model.register_forward_pre_hook(lambda *_: self._lap("data")),
            model.register_forward_hook(lambda *_: self._lap("forward")),
        ]

    def _lap(self, phase: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self._current[phase] += now - self._mark
        self._mark = now

    def after_micro_batch(self, step: int, index: int, count: int) -> None:
        self.inner.after_micro_batch(step, index, count)  # per-micro-batch criteria fold their samples

    def unpruned(self):
        return self.inner.unpruned()

    def after_accumulation(self, step: int) -> None:
        self._lap("backward")
        self.inner.after_accumulation(step)
        self._lap("scoring")

    def after_step(self, step: int) -> dict[str, float]:
        self._lap("optimizer")
        extra = self.inner.after_step(step)
        self._lap("masks")
        self.steps.append(self._current)
        self.counters.append(cpu_counters())
        self._current = dict.fromkeys(PHASES, 0.0)
        return extra

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _timed(self) -> list[dict[str, float]]:
        return self.steps[1:] or self.steps

    def tokens_per_s(self, tokens_per_step: int) -> float:
        timed = self._timed()
        return tokens_per_step * len(timed) / sum(sum(s.values()) for s in timed)

    def summary(self) -> dict[str, Any]:
        timed = self._timed()
        n = len(timed)
        phases = {p: sum(s[p] for s in timed) / n for p in PHASES}
        first = 1 if len(self.steps) > 1 else 0
        a, b = self.counters[first], self.counters[-1]
        per_step = {k: (b[k] - a[k]) / n for k in a}
        return {
            "step_s": sum(phases.values()),
            "phase_s": phases,
            "cpu_user_s_per_step": per_step["user_s"],
            "cpu_sys_s_per_step": per_step["sys_s"],
            "minor_faults_per_step": per_step["minor_faults"],
            "timed_steps": n,
        }


def run_variant(
    model: str,
    method: str,
    dtype: str = "fp32",
    device: str = "cpu",
    steps: int = 20,
    batch: int = 1,
    seq_len: int = 512,
    ratio: float = 0.2,
    layers: int | None = None,
    quantize: str | None = None,
    threads: int | None = None,
    gradient_checkpointing: bool = False,
) -> dict[str, Any]:
    """Load ``model`` and measure one variant (a module-level function: it runs in its own process)."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    loaded, _, weights = load(model, dtype, device, layers, quantize)
    if method == PLAIN_PEFT:
        result = measure_plain_peft(loaded, steps=steps, batch=batch, seq_len=seq_len, device=device)
    else:
        result = measure_loop(
            loaded,
            method,
            steps=steps,
            batch=batch,
            seq_len=seq_len,
            ratio=ratio,
            device=device,
            gradient_checkpointing=gradient_checkpointing,
        )
    return {
        "model": model,
        "weights": weights,
        "dtype": dtype,
        "device": device,
        "quantize": quantize,
        "gradient_checkpointing": gradient_checkpointing,
        **result,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="shape:<name> | tiny | embedded | hub id | local dir")
    ap.add_argument("--layers", type=int, default=None, help="shape: keep only this many layers")
    ap.add_argument("--method", default="loraprune", help="a criterion name, or 'lora' (no pruning)")
    ap.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--quantize", default=None, choices=["int8", "nf4"])
    args = ap.parse_args(argv)
    result = run_variant(
        args.model,
        args.method,
        args.dtype,
        args.device,
        args.steps,
        args.batch,
        args.seq_len,
        args.ratio,
        args.layers,
        args.quantize,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
