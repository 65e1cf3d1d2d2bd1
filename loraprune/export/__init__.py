"""Self-contained checkpoints of pruned models: the per-layer LLaMA modeling files (standalone, copied into
saved directories), the widths a model has and the configs that state them, the model card, and the
``loraprune-export`` command."""
