"""Depth pruning (``method=shortgpt``, ``method=shortened_ppl``): Block Influence and the removal perplexity
by hand, the number of layers a target removes by hand, bypassed == removed == saved == reloaded, the KV
cache of the shortened model, and bad input."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from conftest import cli, compose, lora_with_random_b
from torch import nn
from transformers import AutoModelForCausalLM

from loraprune import load_pruned, save_pruned
from loraprune.core.depth import bypassed, layers_for_target, remove_layers, select_layers
from loraprune.core.plan import LayerKeep, PruningPlan
from loraprune.core.schedule import build_schedule
from loraprune.core.structure import Geometry, decoder_layers
from loraprune.core.surgery import apply_plan
from loraprune.criteria import build_criterion
from loraprune.criteria.depth import perplexity
from loraprune.models.loading import TinySpec, load_model
from loraprune.pruners import CalibrationData, DepthPruner, PrunerSettings, build_pruner
from loraprune.run.pipeline import run, to_config
from loraprune.run.resolve import ConfigError, resolve

# the tiny LLaMA of debug=tiny (4 layers, hidden 64, MLP 128, 4 heads, vocabulary 259, untied): per layer
# q/k/v/o 4·64·64 + gate/up/down 3·64·128 + two norms 2·64 = 41088; embeddings and head 2·259·64 = 33152,
# the final norm 64: 4·41088 + 33152 + 64 = 197568 in all
TINY_LAYER, TINY_TOTAL = 41088, 197568


class _Toy(nn.Module):
    """A "model" whose ``input_ids`` are already hidden states (batch × tokens × 2), through three layers."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        hidden = input_ids
        for layer in self.layers:
            hidden = layer(hidden)
        return hidden


def _linear(matrix: list[list[float]]) -> nn.Linear:
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(matrix))
    return layer


def _toy() -> _Toy:
    # layer 0 shears (x, y) -> (x + y, y); layer 1 is the identity; layer 2 rotates by 90 degrees
    return _Toy([_linear([[1.0, 1.0], [0.0, 1.0]]), nn.Identity(), _linear([[0.0, -1.0], [1.0, 0.0]])])


def test_block_influence_by_hand():
    toy = _toy()
    # tokens (1, 0) and (0, 1), and a padding token (5, -3) that must not count
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, -3.0]]])
    batch = {"input_ids": hidden, "attention_mask": torch.tensor([[1, 1, 0]])}
    crit = build_criterion("shortgpt")
    crit.calibrate(toy, list(toy.layers), [batch])
    # layer 0: (1,0) -> (1,0), cos 1; (0,1) -> (1,1), cos 1/√2: BI = 1 − (1 + 1/√2)/2
    # layer 1: the identity, cos 1: BI 0; layer 2: a quarter turn, cos 0: BI 1
    expected = [1 - (1 + 1 / math.sqrt(2)) / 2, 0.0, 1.0]
    got = [crit.layer_score(layer) for layer in toy.layers]
    assert got == pytest.approx(expected, abs=1e-6)
    # with the padding token counted, layer 0 would differ: (5,-3) -> (2,-3), cos 19/(√34·√13)
    unmasked = build_criterion("shortgpt")
    unmasked.calibrate(toy, list(toy.layers), [{"input_ids": hidden}])
    padded = 1 - (1 + 1 / math.sqrt(2) + 19 / math.sqrt(34 * 13)) / 3
    assert unmasked.layer_score(toy.layers[0]) == pytest.approx(padded, abs=1e-6)
    # the lowest BI goes first: the identity, then the shear
    scores = dict(enumerate(got))
    assert select_layers(scores, 1) == [1]
    assert select_layers(scores, 2) == [0, 1]
    assert select_layers({0: 0.5, 1: 0.5, 2: 0.1}, 2) == [0, 2]  # a tie: the lower index
    crit.release()
    with pytest.raises(RuntimeError, match="after its calibration pass"):
        crit.layer_score(toy.layers[0])


def _tiny(seed: int = 0):
    return load_model("tiny", tiny=TinySpec(seed=seed), dtype="float32", device="cpu")


def _samples(n: int = 4, length: int = 16) -> list[dict]:
    g = torch.Generator().manual_seed(3)
    return [{"input_ids": torch.randint(3, 259, (length,), generator=g).tolist()} for _ in range(n)]


def _calibration(samples: list[dict]) -> CalibrationData:
    return CalibrationData(samples, pad_token_id=0)


def _depth_pruner(model, layers: int, criterion: str = "shortgpt", excluded=(3,)) -> DepthPruner:
    geo = Geometry.from_config(model.config)
    prunable = geo.num_layers - len(excluded)
    settings = PrunerSettings(ratio=layers / prunable, excluded_layers=list(excluded), layers=layers)
    schedule = build_schedule("one_shot", settings.ratio, 1)
    pruner = build_pruner(model, geo, build_criterion(criterion), settings, schedule)
    assert isinstance(pruner, DepthPruner)
    return pruner


def _make_identity(layer: nn.Module) -> None:
    """Zero the residual branches' output projections: the decoder layer returns its input exactly."""
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()


@pytest.mark.parametrize("criterion", ["shortgpt", "shortened_ppl"])
def test_an_identity_layer_scores_lowest_and_goes_first(criterion, tokens):
    model, _ = _tiny()
    _make_identity(decoder_layers(model)[1])
    _make_identity(decoder_layers(model)[3])  # excluded: never scored, never removed
    samples = _samples()
    batches = _calibration(samples).batches(len(samples), None)
    dense = perplexity(model, batches)
    pruner = _depth_pruner(model, 1, criterion)
    pruner.prepare(_calibration(samples))
    result = pruner.finalize()
    assert result.plan.removed_layers == [1]
    assert set(result.layer_scores) == {0, 1, 2}  # the prunable layers only
    assert min(result.layer_scores, key=result.layer_scores.get) == 1
    if criterion == "shortgpt":
        assert result.layer_scores[1] == pytest.approx(0.0, abs=1e-6)
        assert all(result.layer_scores[i] > 1e-3 for i in (0, 2))
    else:  # the perplexity without the identity layer is the dense model's
        assert result.layer_scores[1] == pytest.approx(dense, rel=1e-5)
    assert len(decoder_layers(model)) == 3 and model.config.num_hidden_layers == 3


def test_removal_perplexity_pools_every_token():
    model, _ = _tiny()
    # two samples of different lengths: the perplexity of their tokens pooled, not the mean of two
    batches = [
        _calibration(_samples(1, 9)).batches(1, None)[0],
        _calibration(_samples(1, 17)).batches(1, None)[0],
    ]
    with torch.no_grad():
        losses = [float(model(**b).loss) for b in batches]  # mean NLL of 8 and 16 predicted tokens
    assert perplexity(model, batches) == pytest.approx(
        math.exp((8 * losses[0] + 16 * losses[1]) / 24), rel=1e-6
    )
    crit = build_criterion("shortened_ppl")
    layers = list(decoder_layers(model))
    crit.calibrate(model, layers[:2], batches)
    with bypassed([layers[0]]):
        assert crit.layer_score(layers[0]) == pytest.approx(perplexity(model, batches), rel=1e-6)
    assert crit.layer_score(layers[0]) != pytest.approx(perplexity(model, batches), rel=1e-3)


def test_layers_for_a_target_by_hand(tmp_path):
    model, _ = _tiny()
    assert sum(p.numel() for p in model.parameters()) == TINY_TOTAL
    assert sum(p.numel() for p in decoder_layers(model)[0].parameters()) == TINY_LAYER
    prunable = [0, 1, 2]
    # params: the nearest whole number of layers to ratio · 197568 / 41088
    for ratio, layers in ((0.25, 1), (0.35, 2), (0.5, 2), (0.55, 3), (0.65, 3)):  # 1.20 1.68 2.40 2.64 3.13
        assert layers_for_target(ratio, "params", 4, prunable, TINY_LAYER, TINY_TOTAL) == layers
    # groups: the nearest whole number of prunable layers (0.5 · 3 = 1.5 -> 2)
    assert layers_for_target(0.2, "groups", 4, prunable, TINY_LAYER, TINY_TOTAL) == 1
    assert layers_for_target(0.5, "groups", 4, prunable, TINY_LAYER, TINY_TOTAL) == 2
    # the same through the run's resolve (the tiny model's config, no weights)
    out = f"output_dir={tmp_path / 'run'}"
    plan = resolve(
        to_config(compose("debug=tiny", "method=shortgpt", "prune.target=params", "prune.ratio=0.35", out))
    )
    assert plan.pruner.layers == 2 and plan.pruner.ratio == pytest.approx(2 / 3)
    assert plan.params_total == TINY_TOTAL and plan.prunable == prunable
    plan = resolve(to_config(compose("debug=tiny", "method=shortgpt", "prune.ratio=0.2", out)))
    assert plan.pruner.layers == 1 and plan.pruner.selection == "global"


def test_bypassed_equals_removed_equals_saved_equals_reloaded(tiny, tokens, tmp_path):
    model, tokenizer = tiny
    peft_model = lora_with_random_b(model, 4)
    twin = copy.deepcopy(peft_model)  # the unpruned model, for the bypassed reference
    pruner = _depth_pruner(peft_model, 2)
    pruner.prepare(_calibration(_samples()))
    removed = pruner.result().plan.removed_layers
    assert len(removed) == 2 and set(removed) <= {0, 1, 2}
    twin_layers = decoder_layers(twin)
    with torch.no_grad(), bypassed([twin_layers[i] for i in removed]):
        reference = twin(input_ids=tokens, use_cache=False).logits
    with torch.no_grad():
        # during recovery: the layers are gone with their LoRA, the rest of the LoRA trains
        assert len(decoder_layers(peft_model)) == 2
        assert torch.allclose(peft_model(input_ids=tokens, use_cache=False).logits, reference, atol=1e-5)
        result = pruner.finalize()
        merged = result.apply(peft_model)
        assert torch.allclose(merged(input_ids=tokens, use_cache=False).logits, reference, atol=1e-5)
        assert merged.config.num_hidden_layers == 2
        path = save_pruned(merged, tokenizer, result.plan, tmp_path / "model")
        config = json.loads((path / "config.json").read_text())
        assert config["num_hidden_layers"] == 2 and config["architectures"] == ["LlamaForCausalLM"]
        assert "auto_map" not in config
        assert json.loads((path / "pruning_plan.json").read_text())["removed_layers"] == removed
        for reloaded in (load_pruned(path), AutoModelForCausalLM.from_pretrained(path)):
            assert type(reloaded).__name__ == "LlamaForCausalLM"
            assert [layer.self_attn.layer_idx for layer in reloaded.model.layers] == [0, 1]
            assert torch.allclose(reloaded(input_ids=tokens, use_cache=False).logits, reference, atol=1e-5)


def test_generation_with_the_kv_cache_on_the_shortened_model(tmp_path):
    model, tokenizer = _tiny(seed=1)
    twin = copy.deepcopy(model)
    plan = PruningPlan(Geometry.from_config(model.config), removed_layers=[0, 2])
    in_memory = apply_plan(model, plan)  # the kept layers' attention renumbered: the cache is indexed by it
    assert [layer.self_attn.layer_idx for layer in decoder_layers(in_memory)] == [0, 1]
    shortened = load_pruned(save_pruned(in_memory, tokenizer, plan, tmp_path / "model"))
    prompt = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        with bypassed([decoder_layers(twin)[0], decoder_layers(twin)[2]]):
            reference = twin.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
        for candidate in (in_memory, shortened):
            cached = candidate.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
            uncached = candidate.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
            assert torch.equal(cached, uncached) and torch.equal(cached, reference)
        # step by step through the cache: the last position's logits of one full forward
        full = shortened(input_ids=cached, use_cache=False).logits[:, -1]
        out = shortened(input_ids=cached[:, :-1], use_cache=True)
        assert len(out.past_key_values.layers) == 2  # one entry per kept layer
        assert out.past_key_values.get_seq_length() == cached.shape[1] - 1
        step = shortened(input_ids=cached[:, -1:], past_key_values=out.past_key_values, use_cache=True)
        assert torch.allclose(step.logits[:, -1], full, atol=1e-5)


def test_a_resumed_cut_is_the_same_cut_or_refused():
    model, _ = _tiny()
    twin = copy.deepcopy(model)
    first, again = _depth_pruner(model, 1), _depth_pruner(twin, 1)
    for pruner in (first, again):  # a resumed run prepares (calibrates and cuts) before the checkpoint loads
        pruner.prepare(_calibration(_samples()))
    state = first.state_dict()
    again.load_state_dict(state)
    assert again.decision_digest() == first.decision_digest()
    other = [i for i in (0, 1, 2) if i not in state["removed_layers"]][:1]
    with pytest.raises(RuntimeError, match="this run's calibration removes"):
        again.load_state_dict({**state, "removed_layers": other})
    decision = first.decision()
    decision["removed_layers"] = torch.zeros_like(decision["removed_layers"])
    decision["removed_layers"][other] = True
    with pytest.raises(RuntimeError, match="cannot be restored"):
        again.adopt_decision(decision)
    again.adopt_decision(first.decision())  # the same cut: nothing to do


def test_the_plan_of_a_depth_cut():
    geo = Geometry(4, 64, 4, 4, 16, 128)
    plan = PruningPlan(geo, removed_layers=[2, 0])
    assert plan.removed_layers == [0, 2] and plan.kept_layers == [1, 3]
    assert PruningPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert plan.summary()["0"] == {"q_heads": 0, "kv_heads": 0, "channels": 0}
    assert plan.summary()["1"] == {"q_heads": 4, "kv_heads": 4, "channels": 128}
    assert plan.uniform_widths() == {
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 128,
    }
    assert "removed_layers" not in PruningPlan(geo).to_dict()  # width plans are saved as before
    with pytest.raises(ValueError, match="combined with width pruning is not supported"):
        PruningPlan(geo, layers={1: LayerKeep(channels=[0, 1])}, removed_layers=[0])
    with pytest.raises(ValueError, match="must leave some"):
        PruningPlan(geo, removed_layers=[0, 1, 2, 3])
    model, _ = _tiny()
    with pytest.raises(ValueError, match="would leave no layer"):
        remove_layers(model, [0, 1, 2, 3])


def test_a_run_with_recovery_trains_and_saves_the_shortened_model(tmp_path):
    cfg = compose(
        "debug=tiny",
        "method=shortgpt",
        "method.finetune=true",
        "method.calibration.samples=8",
        "method.calibration.seq_len=32",
        "prune.target=params",
        "prune.ratio=0.35",
        "trainer.steps=2",
        "eval.max_windows=2",
        f"output_dir={tmp_path / 'run'}",
    )
    metrics = run(cfg)
    assert metrics["run"]["steps"] == 2 and metrics["run"]["method"] == "shortgpt"
    depth = metrics["depth"]
    assert len(depth["removed_layers"]) == 2 and set(depth["layer_scores"]) == {"0", "1", "2"}
    assert depth["kept_layers"] == sorted({0, 1, 2, 3} - set(depth["removed_layers"]))
    assert metrics["params"]["total_after"] == TINY_TOTAL - 2 * TINY_LAYER
    assert all(math.isfinite(v) for v in metrics["pruned_before_recovery"]["ppl"].values())
    model = load_pruned(tmp_path / "run" / "model")
    assert model.config.num_hidden_layers == 2
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "whole decoder layers are removed (2 of 4" in card


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("prune.target=groups", "prune.ratio=0.9", "prune.exclude_layers=[]"), "would remove every layer"),
        (("prune.target=params", "prune.ratio=0.75", "prune.exclude_layers=[]"), "would remove every layer"),
        (
            ("prune.target=params", "prune.ratio=0.55", "prune.exclude_layers=[0,3]"),
            r"needs 3 layers, but only 2 are prunable \(layers \[0, 3\] are excluded",
        ),
        (
            ("prune.target=params", "prune.ratio=0.35", "prune.layer_range=[1,2]"),
            r"needs 2 layers, but only 1 are prunable \(layers \[0, 2, 3\] are excluded",
        ),
        (("prune.target=params", "prune.ratio=0.1"), "rounds to no layer"),
        (
            ("prune.selection=budget",),
            "prune.selection=budget: method=shortgpt .* removes whole decoder layers",
        ),
        (("prune.attention_unit=query_head",), "prune.attention_unit=query_head: method=shortgpt"),
        (("prune.prune_mlp=false",), "prune.prune_attention/prune_mlp=false: method=shortgpt"),
        (("prune.pattern=2:4",), "prune.pattern '2:4': method=shortgpt .* not N:M patterns"),
        (("trainer.distill.weight=0.5",), "no dense teacher"),
        (("method.kind=iterative",), "prunes one-shot at step 0 only"),
    ],
    ids=[
        "all-layers-groups",
        "all-layers-params",
        "excluded",
        "range",
        "none",
        "selection",
        "unit",
        "mlp",
        "pattern",
        "distill",
        "kind",
    ],
)
def test_bad_depth_input(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        resolve(
            to_config(compose("debug=tiny", "method=shortgpt", *overrides, f"output_dir={tmp_path / 'run'}"))
        )


def test_a_bad_depth_target_is_one_line_from_the_cli(tmp_path):
    out = tmp_path / "run"
    args = ["debug=tiny", "method=shortgpt", "prune.target=params", "prune.ratio=0.9", f"output_dir={out}"]
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("loraprune: error: depth pruning:") and "would remove every layer" in last, (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr and not out.exists()
