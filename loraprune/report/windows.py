"""A run's per-window losses (``window_losses.json``, format ``loraprune.window_losses/1``), read and checked.

One file per run: for each stage (``dense``, ``pruned``, ``pruned_before_recovery``) and perplexity set,
the index of every evaluated window in the set's token stream, the document it starts in and its summed
NLL over ``tokens_per_window`` predicted tokens. The file is parsed by the run layer
(:func:`loraprune.run.evaluate.read_window_losses`); this module turns its failures into one-line errors
naming the file (and the set) and checks what the report relies on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from loraprune.evaluation.ppl import WindowLosses
from loraprune.run import evaluate
from loraprune.run.evaluate import WINDOW_LOSSES

__all__ = ["STAGE_OF_KIND", "WINDOW_LOSSES", "StageLosses", "WindowLossesError", "read_window_losses"]

# the stage of window_losses.json each kind of row reads
STAGE_OF_KIND = {"run": "pruned", "dense": "dense", "before_recovery": "pruned_before_recovery"}
_KEYS = ("window", "document", "nll", "windows_total", "documents_total")


@dataclass(frozen=True)
class StageLosses:
    """One stage of one run: every set's windows, and the predicted tokens per window."""

    tokens_per_window: int
    sets: dict[str, WindowLosses]


class WindowLossesError(ValueError):
    """A ``window_losses.json`` that cannot be read or has not the documented shape."""


def _culprit(path: Path) -> str:
    """What a file that the run layer's reader choked on lacks (read again only to say so)."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    stages = raw.get("stages")
    if "tokens_per_window" not in raw or not isinstance(stages, dict):
        return "lacks tokens_per_window or stages"
    for sets in stages.values():
        for name, entry in sets.items() if isinstance(sets, dict) else ():
            if not isinstance(entry, dict) or any(k not in entry for k in _KEYS):
                return f"set {name!r} lacks {'/'.join(_KEYS)}"
    return "has not the documented shape"


def read_window_losses(run_dir: str | Path) -> dict[str, StageLosses] | None:
    """The stages of ``run_dir``'s ``window_losses.json``; ``None`` when it has none.

    Raises:
        WindowLossesError: the file exists but is not valid JSON of the documented shape (its message
            names the file, and the set at fault when one is).
    """
    path = Path(run_dir) / WINDOW_LOSSES
    if not path.is_file():
        return None
    try:
        stages = evaluate.read_window_losses(path)
    except (OSError, ValueError) as err:  # unreadable, not JSON, not the format
        raise WindowLossesError(str(err) if str(path) in str(err) else f"{path}: {err}") from err
    except (KeyError, TypeError, AttributeError) as err:
        raise WindowLossesError(f"{path}: {_culprit(path)}") from err
    out = {}
    for stage, sets in stages.items():
        for name, wl in sets.items():
            if not len(wl.window) == len(wl.document) == len(wl.nll):
                raise WindowLossesError(f"{path}: set {name!r} has window/document/nll of different lengths")
        tokens = {wl.tokens_per_window for wl in sets.values()}
        out[stage] = StageLosses(tokens.pop() if tokens else 0, sets)
    return out
