"""Baselines of issue 3: LLM-Pruner (Taylor), L1/L2, random and Wanda-sp as criteria + one-shot methods."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import compose, lora_with_random_b
from peft import LoraConfig, get_peft_model
from torch import nn

from loraprune.core.importance import unit_scores
from loraprune.core.schedule import OneShotSchedule
from loraprune.core.structure import (
    ALL_PROJECTIONS,
    Geometry,
    decoder_layers,
    mlp_kind,
    projection,
    removable_counts,
)
from loraprune.core.surgery import apply_plan, merge_lora
from loraprune.criteria import Criterion, build_criterion
from loraprune.criteria.statistics import input_square_norms, weight_gradients
from loraprune.models.loading import TinySpec, load_model
from loraprune.pruners import CalibrationData, GroupPruner, NMPruner, PrunerSettings

ONE_SHOT_METHODS = ("llm_pruner", "l1", "l2", "random", "wanda_sp")
CASES = {
    "mha": TinySpec(num_heads=4, num_kv_heads=4),
    "gqa": TinySpec(num_heads=8, num_kv_heads=2, attention_bias=True),
}

# ------------------------------------------------------------------ a 4×3 projection with set W, ∂L/∂W, F
W = torch.tensor([[1.0, -2.0, 0.0], [3.0, 1.0, -1.0], [0.0, 2.0, 2.0], [-1.0, 0.0, 1.0]])
G = torch.tensor([[0.5, 1.0, 2.0], [-1.0, 0.5, 0.0], [1.0, -1.0, 0.5], [2.0, 0.0, -1.0]])
F = torch.tensor([[1.0] * 3, [1.0] * 3, [2.0] * 3, [0.0] * 3])  # Fisher diagonal: 1, 1, 2, 0 per row
# W·G = [[0.5, -2, 0], [-3, 0.5, 0], [0, -2, 1], [-2, 0, -1]]
# ½·W²·F = [[0.5, 2, 0], [4.5, 0.5, 0.5], [0, 4, 4], [0, 0, 0]]


def _toy_linear() -> nn.Linear:
    lin = nn.Linear(3, 4, bias=False)  # in 3, out 4: the weight is 4×3
    with torch.no_grad():
        lin.weight.copy_(W)
    lin.weight.grad = G.clone()
    return lin


def _columns(name: str, **options) -> torch.Tensor:
    crit = build_criterion(name, options)
    lin = _toy_linear()
    if name == "llm_pruner":
        crit.fisher = {lin.weight: F}
    return crit.channel_scores(lin, 1), crit.channel_scores(lin, 0), crit, lin


def test_llm_pruner_element1_by_hand():
    cols, rows, *_ = _columns("llm_pruner", taylor="element1")
    # |W·G| summed down each column / along each row
    assert torch.allclose(cols, torch.tensor([0.5 + 3 + 0 + 2, 2 + 0.5 + 2 + 0, 0 + 0 + 1 + 1]))
    assert torch.allclose(rows, torch.tensor([2.5, 3.5, 3.0, 3.0]))


def test_llm_pruner_element2_by_hand():
    cols, rows, *_ = _columns("llm_pruner", taylor="element2")
    assert torch.allclose(cols, torch.tensor([0.5 + 4.5, 2 + 0.5 + 4, 0.5 + 4]))
    assert torch.allclose(rows, torch.tensor([2.5, 5.5, 8.0, 0.0]))


def test_llm_pruner_mix_by_hand():
    # |W·G − ½W²F| = [[0, 4, 0], [7.5, 0, 0.5], [0, 6, 3], [2, 0, 1]] (LLM-Pruner's param_mix sign)
    cols, rows, crit, lin = _columns("llm_pruner", taylor="mix")
    assert torch.allclose(cols, torch.tensor([9.5, 10.0, 4.5]))
    assert torch.allclose(rows, torch.tensor([4.0, 8.0, 9.0, 3.0]))
    assert torch.allclose(crit.element_scores(lin).sum(0), cols)
    # the reference names select the same variants
    assert build_criterion("llm_pruner", {"taylor": "param_mix"}).taylor == "mix"


def test_llm_pruner_vector_sums_signed_products_before_abs():
    cols, rows, crit, lin = _columns("llm_pruner", taylor="vector")
    # |Σ W·G| per column: |0.5−3+0−2|, |−2+0.5−2+0|, |0+0+1−1|
    assert torch.allclose(cols, torch.tensor([4.5, 3.5, 0.0]))
    assert torch.allclose(rows, torch.tensor([1.5, 2.5, 1.0, 3.0]))
    with pytest.raises(ValueError):
        crit.element_scores(lin)


def test_l1_l2_by_hand():
    cols, rows, *_ = _columns("l1")
    assert torch.allclose(cols, torch.tensor([5.0, 5.0, 4.0]))
    assert torch.allclose(rows, torch.tensor([3.0, 5.0, 4.0, 2.0]))
    cols, rows, *_ = _columns("l2")
    assert torch.allclose(cols, torch.tensor([11.0, 9.0, 6.0]))
    assert torch.allclose(rows, torch.tensor([5.0, 11.0, 8.0, 2.0]))


def test_wanda_sp_by_hand():
    crit = build_criterion("wanda_sp")
    lin = _toy_linear()
    crit.input_sq_norms = {lin: torch.tensor([4.0, 1.0, 9.0])}  # ‖X_j‖ = 2, 1, 3
    # column j: ‖X_j‖·Σ_i |W_ij| = 2·5, 1·5, 3·4; rows are not scored (FLAP scores o/down columns only)
    assert torch.allclose(crit.channel_scores(lin, 1), torch.tensor([10.0, 5.0, 12.0]))
    assert crit.channel_scores(lin, 0) is None
    crit_all = build_criterion("wanda_sp", {"slices": "all"})
    crit_all.input_sq_norms = crit.input_sq_norms
    # row i: Σ_j |W_ij|·‖X_j‖ = 1·2+2·1+0, 3·2+1·1+1·3, 0+2·1+2·3, 1·2+0+1·3
    assert torch.allclose(crit_all.channel_scores(lin, 0), torch.tensor([4.0, 10.0, 8.0, 5.0]))


def test_random_is_seeded():
    lin = _toy_linear()
    a = build_criterion("random", {"seed": 3}).channel_scores(lin, 1)
    b = build_criterion("random", {"seed": 3}).channel_scores(lin, 1)
    c = build_criterion("random", {"seed": 4}).channel_scores(lin, 1)
    assert a.shape == (3,) and torch.equal(a, b) and not torch.equal(a, c)


def _toy_mlp_layer() -> nn.Module:
    """A decoder-like layer whose MLP has hidden 4, intermediate 3: down_proj is the 4×3 toy."""
    layer = nn.Module()
    layer.self_attn, layer.mlp = nn.Module(), nn.Module()
    layer.mlp.gate_proj = nn.Linear(4, 3, bias=False)
    layer.mlp.up_proj = nn.Linear(4, 3, bias=False)
    layer.mlp.down_proj = _toy_linear()
    with torch.no_grad():
        layer.mlp.gate_proj.weight.copy_(torch.tensor([[1.0] * 4, [-2.0] * 4, [3.0] * 4]))
        layer.mlp.up_proj.weight.copy_(torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0] * 4, [0.5] * 4]))
    for name in ("gate_proj", "up_proj"):
        lin = getattr(layer.mlp, name)
        lin.weight.grad = torch.ones_like(lin.weight)
    return layer


def test_group_scores_sum_modules_without_normalisation():
    layer = _toy_mlp_layer()
    kind = mlp_kind(Geometry(1, 4, 1, 1, 4, 3))
    # l1, channel c: Σ|gate[c,:]| + Σ|up[c,:]| + Σ|down[:,c]| = (4+1+5, 8+0+5, 12+2+4)
    l1 = unit_scores(layer, kind, build_criterion("l1"), normalize=False)
    assert torch.allclose(l1, torch.tensor([10.0, 13.0, 18.0]))
    # vector Taylor (g = 1 on gate/up): |Σ gate[c,:]| + |Σ up[c,:]| + |Σ_i (W·G)[i,c]|
    crit = build_criterion("llm_pruner", {"taylor": "vector"})
    vec = unit_scores(layer, kind, crit, normalize=False)
    assert torch.allclose(vec, torch.tensor([4 + 1 + 4.5, 8 + 0 + 3.5, 12 + 2 + 0.0]))
    # LoRAPrune-style per-module L2 normalisation is still available (method.normalize: true)
    normed = unit_scores(layer, kind, build_criterion("l1"), normalize=True)
    expected = (
        torch.tensor([4.0, 8, 12]) / torch.tensor([4.0, 8, 12]).norm()
        + torch.tensor([1.0, 0, 2]) / torch.tensor([1.0, 0, 2]).norm()
        + torch.tensor([5.0, 5, 4]) / torch.tensor([5.0, 5, 4]).norm()
    )
    assert torch.allclose(normed, expected)


# ---------------------------------------------------------------------------------- calibration passes
def _samples(n: int = 6, length: int = 16, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 259, (n, length), generator=g).tolist()
    return [{"input_ids": row, "labels": row} for row in ids]


def _tiny(case: str = "mha"):
    return load_model("tiny", tiny=CASES[case], dtype="float32", device="cpu")


def test_weight_gradients_match_one_batch_and_per_sample_fisher():
    model, tok = _tiny()
    batches = CalibrationData(_samples(4), tok.pad_token_id).batches(4, 12)
    weights = [projection(decoder_layers(model)[1], n).weight for n in ("q_proj", "down_proj")]
    fisher = weight_gradients(model, weights, batches, fisher=True)
    got = [w.grad.clone() for w in weights]
    assert all(p.requires_grad for p in model.parameters())  # restored after the passes
    # reference: one backward of the whole set as a single batch; and per-sample squared grads / N
    model.zero_grad(set_to_none=True)
    ids = torch.cat([b["input_ids"] for b in batches])
    model(input_ids=ids, labels=ids).loss.backward()
    for w, g in zip(weights, got, strict=True):
        assert torch.allclose(g, w.grad, atol=1e-6)
    expected = [torch.zeros_like(w) for w in weights]
    for b in batches:
        model.zero_grad(set_to_none=True)
        model(**b).loss.backward()
        for e, w in zip(expected, weights, strict=True):
            e += w.grad**2 / len(batches)
    for e, w in zip(expected, weights, strict=True):
        assert torch.allclose(fisher[w], e, atol=1e-8)


def test_input_square_norms_match_manual_hook():
    model, tok = _tiny()
    batches = CalibrationData(_samples(3), tok.pad_token_id).batches(3, None)
    down = decoder_layers(model)[2].mlp.down_proj
    seen = []
    h = down.register_forward_hook(
        lambda _m, args, _o: seen.append(args[0].detach().reshape(-1, args[0].shape[-1]))
    )
    norms = input_square_norms(model, [down], batches)
    h.remove()
    expected = sum(x.pow(2).sum(0) for x in seen[:3]) / 3
    assert torch.allclose(norms[down], expected)


# ------------------------------------------------------------------ one-shot: exact ratio, masked == pruned
def _lora(model):
    return lora_with_random_b(model, r=4)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(
    "name,options",
    [
        ("llm_pruner", {"taylor": "element1"}),
        ("llm_pruner", {"taylor": "element2"}),
        ("llm_pruner", {"taylor": "mix"}),
        ("llm_pruner", {"taylor": "vector"}),
        ("l1", {}),
        ("l2", {}),
        ("random", {"seed": 1}),
        ("wanda_sp", {}),
        ("wanda_sp", {"slices": "all"}),
    ],
)
def test_one_shot_hits_ratio_exactly_and_masked_equals_pruned(case, name, options):
    model, tok = _tiny(case)
    geo = Geometry.from_config(model.config)
    unit = "query_head" if case == "gqa" and name in ("l2", "llm_pruner") else "kv_group"
    ratio = 0.5 if unit == "kv_group" else 0.25
    pm = _lora(model)
    criterion = build_criterion(name, options)
    settings = PrunerSettings(
        ratio=ratio,
        attention_unit=unit,
        excluded_layers=[0],
        ema_beta=0.0,
        normalize=False,
        calibration_samples=4,
    )
    pruner = GroupPruner(pm, geo, criterion, settings, OneShotSchedule(ratio))
    pruner.prepare(CalibrationData(_samples(), tok.pad_token_id))  # one-shot: prunes and releases

    counts = removable_counts(geo, unit, ratio)
    assert counts["mlp"] == geo.intermediate_size * ratio  # the requested ratio, exactly
    for (layer, kind), removed in pruner.masks.removed.items():
        assert int(removed.sum()) == counts[kind], (layer, kind)
    # gradients of the pretrained weights are off again; LoRA still trains
    for n, p in pm.named_parameters():
        assert p.requires_grad == ("lora_" in n), n
        assert "lora_" in n or p.grad is None, n

    ids = torch.randint(3, 259, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        masked = pm(input_ids=ids).logits
    plan = pruner.plan()
    pruner.remove_hooks()
    merged = apply_plan(merge_lora(pm), plan)
    with torch.no_grad():
        pruned = merged(input_ids=ids).logits
    assert torch.allclose(masked, pruned, atol=1e-4)
    attn = merged.model.layers[1].self_attn
    assert attn.q_proj.out_features == geo.num_heads * geo.head_dim * (1 - ratio)
    assert merged.model.layers[1].mlp.down_proj.in_features == geo.intermediate_size * (1 - ratio)
    assert merged.model.layers[0].mlp.down_proj.in_features == geo.intermediate_size


# ------------------------------------------------------------------------- end to end through Hydra
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small local text (the embedded corpora take ~10 s to load and tokenize)."""
    g = torch.Generator().manual_seed(0)
    words = ["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by"]
    idx = torch.randint(0, len(words), (1500,), generator=g).tolist()
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    lines = [" ".join(words[i] for i in idx[k : k + 15]) + "." for k in range(0, 1500, 15)]
    path.write_text("\n".join(lines[:70]))
    _heldout(path).write_text("\n".join(lines[70:]))  # evaluation never reads the fine-tune text
    return path


def _heldout(corpus: Path) -> Path:
    return corpus.with_name("heldout.txt")


def _run(tmp_path: Path, corpus: Path, *overrides: str, steps: int = 2) -> dict:
    from loraprune.run.pipeline import run

    cfg = compose(
        "debug=tiny",
        f"output_dir={tmp_path}",
        f"data.name={corpus}",
        f"eval.ppl_sets=[{_heldout(corpus)}]",
        f"trainer.steps={steps}",
        "save_model=false",
        *overrides,
    )
    metrics = run(cfg)
    assert json.loads((tmp_path / "metrics.json").read_text())["run"]["method"] == metrics["run"]["method"]
    return metrics


@pytest.mark.parametrize("name", ONE_SHOT_METHODS)
def test_method_runs_end_to_end(tmp_path, corpus, name):
    metrics = _run(tmp_path, corpus, f"method={name}", "prune.ratio=0.25")
    assert metrics["run"]["schedule"] == "one_shot"  # forced by method.kind=one_shot (prune default: cubic)
    assert metrics["run"]["criterion"] == name
    assert metrics["achieved_ratio"] == {"q_heads": 0.25, "kv_heads": 0.25, "channels": 0.25}
    before = metrics["pruned_before_recovery"]["ppl"][str(_heldout(corpus))]
    after = metrics["pruned"]["ppl"][str(_heldout(corpus))]
    assert before > 0 and after > 0 and before != after
    assert metrics["train"]["steps"] == 2


def test_llm_pruner_gqa_query_heads_and_layer_range(tmp_path, corpus):
    metrics = _run(
        tmp_path,
        corpus,
        "method=llm_pruner",
        "model=tiny_gqa",
        "method.options.taylor=mix",
        "prune.attention_unit=query_head",
        "prune.ratio=0.5",
        "prune.layer_range=[1,-1]",
        steps=0,
    )
    kept = metrics["kept_per_layer"]
    assert [kept[str(i)]["q_heads"] for i in range(4)] == [8, 4, 4, 8]
    assert [kept[str(i)]["kv_heads"] for i in range(4)] == [2, 2, 2, 2]
    assert [kept[str(i)]["channels"] for i in range(4)] == [128, 64, 64, 128]
    # no recovery steps: the before-recovery entry is the pruned result
    assert metrics["pruned_before_recovery"]["ppl"] == metrics["pruned"]["ppl"]


def test_config_errors(tmp_path, corpus):
    from loraprune.run.pipeline import to_config
    from loraprune.run.resolve import ConfigError, excluded_layers, validate

    base = (
        "debug=tiny",
        f"output_dir={tmp_path}",
        f"data.name={corpus}",
        f"eval.ppl_sets=[{_heldout(corpus)}]",
    )
    with pytest.raises(ConfigError, match="one-shot"):
        validate(to_config(compose(*base, "method=llm_pruner", "method.kind=iterative")))
    with pytest.raises(ConfigError, match="unknown method.options"):
        validate(to_config(compose(*base, "method=l1", "+method.options.taylr=mix")))
    with pytest.raises(ConfigError, match="not both"):
        validate(
            to_config(
                compose(*base, "method=llm_pruner", "prune.layer_range=[1,3]", "prune.exclude_layers=[0]")
            )
        )
    cfg = to_config(compose(*base, "method=llm_pruner", "prune.layer_range=[1,3]"))
    validate(cfg)
    assert excluded_layers(cfg, Geometry(4, 64, 4, 4, 16, 128)) == [0, 3]
    with pytest.raises(ValueError, match="taylor"):
        build_criterion("llm_pruner", {"taylor": "nope"})


def test_grad_criterion_weight_grads_only_while_scoring():
    """method=grad needs ∂L/∂W while it scores; once the final ratio is reached they are switched off."""
    from loraprune.config.schema import TrainerConfig
    from loraprune.core.schedule import build_schedule
    from loraprune.train.loop import PruningHooks, finetune

    model, tok = _tiny()
    geo = Geometry.from_config(model.config)
    pm = _lora(model)
    criterion = build_criterion("grad")
    settings = PrunerSettings(ratio=0.5, prune_freq=1, excluded_layers=[0])
    pruner = GroupPruner(pm, geo, criterion, settings, build_schedule("cubic", 0.5, 3))
    pruner.prepare(CalibrationData(_samples(), tok.pad_token_id))
    base = [n for n, p in pm.named_parameters() if p.requires_grad and "lora_" not in n]
    assert base and all("layers.0." not in n and "embed" not in n and "norm" not in n for n in base)
    hooks = PruningHooks(pruner, 4)
    finetune(pm, _samples(), TrainerConfig(batch_size=1, micro_batch_size=1), 4, tok.pad_token_id, hooks)
    assert pruner.released and pruner.removed_fraction == 0.5
    assert not any(p.requires_grad for n, p in pm.named_parameters() if "lora_" not in n)


# ------------------------------------------------------------------------------- semi-structured 2:4
def test_nm_keep_mask_by_hand():
    from loraprune.core.nm import is_nm_sparse, nm_keep_mask, parse_pattern

    scores = torch.tensor(
        [[4.0, 1.0, 3.0, 2.0, 0.0, 5.0, 6.0, 1.0], [1.0, 2.0, 3.0, 4.0, 9.0, 8.0, 7.0, 6.0]]
    )
    keep = nm_keep_mask(scores, *parse_pattern("2:4"))
    expected = torch.tensor([[1, 0, 1, 0, 0, 1, 1, 0], [0, 0, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(keep, expected)
    assert is_nm_sparse(scores * keep, 2, 4) and not is_nm_sparse(scores, 2, 4)
    with pytest.raises(ValueError):
        parse_pattern("4:2")


def test_obs_with_identity_hessian_is_magnitude_pruning_and_beats_it_otherwise():
    from loraprune.core.nm import is_nm_sparse, nm_keep_mask
    from loraprune.criteria.sparsegpt import obs_prune_nm

    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 16, generator=g)
    new, keep = obs_prune_nm(w, torch.eye(16), 2, 4, blocksize=8)
    assert torch.equal(keep, nm_keep_mask(w.abs(), 2, 4)) and torch.allclose(new, w * keep)
    x = torch.randn(200, 16, generator=g) @ torch.randn(16, 16, generator=g)  # correlated inputs
    h = 2 * x.t() @ x / 200
    new, keep = obs_prune_nm(w, h, 2, 4, blocksize=8)
    assert is_nm_sparse(new, 2, 4) and torch.equal(new != 0, keep)

    def err(a):
        return ((w - a) @ x.t()).pow(2).sum()

    assert err(new) < err(w * nm_keep_mask(w.abs(), 2, 4))


def _nm_one_shot(criterion, pm, tok) -> dict:
    """2:4 on layers 1 and 2 at step 0 (calibrated on 4 samples); the pruner's keep masks."""
    geo = Geometry.from_config(pm.config)
    excluded = [i for i in range(geo.num_layers) if i not in (1, 2)]
    settings = PrunerSettings(pattern="2:4", excluded_layers=excluded, calibration_samples=4)
    pruner = NMPruner(pm, geo, criterion, settings, OneShotSchedule(1.0))
    pruner.prepare(CalibrationData(_samples(), tok.pad_token_id))
    return pruner.finalize().nm_masks


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", ["magnitude", "wanda", "sparsegpt", "loraprune"])
def test_two_four_survives_lora_merge(case, name):
    from loraprune.core.nm import is_nm_sparse, merge_through_masks

    model, tok = _tiny(case)
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(ALL_PROJECTIONS)))
    criterion = build_criterion(name, {"blocksize": 16} if name == "sparsegpt" else {})
    masks = _nm_one_shot(criterion, pm, tok)
    assert len(masks) == 2 * len(ALL_PROJECTIONS)
    assert all(p.grad is None for p in pm.parameters())
    ids = torch.randint(3, 259, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = pm(input_ids=ids).logits  # LoRA B = 0: the pruned model itself
    for keep in masks.values():
        assert bool((keep.reshape(keep.shape[0], -1, 4).sum(-1) == 2).all())  # exactly two kept of four
    with torch.no_grad():  # stand-in for recovery training: dense LoRA updates
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(n)))
    merged = merge_through_masks(pm, masks)
    layers = merged.model.layers
    for (i, proj), keep in masks.items():
        weight = projection(layers[i], proj).weight
        assert is_nm_sparse(weight, 2, 4), (i, proj)
        assert not bool(weight[~keep].any())
    assert not is_nm_sparse(projection(layers[0], "q_proj").weight, 2, 4)  # excluded layer: dense
    if name != "sparsegpt":  # masking only: with zero LoRA deltas the merge changes nothing
        pm2 = get_peft_model(
            _tiny(case)[0], LoraConfig(r=4, lora_alpha=8, target_modules=list(ALL_PROJECTIONS))
        )
        masks2 = _nm_one_shot(criterion, pm2, tok)
        with torch.no_grad():
            after = merge_through_masks(pm2, masks2)(input_ids=ids).logits
        assert torch.allclose(before, after, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "extra", "schedule"),
    [
        ("magnitude_oneshot", "", "one_shot"),
        ("magnitude", "", "cubic"),
        ("wanda", "", "one_shot"),
        ("sparsegpt", "", "one_shot"),
        ("loraprune", "", "cubic"),  # the LoRA-guided pattern is chosen during fine-tuning
        ("grad", "", "cubic"),
    ],
)
def test_two_four_end_to_end(tmp_path, corpus, name, extra, schedule):
    extras = [extra] if extra else []
    metrics = _run(
        tmp_path, corpus, f"method={name}", "prune=nm", "prune.exclude_layers=[]", *extras, steps=4
    )
    report = metrics["semistructured"]
    assert report["exact"] and report["projections"] == 4 * 7 and abs(report["sparsity"] - 0.5) < 1e-3
    assert metrics["run"]["schedule"] == schedule
    assert ("pruned_before_recovery" in metrics) == (schedule == "one_shot")
    assert metrics["params"]["removed_fraction_total"] == 0.0  # zeros, not removed groups
    assert "CUDA" in report["speed"]["skipped"]  # CPU here: the sparse-kernel timing skips, saying why


def test_masked_lora_layer_by_hand():
    """A masked LoRA projection computes x·(W⊙M)ᵀ + b + x·((s·B·A)⊙M)ᵀ, gradients included."""
    from loraprune.core.masked_lora import mask_lora_update, unmask_lora_update

    model, _ = _tiny("gqa")
    pm = get_peft_model(
        model, LoraConfig(r=2, lora_alpha=6, lora_dropout=0.0, target_modules=list(ALL_PROJECTIONS))
    )
    module = projection(pm.base_model.model.model.layers[1], "k_proj")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        module.lora_B["default"].weight.normal_(0, 0.5, generator=g)
    w, b = module.base_layer.weight.detach(), module.base_layer.bias.detach()
    a_ref = module.lora_A["default"].weight.detach().clone().requires_grad_(True)
    b_ref = module.lora_B["default"].weight.detach().clone().requires_grad_(True)
    keep = torch.rand(w.shape, generator=g) > 0.5
    x = torch.randn(3, 5, w.shape[1], generator=g)
    mask_lora_update(module, keep)
    out = module(x)
    out.square().sum().backward()
    s = 6 / 2
    expected = x @ w.t() + b + x @ ((s * b_ref @ a_ref) * keep).t()
    expected.square().sum().backward()
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(module.lora_A["default"].weight.grad, a_ref.grad, atol=1e-4)
    assert torch.allclose(module.lora_B["default"].weight.grad, b_ref.grad, atol=1e-4)
    unmask_lora_update(module)
    with torch.no_grad():  # peft's own, unmasked forward again
        assert torch.allclose(module(x), x @ w.t() + b + x @ (s * b_ref @ a_ref).t(), atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_masked_lora_training_merges_exactly(case):
    """Trained through the masks, the model merged through them is the same function (merged ==
    unmerged), and exactly 2:4."""
    from loraprune.core.nm import is_nm_sparse, mask_lora_updates, merge_through_masks, nm_keep_mask

    model, _ = _tiny(case)
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(ALL_PROJECTIONS)))
    layers = pm.base_model.model.model.layers
    masks = {}
    with torch.no_grad():
        for i in (1, 2):
            for name in ALL_PROJECTIONS:
                weight = projection(layers[i], name).base_layer.weight
                masks[(i, name)] = nm_keep_mask(weight.abs(), 2, 4)
                weight.mul_(masks[(i, name)])
    mask_lora_updates(pm, masks)
    opt = torch.optim.SGD([p for n, p in pm.named_parameters() if "lora_" in n], lr=0.5)
    ids = torch.randint(3, 259, (2, 20), generator=torch.Generator().manual_seed(5))
    for _ in range(3):
        pm(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    pm.eval()
    with torch.no_grad():
        unmerged = pm(input_ids=ids).logits
        merged = merge_through_masks(pm, masks)
        after = merged(input_ids=ids).logits
    assert torch.allclose(unmerged, after, atol=1e-5)
    assert all(is_nm_sparse(projection(merged.model.layers[i], n).weight, 2, 4) for i, n in masks)


class _FixedScores(Criterion):
    """A criterion with set element scores per projection (the hand-computed case)."""

    name = "fixed"

    def __init__(self, scores: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.scores = scores

    def element_scores(self, module: nn.Module) -> torch.Tensor:
        return self.scores[id(module)]


def test_iterative_two_four_switches_cheapest_rows_first():
    from loraprune.core.nm import is_nm_sparse, nm_keep_mask, targets
    from loraprune.core.schedule import build_schedule

    model, _ = _tiny()
    pm = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=list(ALL_PROJECTIONS)))
    g = torch.Generator().manual_seed(0)
    scores = {id(m): torch.rand(m.base_layer.weight.shape, generator=g) for _, _, m in targets(pm, [1])}
    schedule = build_schedule("linear", 1.0, 4)
    geo = Geometry.from_config(model.config)
    excluded = [i for i in range(geo.num_layers) if i != 1]
    settings = PrunerSettings(pattern="2:4", excluded_layers=excluded, prune_freq=1, ema_beta=0.5)
    pruner = NMPruner(pm, geo, _FixedScores(scores), settings, schedule)
    pruner.observe()  # EMA from zero: ½·S (the ranking is S's)
    pruner.observe()  # ¾·S
    i, name, module = next(t for t in pruner.chosen if t[1] == "gate_proj")
    s = scores[id(module)]
    assert torch.allclose(pruner.ema.get((i, name)), 0.75 * s)
    before = module.base_layer.weight.detach().clone()
    assert pruner.step(2) == pytest.approx(0.25)  # linear: half of the rows at step 2 of 4
    # by hand: a row's cost is what its best 2:4 choice drops; the cheapest half switches
    cost = s.sum(1) - (s * nm_keep_mask(s, 2, 4)).sum(1)
    half = s.shape[0] // 2
    cheapest = torch.sort(torch.argsort(cost)[:half]).values
    done = torch.nonzero(pruner.converted[(i, name)]).flatten()
    assert torch.equal(done, cheapest)
    weight = module.base_layer.weight.detach()
    assert torch.equal(weight[done], before[done] * nm_keep_mask(s[done], 2, 4))
    rest = pruner.converted[(i, name)].logical_not()
    assert torch.equal(weight[rest], before[rest]) and bool(pruner.masks[(i, name)][rest].all())
    pruner.step(4, final_step=True)
    assert pruner.finished and pruner.removed_fraction == pytest.approx(0.5)
    assert all(is_nm_sparse(t[2].base_layer.weight, 2, 4) for t in pruner.chosen)


def test_sparsegpt_needs_a_pattern(tmp_path, corpus):
    from loraprune.run.pipeline import to_config
    from loraprune.run.resolve import ConfigError, validate

    def check(*overrides: str) -> None:
        validate(
            to_config(
                compose(
                    "debug=tiny", f"data.name={corpus}", f"eval.ppl_sets=[{_heldout(corpus)}]", *overrides
                )
            )
        )

    with pytest.raises(ConfigError, match="prune.pattern"):
        check("method=sparsegpt")
    with pytest.raises(ConfigError, match="pattern"):
        check("prune.pattern=3:2")


def test_iterative_criteria_can_prune_one_shot(tmp_path, corpus):
    """loraprune / grad as one-shot methods: a calibration backward feeds the scores at step 0."""
    for name in ("loraprune", "grad"):
        metrics = _run(tmp_path / name, corpus, f"method={name}", "method.kind=one_shot", "prune.ratio=0.25")
        assert metrics["run"]["schedule"] == "one_shot" and "pruned_before_recovery" in metrics
        assert metrics["achieved_ratio"] == {"q_heads": 0.25, "kv_heads": 0.25, "channels": 0.25}
