"""A run's per-window losses (``window_losses.json``, format ``loraprune.window_losses/1``), read and checked.

One file per run: for each stage (``dense``, ``pruned``, ``pruned_before_recovery``) and perplexity set,
the index of every evaluated window in the set's token stream, the document it starts in and its summed
NLL over ``tokens_per_window`` predicted tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WINDOW_LOSSES = "window_losses.json"
FORMAT = "loraprune.window_losses/1"
# the stage of window_losses.json each kind of row reads
STAGE_OF_KIND = {"run": "pruned", "dense": "dense", "before_recovery": "pruned_before_recovery"}


@dataclass(frozen=True)
class SetLosses:
    """One set's evaluated windows: their indices, documents and summed NLL."""

    window: tuple[int, ...]
    document: tuple[int, ...]
    nll: tuple[float, ...]
    windows_total: int | None = None
    documents_total: int | None = None


@dataclass(frozen=True)
class StageLosses:
    """One stage of one run: every set's windows, and the predicted tokens per window."""

    tokens_per_window: int
    sets: dict[str, SetLosses]


class WindowLossesError(ValueError):
    """A ``window_losses.json`` that cannot be read or has not the documented shape."""


def _set(name: str, entry: Any, path: Path) -> SetLosses:
    try:
        window, document, nll = (entry[k] for k in ("window", "document", "nll"))
    except (KeyError, TypeError) as err:
        raise WindowLossesError(f"{path}: set {name!r} lacks window/document/nll") from err
    if not len(window) == len(document) == len(nll):
        raise WindowLossesError(f"{path}: set {name!r} has window/document/nll of different lengths")
    return SetLosses(
        tuple(int(w) for w in window),
        tuple(int(d) for d in document),
        tuple(float(x) for x in nll),
        entry.get("windows_total"),
        entry.get("documents_total"),
    )


def parse_window_losses(data: Any, path: Path) -> dict[str, StageLosses]:
    """The stages of a loaded ``window_losses.json`` (``path`` only names it in errors)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise WindowLossesError(f"{path}: not a {FORMAT} file")
    tokens = int(data["tokens_per_window"])
    return {
        stage: StageLosses(tokens, {name: _set(name, entry, path) for name, entry in sets.items()})
        for stage, sets in data.get("stages", {}).items()
    }


def read_window_losses(run_dir: str | Path) -> dict[str, StageLosses] | None:
    """The stages of ``run_dir``'s ``window_losses.json``; ``None`` when it has none.

    Raises:
        WindowLossesError: the file exists but is not valid JSON of the documented shape.
    """
    path = Path(run_dir) / WINDOW_LOSSES
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise WindowLossesError(f"{path}: {err}") from err
    return parse_window_losses(data, path)
