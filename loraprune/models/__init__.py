"""Models: loading (hub, local, embedded, tiny, shapes), quantization, LoRA adapters, CPU dropout."""
