"""From a run config to a typed :class:`RunPlan`: every check and every derived value, once, before any
weight is loaded or anything is written.

:func:`validate` checks the config alone (cheap); :func:`resolve` also reads the model's config (no
weights) for its geometry, the excluded layers, the group ratio of ``prune.target=params`` and the
maximum sequence length, and checks the run directory.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import OmegaConf

from loraprune import data
from loraprune.config.schema import LoraPruneConfig
from loraprune.core.budget import budget_capacity, counts_for_param_fraction, ratio_for_param_fraction
from loraprune.core.depth import layers_for_target
from loraprune.core.importance import NORMALIZE_ORDERS
from loraprune.core.structure import (
    ALL_PROJECTIONS,
    Geometry,
    decoder_layers,
    default_excluded_layers,
    projection,
    removable_counts,
)
from loraprune.core.surgery import count_parameters
from loraprune.criteria import CRITERIA, FlapOptions, build_options, criterion_options
from loraprune.data.finetune import holds_out_val
from loraprune.models.loading import load_config, model_location, model_path, resolve_device, resolve_dtype
from loraprune.pruners import SELECTIONS, PrunerSettings

SCHEDULES = ("cubic", "linear", "one_shot")


class ConfigError(ValueError):
    """A run config that cannot work; raised before heavy work starts."""


class MachineError(ConfigError):
    """The machine cannot run the config (e.g. CUDA asked for, none here): every job of a sweep would fail
    the same way, so a sweep stops at the first instead of recording each."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class RunPlan:
    """Everything a run derives from its config, worked out once (see :func:`resolve`)."""

    cfg: LoraPruneConfig
    geometry: Geometry
    excluded: list[int]
    schedule: str  # in force: a one-shot method prunes one-shot at step 0
    at_step: int
    pruner: PrunerSettings  # ratio: the group ratio (that of prune.target=params solved), or the pattern
    params_total: int
    run_dir: Path

    @property
    def prunable(self) -> list[int]:
        return [i for i in range(self.geometry.num_layers) if i not in self.excluded]

    @property
    def one_shot(self) -> bool:
        """Pruned before the first optimizer step (then fine-tuning is LoRA recovery)."""
        return self.schedule == "one_shot" and self.at_step == 0

    @property
    def goal(self) -> float:
        """The schedule's final value: the group ratio, or 1.0 (every row N:M)."""
        return 1.0 if self.pruner.pattern is not None else self.pruner.ratio


def effective_schedule(cfg: LoraPruneConfig) -> tuple[str, int]:
    """``(schedule, at_step)`` in force: a ``method.kind=one_shot`` method prunes one-shot at step 0
    (then LoRA fine-tuning is the recovery), groups or an N:M ``prune.pattern`` alike; otherwise
    ``prune.schedule`` / ``prune.at_step`` (for a pattern: the fraction of rows switched to it)."""
    if cfg.method.kind == "one_shot":
        return "one_shot", 0
    return cfg.prune.schedule, cfg.prune.at_step


# ------------------------------------------------------------------------------------------ checks
def validate(cfg: LoraPruneConfig) -> None:
    """Raise :class:`ConfigError` with a one-line message for anything that cannot work."""
    if is_depth(cfg):
        _validate_depth(cfg)
    _validate_prune(cfg)
    _validate_method(cfg)
    _validate_training(cfg)
    _validate_counts(cfg)
    _validate_sources(cfg)
    _validate_quantize(cfg)
    _validate_reconstruct(cfg)


def _validate_quantize(cfg: LoraPruneConfig) -> None:
    from loraprune.models.quantize import check_backend

    q = cfg.model.quantize
    if q is None:
        return
    try:
        check_backend(q)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    _check(
        not CRITERIA[cfg.method.criterion].needs.weight_grads,
        f"model.quantize={q}: criterion {cfg.method.criterion!r} needs ∂L/∂W of the frozen base, which a "
        "quantized base has not; use a criterion without it (e.g. loraprune)",
    )
    _check(cfg.prune.pattern is None, f"model.quantize={q} is for structured pruning, not prune.pattern")


def _validate_prune(cfg: LoraPruneConfig) -> None:
    p = cfg.prune
    if p.pattern is not None:
        _validate_pattern(cfg)
    else:
        _check(p.ratio is not None, "prune.ratio is required (or prune=nm for semi-structured N:M)")
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
        p.selection is None or p.selection in SELECTIONS,
        f"prune.selection must be {' / '.join(SELECTIONS)} (or null: the method's), got {p.selection!r}",
    )
    _check(
        cfg.method.selection in SELECTIONS,
        f"method.selection must be {' / '.join(SELECTIONS)}, got {cfg.method.selection!r}",
    )
    _check(p.prune_freq >= 1, f"prune.prune_freq must be >= 1, got {p.prune_freq}")
    _check(
        p.warmup >= 0 and p.cooldown >= 0 and p.warmup + p.cooldown < 1,
        f"prune.warmup + prune.cooldown must be in [0, 1), got {p.warmup} + {p.cooldown}",
    )
    _check(
        p.prune_attention or p.prune_mlp or not p.ratio,
        "prune.prune_attention and prune.prune_mlp are both off",
    )
    _check(
        p.layer_range is None or p.exclude_layers is None,
        "set either prune.exclude_layers or prune.layer_range, not both",
    )
    _check(
        p.round_to is None or (isinstance(p.round_to, int) and p.round_to >= 1),
        f"prune.round_to must be a positive integer (32: q4_0/q8_0 blocks, 256: K-quants) or null, "
        f"got {p.round_to!r}",
    )
    _check(
        p.round_to is None or (p.pattern is None and not is_depth(cfg)),
        "prune.round_to rounds kept heads and channels; N:M patterns and depth cuts keep every width",
    )


def is_depth(cfg: LoraPruneConfig) -> bool:
    """Whether the method removes whole decoder layers (a layer criterion such as ``shortgpt``)."""
    criterion = CRITERIA.get(cfg.method.criterion)
    return criterion is not None and criterion.scores_layers


def _validate_depth(cfg: LoraPruneConfig) -> None:
    """A depth cut removes whole layers: the settings of width and N:M pruning must be left alone."""
    p, name = cfg.prune, f"method={cfg.method.name} (criterion {cfg.method.criterion!r})"
    _check(
        p.pattern is None,
        f"prune.pattern {p.pattern!r}: {name} removes whole decoder layers, not N:M patterns; "
        "leave prune.pattern null (not prune=nm)",
    )
    meaningless = {
        f"prune.selection={p.selection}": p.selection not in (None, "global"),
        f"prune.attention_unit={p.attention_unit}": p.attention_unit != "kv_group",
        "prune.prune_attention/prune_mlp=false": not (p.prune_attention and p.prune_mlp),
    }
    bad = [k for k, set_ in meaningless.items() if set_]
    _check(
        not bad,
        f"{', '.join(bad)}: {name} removes whole decoder layers, the lowest-scoring of the prunable ones "
        "(prune.ratio: of the parameters with prune.target=params, of the prunable layers with "
        "prune.target=groups); leave these at their defaults",
    )
    _check(
        cfg.trainer.distill.weight == 0,
        f"trainer.distill: {name} removes its layers before recovery, so there is no dense teacher",
    )


def _validate_pattern(cfg: LoraPruneConfig) -> None:
    """N:M fixes the sparsity itself: the group settings must be left alone."""
    from loraprune.core.nm import parse_pattern

    p = cfg.prune
    try:
        parse_pattern(p.pattern)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    meaningless = {
        "prune.ratio": p.ratio is not None,
        "prune.target": p.target != "groups",
        "prune.attention_unit": p.attention_unit != "kv_group",
        "prune.selection": p.selection not in (None, "local"),
        "prune.prune_attention/prune_mlp": not (p.prune_attention and p.prune_mlp),
    }
    bad = [k for k, set_ in meaningless.items() if set_]
    _check(
        not bad,
        f"prune.pattern {p.pattern!r} fixes the sparsity itself; {', '.join(bad)} do not apply to it "
        "(use prune=nm, which leaves them unset, e.g. prune.ratio=null)",
    )
    schedule, at_step = effective_schedule(cfg)
    _check(
        schedule != "one_shot" or at_step == 0,
        f"prune.pattern {p.pattern!r} one-shot prunes at step 0 only, got prune.at_step={at_step}",
    )


def _validate_method(cfg: LoraPruneConfig) -> None:
    m = cfg.method
    _check(
        m.criterion in CRITERIA,
        f"unknown method criterion {m.criterion!r}; known: {', '.join(sorted(CRITERIA))}",
    )
    _check(m.kind in ("iterative", "one_shot"), f"method.kind must be iterative or one_shot, got {m.kind!r}")
    try:
        options = build_options(m.criterion, m.options)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from e
    _check(
        getattr(options, "accumulate", "mean") != "fisher" or cfg.prune.pattern is None,
        "method.options.accumulate=fisher scores channels: structured pruning only (not prune.pattern)",
    )
    _check(
        getattr(options, "activations", 0.0) == 0 or cfg.prune.pattern is None,
        "method.options.activations scores channels: structured pruning only (not prune.pattern)",
    )
    standardized = isinstance(options, FlapOptions) and options.standardize
    _check(
        not (standardized and effective_selection(cfg) == "budget"),
        "method.options.standardize: FLAP's standardised scores have no per-parameter meaning (they can be "
        "negative); use prune.selection=adaptive (FLAP's), global or local, or "
        "method.options.standardize=false",
    )
    criterion = CRITERIA[m.criterion]
    schedule, at_step = effective_schedule(cfg)
    _check(
        not criterion.needs.calibration or (schedule == "one_shot" and at_step == 0),
        f"criterion {m.criterion!r} prunes one-shot at step 0 only: set method.kind=one_shot",
    )
    _check(
        cfg.prune.pattern is None or not criterion.structured_only,
        f"criterion {m.criterion!r} scores whole groups: structured pruning only (not prune.pattern)",
    )
    _check(
        cfg.prune.pattern is not None or not criterion.semistructured_only,
        f"criterion {m.criterion!r} prunes semi-structured patterns only: use prune=nm (prune.pattern 2:4)",
    )
    c = m.calibration
    _check(c.samples is None or c.samples >= 1, f"method.calibration.samples must be >= 1, got {c.samples}")
    _check(c.seq_len is None or c.seq_len >= 2, f"method.calibration.seq_len must be >= 2, got {c.seq_len}")
    _check(c.batches >= 0, f"method.calibration.batches must be >= 0, got {c.batches}")
    _check(
        c.draw in ("first", "windows"), f"method.calibration.draw must be first or windows, got {c.draw!r}"
    )
    if c.text is not None:
        try:
            data.check_plain_text_source(c.text)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    _check(0.0 <= m.ema_beta < 1.0, f"method.ema_beta must be in [0, 1), got {m.ema_beta}")
    _check(m.ema_init in ("zero", "first"), f"method.ema_init must be zero or first, got {m.ema_init!r}")
    _check(
        m.normalize_order in NORMALIZE_ORDERS,
        f"method.normalize_order must be channel or unit, got {m.normalize_order!r}",
    )


def _validate_training(cfg: LoraPruneConfig) -> None:
    t = cfg.trainer
    unknown = set(cfg.lora.target_modules) - set(ALL_PROJECTIONS)
    _check(not unknown, f"unknown lora.target_modules {sorted(unknown)}; choose from {list(ALL_PROJECTIONS)}")
    _check(cfg.lora.r >= 1, f"lora.r must be >= 1, got {cfg.lora.r}")
    _check(t.steps is not None or t.epochs is not None, "set trainer.steps or trainer.epochs")
    _check(t.steps is None or t.steps >= 0, f"trainer.steps must be >= 0, got {t.steps}")
    _check(
        t.micro_batch_size >= 1 and t.batch_size % t.micro_batch_size == 0,
        f"trainer.batch_size ({t.batch_size}) must be a multiple of trainer.micro_batch_size "
        f"({t.micro_batch_size})",
    )
    _check(t.lr > 0, f"trainer.lr must be > 0, got {t.lr}")
    _check(t.save_every >= 0, f"trainer.save_every must be >= 0 (0: never), got {t.save_every}")
    _check(t.distill.weight >= 0, f"trainer.distill.weight must be >= 0, got {t.distill.weight}")
    _check(t.distill.temperature > 0, f"trainer.distill.temperature must be > 0, got {t.distill.temperature}")
    _check(
        t.distill.weight == 0 or cfg.prune.pattern is None,
        "trainer.distill: N:M pruning zeroes the pretrained weights, so there is no dense teacher",
    )
    _check(cfg.data.cutoff_len >= 2, f"data.cutoff_len must be >= 2, got {cfg.data.cutoff_len}")
    _check(
        cfg.data.nsamples is None or cfg.data.nsamples >= 1,
        f"data.nsamples must be >= 1, got {cfg.data.nsamples}",
    )
    _check(cfg.eval.seq_len >= 2, f"eval.seq_len must be >= 2, got {cfg.eval.seq_len}")
    _check(
        cfg.eval.max_windows is None or cfg.eval.max_windows >= 1,
        f"eval.max_windows must be >= 1 or null (every window), got {cfg.eval.max_windows}",
    )
    _check(cfg.eval.batch_size >= 1, f"eval.batch_size must be >= 1, got {cfg.eval.batch_size}")
    _check(
        cfg.logger.name in ("jsonl", "wandb"), f"unknown logger {cfg.logger.name!r}; expected jsonl or wandb"
    )


def _validate_counts(cfg: LoraPruneConfig) -> None:
    """Counts, sizes and rates a newcomer can get wrong that no other check covers (zero or negative)."""
    lora, t, p, zs = cfg.lora, cfg.trainer, cfg.prune, cfg.eval.zeroshot
    _check(lora.alpha > 0, f"lora.alpha must be > 0 (LoRA's update is scaled by alpha / r), got {lora.alpha}")
    _check(0 <= lora.dropout < 1, f"lora.dropout must be in [0, 1), got {lora.dropout}")
    _check(bool(lora.target_modules), f"lora.target_modules is empty; choose from {list(ALL_PROJECTIONS)}")
    _check(t.batch_size >= 1, f"trainer.batch_size must be >= 1, got {t.batch_size}")
    _check(t.epochs is None or t.epochs > 0, f"trainer.epochs must be > 0 or null, got {t.epochs}")
    _check(t.warmup_steps >= 0, f"trainer.warmup_steps must be >= 0, got {t.warmup_steps}")
    _check(t.max_grad_norm > 0, f"trainer.max_grad_norm must be > 0, got {t.max_grad_norm}")
    _check(t.weight_decay >= 0, f"trainer.weight_decay must be >= 0, got {t.weight_decay}")
    if t.device != "auto":
        try:
            torch.device(t.device)
        except RuntimeError:
            message = f"unknown trainer.device {t.device!r}; expected auto, cpu, cuda or cuda:N"
            raise ConfigError(message) from None
    _check(p.at_step >= 0, f"prune.at_step must be >= 0, got {p.at_step}")
    _check(
        0 <= p.exclude_first_fraction < 1,
        f"prune.exclude_first_fraction must be in [0, 1), got {p.exclude_first_fraction}",
    )
    _check(p.exclude_last >= 0, f"prune.exclude_last must be >= 0, got {p.exclude_last}")
    every = cfg.logger.console_every
    _check(every >= 1, f"logger.console_every must be >= 1, got {every}")
    if zs.enabled:
        _check(zs.limit is None or zs.limit > 0, f"eval.zeroshot.limit must be > 0 or null, got {zs.limit}")
        _check(zs.batch_size >= 1, f"eval.zeroshot.batch_size must be >= 1, got {zs.batch_size}")
        _check(zs.num_fewshot >= 0, f"eval.zeroshot.num_fewshot must be >= 0, got {zs.num_fewshot}")
        _check(bool(zs.tasks), "eval.zeroshot.tasks is empty (or set eval.zeroshot.enabled=false)")
        if (
            zs.source == "offline"
        ):  # hub task names are lm-eval's to check (its registry takes seconds to index)
            from loraprune.evaluation.offline_tasks import OFFLINE_TASKS

            unknown = [str(t) for t in zs.tasks if t not in OFFLINE_TASKS]
            _check(
                not unknown,
                f"no offline copy of eval.zeroshot.tasks {unknown}; offline: {sorted(OFFLINE_TASKS)}",
            )
    if cfg.model.source == "tiny":
        tiny = cfg.model.tiny
        names = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size")
        sizes = {k: getattr(tiny, k) for k in names}
        bad = [f"{k}={v}" for k, v in sizes.items() if v < 1]
        _check(not bad, f"model.tiny sizes must be >= 1, got {', '.join(bad)}")
        _check(
            tiny.hidden_size % tiny.num_heads == 0 and tiny.num_heads % tiny.num_kv_heads == 0,
            f"model.tiny: hidden_size ({tiny.hidden_size}) must be a multiple of num_heads "
            f"({tiny.num_heads}), and num_heads of num_kv_heads ({tiny.num_kv_heads})",
        )


def _validate_sources(cfg: LoraPruneConfig) -> None:
    try:
        device = resolve_device(cfg.trainer.device)
        resolve_dtype(cfg.trainer.dtype, device)
    except ValueError as e:
        raise MachineError(str(e)) from e
    try:
        model_location(cfg.model.source, model_path(cfg.model))
        data.validate_finetune_spec(cfg.data, mirror=cfg.data.mirror)
        for name in cfg.eval.ppl_sets:
            data.validate_eval_source(name, mirror=cfg.data.mirror)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
    # The embedded corpora have disjoint fine-tune/test sides; a file has no split to protect it.
    overlap = [n for n in cfg.eval.ppl_sets if n == cfg.data.name and n not in data.EMBEDDED_SOURCES]
    _check(not overlap, f"eval.ppl_sets {overlap} is the fine-tune data itself: evaluate on held-out text")
    inside = [
        n
        for n in cfg.eval.ppl_sets
        if not holds_out_val(cfg.data.name, cfg.data.holdout_val)
        and data.EMBEDDED_VALIDATION.get(n) in data.finetune_corpora(cfg.data.name)
    ]
    _check(
        not inside,
        f"eval.ppl_sets {inside}: those validation documents are fine-tune data unless held out; "
        "set data.holdout_val=true",
    )
    _check(
        cfg.data.holdout_val is not True or data.finetune_corpora(cfg.data.name),
        f"data.holdout_val: {cfg.data.name!r} has no validation split (only the embedded corpora)",
    )


# ----------------------------------------------------------------------------------------- resolve
def resolve(cfg: LoraPruneConfig) -> RunPlan:
    """Validate ``cfg`` and work out everything derived from it (reads the model's config, no weights)."""
    validate(cfg)
    m, p = cfg.model, cfg.prune
    try:
        config = load_config(m.source, model_path(m), m.tiny, m.revision)
    except OSError as e:  # hub id unknown or unreachable, unreadable local files
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot load the config of model {m.path or m.source!r}: {first_line}") from e
    geo = Geometry.from_config(config)
    max_len = getattr(config, "max_position_embeddings", None)
    _check(
        max_len is None or cfg.eval.seq_len <= max_len,
        f"eval.seq_len {cfg.eval.seq_len} exceeds the model's maximum positions ({max_len})",
    )
    excluded = excluded_layers(cfg, geo)
    _check(
        len(excluded) < geo.num_layers or not (p.ratio or p.pattern),
        f"every one of the model's {geo.num_layers} layers is excluded from pruning (prune.exclude_layers / "
        "exclude_first_fraction / exclude_last / layer_range): nothing is left to prune",
    )
    total, attention_bias, layer_params = _parameter_count(config)
    ratio, depth, param_budget, unit_counts = p.ratio or 0.0, 0, None, None
    try:
        if is_depth(cfg):
            prunable = [i for i in range(geo.num_layers) if i not in excluded]
            depth = layers_for_target(ratio, p.target, geo.num_layers, prunable, layer_params, total)
            ratio = depth / len(prunable)
        elif p.target == "params" and p.pattern is None:
            prunable = geo.num_layers - len(excluded)
            ratio, param_budget, unit_counts = _params_target(cfg, geo, total, attention_bias, prunable)
        if not depth:
            removable_counts(geo, p.attention_unit, ratio)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    _check(
        not (
            p.pattern is None
            and effective_selection(cfg) != "local"
            and p.attention_unit == "query_head"
            and geo.queries_per_kv > 1
        ),
        f"{effective_selection(cfg)} selection (prune.selection, or the method's method.selection) with "
        "prune.attention_unit=query_head on a GQA model is not supported: use kv_group or "
        "prune.selection=local",
    )
    schedule, at_step = effective_schedule(cfg)
    settings = _pruner_settings(cfg, ratio, excluded, depth, param_budget, unit_counts)
    return RunPlan(cfg, geo, excluded, schedule, at_step, settings, total, check_run_dir(cfg))


def check_option_keys(criterion: str, keys: Iterable[str]) -> None:
    """Refuse ``method.options`` keys that ``criterion`` does not take, naming the criteria that do (e.g. a
    FLAP option on another method). For the composed config, before the typed conversion drops keys that
    were added with ``+method.options.KEY=...``; an unknown criterion is left to :func:`validate`."""
    if criterion not in CRITERIA:
        return
    own = criterion_options(criterion)
    unknown = sorted(set(keys) - own)
    if not unknown:
        return
    users = sorted({name for name in CRITERIA for key in unknown if key in criterion_options(name)})
    used_by = f" ({'an option' if len(unknown) == 1 else 'options'} of {', '.join(users)})" if users else ""
    raise ConfigError(
        f"unknown method.options {unknown} for criterion {criterion!r}{used_by}; known: "
        f"{', '.join(sorted(own)) or 'none'}"
    )


def effective_reconstruct(cfg: LoraPruneConfig) -> str:
    """``prune.reconstruct``, or the method's own when it is null (``none`` where FLAP's
    ``options.bias=false``)."""
    if cfg.prune.reconstruct is not None:
        return cfg.prune.reconstruct
    if cfg.method.criterion == "flap" and not getattr(cfg.method.options, "bias", True):
        return "none"
    return cfg.method.reconstruct


def _validate_reconstruct(cfg: LoraPruneConfig) -> None:
    """Reconstruction compensates removed units: only a structured method that removes heads / channels
    has any (not an N:M pattern, not a depth cut)."""
    from loraprune.core.reconstruct import RECONSTRUCTIONS

    for name, value in (
        ("prune.reconstruct", cfg.prune.reconstruct),
        ("method.reconstruct", cfg.method.reconstruct),
    ):
        _check(
            value is None or value in RECONSTRUCTIONS,
            f"{name} must be {' / '.join(RECONSTRUCTIONS)}, got {value!r}",
        )
    _check(
        cfg.prune.reconstruct_damp >= 0,
        f"prune.reconstruct_damp must be >= 0, got {cfg.prune.reconstruct_damp}",
    )
    mode = effective_reconstruct(cfg)
    if mode == "none":
        return
    what = f"method={cfg.method.name}"
    if cfg.prune.pattern is not None:
        what += f" with prune.pattern {cfg.prune.pattern!r} (N:M sparsity)"
    elif is_depth(cfg):
        what += " (a depth cut: whole decoder layers)"
    else:
        return
    _check(
        False,
        f"prune.reconstruct={mode}: {what} removes no heads or channels to compensate; reconstruct "
        "applies to structured pruning of attention units and MLP channels only (leave prune.reconstruct "
        "null or none)",
    )


def effective_selection(cfg: LoraPruneConfig) -> str:
    """``prune.selection``, or the method's own choice when it is null."""
    return cfg.prune.selection or cfg.method.selection


def _params_target(
    cfg: LoraPruneConfig, geo: Geometry, total: int, attention_bias: bool, prunable: int
) -> tuple[float, int | None, dict[str, int] | None]:
    """``prune.target=params``: the group ratio that comes nearest to ``prune.ratio`` of the ``total``
    parameters (where the schedule ends), and what the selection removes there so the fraction is met
    whatever the per-layer rounding (with 3 KV groups a layer's attention moves in thirds, and 35% would
    otherwise become the 50% group ratio's 37%): a selection across layers (``budget`` / ``adaptive``) the
    parameters themselves; one that cuts every layer alike (``local`` / ``global``) the units of each kind
    per layer that remove them (:func:`~loraprune.core.budget.counts_for_param_fraction`)."""
    p = cfg.prune
    kinds = [k for k, on in (("attn", p.prune_attention), ("mlp", p.prune_mlp)) if on]
    unit, selection = p.attention_unit, effective_selection(cfg)
    ratio = ratio_for_param_fraction(geo, unit, p.ratio, total, prunable, attention_bias, kinds=kinds)
    if selection not in ("budget", "adaptive"):
        counts = counts_for_param_fraction(geo, unit, p.ratio, total, prunable, attention_bias, kinds=kinds)
        return ratio, None, counts
    budget = round(p.ratio * total)
    capacity = budget_capacity(geo, unit, prunable, attention_bias, kinds=kinds)
    _check(
        budget <= capacity,
        f"prune.target=params prune.ratio={p.ratio}: {budget:,} parameters, more than the "
        f"{capacity:,} that {selection} selection can remove from the {prunable} prunable "
        "layers while each keeps one unit of each kind",
    )
    return ratio, budget, None


def _pruner_settings(
    cfg: LoraPruneConfig,
    ratio: float,
    excluded: list[int],
    layers: int = 0,
    param_budget: int | None = None,
    unit_counts: dict[str, int] | None = None,
) -> PrunerSettings:
    p, m = cfg.prune, cfg.method
    return PrunerSettings(
        ratio=ratio,
        pattern=p.pattern,
        attention_unit=p.attention_unit,
        prune_freq=p.prune_freq,
        excluded_layers=excluded,
        selection=effective_selection(cfg),
        prune_attention=p.prune_attention,
        prune_mlp=p.prune_mlp,
        ema_beta=m.ema_beta,
        ema_init=m.ema_init,
        normalize=m.normalize,
        normalize_order=m.normalize_order,
        calibration_samples=m.calibration.samples,
        calibration_seq_len=m.calibration.seq_len,
        calibration_batches=m.calibration.batches,
        layers=layers,
        reconstruct=effective_reconstruct(cfg) if p.pattern is None and not is_depth(cfg) else None,
        reconstruct_damp=p.reconstruct_damp,
        round_to=p.round_to,
        param_budget=param_budget,
        unit_counts=unit_counts,
    )


def _parameter_count(config) -> tuple[int, bool, int]:
    """Exact parameters of the model ``config`` describes, whether q/k/v carry a bias, and the parameters
    of one decoder layer (built on the meta device: no memory, no weights)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layer = decoder_layers(model)[0]
    attention_bias = projection(layer, "q_proj").bias is not None
    return count_parameters(model), attention_bias, sum(p.numel() for p in layer.parameters())


def excluded_layers(cfg: LoraPruneConfig, geo: Geometry) -> list[int]:
    """The layers left unpruned, checked against the model's depth.

    ``prune.layer_range: [start, end]`` prunes only layers ``start <= i < end`` (Python slice bounds,
    negative counts from the end; LLM-Pruner's ``block_*_layer_start/end``), else
    ``prune.exclude_layers``, else the first ``exclude_first_fraction`` and the last ``exclude_last``.
    """
    p = cfg.prune
    if p.layer_range is not None:
        _check(len(p.layer_range) == 2, f"prune.layer_range must be [start, end], got {p.layer_range}")
        kept = range(geo.num_layers)[slice(int(p.layer_range[0]), int(p.layer_range[1]))]
        _check(len(kept) > 0, f"prune.layer_range {list(p.layer_range)} selects no layer of {geo.num_layers}")
        return [i for i in range(geo.num_layers) if i not in kept]
    if p.exclude_layers is None:
        return default_excluded_layers(geo.num_layers, p.exclude_first_fraction, p.exclude_last)
    bad = [i for i in p.exclude_layers if not 0 <= i < geo.num_layers]
    _check(not bad, f"prune.exclude_layers {bad} out of range for a model of {geo.num_layers} layers")
    return sorted(set(p.exclude_layers))


# --------------------------------------------------------------------------------------- run dir
def run_dir_of(cfg: LoraPruneConfig) -> Path:
    """``cfg.output_dir``, else Hydra's run dir, else ``outputs/runs/<time>``."""
    if cfg.output_dir:
        return Path(cfg.output_dir)
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return Path("outputs") / "runs" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def check_run_dir(cfg: LoraPruneConfig) -> Path:
    """The run directory, refused if it cannot be made, or if it holds a finished or an unfinished run and
    neither ``resume`` (continue / re-report the same run) nor ``overwrite`` (start again) is set."""
    from loraprune.train import resume

    run_dir = run_dir_of(cfg)
    state = resume.run_state(run_dir)
    if state == "finished":
        _check(
            cfg.overwrite or cfg.resume,
            f"{run_dir} already holds a finished run (metrics.json); choose another output_dir, set "
            "overwrite=true to replace it, or resume=true to report it again",
        )
    elif state == "unfinished":
        step = resume.checkpoint_step(resume.latest_checkpoint(run_dir))
        _check(
            cfg.overwrite or cfg.resume,
            f"{run_dir} holds an unfinished run (checkpoint at step {step}); set resume=true to continue it "
            "or overwrite=true to start again",
        )
    if cfg.resume and not cfg.overwrite and state != "fresh":
        config = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
        diff = resume.config_differences(run_dir, config)
        _check(
            not diff,
            f"resume=true: {run_dir} holds a run of another config ({', '.join(diff[:4])} differ); "
            "use the same settings, another output_dir, or overwrite=true",
        )
    check_creatable(run_dir, "run directory")
    return run_dir


def check_creatable(directory: Path, what: str = "directory") -> None:
    """Refuse ``directory`` if it is not a directory and cannot be made. Probes its nearest existing
    ancestor by making and removing an empty directory there: nothing is left behind."""
    existing = next((d for d in (directory, *directory.parents) if d.exists()), None)
    _check(
        existing is not None and existing.is_dir(),
        f"cannot create the {what} {directory}: {existing} is not a directory",
    )
    _check(os.access(existing, os.W_OK), f"cannot create the {what} {directory}: {existing} is read-only")
    if existing == directory:
        return
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".loraprune-probe-", dir=existing))
    except OSError as e:
        raise ConfigError(f"cannot create the {what} {directory}: {e.strerror} in {existing}") from None
