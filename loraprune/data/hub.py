"""The Hugging Face hub datasets loraprune knows by name (a registry: no I/O).

Evaluation: ``wikitext2`` and ``ptb``; instruction fine-tuning: ``lamini`` and ``alpaca``. Each entry
says where the set lives on the hub and where its copy lives in a local mirror
(:mod:`loraprune.data.mirror`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HubSource:
    """A dataset on the Hugging Face hub.

    Attributes:
        path: Repository id.
        config: Configuration name passed to ``datasets.load_dataset``, if any.
        split: Default split.
        field: Default text field (evaluation sets).
        revision: Git revision (``refs/convert/parquet`` for sets whose main branch is a loading script).
        export_config: Name of the configuration in the hub's parquet export (branch
            ``refs/convert/parquet``, files ``<export_config>/<split>/NNNN.parquet``): the folder a
            mirror copy keeps its splits in.
        aliases: Older repository ids that the hub redirects (also looked up in a mirror).
    """

    path: str
    config: str | None
    split: str
    field: str = "text"
    revision: str | None = None
    export_config: str = "default"
    aliases: tuple[str, ...] = ()


EVAL_HUB_SOURCES: dict[str, HubSource] = {
    "wikitext2": HubSource(
        "Salesforce/wikitext",
        "wikitext-2-raw-v1",
        "test",
        "text",
        export_config="wikitext-2-raw-v1",
        aliases=("wikitext",),
    ),
    # the main branch holds a loading script, which datasets>=4 refuses; the parquet export is equivalent
    "ptb": HubSource(
        "ptb-text-only/ptb_text_only",
        None,
        "validation",
        "sentence",
        "refs/convert/parquet",
        export_config="penn_treebank",
        aliases=("ptb_text_only",),
    ),
}
INSTRUCTION_HUB_SOURCES: dict[str, HubSource] = {
    "lamini": HubSource("MBZUAI/LaMini-instruction", None, "train"),
    "alpaca": HubSource("yahma/alpaca-cleaned", None, "train"),
}
HUB_SOURCES: dict[str, HubSource] = {**EVAL_HUB_SOURCES, **INSTRUCTION_HUB_SOURCES}
