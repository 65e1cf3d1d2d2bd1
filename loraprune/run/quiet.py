"""Silence known third-party import-time noise: importing this module sets it up (``import loraprune``
imports it first, so every entry point, the library and the benchmark's child processes have it).

transformers imports torchao whenever it is installed (the ``quant`` extra, for ``model.quantize=int8``),
at the first model load or save, whether int8 is asked for or not. torchao 0.18 (the newest release, built
for torch >= 2.11) then logs that its CUDA-only kernels (``_C_mxfp8``, ``_C_cutlass_90a``) do not load
on a CPU build, and torch 2.13 that torchao's enum registrations are deprecated; without triton, torchao's
int8 matmul module logs that some kernels will not work. None of it affects weight-only int8, and there is
nothing for the user to do. Exactly these messages are dropped, on their own loggers; every other warning
of torch and torchao still shows.
"""

from __future__ import annotations

import logging

# logger name -> substrings of the messages dropped from it
NOISE: dict[str, tuple[str, ...]] = {
    "torchao": ("Failed to load ", "Skipping import of cpp extensions"),
    "torchao.kernel.intmm": ("Detected no triton",),
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported",),
}


class DropKnownNoise(logging.Filter):
    """Drops the records whose message contains one of ``needles``."""

    def __init__(self, needles: tuple[str, ...]):
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(needle in message for needle in self.needles)


def silence_import_noise() -> None:
    """Install the filters (once per logger; calling again changes nothing)."""
    for name, needles in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropKnownNoise) for f in logger.filters):
            logger.addFilter(DropKnownNoise(needles))


silence_import_noise()
