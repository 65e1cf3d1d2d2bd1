"""Silence third-party import-time noise: importing this module sets it up (entry points and the
benchmark's forkserver import it first).

peft imports torchao when it is installed (``model.quantize=int8``); on a CPU build torchao logs at import
that its CUDA-only kernels do not load, and torch that its enum registrations are deprecated: noise on
every run, nothing for the user to do. Only these loggers, only below ERROR.
"""

from __future__ import annotations

import logging

NOISY_LOGGERS = ("torchao", "torchao.kernel.intmm", "torch.utils._pytree")


def silence_import_noise() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


silence_import_noise()
