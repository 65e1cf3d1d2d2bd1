"""Cheap checks of a run config, done before any model or dataset is loaded."""

from __future__ import annotations

from loraprune import data
from loraprune.config import ALL_PROJECTIONS, LoraPruneConfig
from loraprune.criteria import CRITERIA
from loraprune.models import model_location, resolve_device, resolve_dtype
from loraprune.structure import Geometry, default_excluded_layers

SCHEDULES = ("cubic", "linear", "one_shot")


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
    _check(p.attention_unit in ("kv_group", "query_head"),
           f"prune.attention_unit must be kv_group or query_head, got {p.attention_unit!r}")
    _check(p.schedule in SCHEDULES, f"prune.schedule must be one of {', '.join(SCHEDULES)}, got {p.schedule!r}")
    _check(p.selection in ("local", "global"), f"prune.selection must be local or global, got {p.selection!r}")
    _check(p.prune_freq >= 1, f"prune.prune_freq must be >= 1, got {p.prune_freq}")
    _check(p.warmup >= 0 and p.cooldown >= 0 and p.warmup + p.cooldown < 1,
           f"prune.warmup + prune.cooldown must be in [0, 1), got {p.warmup} + {p.cooldown}")
    _check(p.prune_attention or p.prune_mlp or p.ratio == 0, "prune.prune_attention and prune.prune_mlp are both off")
    _check(m.criterion in CRITERIA, f"unknown method criterion {m.criterion!r}; known: {', '.join(sorted(CRITERIA))}")
    _check(m.kind in ("iterative", "one_shot"), f"method.kind must be iterative or one_shot, got {m.kind!r}")
    _check(0.0 <= m.ema_beta < 1.0, f"method.ema_beta must be in [0, 1), got {m.ema_beta}")
    _check(m.ema_init in ("zero", "first"), f"method.ema_init must be zero or first, got {m.ema_init!r}")
    unknown = set(cfg.lora.target_modules) - set(ALL_PROJECTIONS)
    _check(not unknown, f"unknown lora.target_modules {sorted(unknown)}; choose from {ALL_PROJECTIONS}")
    _check(cfg.lora.r >= 1, f"lora.r must be >= 1, got {cfg.lora.r}")
    _check(t.steps is not None or t.epochs is not None, "set trainer.steps or trainer.epochs")
    _check(t.steps is None or t.steps >= 0, f"trainer.steps must be >= 0, got {t.steps}")
    _check(t.micro_batch_size >= 1 and t.batch_size % t.micro_batch_size == 0,
           f"trainer.batch_size ({t.batch_size}) must be a multiple of trainer.micro_batch_size "
           f"({t.micro_batch_size})")
    _check(t.lr > 0, f"trainer.lr must be > 0, got {t.lr}")
    _check(cfg.data.cutoff_len >= 2, f"data.cutoff_len must be >= 2, got {cfg.data.cutoff_len}")
    _check(cfg.data.nsamples is None or cfg.data.nsamples >= 1, f"data.nsamples must be >= 1, got {cfg.data.nsamples}")
    _check(cfg.eval.seq_len >= 2, f"eval.seq_len must be >= 2, got {cfg.eval.seq_len}")
    _check(cfg.logger.name in ("jsonl", "wandb"), f"unknown logger {cfg.logger.name!r}; expected jsonl or wandb")
    try:
        device = resolve_device(t.device)
        resolve_dtype(t.dtype, device)
        model_location(cfg.model.source, cfg.model.path)
        data.validate_text_source(cfg.data.name)
        for name in cfg.eval.ppl_sets:
            data.validate_text_source(name)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e


def excluded_layers(cfg: LoraPruneConfig, geo: Geometry) -> list[int]:
    """The layers left unpruned, checked against the model's depth."""
    p = cfg.prune
    if p.exclude_layers is None:
        return default_excluded_layers(geo.num_layers, p.exclude_first_fraction, p.exclude_last)
    bad = [i for i in p.exclude_layers if not 0 <= i < geo.num_layers]
    _check(not bad, f"prune.exclude_layers {bad} out of range for a model of {geo.num_layers} layers")
    return sorted(set(p.exclude_layers))
