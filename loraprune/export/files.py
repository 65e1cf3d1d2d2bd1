"""What a saved directory holds beyond weights and tokenizer: the modeling files of the per-layer form,
a ``config.json`` that every supported transformers reads alike, and the N:M pattern of the weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from loraprune.core.structure import ALL_PROJECTIONS, decoder_layers, projection

EXPORT_DIR = Path(__file__).resolve().parent
CONFIG_FILE = "configuration_pruned_llama.py"
MODELING_FILE = "modeling_pruned_llama.py"
AUTO_MAP = {
    "AutoConfig": "configuration_pruned_llama.PrunedLlamaConfig",
    "AutoModel": "modeling_pruned_llama.PrunedLlamaModel",
    "AutoModelForCausalLM": "modeling_pruned_llama.PrunedLlamaForCausalLM",
}
PER_LAYER_ARCHITECTURE = "PrunedLlamaForCausalLM"


def copy_modeling_files(directory: Path) -> None:
    """Copy the standalone configuration and modeling files, verbatim, into ``directory``."""
    for name in (CONFIG_FILE, MODELING_FILE):
        shutil.copyfile(EXPORT_DIR / name, Path(directory) / name)


def finish_config_json(path: Path, per_layer: bool, architecture: str | None = None) -> dict[str, Any]:
    """Rewrite a saved ``config.json`` so it loads alike under transformers 4.57 and 5.x.

    The per-layer form names its class and ``auto_map``; ``architecture`` overrides the class named
    otherwise (a per-layer model saved as stock LLaMA). Configs written by transformers 5 keep RoPE in
    ``rope_parameters``, which 4.x does not read: ``rope_theta`` (and ``rope_scaling`` for scaled RoPE)
    are added next to it, which 5.x reads back to the same ``rope_parameters``.
    """
    path = Path(path)
    data = json.loads(path.read_text())
    if per_layer:
        data["architectures"] = [PER_LAYER_ARCHITECTURE]
        data["auto_map"] = dict(AUTO_MAP)
    elif architecture:
        data["architectures"] = [architecture]
        data.pop("auto_map", None)
    rope = data.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in data:
        data["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default" and not data.get("rope_scaling"):
            data["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if "dtype" in data and "torch_dtype" not in data:
        data["torch_dtype"] = data["dtype"]
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data


def finish_tokenizer_config(directory: Path) -> None:
    """Name the tokenizer class so transformers 4.x reads it too: transformers 5 saves its generic fast
    tokenizer as ``TokenizersBackend``, which 4.x does not know; ``PreTrainedTokenizerFast`` is the same
    class in both."""
    path = Path(directory) / "tokenizer_config.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    if data.get("tokenizer_class") == "TokenizersBackend":
        data["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(data, indent=2) + "\n")


def nm_pattern(model: nn.Module, patterns: tuple[str, ...] = ("2:4",)) -> dict[str, Any] | None:
    """The semi-structured pattern the decoder projections follow exactly, if any.

    A projection follows ``N:M`` when every group of ``M`` consecutive inputs of every row has at most
    ``N`` non-zeros and at least ``1 - N/M`` of its weights are zero. Returns ``{"pattern", "projections"
    (layer.name of each), "sparsity" (over them), "exact": True}`` for the first pattern any projection
    follows, else None.
    """
    from loraprune.core.nm import is_nm_sparse, parse_pattern

    layers = decoder_layers(model)
    for pattern in patterns:
        n, m = parse_pattern(pattern)
        names, zeros, total = [], 0, 0
        for i, layer in enumerate(layers):
            for name in ALL_PROJECTIONS:
                weight = projection(layer, name).weight.detach()
                if weight.numel() == 0:  # a projection pruned to nothing follows no pattern
                    continue
                nz = int((weight == 0).sum())
                if nz >= weight.numel() * (1 - n / m) and is_nm_sparse(weight, n, m):
                    names.append(f"{i}.{name}")
                    zeros, total = zeros + nz, total + weight.numel()
        if names:
            return {"pattern": pattern, "projections": names, "sparsity": zeros / total, "exact": True}
    return None
