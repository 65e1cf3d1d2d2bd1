"""The seven zero-shot tasks of the LoRAPrune / LLM-Pruner tables, in the papers' column order."""

PAPER_TASKS: tuple[str, ...] = (
    "boolq",
    "piqa",
    "hellaswag",
    "winogrande",
    "arc_easy",
    "arc_challenge",
    "openbookqa",
)
