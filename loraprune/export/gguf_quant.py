"""GGUF tensor types: the float types loraprune writes itself, and the quantized types made only by
llama.cpp's own quantizer, reached through llama-cpp-python (``pip install 'loraprune[llamacpp]'``)."""

from __future__ import annotations

import ctypes
from pathlib import Path

from gguf import LlamaFileType

from loraprune.export.gguf_errors import GGUFExportError

BINDING = "llama-cpp-python"
# written directly (2-D weights in this type, 1-D tensors in f32)
FLOAT_TYPES: dict[str, LlamaFileType] = {
    "f32": LlamaFileType.ALL_F32,
    "f16": LlamaFileType.MOSTLY_F16,
    "bf16": LlamaFileType.MOSTLY_BF16,
}
# llama.cpp's quantizer; the importance-matrix types (iq1/iq2/iq3) are left out: they need calibration
QUANT_TYPES: dict[str, LlamaFileType] = {
    name: LlamaFileType[f"MOSTLY_{name.upper()}"]
    for name in (
        "q8_0",
        "q6_k",
        "q5_0",
        "q5_1",
        "q5_k_s",
        "q5_k_m",
        "q4_0",
        "q4_1",
        "q4_k_s",
        "q4_k_m",
        "q3_k_s",
        "q3_k_m",
        "q3_k_l",
        "q2_k",
        "iq4_nl",
        "iq4_xs",
    )
}
GGUF_TYPES = (*FLOAT_TYPES, *QUANT_TYPES)
# the row length (input width) each block type needs; other rows are kept in a fallback type
BLOCK_SIZE = {name: (256 if "_k" in name or name == "iq4_xs" else 32) for name in QUANT_TYPES}


def parse_type(name: str) -> str:
    """The canonical name of a GGUF type (``Q4_K_M`` → ``q4_k_m``); raises for an unknown one."""
    key = name.strip().lower().replace("-", "_")
    if key not in GGUF_TYPES:
        raise GGUFExportError(f"unknown GGUF type {name!r}; choose one of {', '.join(GGUF_TYPES)}")
    return key


def binding():
    """The ``llama_cpp`` module; raises naming the package when it is not installed."""
    try:
        import llama_cpp
    except ImportError:
        raise GGUFExportError(
            f"quantized GGUF types are made by llama.cpp's own quantizer, which needs {BINDING}: "
            f"pip install {BINDING}==0.3.36 (or 'loraprune[llamacpp]'); f32, f16 and bf16 need nothing more"
        ) from None
    return llama_cpp


def quantize(source: Path, target: Path, quant: str, threads: int = 0) -> None:
    """Quantize the GGUF ``source`` into ``target`` with llama.cpp (``llama_model_quantize``).

    Rows whose length the type's blocks do not divide are written by llama.cpp in a fallback type (its
    log says which); metadata is copied, ``general.file_type`` set to ``quant``.
    """
    llama_cpp = binding()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(QUANT_TYPES[quant])
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if rc != 0:
        raise GGUFExportError(f"llama.cpp's quantizer failed ({rc}) making {quant} from {source.name}")
