"""The settings a reader needs to tell rows apart (selection, recovery steps, distillation, reconstruction,
fine-tune data).

Each run's settings are read from its ``metrics.json`` ``run`` block, else from the resolved
``config.yaml`` beside it. Runs that differ in any of them are never averaged together (only seeds are),
and within a ratio block where runs differ in a setting, every row's label names its value, e.g.
``Wanda-sp (budget)`` next to ``LoRAPrune (local)``; a selection other than the method's own is named
in any case (``Wanda-sp (budget)`` beside mask Fisher, whose own selection is budget).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

# the settings, in label order
SETTINGS = ("selection", "steps", "distill", "reconstruction", "data")


def _get(tree: dict[str, Any] | None, dotted: str) -> Any:
    node: Any = tree or {}
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _selection(run: dict[str, Any], config: dict[str, Any] | None) -> str | None:
    value = run.get("selection") or _get(config, "prune.selection") or _get(config, "method.selection")
    return None if value is None else str(value)


def _steps(run: dict[str, Any], config: dict[str, Any] | None) -> str | None:
    steps = run.get("steps")
    if steps is None:
        return None
    return "no recovery" if int(steps) == 0 else f"{int(steps)} steps"


def _distill(run: dict[str, Any], config: dict[str, Any] | None) -> str | None:
    weight = run.get("distill")
    if isinstance(weight, dict):
        weight = weight.get("weight")
    if weight is None:
        weight = _get(config, "trainer.distill.weight")
    if weight is None:
        return None
    return f"distill {float(weight):g}" if float(weight) > 0 else "no distill"


def _reconstruction(run: dict[str, Any], config: dict[str, Any] | None) -> str | None:
    """``run.reconstruct`` (prune.reconstruct in force; older runs: ``reconstruction``), else the config's
    ``prune.reconstruct`` / ``method.reconstruct``; a config from before the option (neither key) ran
    without reconstruction, except FLAP's bias compensation (its ``options.bias``)."""
    value = run.get("reconstruct", run.get("reconstruction"))
    if value is None and config is not None:
        value = _get(config, "prune.reconstruct") or _get(config, "method.reconstruct")
        if value is None and _get(config, "method") is not None:
            flap = (run.get("criterion") or _get(config, "method.criterion")) == "flap"
            value = "bias" if flap and _get(config, "method.options.bias") is not False else "none"
    if value is None:
        return None
    if value in (False, "", "none", "off"):
        return "no reconstruction"
    return "reconstruction" if value is True else f"reconstruction {value}"


def _data(run: dict[str, Any], config: dict[str, Any] | None) -> str | None:
    """The fine-tune (and calibration) text: a run on mixed-domain text is not a seed of a Wikipedia run."""
    value = run.get("data") or _get(config, "data.name")
    return None if value is None else f"data {value}"


_READERS: dict[str, Callable[[dict[str, Any], dict[str, Any] | None], str | None]] = {
    "selection": _selection,
    "steps": _steps,
    "distill": _distill,
    "reconstruction": _reconstruction,
    "data": _data,
}


def run_settings(run: dict[str, Any], config: dict[str, Any] | None = None) -> tuple[tuple[str, str], ...]:
    """``(setting, shown value)`` pairs of one run, in :data:`SETTINGS` order; unknown settings left out.
    A selection other than the method's own (``prune.selection`` set against ``method.selection``) is
    also recorded as ``("overridden", selection)``: the label names it even when no row beside it differs.

    Args:
        run: the ``run`` block of its ``metrics.json``.
        config: its resolved ``config.yaml``, if any.
    """
    out = []
    for name in SETTINGS:
        value = _READERS[name](run, config)
        if value is not None:
            out.append((name, value))
    chosen, own = _get(config, "prune.selection"), _get(config, "method.selection")
    if chosen is not None and own is not None and chosen != own:
        out.append(("overridden", str(chosen)))
    return tuple(out)


class Settled(Protocol):
    """What :func:`qualify` reads of a row (:class:`loraprune.report.rows.Row`)."""

    kind: str
    settings: tuple[tuple[str, str], ...]

    @property
    def block(self) -> tuple:
        """One model at one ratio of one target, or one N:M pattern."""
        ...


def qualify(rows: Sequence[Settled]) -> dict[int, str]:
    """The label qualifier of each row (by index) whose ratio block holds runs that differ in a setting.

    A block is one model's rows at one ratio of one target, or one N:M pattern (``Row.block``). A setting
    is named when the runs of the block that record it hold more than one value of it; then every row of
    the block that records it names its value.
    """
    blocks: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        if row.kind in ("run", "before_recovery", "failed"):
            blocks.setdefault(row.block, []).append(i)
    out: dict[int, str] = {}
    for members in blocks.values():
        varying = [
            name
            for name in SETTINGS
            if len({dict(rows[i].settings).get(name) for i in members if rows[i].kind == "run"} - {None}) > 1
        ]
        for i in members:
            settings = dict(rows[i].settings)
            values = [settings[n] for n in varying if n in settings]
            if "selection" not in varying and "overridden" in settings:
                values.insert(0, settings["overridden"])
            if values:
                out[i] = ", ".join(values)
    return out
