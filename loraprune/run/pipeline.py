"""``run(cfg) -> metrics``: load, fine-tune-and-prune, finalize, evaluate, write."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from loraprune import data
from loraprune.core import nm as semistructured
from loraprune.core.budget import ratio_for_param_fraction
from loraprune.core.plan import PruningPlan
from loraprune.core.schedule import build_schedule
from loraprune.core.structure import Geometry, decoder_layers, projection, removable_counts
from loraprune.core.surgery import apply_plan, count_parameters, decoder_parameters, merge_lora
from loraprune.criteria import build_criterion
from loraprune.evaluation import sparse_speed
from loraprune.evaluation.ppl import perplexity, tokenize_stream
from loraprune.pruners.structured import IterativePruner, PrunerSettings
from loraprune.run.calibration import end_one_shot, prepare_importance
from loraprune.run.checkpoint import save_pruned, write_json, write_text
from loraprune.run.config import LoraPruneConfig
from loraprune.run.loggers import build_logger
from loraprune.run.memory import PeakMemory
from loraprune.run.models import load_config, load_model
from loraprune.run.resolve import ConfigError, effective_schedule, excluded_layers, validate
from loraprune.run.train import StepHooks, TrainSettings, finetune, steps_for

log = logging.getLogger("loraprune")


def to_config(cfg: DictConfig | LoraPruneConfig) -> LoraPruneConfig:
    """A typed config object from a Hydra/OmegaConf config."""
    if isinstance(cfg, LoraPruneConfig):
        return cfg
    merged = OmegaConf.merge(OmegaConf.structured(LoraPruneConfig), cfg)
    return OmegaConf.to_object(merged)


def resolve_run_dir(cfg: LoraPruneConfig) -> Path:
    """``cfg.output_dir``, else Hydra's run dir, else ``outputs/runs/<time>``."""
    if cfg.output_dir:
        return Path(cfg.output_dir)
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return Path("outputs") / "runs" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


class PruningHooks(StepHooks):
    """Connects the pruner to the training loop. Once the final ratio is reached it stops scoring (masks
    never change again) and calls ``on_done`` once (e.g. to stop ∂L/∂W of the pretrained weights)."""

    def __init__(
        self, pruner: IterativePruner | semistructured.IterativeNMPruner, total_steps: int, on_done=None
    ) -> None:
        self.pruner, self.total_steps, self.on_done = pruner, total_steps, on_done
        self.notified = False

    def finished(self) -> bool:
        return self.pruner.finished

    def after_accumulation(self, step: int) -> None:
        if not self.finished():
            self.pruner.observe()

    def after_step(self, step: int) -> dict[str, float]:
        ratio = self.pruner.step(step, final_step=step == self.total_steps)
        if self.finished() and not self.notified:
            self.notified = True
            if self.on_done is not None:
                self.on_done()
        return {"ratio": ratio}


def evaluate_ppl(model, tokenizer, cfg: LoraPruneConfig, streams: dict[str, torch.Tensor], tag: str) -> dict:
    e = cfg.eval
    return {
        name: perplexity(model, ids, e.seq_len, e.max_windows, e.batch_size, desc=f"{tag} ppl {name}")
        for name, ids in streams.items()
    }


def evaluate_zeroshot(model, tokenizer, cfg: LoraPruneConfig) -> dict | None:
    z = cfg.eval.zeroshot
    if not z.enabled:
        return None
    from loraprune.evaluation.zeroshot import ZeroShotSpec
    from loraprune.evaluation.zeroshot import evaluate_zeroshot as run_zeroshot

    spec = ZeroShotSpec(tasks=tuple(z.tasks), limit=z.limit, batch_size=z.batch_size, source=z.source)
    return run_zeroshot(model, tokenizer, spec)


def add_lora(model, cfg: LoraPruneConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    lc = cfg.lora
    peft_cfg = PeftLoraConfig(
        r=lc.r,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        target_modules=list(lc.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    # peft asks transformers 5 a deprecated question; nothing for the user to do
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, peft_cfg)


def run(cfg: DictConfig | LoraPruneConfig) -> dict[str, Any]:
    """Run one fine-tune-and-prune experiment; returns (and writes) its metrics."""
    started = time.time()
    cfg = to_config(cfg)
    validate(cfg)
    m, p = cfg.model, cfg.prune
    try:
        geo = Geometry.from_config(load_config(m.source, m.path, m.tiny, m.revision))
    except OSError as e:  # hub id unknown or unreachable, unreadable local files
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot load the config of model {m.path or m.source!r}: {first_line}") from e
    excluded = excluded_layers(cfg, geo)
    prunable = [i for i in range(geo.num_layers) if i not in excluded]
    if p.target == "groups":
        try:
            removable_counts(geo, p.attention_unit, p.ratio)
        except ValueError as e:
            raise ConfigError(str(e)) from e

    run_dir = resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_dict = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(config_dict))

    wandb_kwargs = asdict(cfg.logger.wandb)
    wandb_kwargs["name"] = wandb_kwargs["name"] or run_dir.name
    logger = build_logger(cfg.logger.name, run_dir, cfg.logger.console_every, wandb_kwargs)
    logger.log_config(config_dict)
    try:
        metrics = _run(cfg, run_dir, geo, excluded, prunable, logger, started)
    finally:
        logger.close()
    return metrics


def _run(cfg, run_dir, geo, excluded, prunable, logger, started) -> dict[str, Any]:
    m, p, t = cfg.model, cfg.prune, cfg.trainer
    schedule_name, at_step = effective_schedule(cfg)
    one_shot_now = schedule_name == "one_shot" and at_step == 0
    torch.manual_seed(t.seed)
    model, tokenizer = load_model(
        m.source,
        m.path,
        tiny=m.tiny,
        dtype=t.dtype,
        device=t.device,
        revision=m.revision,
        attn_implementation=m.attn_implementation,
    )
    log.info(
        "model %s: %d layers, %d heads / %d KV heads, MLP %d; pruning layers %s",
        m.name,
        geo.num_layers,
        geo.num_heads,
        geo.num_kv_heads,
        geo.intermediate_size,
        prunable,
    )
    streams = {name: tokenize_stream(data.load_eval_text(name), tokenizer) for name in cfg.eval.ppl_sets}
    spec = data.FinetuneDataSpec(
        name=cfg.data.name,
        kind=cfg.data.kind,
        nsamples=cfg.data.nsamples,
        cutoff_len=cfg.data.cutoff_len,
        prompt_template=cfg.data.prompt_template,
        train_on_inputs=cfg.data.train_on_inputs,
        seed=t.seed,
        field=cfg.data.field,
    )
    samples = data.build_finetune_dataset(spec, tokenizer)
    steps = t.steps if t.steps is not None else steps_for(t.epochs, len(samples), t.batch_size)

    params_before = count_parameters(model)
    decoder_before = decoder_parameters(model)
    ratio = p.ratio
    if p.target == "params":
        attn = projection(decoder_layers(model)[0], "q_proj")
        ratio = ratio_for_param_fraction(
            geo, p.attention_unit, p.ratio, params_before, len(prunable), attention_bias=attn.bias is not None
        )
        log.info("target %.1f%% of parameters -> group ratio %.3f", 100 * p.ratio, ratio)

    metrics: dict[str, Any] = {
        "run": {
            "dir": str(run_dir),
            "model": m.name,
            "method": cfg.method.name,
            "criterion": cfg.method.criterion,
            "ratio": p.ratio,
            "target": p.target,
            "group_ratio": ratio,
            "attention_unit": p.attention_unit,
            "schedule": schedule_name,
            "steps": steps,
            "data": cfg.data.name,
            "seed": t.seed,
        },
        "eval": {
            "seq_len": cfg.eval.seq_len,
            "max_windows": cfg.eval.max_windows,
            "sets": list(cfg.eval.ppl_sets),
        },
    }
    if cfg.eval.dense:
        metrics["dense"] = {"ppl": evaluate_ppl(model, tokenizer, cfg, streams, "dense")}
        zs = evaluate_zeroshot(model, tokenizer, cfg)
        if zs is not None:
            metrics["dense"]["zeroshot"] = zs
        log.info("dense ppl: %s", _fmt(metrics["dense"]["ppl"]))

    criterion = build_criterion(cfg.method.criterion, cfg.method.options)
    settings = PrunerSettings(
        ratio=ratio,
        attention_unit=p.attention_unit,
        prune_freq=p.prune_freq,
        excluded_layers=excluded,
        selection=p.selection,
        prune_attention=p.prune_attention,
        prune_mlp=p.prune_mlp,
        ema_beta=cfg.method.ema_beta,
        ema_init=cfg.method.ema_init,
        normalize=cfg.method.normalize,
    )
    schedule = build_schedule(schedule_name, ratio, max(steps, 1), p.warmup, p.cooldown, at_step)
    shared = {f.name: getattr(t, f.name) for f in fields(TrainSettings) if f.name != "steps"}
    train_settings = TrainSettings(steps=steps if cfg.method.finetune else 0, **shared)
    with PeakMemory() as mem:
        peft_model = add_lora(model, cfg)
        pruner, hooks, nm_masks = None, None, None
        if p.pattern is not None and one_shot_now:  # semi-structured N:M at step 0; no group is removed
            nm_masks = semistructured.prune_one_shot(
                criterion,
                peft_model,
                prunable,
                p.pattern,
                samples,
                cfg.method.options,
                tokenizer.pad_token_id,
            )
            semistructured.mask_lora_updates(peft_model, nm_masks)
            plan = PruningPlan(geo, p.attention_unit)
        elif p.pattern is not None:  # N:M chosen during fine-tuning along the schedule
            nm_schedule = build_schedule(schedule_name, 1.0, max(steps, 1), p.warmup, p.cooldown, at_step)
            nm_pruner = semistructured.IterativeNMPruner(
                peft_model, prunable, p.pattern, criterion, nm_schedule, p.prune_freq, cfg.method.ema_beta
            )
            nm_masks = nm_pruner.masks
            hooks = PruningHooks(nm_pruner, train_settings.steps, on_done=nm_pruner.release)
            plan = PruningPlan(geo, p.attention_unit)
        else:
            pruner = IterativePruner(peft_model, geo, criterion, settings, schedule)
            prepare_importance(
                criterion,
                peft_model,
                pruner,
                samples,
                cfg.method.options,
                t.micro_batch_size,
                tokenizer.pad_token_id,
                one_shot_now,
            )
            if one_shot_now and ratio > 0:
                pruner.prune_to(ratio)
                end_one_shot(criterion, peft_model, pruner)
            hooks = PruningHooks(
                pruner, train_settings.steps, on_done=lambda: end_one_shot(criterion, peft_model, pruner)
            )
        pruned_now = one_shot_now and (ratio > 0 or nm_masks is not None)
        if pruned_now and train_settings.steps > 0:  # the one-shot result before LoRA recovery (masks on)
            metrics["pruned_before_recovery"] = {
                "ppl": evaluate_ppl(peft_model, tokenizer, cfg, streams, "before recovery")
            }
            log.info("one-shot ppl before recovery: %s", _fmt(metrics["pruned_before_recovery"]["ppl"]))
        train_summary = finetune(
            peft_model, samples, train_settings, tokenizer.pad_token_id, hooks, logger.log_step
        )
        if hooks is not None and pruner is None and not hooks.pruner.finished:
            hooks.pruner.convert_to(1.0)  # e.g. no fine-tuning steps: the whole pattern before merging
        if pruner is not None:
            if pruner.current_ratio < ratio:
                pruner.prune_to(ratio)  # e.g. no fine-tuning steps: reach the target before finalizing
            plan = pruner.plan()
            pruner.remove_hooks()
    if nm_masks is None:
        model = merge_lora(peft_model)
    else:
        model = semistructured.merge_through_masks(peft_model, nm_masks)  # keeps the N:M pattern
    for param in model.parameters():
        param.requires_grad_(False)
    apply_plan(model, plan)

    params_after, decoder_after = count_parameters(model), decoder_parameters(model)
    summary = plan.summary()
    metrics["train"] = train_summary
    metrics["pruned"] = {"ppl": evaluate_ppl(model, tokenizer, cfg, streams, "pruned")}
    if pruned_now and "pruned_before_recovery" not in metrics:  # no recovery steps: the same model
        metrics["pruned_before_recovery"] = {"ppl": dict(metrics["pruned"]["ppl"])}
    if nm_masks is not None:
        metrics["semistructured"] = semistructured.sparsity_report(model, nm_masks, p.pattern)
    zs = evaluate_zeroshot(model, tokenizer, cfg)
    if zs is not None:
        metrics["pruned"]["zeroshot"] = zs
    metrics["params"] = {
        "total_before": params_before,
        "total_after": params_after,
        "decoder_before": decoder_before,
        "decoder_after": decoder_after,
        "removed_fraction_total": 1 - params_after / params_before,
        "removed_fraction_decoder": 1 - decoder_after / decoder_before,
    }
    metrics["achieved_ratio"] = _achieved(summary, geo, prunable)
    metrics["kept_per_layer"] = summary
    metrics["memory"] = mem.as_dict()
    if cfg.save_model:
        save_pruned(model, tokenizer, plan, run_dir / "model")
        metrics["model_dir"] = str(run_dir / "model")
    if nm_masks is not None and cfg.eval.sparse_speed:  # last: converts the model's weights in place
        dtype = "bfloat16" if next(model.parameters()).dtype == torch.bfloat16 else "float16"
        speed = sparse_speed.measure(model, nm_masks, cfg.eval.batch_size, cfg.eval.seq_len, dtype)
        metrics["semistructured"]["speed"] = speed
        log.info("2:4 sparse kernels: %s", speed.get("skipped") or f"{speed['model_speedup']:.2f}x forward")
    metrics["wall_time_s"] = round(time.time() - started, 2)
    metrics["objective"] = next(iter(metrics["pruned"]["ppl"].values()), None)
    write_json(run_dir / "metrics.json", metrics)
    logger.log_metrics(metrics)
    logger.log_table(
        "kept_per_layer",
        ["layer", "q_heads", "kv_heads", "channels"],
        [[int(i), v["q_heads"], v["kv_heads"], v["channels"]] for i, v in summary.items()],
    )
    log.info(
        "pruned ppl: %s | params %d -> %d (-%.2f%% total, -%.2f%% decoder) | %s",
        _fmt(metrics["pruned"]["ppl"]),
        params_before,
        params_after,
        100 * metrics["params"]["removed_fraction_total"],
        100 * metrics["params"]["removed_fraction_decoder"],
        run_dir,
    )
    return metrics


def _achieved(summary: dict, geo: Geometry, prunable: list[int]) -> dict[str, float]:
    """Removed fraction of query heads, KV heads and channels over the prunable layers."""
    if not prunable:
        return {"q_heads": 0.0, "kv_heads": 0.0, "channels": 0.0}
    n = len(prunable)
    kept = {k: sum(summary[str(i)][k] for i in prunable) for k in ("q_heads", "kv_heads", "channels")}
    return {
        "q_heads": 1 - kept["q_heads"] / (n * geo.num_heads),
        "kv_heads": 1 - kept["kv_heads"] / (n * geo.num_kv_heads),
        "channels": 1 - kept["channels"] / (n * geo.intermediate_size),
    }


def _fmt(ppl: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in ppl.items())
