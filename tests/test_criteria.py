import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from loraprune.core.importance import MovingAverage, unit_scores
from loraprune.core.structure import GroupKind, Slice
from loraprune.criteria import Criterion, build_criterion, estimated_weight_grad, lora_tensors


def test_estimated_gradient_formula_by_hand():
    a = torch.tensor([[1.0, 2.0, 0.0]])  # r=1, in=3
    b = torch.tensor([[1.0], [-1.0]])  # out=2
    ga = torch.tensor([[0.5, 0.0, 1.0]])
    gb = torch.tensor([[2.0], [0.0]])
    # G = gB A + B gA - gB gA, element by element
    expected = torch.tensor(
        [
            [2 * 1 + 1 * 0.5 - 2 * 0.5, 2 * 2 + 1 * 0 - 0, 0 + 1 * 1 - 2 * 1],
            [0 + -0.5 - 0, 0 + 0 - 0, 0 + -1 - 0],
        ]
    )
    assert torch.allclose(estimated_weight_grad(a, b, ga, gb), expected)


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 2, bias=False)


def _lora_toy():
    toy = _Toy()
    with torch.no_grad():
        toy.proj.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0]]))
    model = get_peft_model(toy, LoraConfig(r=1, lora_alpha=2, target_modules=["proj"]))
    layer = model.base_model.model.proj
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.tensor([[1.0, 0.0, 1.0]]))
        layer.lora_B["default"].weight.copy_(torch.tensor([[0.5], [1.0]]))
    layer.lora_A["default"].weight.grad = torch.tensor([[0.1, 0.2, 0.0]])
    layer.lora_B["default"].weight.grad = torch.tensor([[1.0], [0.0]])
    return layer


def test_loraprune_element_scores_by_hand():
    layer = _lora_toy()
    s = 2.0  # alpha / r
    w_eff = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0]]) + s * torch.tensor(
        [[0.5], [1.0]]
    ) @ torch.tensor([[1.0, 0.0, 1.0]])
    g = (
        torch.tensor([[1.0], [0.0]]) @ torch.tensor([[1.0, 0.0, 1.0]])
        + torch.tensor([[0.5], [1.0]]) @ torch.tensor([[0.1, 0.2, 0.0]])
        - torch.tensor([[1.0], [0.0]]) @ torch.tensor([[0.1, 0.2, 0.0]])
    )
    got = build_criterion("loraprune").element_scores(layer)
    assert torch.allclose(got, (g * w_eff).abs())
    assert lora_tensors(layer).scaling == s


def test_magnitude_scores_use_merged_weight():
    layer = _lora_toy()
    expected = (
        lora_tensors(layer).weight + 2.0 * torch.tensor([[0.5], [1.0]]) @ torch.tensor([[1.0, 0.0, 1.0]])
    ).abs()
    assert torch.allclose(build_criterion("magnitude").element_scores(layer), expected)


def test_true_grad_scores():
    layer = _lora_toy()
    layer.base_layer.weight.grad = torch.ones(2, 3)
    assert torch.allclose(
        build_criterion("grad").element_scores(layer), lora_tensors(layer).effective_weight().abs()
    )


class _ConstCriterion(Criterion):
    name = "const"

    def __init__(self, table):
        super().__init__()
        self.table = table

    def element_scores(self, module):
        return self.table[module.tag]


def test_unit_scores_normalise_per_module_and_sum_per_unit():
    layer = nn.Module()
    layer.self_attn = nn.Module()
    layer.mlp = nn.Module()
    for name in ("gate_proj", "down_proj"):
        m = nn.Linear(2, 2)
        m.tag = name
        setattr(layer.mlp, name, m)
    table = {
        "gate_proj": torch.tensor([[3.0, 1.0], [0.0, 0.0]]),  # rows: 4, 0 -> normalised 1, 0
        "down_proj": torch.tensor([[1.0, 2.0], [2.0, 2.0]]),
    }  # cols: 3, 4 -> 0.6, 0.8
    kind = GroupKind(
        "mlp", 2, (Slice("gate_proj", 0, torch.tensor([0, 1])), Slice("down_proj", 1, torch.tensor([0, 1])))
    )
    got = unit_scores(layer, kind, _ConstCriterion(table))
    assert torch.allclose(got, torch.tensor([1.6, 0.8]))
    raw = unit_scores(layer, kind, _ConstCriterion(table), normalize=False)
    assert torch.allclose(raw, torch.tensor([7.0, 4.0]))


def test_moving_average_and_nan_skip():
    ema = MovingAverage(beta=0.9)
    ema.update({(0, "mlp"): torch.tensor([1.0, 2.0])})
    assert torch.allclose(ema.get((0, "mlp")), torch.tensor([0.1, 0.2]))
    assert not ema.update({(0, "mlp"): torch.tensor([float("nan"), 1.0])})
    assert torch.allclose(ema.get((0, "mlp")), torch.tensor([0.1, 0.2]))
    ema.update({(0, "mlp"): torch.tensor([1.0, 0.0])})
    assert torch.allclose(ema.get((0, "mlp")), torch.tensor([0.19, 0.18]))
    first = MovingAverage(beta=0.5, init="first")
    first.update({(0, "a"): torch.tensor([2.0])})
    assert torch.allclose(first.get((0, "a")), torch.tensor([2.0]))


def test_moving_average_is_exactly_the_formula():
    """Ī ← λĪ + (1−λ)I to the last bit over many updates (rounding flips near-tied groups otherwise)."""
    g = torch.Generator().manual_seed(0)
    ema, expected = MovingAverage(beta=0.9), torch.zeros(1000)
    for _ in range(20):
        s = torch.rand(1000, generator=g)
        ema.update({(0, "mlp"): s})
        expected = 0.9 * expected + (1 - 0.9) * s
    assert torch.equal(ema.get((0, "mlp")), expected)


def test_blocked_channel_sums_equal_the_full_matrix_sums():
    """lora_channel_sums (blocks of rows, G regrouped as one rank-2r product) == the element scores summed,
    for |G⊙W'| and (G⊙W')², with blocks that do not divide the rows, on an fp32 and a bf16 base."""
    from loraprune.criteria.lora_grad import lora_channel_sums

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        w = torch.randn(37, 24, generator=g).to(dtype)
        a, b = torch.randn(4, 24, generator=g), torch.randn(37, 4, generator=g)
        ga, gb = torch.randn(4, 24, generator=g), torch.randn(37, 4, generator=g)
        t = lora_tensors(nn.Linear(24, 37, bias=False))
        t = type(t)(w, nn.Parameter(a), nn.Parameter(b), 1.5)
        e = estimated_weight_grad(a, b, ga, gb) * t.effective_weight()
        for power, full in ((1, e.abs()), (2, e.square())):
            for block in (24 * 5, 10_000):  # 5 rows per block (the last one short), and one block
                rows, cols = lora_channel_sums(t, ga, gb, power=power, block_elements=block)
                assert torch.allclose(rows, full.sum(1), rtol=1e-5, atol=1e-4)
                assert torch.allclose(cols, full.sum(0), rtol=1e-5, atol=1e-4)
        only_rows = lora_channel_sums(t, ga, gb, columns=False)
        assert only_rows[1] is None and torch.allclose(only_rows[0], e.abs().sum(1), rtol=1e-5, atol=1e-4)
