"""Where a result came from: the commit, the command, the hardware and the versions (metrics.json's
``provenance``; the same CPU arithmetic is not guaranteed across machines, so the hardware is recorded)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

_REPO = Path(__file__).resolve().parents[2]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit(short: bool = False) -> str | None:
    """The commit of the checkout the package runs from (None when it is not a git checkout)."""
    return _git("rev-parse", *(["--short"] if short else []), "HEAD")


def git_dirty() -> bool | None:
    """Whether the package's tracked files differ from the commit (None outside a checkout)."""
    status = _git("status", "--porcelain", "--untracked-files=no", "--", "loraprune")
    return None if status is None else bool(status)


def hardware(device: torch.device | str | None = None) -> str:
    """The device the numbers were computed on: the GPU's name, else the CPU's and its core count."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    return f"{cpu_name()} ({os.cpu_count()} cores)"


def provenance(command: str, device: torch.device | str | None = None) -> dict[str, Any]:
    """The ``provenance`` block of metrics.json."""
    import transformers

    return {
        "commit": git_commit(),
        "dirty": git_dirty(),
        "command": command,
        "hardware": hardware(device),
        # CPU reductions (and so masks chosen by a small margin) depend on the intra-op thread count
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
