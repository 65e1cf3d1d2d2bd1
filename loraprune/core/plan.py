"""The pruning plan: kept heads and channels per layer, or the whole layers removed (depth pruning);
replayable on a fresh model, stored as JSON."""

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
    """Kept query heads, KV heads and MLP channels for every pruned layer of a model of ``geometry``, or
    the whole decoder layers a depth cut removes (``removed_layers``, indices of the base model; the
    layers left keep their widths). A plan holds one of the two: a depth cut combined with width pruning
    is not supported.
    """

    geometry: Geometry
    attention_unit: AttentionUnit = "kv_group"
    layers: dict[int, LayerKeep] = field(default_factory=dict)
    removed_layers: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.removed_layers = sorted(set(self.removed_layers))
        if self.removed_layers and any(
            keep != LayerKeep() for i, keep in self.layers.items() if i not in self.removed_layers
        ):
            raise ValueError("a depth cut (removed_layers) combined with width pruning is not supported")
        bad = [i for i in self.removed_layers if not 0 <= i < self.geometry.num_layers]
        if bad or len(self.removed_layers) >= self.geometry.num_layers:
            raise ValueError(
                f"removed_layers {self.removed_layers} must leave some of the {self.geometry.num_layers} "
                "layers and lie within them"
            )

    @property
    def kept_layers(self) -> list[int]:
        """Indices (in the base model) of the decoder layers the pruned model keeps, in order."""
        return [i for i in range(self.geometry.num_layers) if i not in set(self.removed_layers)]

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
        """The plan as JSON-ready data (``removed_layers`` only for a depth cut)."""
        out = {
            "geometry": asdict(self.geometry),
            "attention_unit": self.attention_unit,
            "layers": {str(i): asdict(lk) for i, lk in sorted(self.layers.items())},
        }
        if self.removed_layers:
            out["removed_layers"] = list(self.removed_layers)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> PruningPlan:
        return cls(
            Geometry(**d["geometry"]),
            d["attention_unit"],
            {int(i): LayerKeep(**lk) for i, lk in d["layers"].items()},
            [int(i) for i in d.get("removed_layers", [])],
        )

    def uniform_widths(self) -> dict[str, int] | None:
        """Kept query heads, KV heads and channels when every layer keeps the same numbers, else None.

        Then a plain HF config with these sizes describes the pruned model exactly. Removed layers (a
        depth cut) do not count: the model has none of them.
        """
        summary = self.summary()
        widths = {
            (summary[str(i)]["q_heads"], summary[str(i)]["kv_heads"], summary[str(i)]["channels"])
            for i in self.kept_layers
        }
        if len(widths) != 1:
            return None
        q, kv, ch = widths.pop()
        return {"num_attention_heads": q, "num_key_value_heads": kv, "intermediate_size": ch}

    def summary(self) -> dict[str, dict[str, int]]:
        """Kept query heads, KV heads and channels per layer (every layer of the base model, pruned or
        not; a layer a depth cut removes keeps none)."""
        g = self.geometry
        out = {}
        for i in range(g.num_layers):
            if i in self.removed_layers:
                out[str(i)] = {"q_heads": 0, "kv_heads": 0, "channels": 0}
                continue
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
