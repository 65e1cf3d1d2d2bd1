"""What a benchmark ran on and when: machine, load, versions, command, date."""

from __future__ import annotations

import os
import platform
import shlex
from datetime import datetime, timezone
from typing import Any

import psutil
import torch

from loraprune.run.provenance import cpu_name, git_commit


def machine_info(device: str, argv: list[str]) -> dict[str, Any]:
    """CPU, cores, memory, GPU, load average, versions, the command (``loraprune-bench ARGV``) and the
    UTC date."""
    import peft
    import transformers

    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else None
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["loraprune-bench", *argv]),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "gpu": gpu,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "commit": git_commit(short=True),
    }


def load_now() -> list[float]:
    """The 1/5/15-minute load averages (other processes compete on a shared machine)."""
    return [round(x, 2) for x in os.getloadavg()]
