"""Where runs put their cuts: kept KV groups and MLP channels per layer, and the share of the removed
parameters that came out of attention, side by side for several runs (``python scripts/compare_cuts.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loraprune.core.budget import params_per_unit
from loraprune.core.structure import Geometry


@dataclass(frozen=True)
class CutProfile:
    """One run's cut: per layer ``(kv_heads, channels)`` kept, and the geometry to weigh them.

    Attributes:
        label: How the run is named in the table.
        kept: ``{layer: (kv_heads, channels)}``.
        kv_params: Parameters one KV group holds (its query heads' q/o rows and columns, its k/v rows).
        channel_params: Parameters one MLP channel holds (its gate/up rows and down column).
    """

    label: str
    kept: dict[int, tuple[int, int]]
    kv_params: int
    channel_params: int

    def removed_attention_share(self, full: tuple[int, int]) -> float:
        """The fraction of the removed parameters that came out of attention."""
        kv = sum(full[0] - k for k, _ in self.kept.values()) * self.kv_params
        mlp = sum(full[1] - c for _, c in self.kept.values()) * self.channel_params
        return kv / (kv + mlp) if kv + mlp else 0.0


def profile_from_metrics(label: str, metrics: dict[str, Any], geo: Geometry) -> CutProfile:
    """A run's :class:`CutProfile` from its ``metrics.json`` and the model's geometry (the parameters of
    a KV group and of an MLP channel as :func:`loraprune.core.budget.params_per_unit` counts them).

    Raises:
        KeyError: The run has no ``kept_per_layer`` (an N:M run).
    """
    per = params_per_unit(geo, "kv_group")
    kept = {int(i): (int(v["kv_heads"]), int(v["channels"])) for i, v in metrics["kept_per_layer"].items()}
    return CutProfile(label, kept, per["attn"], per["mlp"])


def cut_table(profiles: Sequence[CutProfile], full: tuple[int, int]) -> str:
    """Markdown: one row per layer, ``kv / channels`` kept by each run, then the attention share of the
    removed parameters."""
    layers = sorted({i for p in profiles for i in p.kept})
    head = "| layer | " + " | ".join(p.label for p in profiles) + " |"
    lines = [head, "|--:|" + "--:|" * len(profiles)]
    for i in layers:
        cells = [f"{p.kept[i][0]} / {p.kept[i][1]}" if i in p.kept else "–" for p in profiles]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    shares = [f"{100 * p.removed_attention_share(full):.1f}%" for p in profiles]
    lines.append("| removed from attention | " + " | ".join(shares) + " |")
    lines += ["", f"Cells: KV groups kept (of {full[0]}) / MLP channels kept (of {full[1]})."]
    return "\n".join(lines) + "\n"
