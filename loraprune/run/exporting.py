"""Re-exporting a run's model (``loraprune-export``, :mod:`loraprune.cli.export`): load it, cast it, write
it in a chosen form with its model card, upload it to the Hub, or write one GGUF file for llama.cpp."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import yaml

from loraprune.export.card import CARD_DATA_FILE, ModelCard

PROG = "loraprune-export"
_TRUE = {"1", "ON", "YES", "TRUE"}


class ExportError(Exception):
    """A bad input or an impossible request: reported as one line, exit code 2."""


def model_dir_of(run_dir: Path) -> Path:
    """The saved model of a run directory (``RUN_DIR/model``) or ``run_dir`` itself if it is one."""
    from loraprune.train.checkpoint import PLAN_FILE

    for candidate in (run_dir / "model", run_dir):
        if (candidate / PLAN_FILE).is_file():
            return candidate
    raise ExportError(f"{run_dir} holds no saved pruned model (no {PLAN_FILE} in it or in model/)")


def card_of(run_dir: Path, model_dir: Path) -> ModelCard:
    """The card saved with the model, completed from the run's files where it lacks something:
    ``metrics.json``, ``config.yaml`` and the command from Hydra's ``.hydra/overrides.yaml``."""
    metrics, config = run_dir / "metrics.json", run_dir / "config.yaml"
    overrides = run_dir / ".hydra" / "overrides.yaml"
    command = None
    if overrides.is_file():
        words = [str(o) for o in yaml.safe_load(overrides.read_text()) or []]
        command = " ".join(["loraprune", *(shlex.quote(w) for w in words)])
    card = ModelCard.from_run(
        json.loads(metrics.read_text()) if metrics.is_file() else None,
        yaml.safe_load(config.read_text()) if config.is_file() else None,
        command,
    ).to_dict()
    saved = model_dir / CARD_DATA_FILE
    if saved.is_file():
        card.update({k: v for k, v in json.loads(saved.read_text()).items() if v not in (None, "", [], {})})
    return ModelCard.from_dict(card)


def check_can_push() -> str:
    """The token to push with; raises :class:`ExportError` when offline or without one."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in _TRUE:
            raise ExportError(f"--push-to-hub needs the network, but {name} is set: unset it to upload")
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise ExportError(
            "--push-to-hub needs a Hugging Face token with write access: run `hf auth login` or set HF_TOKEN"
        )
    return token


def push(folder: Path, repo_id: str, token: str, private: bool = False) -> str:
    """Create ``repo_id`` if needed and upload ``folder``; returns the repo's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, exist_ok=True, private=private, repo_type="model")
        api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, commit_message="Upload pruned model (loraprune)"
        )
    except Exception as e:  # noqa: BLE001 - network, auth and permission errors all end the same way
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"cannot push to {repo_id}: {first}") from e
    return str(url)


def export(
    run_dir: str | Path,
    out: str | Path,
    *,
    dtype: str | None = None,
    form: str = "auto",
    push_to_hub: str | None = None,
    private: bool = False,
) -> Path:
    """Re-export a run's model to ``out`` (see the module docstring); returns ``out``."""
    from loraprune.core.plan import PruningPlan
    from loraprune.export.files import nm_pattern
    from loraprune.models.loading import resolve_dtype
    from loraprune.train.checkpoint import PLAN_FILE, load_pruned, save_pruned

    run_dir, out = Path(run_dir), Path(out)
    token = check_can_push() if push_to_hub else None
    model_dir = model_dir_of(run_dir)
    if out.resolve() == model_dir.resolve():
        raise ExportError(f"--out {out} is the model being exported: choose another folder")
    try:
        torch_dtype = resolve_dtype(dtype, "cpu") if dtype else None
    except ValueError as e:
        raise ExportError(str(e)) from None
    model, tokenizer = load_pruned(model_dir, with_tokenizer=True)
    before = nm_pattern(model)
    if torch_dtype is not None:
        model.to(torch_dtype)
    if before is not None and (nm_pattern(model) or {}).get("projections") != before["projections"]:
        raise ExportError(f"casting to {dtype} broke the {before['pattern']} pattern of some projections")
    plan = PruningPlan.from_dict(json.loads((model_dir / PLAN_FILE).read_text()))
    try:
        save_pruned(
            model, tokenizer, plan, out, card=card_of(run_dir, model_dir), form=form, model_id=push_to_hub
        )
    except ValueError as e:
        raise ExportError(str(e)) from None
    if push_to_hub:
        url = push(out, push_to_hub, token, private)
        print(f"pushed {out} to {url}", file=sys.stderr)
    return out


def export_gguf(run_dir: str | Path, out: str | Path, quant: str = "f16") -> dict:
    """Write a run's model as one GGUF file for llama.cpp (:mod:`loraprune.export.gguf_model`);
    every bad input is refused before anything is written."""
    from loraprune.core.plan import PruningPlan
    from loraprune.export.gguf_errors import GGUFExportError
    from loraprune.export.gguf_model import write_gguf
    from loraprune.export.gguf_quant import QUANT_TYPES, binding, parse_type
    from loraprune.train.checkpoint import PLAN_FILE, load_pruned

    run_dir, out = Path(run_dir), Path(out)
    try:
        quant = parse_type(quant)
        if quant in QUANT_TYPES:
            binding()
        model_dir = model_dir_of(run_dir)
        if out.is_dir():
            raise ExportError(f"--out {out} is a folder: a GGUF export writes one file ({out}/model.gguf)")
        model, tokenizer = load_pruned(model_dir, with_tokenizer=True)
        plan = PruningPlan.from_dict(json.loads((model_dir / PLAN_FILE).read_text()))
        return write_gguf(model, tokenizer, out, quant=quant, card=card_of(run_dir, model_dir), plan=plan)
    except GGUFExportError as e:
        raise ExportError(str(e)) from None
