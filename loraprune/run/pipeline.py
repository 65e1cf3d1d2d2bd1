"""``run(cfg) -> metrics``: the recipe.

resolve the config → load → evaluate dense → build the pruner → fine-tune with its hooks → finalize →
merge and apply → evaluate → save. Each step is a named function below; everything derived from the
config was worked out once by :func:`loraprune.run.resolve.resolve`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from loraprune import data
from loraprune.config.schema import LoraPruneConfig
from loraprune.core.nm import sparsity_report
from loraprune.core.plan import PruningPlan
from loraprune.core.schedule import build_schedule
from loraprune.core.surgery import count_parameters, decoder_parameters
from loraprune.criteria import CRITERIA, build_criterion
from loraprune.evaluation import sparse_speed
from loraprune.export.card import cli_command
from loraprune.models.adapters import add_lora
from loraprune.models.loading import load_model, model_path
from loraprune.models.quantize import quantize_base
from loraprune.models.shapes import weights_kind
from loraprune.pruners import CalibrationData, Pruner, PruneResult, build_pruner
from loraprune.run.evaluate import EvalRecord, coverage, evaluate_ppl, load_eval_streams
from loraprune.run.loggers import Logger, MultiLogger, build_logger
from loraprune.run.provenance import provenance
from loraprune.run.resolve import ConfigError, RunPlan, check_option_keys, resolve
from loraprune.train import distributed
from loraprune.train.checkpoint import save_pruned, write_json, write_text
from loraprune.train.loop import finetune, steps_for
from loraprune.train.memory import PeakMemory
from loraprune.train.resume import (
    Checkpointer,
    earlier_metrics,
    prepare_resume,
    remove_checkpoints,
    start_fresh,
)

log = logging.getLogger("loraprune")

__all__ = ["ConfigError", "add_lora", "run", "to_config"]


def to_config(cfg: DictConfig | LoraPruneConfig) -> LoraPruneConfig:
    """A typed config object from a Hydra/OmegaConf config."""
    if isinstance(cfg, LoraPruneConfig):
        return cfg
    merged = OmegaConf.merge(OmegaConf.structured(LoraPruneConfig), cfg)
    check_option_keys(str(merged.method.criterion), merged.method.options or {})
    try:
        return OmegaConf.to_object(merged)
    except ValueError as e:  # a schema's own check (e.g. data.kind)
        raise ConfigError(str(e)) from e


def run(cfg: DictConfig | LoraPruneConfig) -> dict[str, Any]:
    """Run one fine-tune-and-prune experiment; returns (and writes) its metrics.

    Launched on several processes (``torchrun`` / ``accelerate launch``) the fine-tune is data parallel
    (:mod:`loraprune.train.distributed`): rank 0 evaluates and writes everything; the other ranks train
    and prune with it, then return ``{"objective": None}`` without writing anything.
    """
    started = time.time()
    config = to_config(cfg)
    plan = resolve(config)
    problem = distributed.check(config, distributed.world_size())
    if problem:
        raise ConfigError(problem)
    accelerator = distributed.start(config)
    plan = replace(plan, run_dir=distributed.shared_path(plan.run_dir, accelerator))
    if plan.cfg.resume and not plan.cfg.overwrite and (plan.run_dir / "metrics.json").exists():
        log.info("%s: finished already; its metrics.json is reported again", plan.run_dir)
        return json.loads((plan.run_dir / "metrics.json").read_text(encoding="utf-8"))
    main = distributed.is_main(accelerator)
    logger = start_run_dir(plan) if main else MultiLogger()
    try:
        model, tokenizer = load(plan)
        streams = load_eval_streams(plan.cfg, tokenizer)
        samples, steps = load_finetune_data(plan, tokenizer)
        metrics = describe_run(plan, steps, model)
        record = EvalRecord(plan.run_dir if main else None, plan.cfg.eval.seq_len, bool(plan.cfg.resume))
        earlier = earlier_metrics(plan.run_dir) if plan.cfg.resume else {}  # measured before the kill
        if plan.cfg.eval.dense and main:
            metrics["dense"] = earlier.get("dense") or evaluate(
                model, tokenizer, plan.cfg, streams, "dense", record
            )
        if plan.cfg.model.quantize:  # after the dense evaluation: the base as loaded is the reference
            quantize_base(model, plan.cfg.model.quantize)
        with PeakMemory() as memory:
            peft_model = add_lora(model, plan.cfg.lora)
            distributed.share_trainable(peft_model, accelerator)
            pruner = make_pruner(peft_model, plan, steps)
            device = next(p for p in peft_model.parameters() if p.requires_grad).device
            calibration = CalibrationData(
                samples,
                tokenizer.pad_token_id,
                plan.cfg.trainer.micro_batch_size,
                device,
                statistics_samples(plan, tokenizer),
            )
            pruner.prepare(calibration)
            distributed.sync_decision(pruner, accelerator, weights=True)
            one_shot = pruner.prunes_at_start and steps > 0 and plan.cfg.eval.before_recovery
            if one_shot and main:  # the one-shot result before LoRA recovery
                metrics["pruned_before_recovery"] = earlier.get("pruned_before_recovery") or evaluate_ppl(
                    peft_model, plan.cfg, streams, "one-shot", record
                )
            metrics["train"] = finetune(
                peft_model,
                samples,
                plan.cfg.trainer,
                steps,
                tokenizer.pad_token_id,
                distributed.hooks(pruner, steps, accelerator),
                logger.log_step,
                Checkpointer(plan.run_dir, plan.cfg.trainer.save_every, bool(plan.cfg.resume), metrics),
                accelerator,
            )
            result = pruner.finalize()
            if accelerator is not None:
                metrics["distributed"] = distributed.final_agreement(peft_model, pruner, accelerator)
        if not main:
            distributed.discard_own_hydra_dir(plan.run_dir)
            return {"objective": None}
        model = result.apply(peft_model)
        metrics.update(
            measure_pruned(model, tokenizer, plan, result, streams, metrics, pruner.prunes_at_start, record)
        )
        metrics["eval"]["windows"] = coverage(record)
        metrics["memory"] = memory.as_dict()
        finish(model, tokenizer, plan, result, metrics, logger, started)
    finally:
        logger.close()
    return metrics


# ------------------------------------------------------------------------------------------- steps
def start_run_dir(plan: RunPlan) -> Logger:
    """Create the run directory, write the resolved config, open the loggers."""
    cfg, run_dir = plan.cfg, plan.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.resume and not cfg.overwrite:  # the step log up to the checkpoint stays
        step = prepare_resume(run_dir)
        log.info("resume=true: %s", f"continuing after step {step}" if step else "no checkpoint, starting")
    else:
        start_fresh(run_dir)
    config_dict = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(config_dict))
    wandb_kwargs = asdict(cfg.logger.wandb)
    wandb_kwargs["name"] = wandb_kwargs["name"] or run_dir.name
    logger = build_logger(cfg.logger.name, run_dir, cfg.logger.console_every, wandb_kwargs)
    logger.log_config(config_dict)
    return logger


def load(plan: RunPlan):
    """The model and tokenizer, seeded."""
    m, t = plan.cfg.model, plan.cfg.trainer
    torch.manual_seed(t.seed)
    model, tokenizer = load_model(
        m.source,
        model_path(m),
        tiny=m.tiny,
        dtype=t.dtype,
        device=t.device,
        device_map=t.device_map,
        revision=m.revision,
        attn_implementation=m.attn_implementation,
    )
    g = plan.geometry
    log.info(
        "model %s: %d layers, %d heads / %d KV heads, MLP %d; pruning layers %s",
        m.name,
        g.num_layers,
        g.num_heads,
        g.num_kv_heads,
        g.intermediate_size,
        plan.prunable,
    )
    return model, tokenizer


def load_finetune_data(plan: RunPlan, tokenizer) -> tuple[list[dict], int]:
    """The tokenized fine-tune samples and the number of optimizer steps."""
    d, t = plan.cfg.data, plan.cfg.trainer
    samples = data.build_finetune_dataset(d, tokenizer, mirror=d.mirror)
    steps = t.steps if t.steps is not None else steps_for(t.epochs, len(samples), t.batch_size)
    return samples, steps if plan.cfg.method.finetune else 0


def statistics_samples(plan: RunPlan, tokenizer) -> list[dict] | None:
    """Random windows of plain text for a calibrating criterion when ``method.calibration.draw=windows``
    (``None``: its statistics use the first fine-tune samples)."""
    c, d = plan.cfg.method.calibration, plan.cfg.data
    criterion = CRITERIA[plan.cfg.method.criterion]
    if c.draw != "windows" or not criterion.needs.calibration:
        return None
    count = c.samples or criterion.calibration_samples
    seq_len = c.seq_len or criterion.calibration_seq_len or d.cutoff_len
    return data.calibration_windows(d, tokenizer, count, seq_len, c.text)


def describe_run(plan: RunPlan, steps: int, model) -> dict[str, Any]:
    """The run's identity and the evaluation protocol (the head of metrics.json)."""
    cfg = plan.cfg
    return {
        "run": {
            "dir": str(plan.run_dir),
            "model": cfg.model.name,
            "weights": weights_kind(cfg.model),
            "quantize": cfg.model.quantize,
            "method": cfg.method.name,
            "criterion": cfg.method.criterion,
            "ratio": cfg.prune.ratio,
            "target": cfg.prune.target,
            "group_ratio": plan.pruner.ratio if plan.pruner.pattern is None else None,
            "param_budget": plan.pruner.param_budget,
            "unit_counts": plan.pruner.unit_counts,
            "pattern": plan.pruner.pattern,
            "attention_unit": cfg.prune.attention_unit,
            "schedule": plan.schedule,
            "steps": steps,
            "data": cfg.data.name,
            "seed": cfg.trainer.seed,
            "selection": plan.pruner.selection if plan.pruner.pattern is None else None,
            "reconstruct": plan.pruner.reconstruct,
        },
        "eval": {"seq_len": cfg.eval.seq_len, "max_windows": cfg.eval.max_windows, "sets": cfg.eval.ppl_sets},
        "params": {"total_before": count_parameters(model), "decoder_before": decoder_parameters(model)},
        "provenance": provenance(cli_command(), next(model.parameters()).device),
    }


def make_pruner(peft_model, plan: RunPlan, steps: int) -> Pruner:
    """The method's criterion in the pruner its settings call for, on the schedule in force."""
    p = plan.cfg.prune
    criterion = build_criterion(plan.cfg.method.criterion, plan.cfg.method.options)
    schedule = build_schedule(plan.schedule, plan.goal, max(steps, 1), p.warmup, p.cooldown, plan.at_step)
    return build_pruner(peft_model, plan.geometry, criterion, plan.pruner, schedule)


def evaluate(model, tokenizer, cfg: LoraPruneConfig, streams, tag: str, record: EvalRecord) -> dict:
    """Perplexity (the dense model's from the cache when it was measured before), and zero-shot accuracy
    when enabled."""
    out = evaluate_ppl(model, cfg, streams, tag, record, cached=tag == "dense" and cfg.eval.dense_cache)
    if cfg.eval.zeroshot.enabled:
        from loraprune.evaluation.zeroshot import evaluate_zeroshot

        out["zeroshot"] = evaluate_zeroshot(model, tokenizer, cfg.eval.zeroshot)
    return out


def measure_pruned(
    model, tokenizer, plan: RunPlan, result: PruneResult, streams, metrics, pruned_at_start: bool, record
) -> dict[str, Any]:
    """Evaluation and accounting of the pruned model."""
    out: dict[str, Any] = {"pruned": evaluate(model, tokenizer, plan.cfg, streams, "pruned", record)}
    no_recovery = not metrics["run"]["steps"]
    if pruned_at_start and no_recovery and "pruned_before_recovery" not in metrics:  # the same model
        out["pruned_before_recovery"] = {k: dict(out["pruned"][k]) for k in ("ppl", "ppl_ci")}
        record.add("pruned_before_recovery", record.stages["pruned"])
    if result.nm_masks is not None:
        out["semistructured"] = sparsity_report(model, result.nm_masks, result.pattern)
    before = metrics["params"]
    after, decoder_after = count_parameters(model), decoder_parameters(model)
    out["params"] = {
        **before,
        "total_after": after,
        "decoder_after": decoder_after,
        "removed_fraction_total": 1 - after / before["total_before"],
        "removed_fraction_decoder": 1 - decoder_after / before["decoder_before"],
    }
    summary = result.plan.summary()
    out["achieved_ratio"] = achieved_ratio(summary, result.plan, plan.prunable)
    out["kept_per_layer"] = summary
    if result.plan.removed_layers:  # a depth cut: which layers went, and every prunable layer's score
        out["depth"] = {
            "removed_layers": list(result.plan.removed_layers),
            "kept_layers": result.plan.kept_layers,
            "layer_scores": {str(i): s for i, s in sorted((result.layer_scores or {}).items())},
        }
    return out


def finish(model, tokenizer, plan: RunPlan, result: PruneResult, metrics, logger: Logger, started) -> None:
    """Save the model, time the 2:4 kernels, write metrics.json, log the results."""
    cfg, run_dir = plan.cfg, plan.run_dir
    if cfg.save_model:
        config = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
        model_dir = run_dir / "model"  # with its model card: results, the command, the resolved config
        save_pruned(
            model, tokenizer, result.plan, model_dir, metrics=metrics, config=config, command=cli_command()
        )
        metrics["model_dir"] = str(run_dir / "model")
    if result.nm_masks is not None and cfg.eval.sparse_speed:  # last: converts the weights in place
        dtype = "bfloat16" if next(model.parameters()).dtype == torch.bfloat16 else "float16"
        speed = sparse_speed.measure(model, result.nm_masks, cfg.eval.batch_size, cfg.eval.seq_len, dtype)
        metrics["semistructured"]["speed"] = speed
        log.info("2:4 sparse kernels: %s", speed.get("skipped") or f"{speed['model_speedup']:.2f}x forward")
    metrics["wall_time_s"] = round(time.time() - started, 2)
    metrics["objective"] = next(iter(metrics["pruned"]["ppl"].values()), None)
    write_json(run_dir / "metrics.json", metrics)
    remove_checkpoints(run_dir)
    logger.log_metrics(metrics)
    logger.log_table(
        "kept_per_layer",
        ["layer", "q_heads", "kv_heads", "channels"],
        [[int(i), v["q_heads"], v["kv_heads"], v["channels"]] for i, v in metrics["kept_per_layer"].items()],
    )
    params = metrics["params"]
    log.info(
        "params %d -> %d (-%.2f%% total, -%.2f%% decoder) | %s",
        params["total_before"],
        params["total_after"],
        100 * params["removed_fraction_total"],
        100 * params["removed_fraction_decoder"],
        run_dir,
    )


def achieved_ratio(summary: dict, plan: PruningPlan, prunable: list[int]) -> dict[str, float]:
    """Removed fraction of query heads, KV heads and channels over the prunable layers."""
    if not prunable:
        return {"q_heads": 0.0, "kv_heads": 0.0, "channels": 0.0}
    geo, n = plan.geometry, len(prunable)
    kept = {k: sum(summary[str(i)][k] for i in prunable) for k in ("q_heads", "kv_heads", "channels")}
    return {
        "q_heads": 1 - kept["q_heads"] / (n * geo.num_heads),
        "kv_heads": 1 - kept["kv_heads"] / (n * geo.num_kv_heads),
        "channels": 1 - kept["channels"] / (n * geo.intermediate_size),
    }
