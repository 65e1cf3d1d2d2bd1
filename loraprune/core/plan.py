"""The pruning plan: kept heads and channels per layer; replayable on a fresh model, stored as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from loraprune.core.structure import AttentionUnit, Geometry


@dataclass
class LayerKeep:
    """What one pruned layer keeps (``None``: all of it)."""

    q_heads: list[int] | None = None
    kv_heads: list[int] | None = None
    channels: list[int] | None = None


@dataclass
class PruningPlan:
    """Kept query heads, KV heads and MLP channels for every pruned layer of a model of ``geometry``."""

    geometry: Geometry
    attention_unit: AttentionUnit = "kv_group"
    layers: dict[int, LayerKeep] = field(default_factory=dict)

    @classmethod
    def from_units(
        cls, geo: Geometry, unit: AttentionUnit, kept: dict[tuple[int, str], list[int]]
    ) -> PruningPlan:
        """Turn kept unit indices per (layer, kind) into kept heads/channels."""
        plan = cls(geo, unit)
        rep = geo.queries_per_kv
        for (layer, kind), units in sorted(kept.items()):
            lk = plan.layers.setdefault(layer, LayerKeep())
            if kind == "mlp":
                lk.channels = sorted(units)
            elif unit == "kv_group" or rep == 1:
                lk.kv_heads = sorted(units)
                lk.q_heads = [g * rep + j for g in sorted(units) for j in range(rep)]
            else:
                lk.q_heads = sorted(units)
                lk.kv_heads = list(range(geo.num_kv_heads))
        return plan

    def to_dict(self) -> dict:
        return {
            "geometry": asdict(self.geometry),
            "attention_unit": self.attention_unit,
            "layers": {str(i): asdict(lk) for i, lk in sorted(self.layers.items())},
        }

    @classmethod
    def from_dict(cls, d: dict) -> PruningPlan:
        return cls(
            Geometry(**d["geometry"]),
            d["attention_unit"],
            {int(i): LayerKeep(**lk) for i, lk in d["layers"].items()},
        )

    def uniform_widths(self) -> dict[str, int] | None:
        """Kept query heads, KV heads and channels when every layer keeps the same numbers, else None.

        Then a plain HF config with these sizes describes the pruned model exactly.
        """
        widths = {(v["q_heads"], v["kv_heads"], v["channels"]) for v in self.summary().values()}
        if len(widths) != 1:
            return None
        q, kv, ch = widths.pop()
        return {"num_attention_heads": q, "num_key_value_heads": kv, "intermediate_size": ch}

    def summary(self) -> dict[str, dict[str, int]]:
        """Kept query heads, KV heads and channels per layer (every layer, pruned or not)."""
        g = self.geometry
        out = {}
        for i in range(g.num_layers):
            lk = self.layers.get(i, LayerKeep())
            out[str(i)] = {
                "q_heads": len(lk.q_heads) if lk.q_heads is not None else g.num_heads,
                "kv_heads": len(lk.kv_heads) if lk.kv_heads is not None else g.num_kv_heads,
                "channels": len(lk.channels) if lk.channels is not None else g.intermediate_size,
            }
        return out


def head_channels(heads: list[int], head_dim: int) -> torch.Tensor:
    """Row/column indices of the given heads in a projection."""
    idx = torch.tensor(heads, dtype=torch.long)
    return (idx[:, None] * head_dim + torch.arange(head_dim)[None, :]).flatten()
