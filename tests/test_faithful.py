"""Issue 10's switches: the reference's normalisation order and gradient timing, calibration windows,
the validation split, distillation from the dense teacher, Fisher-like accumulation."""

from __future__ import annotations

import pytest
import torch
from conftest import lora_with_random_b
from peft import LoraConfig, get_peft_model
from torch import nn

from loraprune.config.schema import TrainerConfig
from loraprune.core.importance import unit_scores
from loraprune.core.structure import GroupKind, Slice
from loraprune.criteria import Criterion, estimated_weight_grad
from loraprune.models.loading import TinySpec, load_model
from loraprune.train.loop import StepHooks, finetune, trainable_parameters


def _tiny():
    return load_model("tiny", tiny=TinySpec(num_heads=4, num_kv_heads=4), dtype="float32", device="cpu")


def _lora(model):
    return lora_with_random_b(model, r=2)


def _samples(n: int = 4, length: int = 12, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 259, (n, length), generator=g).tolist()
    return [{"input_ids": row, "labels": row} for row in ids]


# ------------------------------------------------------------------------- 1a: normalisation order
class _Table(Criterion):
    name = "table"

    def __init__(self, table):
        super().__init__()
        self.table = table

    def element_scores(self, module):
        return self.table[module.tag]


def _two_head_layer():
    """Two heads of two channels: q rows [1, 1 | 3, 3] (even within heads), o columns [4, 0 | 1, 0]."""
    layer = nn.Module()
    layer.self_attn = nn.Module()
    for name in ("q_proj", "o_proj"):
        m = nn.Linear(4, 4)
        m.tag = name
        setattr(layer.self_attn, name, m)
    table = {
        "q_proj": torch.tensor([[1.0], [1.0], [3.0], [3.0]]),
        "o_proj": torch.tensor([[4.0, 0.0, 1.0, 0.0]]),
    }
    heads = torch.tensor([0, 0, 1, 1])
    kind = GroupKind("attn", 2, (Slice("q_proj", 0, heads), Slice("o_proj", 1, heads)))
    return layer, kind, _Table(table)


def test_normalise_per_channel_or_per_unit_rank_heads_differently():
    layer, kind, crit = _two_head_layer()
    # channel order: q [1,1,3,3]/√20 summed per head, o [4,0,1,0]/√17 summed per head
    by_channel = torch.tensor([2 / 20**0.5 + 4 / 17**0.5, 6 / 20**0.5 + 1 / 17**0.5])
    # unit order (the reference): q heads [2, 6]/√40, o heads [4, 1]/√17
    by_unit = torch.tensor([2 / 40**0.5 + 4 / 17**0.5, 6 / 40**0.5 + 1 / 17**0.5])
    got_channel = unit_scores(layer, kind, crit)
    got_unit = unit_scores(layer, kind, crit, order="unit")
    assert torch.allclose(got_channel, by_channel) and torch.allclose(got_unit, by_unit)
    assert got_channel.argmax() == 1 and got_unit.argmax() == 0  # the orders disagree on the ranking
    assert torch.equal(unit_scores(layer, kind, crit, order="channel"), got_channel)
    raw = torch.tensor([6.0, 7.0])  # without normalisation the order does not matter
    assert torch.equal(unit_scores(layer, kind, crit, normalize=False, order="unit"), raw)
    with pytest.raises(ValueError, match="normalisation order"):
        unit_scores(layer, kind, crit, order="head")


# ---------------------------------------------------------------------------- 1b: after clipping
def test_clipping_scales_first_order_terms_by_c_and_the_product_by_c_squared():
    g = torch.Generator().manual_seed(0)
    a, b, ga, gb = (torch.randn(s, generator=g) for s in ((2, 5), (3, 2), (2, 5), (3, 2)))
    c = 0.3
    first, product = gb @ a + b @ ga, gb @ ga
    assert torch.allclose(estimated_weight_grad(a, b, c * ga, c * gb), c * first - c**2 * product)


class _GradSpy(StepHooks):
    def __init__(self, model):
        self.params, self.seen = trainable_parameters(model), []

    def after_accumulation(self, step: int) -> None:
        self.seen.append([p.grad.clone() for p in self.params])


def test_observe_after_clip_sees_the_clipped_gradients():
    max_norm = 1e-3
    spies = {}
    for after in (False, True):
        torch.manual_seed(0)
        model, tok = _tiny()
        pm = _lora(model)
        spy = _GradSpy(pm)
        trainer = TrainerConfig(
            batch_size=2, micro_batch_size=2, max_grad_norm=max_norm, observe_after_clip=after
        )
        finetune(pm, _samples(), trainer, 1, tok.pad_token_id, spy)
        spies[after] = spy.seen[0]
    before, clipped = spies[False], spies[True]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in before]))
    c = max_norm / (norm + 1e-6)  # torch's clip_grad_norm_ coefficient
    assert c < 1
    for g0, g1 in zip(before, clipped, strict=True):
        assert torch.allclose(g1, g0 * c, rtol=1e-5, atol=1e-12)


# -------------------------------------------------------------------------- 1c: calibration windows
def test_random_windows_are_seeded_stretches_of_the_text():
    from loraprune.data import random_windows

    ids = list(range(100))
    wins = random_windows(ids, 5, 8, seed=3)
    assert wins == random_windows(ids, 5, 8, seed=3) and wins != random_windows(ids, 5, 8, seed=4)
    for w in wins:
        s = w["input_ids"][0]
        assert w["input_ids"] == w["labels"] == list(range(s, s + 8))
    with pytest.raises(ValueError, match="fewer than one window"):
        random_windows(ids[:4], 1, 8, seed=0)


def test_plain_text_source_for_windows():
    from loraprune.data import FinetuneDataSpec, check_plain_text_source
    from loraprune.data.windows import plain_text_source

    assert plain_text_source(FinetuneDataSpec(name="news_embedded")) == "news_embedded"
    assert plain_text_source(FinetuneDataSpec(name="alpaca")) == "wiki_embedded"  # instruction set
    assert plain_text_source(FinetuneDataSpec(name="/x/a.txt")) == "/x/a.txt"
    assert plain_text_source(FinetuneDataSpec(name="alpaca"), "news_embedded") == "news_embedded"
    with pytest.raises(ValueError, match="plain text"):
        check_plain_text_source("alpaca")


def test_statistics_samples_replace_the_fine_tune_samples_for_batches():
    from loraprune.pruners import CalibrationData

    samples, windows = _samples(3, 12), _samples(2, 6, seed=1)
    plain = CalibrationData(samples, 0).batches(2, 5)
    assert [b["input_ids"][0].tolist() for b in plain] == [s["input_ids"][:5] for s in samples[:2]]
    drawn = CalibrationData(samples, 0, statistics=windows).batches(2, 6)
    assert [b["input_ids"][0].tolist() for b in drawn] == [w["input_ids"] for w in windows]
    micro = next(CalibrationData(samples, 0, statistics=windows).micro_batches(1))
    assert micro["input_ids"][0].tolist() == samples[0]["input_ids"]  # warm-up still trains on samples


# --------------------------------------------------------------------------------- 2: validation split
def test_wiki_validation_split_is_disjoint_and_held_out_on_request():
    from loraprune.data.embedded_corpora import (
        WIKI_VAL_FRACTION,
        embedded_wiki_split,
        embedded_wiki_validation_split,
    )
    from loraprune.data.readers import embedded_docs

    finetune, test = embedded_wiki_split()
    rest, val = embedded_wiki_validation_split()
    titles = [{a.title for a in x} for x in (rest, val, test)]
    assert not (titles[0] & titles[1]) and not (titles[1] & titles[2]) and not (titles[0] & titles[2])
    assert titles[0] | titles[1] == {a.title for a in finetune}
    paragraphs = [{p for a in x for p in a.paragraphs} for x in (rest, val, test)]
    assert not (paragraphs[0] & paragraphs[1]) and not (paragraphs[1] & paragraphs[2])
    share = sum(a.num_words for a in val) / sum(a.num_words for a in finetune)
    assert WIKI_VAL_FRACTION <= share < 2 * WIKI_VAL_FRACTION
    assert embedded_docs("wiki_embedded", "finetune") == [a.text for a in finetune]  # whole fine-tune side
    assert embedded_docs("wiki_embedded", "finetune", holdout_val=True) == [a.text for a in rest]
    assert embedded_docs("wiki_embedded", "validation") == [a.text for a in val]
    from loraprune.data import FinetuneDataSpec

    assert FinetuneDataSpec("wiki_embedded").holds_out_val  # a run holds them out unless told otherwise
    assert not FinetuneDataSpec("wiki_embedded", holdout_val=False).holds_out_val


def test_wiki_embedded_val_is_an_eval_set_that_needs_the_holdout():
    from loraprune.config.schema import LoraPruneConfig
    from loraprune.data import load_eval_text
    from loraprune.data.readers import embedded_docs
    from loraprune.run.resolve import ConfigError, validate

    assert load_eval_text("wiki_embedded_val") == "\n\n".join(embedded_docs("wiki_embedded", "validation"))
    cfg = LoraPruneConfig()
    cfg.model.source, cfg.trainer.device = "tiny", "cpu"
    cfg.eval.ppl_sets = ["wiki_embedded_val"]
    validate(cfg)  # held out by default (data.holdout_val null)
    cfg.data.holdout_val = False
    with pytest.raises(ConfigError, match="data.holdout_val=true"):
        validate(cfg)
    cfg.data.holdout_val = True
    validate(cfg)
    cfg.data.name = "alpaca"
    with pytest.raises(ConfigError, match="no validation split"):
        validate(cfg)


# ------------------------------------------------------------------------------------- 3: distillation
def _masked_pruner(pm, ratio: float = 0.5):
    from loraprune.core.schedule import build_schedule
    from loraprune.core.structure import Geometry
    from loraprune.criteria import build_criterion
    from loraprune.pruners import CalibrationData, GroupPruner, PrunerSettings

    geo = Geometry.from_config(pm.config)
    settings = PrunerSettings(ratio=ratio, excluded_layers=[0])
    pruner = GroupPruner(
        pm, geo, build_criterion("magnitude"), settings, build_schedule("one_shot", ratio, 2)
    )
    pruner.prepare(CalibrationData(_samples(), 0))  # one-shot: masks on from the start
    return pruner


def _first_loss(pm, tok, trainer, hooks) -> float:
    records = []
    finetune(pm, _samples(2), trainer, 1, tok.pad_token_id, hooks, records.append)
    return records[0]["loss"]


def test_distillation_loss_is_ce_plus_weighted_kl_to_the_dense_teacher():
    import copy

    from loraprune.config.schema import DistillConfig
    from loraprune.data import collate
    from loraprune.train.loop import PruningHooks

    torch.manual_seed(0)
    model, tok = _tiny()
    dense = copy.deepcopy(model)  # the teacher by hand: the pretrained weights, no LoRA, no masks
    pm = _lora(model)
    pruner = _masked_pruner(pm)
    batch = collate(_samples(2), tok.pad_token_id)  # the one micro-batch finetune draws (2 of 2 samples)
    with torch.no_grad():
        out = pm(**batch)
        student, ce = out.logits, out.loss.item()
        teacher = dense(input_ids=batch["input_ids"]).logits
    assert not torch.allclose(student, teacher, atol=1e-3)  # masks and LoRA change the student
    w, t = 0.7, 2.0
    p = torch.softmax(teacher / t, -1)
    kl = (p * (torch.log(p) - torch.log_softmax(student / t, -1))).sum(-1).mean() * t * t
    trainer = TrainerConfig(batch_size=2, micro_batch_size=2, lr=1e-30, distill=DistillConfig(w, t))
    got = _first_loss(pm, tok, trainer, PruningHooks(pruner, 1))
    assert got == pytest.approx(ce + w * kl.item(), rel=1e-5)
    assert pruner.masks.active  # the masks are back on after the teacher's forward


def test_distillation_weight_zero_trains_exactly_as_without():
    from loraprune.config.schema import DistillConfig

    states = []
    for trainer in (
        TrainerConfig(batch_size=2, micro_batch_size=1, warmup_steps=0),
        TrainerConfig(batch_size=2, micro_batch_size=1, warmup_steps=0, distill=DistillConfig(0.0, 3.0)),
        TrainerConfig(batch_size=2, micro_batch_size=1, warmup_steps=0, distill=DistillConfig(0.5, 1.0)),
    ):
        torch.manual_seed(0)
        model, tok = _tiny()
        pm = _lora(model)
        finetune(pm, _samples(), trainer, 1, tok.pad_token_id)
        states.append([p.detach().clone() for p in trainable_parameters(pm)])
    assert all(torch.equal(a, b) for a, b in zip(states[0], states[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(states[0], states[2], strict=True))


def test_unit_masks_suspended_gives_the_unmasked_forward():
    torch.manual_seed(0)
    model, tok = _tiny()
    pm = _lora(model)
    ids = torch.tensor([_samples(1)[0]["input_ids"]])
    with torch.no_grad():
        before = pm(input_ids=ids).logits
        pruner = _masked_pruner(pm)
        masked = pm(input_ids=ids).logits
        with pruner.unpruned():
            lifted = pm(input_ids=ids).logits
    assert not torch.allclose(masked, before) and torch.equal(lifted, before)


# ------------------------------------------------------------------------------ 4: Fisher-like scores
def test_fisher_accumulation_by_hand():
    from loraprune.criteria import LoraGradOptions, build_criterion
    from loraprune.criteria.lora_grad import LoraGradCriterion

    layer = get_peft_model(
        nn.Sequential(nn.Linear(3, 2, bias=False)), LoraConfig(r=1, lora_alpha=2, target_modules=["0"])
    )
    proj = layer.base_model.model[0]
    a, b = proj.lora_A["default"].weight, proj.lora_B["default"].weight
    with torch.no_grad():
        proj.base_layer.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0]]))
        a.copy_(torch.tensor([[1.0, 0.0, 1.0]]))
        b.copy_(torch.tensor([[0.5], [1.0]]))
    w_eff = proj.base_layer.weight.detach() + 2.0 * b.detach() @ a.detach()
    grads = [  # each micro-batch's own (∂L/∂A, ∂L/∂B)
        (torch.tensor([[0.1, 0.2, 0.0]]), torch.tensor([[1.0], [0.0]])),
        (torch.tensor([[-0.3, 0.0, 0.4]]), torch.tensor([[0.5], [-1.0]])),
    ]
    crit = build_criterion("loraprune", {"accumulate": "fisher"})
    assert isinstance(crit, LoraGradCriterion) and crit.per_micro_batch
    assert isinstance(crit.options, LoraGradOptions)
    crit.reset_accumulation()
    a.grad, b.grad = torch.zeros_like(a), torch.zeros_like(b)
    for ga, gb in grads:  # the loop adds each micro-batch's gradient / 2 (loss / accumulation)
        a.grad += ga / 2
        b.grad += gb / 2
        crit.accumulate([proj], 2)
    e = [(estimated_weight_grad(a.detach(), b.detach(), ga, gb) * w_eff) ** 2 for ga, gb in grads]
    assert torch.allclose(crit.channel_scores(proj, 0), (e[0].sum(1) + e[1].sum(1)) / 2)
    assert torch.allclose(crit.channel_scores(proj, 1), (e[0].sum(0) + e[1].sum(0)) / 2)
    # the default scores the step's (mean) gradient instead: |G(mean grads) ⊙ W'| summed per row
    mean = build_criterion("loraprune").channel_scores(proj, 0)
    g = estimated_weight_grad(a.detach(), b.detach(), a.grad, b.grad)
    assert torch.allclose(mean, (g * w_eff).abs().sum(1))
    with pytest.raises(ValueError, match="accumulate"):
        LoraGradOptions(accumulate="sum")


def test_fisher_in_the_loop_scores_every_step():
    from loraprune.core.schedule import build_schedule
    from loraprune.core.structure import Geometry
    from loraprune.criteria import build_criterion
    from loraprune.pruners import GroupPruner, PrunerSettings
    from loraprune.train.loop import PruningHooks

    torch.manual_seed(0)
    model, tok = _tiny()
    pm = _lora(model)
    crit = build_criterion("loraprune", {"accumulate": "fisher"})
    settings = PrunerSettings(ratio=0.5, excluded_layers=[0], prune_freq=10, ema_init="first")
    schedule = build_schedule("cubic", 0.5, 3, 0.0, 0.0)
    pruner = GroupPruner(pm, Geometry.from_config(pm.config), crit, settings, schedule)
    trainer = TrainerConfig(batch_size=2, micro_batch_size=1)
    finetune(pm, _samples(), trainer, 1, tok.pad_token_id, PruningHooks(pruner, 3))
    assert pruner.ema.updates == 1 and crit._count == 2  # one step of two micro-batches
    assert all(torch.isfinite(s).all() and (s > 0).all() for s in pruner.ema.values.values())


# ----------------------------------------------------------------------------- the switches composed
def test_switches_compose_and_llm_pruner_draws_windows_by_default(tmp_path):
    from conftest import compose

    from loraprune.data.readers import embedded_docs
    from loraprune.run.pipeline import statistics_samples, to_config
    from loraprune.run.resolve import resolve

    _, tok = _tiny()
    plan = resolve(to_config(compose("debug=tiny", "method=llm_pruner", f"output_dir={tmp_path}")))
    assert plan.cfg.method.calibration.draw == "windows"
    windows = statistics_samples(plan, tok)
    text = tok("\n\n".join(embedded_docs("news_embedded", "finetune")), add_special_tokens=False)["input_ids"]
    assert len(windows) == 10 and all(len(w["input_ids"]) == 64 for w in windows)
    joined = " ".join(map(str, text))
    assert all(" ".join(map(str, w["input_ids"])) in joined for w in windows)  # stretches of the text
    first = resolve(to_config(compose("debug=tiny", "method=llm_pruner", "method.calibration.draw=first")))
    assert statistics_samples(first, tok) is None
    faithful = resolve(to_config(compose("debug=tiny", "method=loraprune"))).cfg
    assert faithful.method.normalize_order == "unit" and faithful.trainer.observe_after_clip  # the reference
    assert resolve(to_config(compose("debug=tiny", "method=grad"))).cfg.method.normalize_order == "channel"
    switches = (
        "method=loraprune",
        "method.normalize_order=channel",
        "method.options.accumulate=fisher",
        "trainer.observe_after_clip=false",
        "trainer.distill.weight=0.5",
        "trainer.distill.temperature=2.0",
        "data.name=wiki_embedded",
        "data.holdout_val=true",
        "eval.ppl_sets=[wiki_embedded_val]",
    )
    cfg = resolve(to_config(compose("debug=tiny", *switches))).cfg
    assert (cfg.method.normalize_order, cfg.method.options.accumulate) == ("channel", "fisher")
    assert statistics_samples(resolve(cfg), tok) is None  # loraprune does not calibrate
    assert not cfg.trainer.observe_after_clip and cfg.trainer.distill.weight == 0.5 and cfg.data.holdout_val


# -------------------------------------------------------------------- 5: input norms with the gradient
def test_activation_term_by_hand():
    from loraprune.criteria import build_criterion

    model = get_peft_model(
        nn.Sequential(nn.Linear(3, 2, bias=False)), LoraConfig(r=1, lora_alpha=2, target_modules=["0"])
    )
    proj = model.base_model.model[0]
    a, b = proj.lora_A["default"].weight, proj.lora_B["default"].weight
    with torch.no_grad():
        proj.base_layer.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0]]))
        a.copy_(torch.tensor([[1.0, 0.0, 1.0]]))
        b.copy_(torch.tensor([[0.5], [1.0]]))
    crit = build_criterion("loraprune", {"activations": 0.5})
    crit.attach([proj])
    x1, x2 = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]]), torch.tensor([[[0.0, 2.0, 2.0]]])
    model.train()
    model(x1)
    model(x2)
    with torch.no_grad():
        model(x1 * 100)  # a forward without gradients (a teacher) is not counted
    model.eval()
    model(x1 * 100)  # nor an evaluation forward
    a.grad, b.grad = torch.tensor([[0.1, 0.2, 0.0]]), torch.tensor([[1.0], [0.0]])
    w_eff = proj.base_layer.weight.detach() + 2.0 * b.detach() @ a.detach()
    rms = torch.tensor([(1 + 9 + 0) / 3, (4 + 0 + 4) / 3, (0 + 1 + 4) / 3]).sqrt()
    for dim in (0, 1):
        grad_term = (estimated_weight_grad(a.detach(), b.detach(), a.grad, b.grad) * w_eff).abs().sum(1 - dim)
        wanda = (w_eff.abs() * rms).sum(1 - dim)
        expected = grad_term + 0.5 * grad_term.norm() / wanda.norm() * wanda
        assert torch.allclose(crit.channel_scores(proj, dim), expected)
    crit.release()
    assert not proj._forward_pre_hooks  # the hooks are gone
    off = build_criterion("loraprune")
    off.attach([proj])
    assert not proj._forward_pre_hooks  # activations 0: nothing installed
