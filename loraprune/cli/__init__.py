"""Every console entry point: ``loraprune``, ``loraprune-table``, ``loraprune-results``,
``loraprune-bench``, ``loraprune-export``, and ``python -m loraprune.cli.gguf_ppl``."""
