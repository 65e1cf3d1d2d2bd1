"""bf16 end to end: the base in bf16, LoRA, optimizer state, importance and moving averages in fp32, and
the same groups chosen as in fp32 where the margins are clear."""

from __future__ import annotations

import torch

from loraprune.config.schema import LoraConfig, TrainerConfig
from loraprune.core.schedule import build_schedule
from loraprune.core.structure import Geometry, decoder_layers
from loraprune.criteria import build_criterion
from loraprune.models.adapters import add_lora
from loraprune.models.loading import TinySpec, load_model
from loraprune.pruners import CalibrationData, PrunerSettings, build_pruner
from loraprune.train.loop import PruningHooks, finetune

WEAK_HEADS, WEAK_CHANNELS = (1, 3), tuple(range(0, 128, 2))  # of 4 heads and 128 channels per layer


def _weakened(dtype: str):
    """A tiny MHA model whose heads 1, 3 and even MLP channels are scaled by 0.02 (clear margins)."""
    model, tok = load_model("tiny", tiny=TinySpec(), dtype="float32", device="cpu")
    hd = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        for layer in decoder_layers(model):
            for h in WEAK_HEADS:
                rows = slice(h * hd, (h + 1) * hd)
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.weight[rows] *= 0.02
                layer.self_attn.o_proj.weight[:, rows] *= 0.02
            ch = list(WEAK_CHANNELS)
            layer.mlp.gate_proj.weight[ch] *= 0.02
            layer.mlp.up_proj.weight[ch] *= 0.02
            layer.mlp.down_proj.weight[:, ch] *= 0.02
    return model.to(getattr(torch, dtype)), tok


def _samples(n: int = 8, length: int = 24) -> list[dict]:
    ids = torch.randint(3, 259, (n, length), generator=torch.Generator().manual_seed(0)).tolist()
    return [{"input_ids": row, "labels": row} for row in ids]


def _prune(dtype: str):
    torch.manual_seed(0)
    model, tok = _weakened(dtype)
    pm = add_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0))
    settings = PrunerSettings(ratio=0.5, prune_freq=1, excluded_layers=[0])
    schedule = build_schedule("cubic", 0.5, 4)
    pruner = build_pruner(
        pm, Geometry.from_config(model.config), build_criterion("loraprune"), settings, schedule
    )
    pruner.prepare(CalibrationData(_samples(), tok.pad_token_id))
    lora = [p for n, p in pm.named_parameters() if "lora_" in n]
    trainer = TrainerConfig(batch_size=2, micro_batch_size=1, lr=1e-3, warmup_steps=0)
    seen: dict = {}

    class Spy(PruningHooks):  # look at the moving average and Adam's state mid-run
        def after_step(self, step):
            if step == 1:
                seen["ema"] = {v.dtype for v in self.pruner.ema.values.values()}
            return super().after_step(step)

    finetune(pm, _samples(), trainer, 4, tok.pad_token_id, Spy(pruner, 4))
    result = pruner.finalize()
    return result.plan, {p.dtype for p in lora}, seen, model


def test_bf16_keeps_lora_and_importance_in_fp32_and_chooses_the_same_groups():
    plan32, _, _, _ = _prune("float32")
    plan16, lora_dtypes, seen, model = _prune("bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16  # the frozen base stays bf16
    assert lora_dtypes == {torch.float32}  # LoRA (and so Adam's state) in fp32
    assert seen["ema"] == {torch.float32}  # importance and its moving average in fp32
    for i in range(1, 4):
        assert plan16.layers[i].q_heads == plan32.layers[i].q_heads == [0, 2]
        assert plan16.layers[i].channels == plan32.layers[i].channels
        assert set(plan16.layers[i].channels) == set(range(1, 128, 2))
