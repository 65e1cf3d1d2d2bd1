"""Text for perplexity evaluation and fine-tune / calibration data.

Modules, one job each:

* :mod:`~loraprune.data.hub`: the hub sets known by name (``wikitext2``, ``ptb``, ``lamini``, ``alpaca``);
* :mod:`~loraprune.data.mirror`: a local mirror of those sets (``$LORAPRUNE_HUB_MIRROR`` or
  ``mirror=``), its layout, and a small fixture mirror for tests;
* :mod:`~loraprune.data.sources`: source names and cheap validation, one per purpose
  (:func:`validate_finetune_source`, :func:`validate_eval_source`);
* :mod:`~loraprune.data.readers`: rows from the hub / mirror, local files and embedded corpora;
* :mod:`~loraprune.data.eval_text`: :func:`load_eval_text` (rows joined by ``"\\n\\n"``, LLM-Pruner);
* :mod:`~loraprune.data.prompts` and :mod:`~loraprune.data.finetune`: prompt templates,
  :class:`FinetuneDataSpec`, :func:`build_finetune_dataset`, :func:`collate`;
* :mod:`~loraprune.data.windows`: random windows of plain text for calibration (LLM-Pruner's draw);
* :mod:`~loraprune.data.embedded_corpora`: the offline stand-ins ``wiki_embedded`` / ``news_embedded``;
* :mod:`~loraprune.data.domain_corpora`: evaluation text of other domains (``drama``, ``tech``).
"""

from loraprune.data.errors import SourceFileNotFoundError
from loraprune.data.eval_text import load_eval_documents, load_eval_text
from loraprune.data.finetune import (
    IGNORE_INDEX,
    FinetuneDataSpec,
    build_finetune_dataset,
    collate,
    instruction_samples,
    text_blocks,
    validate_finetune_spec,
)
from loraprune.data.hub import EVAL_HUB_SOURCES, HUB_SOURCES, INSTRUCTION_HUB_SOURCES, HubSource
from loraprune.data.mirror import MIRROR_ENV, mirror_root, write_fixture_mirror
from loraprune.data.prompts import PROMPT_TEMPLATES, PromptTemplate
from loraprune.data.sources import (
    DOMAIN_SOURCES,
    EMBEDDED_SOURCES,
    EMBEDDED_VALIDATION,
    EVAL_ONLY_SOURCES,
    FILE_EXTENSIONS,
    finetune_corpora,
    validate_eval_source,
    validate_finetune_source,
    validate_text_source,
)
from loraprune.data.windows import calibration_windows, check_plain_text_source, random_windows

__all__ = [
    "EMBEDDED_SOURCES",
    "DOMAIN_SOURCES",
    "EMBEDDED_VALIDATION",
    "EVAL_ONLY_SOURCES",
    "EVAL_HUB_SOURCES",
    "FILE_EXTENSIONS",
    "HUB_SOURCES",
    "IGNORE_INDEX",
    "INSTRUCTION_HUB_SOURCES",
    "MIRROR_ENV",
    "PROMPT_TEMPLATES",
    "FinetuneDataSpec",
    "HubSource",
    "PromptTemplate",
    "SourceFileNotFoundError",
    "build_finetune_dataset",
    "calibration_windows",
    "check_plain_text_source",
    "collate",
    "finetune_corpora",
    "instruction_samples",
    "load_eval_documents",
    "load_eval_text",
    "mirror_root",
    "random_windows",
    "text_blocks",
    "validate_eval_source",
    "validate_finetune_source",
    "validate_finetune_spec",
    "validate_text_source",
    "write_fixture_mirror",
]
