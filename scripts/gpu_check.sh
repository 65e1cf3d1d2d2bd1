#!/usr/bin/env bash
# The GPU check (see loraprune/bench/gpu_check.py): loraprune vs grad at the 7B shape in bf16 (peak CUDA
# memory, tokens/s, ratios), then the 2:4 kernels' speed. Needs torch, transformers, peft, accelerate,
# psutil, tqdm and pyyaml; not Hydra, datasets, lm-eval or W&B. Runs from the repository without install.
# Extra arguments go to the check, e.g. CPU at tiny size: scripts/gpu_check.sh --model tiny --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m loraprune.bench.gpu_check "$@"
