"""Cheap checks of a run config, done before any model or dataset is loaded."""

from __future__ import annotations

from loraprune import data
from loraprune.core.structure import Geometry, default_excluded_layers
from loraprune.criteria import CRITERIA, criterion_options
from loraprune.run.calibration import has_own_calibration
from loraprune.run.config import ALL_PROJECTIONS, LoraPruneConfig
from loraprune.run.models import model_location, resolve_device, resolve_dtype

SCHEDULES = ("cubic", "linear", "one_shot")
# method.options keys read by the pipeline itself (criteria add their own constructor arguments)
PIPELINE_OPTIONS = ("calibration_batches", "calibration_samples", "calibration_seq_len", "layer_range")


class ConfigError(ValueError):
    """A run config that cannot work; raised before heavy work starts."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: LoraPruneConfig) -> None:
    """Raise :class:`ConfigError` with a one-line message for anything that cannot work."""
    p, t, m = cfg.prune, cfg.trainer, cfg.method
    _check(0.0 <= p.ratio < 1.0, f"prune.ratio must be in [0, 1), got {p.ratio}")
    _check(p.target in ("groups", "params"), f"prune.target must be groups or params, got {p.target!r}")
    _check(
        p.attention_unit in ("kv_group", "query_head"),
        f"prune.attention_unit must be kv_group or query_head, got {p.attention_unit!r}",
    )
    _check(
        p.schedule in SCHEDULES, f"prune.schedule must be one of {', '.join(SCHEDULES)}, got {p.schedule!r}"
    )
    _check(
        p.selection in ("local", "global"), f"prune.selection must be local or global, got {p.selection!r}"
    )
    _check(p.prune_freq >= 1, f"prune.prune_freq must be >= 1, got {p.prune_freq}")
    _check(
        p.warmup >= 0 and p.cooldown >= 0 and p.warmup + p.cooldown < 1,
        f"prune.warmup + prune.cooldown must be in [0, 1), got {p.warmup} + {p.cooldown}",
    )
    _check(
        p.prune_attention or p.prune_mlp or p.ratio == 0,
        "prune.prune_attention and prune.prune_mlp are both off",
    )
    _check(
        m.criterion in CRITERIA,
        f"unknown method criterion {m.criterion!r}; known: {', '.join(sorted(CRITERIA))}",
    )
    _check(m.kind in ("iterative", "one_shot"), f"method.kind must be iterative or one_shot, got {m.kind!r}")
    if m.criterion in CRITERIA:
        known = set(PIPELINE_OPTIONS) | criterion_options(m.criterion)
        unknown_opts = sorted(set(m.options) - known)
        _check(
            not unknown_opts,
            f"unknown method.options {unknown_opts} for criterion {m.criterion!r}; "
            f"known: {', '.join(sorted(known))}",
        )
        schedule, at_step = effective_schedule(cfg)
        _check(
            not has_own_calibration(CRITERIA[m.criterion]) or (schedule == "one_shot" and at_step == 0),
            f"criterion {m.criterion!r} prunes one-shot at step 0 only: set method.kind=one_shot",
        )
    if p.pattern is not None:
        from loraprune.core.nm import parse_pattern

        try:
            parse_pattern(p.pattern)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        schedule, at_step = effective_schedule(cfg)
        _check(
            schedule != "one_shot" or at_step == 0,
            f"prune.pattern {p.pattern!r} one-shot prunes at step 0 only, got prune.at_step={at_step}",
        )
    _check(
        p.pattern is not None or not getattr(CRITERIA.get(m.criterion), "semistructured_only", False),
        f"criterion {m.criterion!r} prunes semi-structured patterns only: set prune.pattern (e.g. 2:4)",
    )
    _check(
        m.options.get("layer_range") is None or p.exclude_layers is None,
        "set either prune.exclude_layers or method.options.layer_range, not both",
    )
    _check(0.0 <= m.ema_beta < 1.0, f"method.ema_beta must be in [0, 1), got {m.ema_beta}")
    _check(m.ema_init in ("zero", "first"), f"method.ema_init must be zero or first, got {m.ema_init!r}")
    unknown = set(cfg.lora.target_modules) - set(ALL_PROJECTIONS)
    _check(not unknown, f"unknown lora.target_modules {sorted(unknown)}; choose from {ALL_PROJECTIONS}")
    _check(cfg.lora.r >= 1, f"lora.r must be >= 1, got {cfg.lora.r}")
    _check(t.steps is not None or t.epochs is not None, "set trainer.steps or trainer.epochs")
    _check(t.steps is None or t.steps >= 0, f"trainer.steps must be >= 0, got {t.steps}")
    _check(
        t.micro_batch_size >= 1 and t.batch_size % t.micro_batch_size == 0,
        f"trainer.batch_size ({t.batch_size}) must be a multiple of trainer.micro_batch_size "
        f"({t.micro_batch_size})",
    )
    _check(t.lr > 0, f"trainer.lr must be > 0, got {t.lr}")
    _check(cfg.data.cutoff_len >= 2, f"data.cutoff_len must be >= 2, got {cfg.data.cutoff_len}")
    _check(
        cfg.data.nsamples is None or cfg.data.nsamples >= 1,
        f"data.nsamples must be >= 1, got {cfg.data.nsamples}",
    )
    _check(cfg.eval.seq_len >= 2, f"eval.seq_len must be >= 2, got {cfg.eval.seq_len}")
    _check(
        cfg.logger.name in ("jsonl", "wandb"), f"unknown logger {cfg.logger.name!r}; expected jsonl or wandb"
    )
    try:
        device = resolve_device(t.device)
        resolve_dtype(t.dtype, device)
        model_location(cfg.model.source, cfg.model.path)
        data.validate_text_source(cfg.data.name)
        for name in cfg.eval.ppl_sets:
            data.validate_text_source(name)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
    # The embedded corpora have disjoint fine-tune/test sides; a file has no split to protect it.
    overlap = [
        n for n in cfg.eval.ppl_sets if n == cfg.data.name and n not in ("wiki_embedded", "news_embedded")
    ]
    _check(not overlap, f"eval.ppl_sets {overlap} is the fine-tune data itself: evaluate on held-out text")


def effective_schedule(cfg: LoraPruneConfig) -> tuple[str, int]:
    """``(schedule, at_step)`` in force: a ``method.kind=one_shot`` method prunes one-shot at step 0
    (then LoRA fine-tuning is the recovery), groups or an N:M ``prune.pattern`` alike; otherwise
    ``prune.schedule`` / ``prune.at_step`` (for a pattern: the fraction of rows switched to it)."""
    if cfg.method.kind == "one_shot":
        return "one_shot", 0
    return cfg.prune.schedule, cfg.prune.at_step


def excluded_layers(cfg: LoraPruneConfig, geo: Geometry) -> list[int]:
    """The layers left unpruned, checked against the model's depth.

    ``method.options.layer_range: [start, end]`` prunes only layers ``start <= i < end`` (Python slice
    bounds, negative counts from the end; LLM-Pruner's ``block_*_layer_start/end``), else
    ``prune.exclude_layers``, else the first ``exclude_first_fraction`` and the last ``exclude_last``.
    """
    p = cfg.prune
    layer_range = cfg.method.options.get("layer_range")
    if layer_range is not None:
        _check(len(layer_range) == 2, f"method.options.layer_range must be [start, end], got {layer_range}")
        kept = range(geo.num_layers)[slice(int(layer_range[0]), int(layer_range[1]))]
        _check(
            len(kept) > 0,
            f"method.options.layer_range {list(layer_range)} selects no layer of {geo.num_layers}",
        )
        return [i for i in range(geo.num_layers) if i not in kept]
    if p.exclude_layers is None:
        return default_excluded_layers(geo.num_layers, p.exclude_first_fraction, p.exclude_last)
    bad = [i for i in p.exclude_layers if not 0 <= i < geo.num_layers]
    _check(not bad, f"prune.exclude_layers {bad} out of range for a model of {geo.num_layers} layers")
    return sorted(set(p.exclude_layers))
