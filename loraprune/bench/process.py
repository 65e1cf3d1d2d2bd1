"""This process's peak memory above a baseline, and running a function in a fresh process of its own.

CPU: Linux's resident-set high-water mark (``VmHWM`` in ``/proc/self/status``), reset to the current
RSS by writing ``5`` to ``/proc/self/clear_refs``: the exact peak between :meth:`Peak.start` and
:meth:`Peak.stop`, not a sample. Where that is not available (not Linux), a sampling thread
(:class:`loraprune.train.memory.PeakMemory`) stands in. CUDA: ``max_memory_allocated`` above the memory
allocated at the start.
"""

from __future__ import annotations

import multiprocessing as mp
import re
import resource
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch

from loraprune.train.memory import PeakMemory

GIB = 1024**3
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
PRELOAD = ["loraprune.run.quiet", "torch", "transformers", "peft", "loraprune.bench.loop"]


def _hwm_bytes() -> int | None:
    try:
        found = re.search(r"VmHWM:\s+(\d+)\s+kB", _STATUS.read_text())
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


def _reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _hwm_bytes() is not None


class Peak:
    """Peak memory of this process between :meth:`start` and :meth:`stop`, above what it held at
    :meth:`start` (the baseline: e.g. the loaded model)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.sampler: PeakMemory | None = None

    def start(self) -> None:
        import gc

        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.cuda_base = torch.cuda.memory_allocated()
        self.exact = _reset_hwm()
        self.rss_base = psutil.Process().memory_info().rss
        if not self.exact:
            self.sampler = PeakMemory(interval=0.01).__enter__()

    def stop(self) -> dict[str, Any]:
        if self.cuda:
            torch.cuda.synchronize()
        if self.sampler is not None:
            self.sampler.__exit__(None, None, None)
            peak = self.sampler.peak_rss
        else:
            peak = _hwm_bytes() or 0
        out = {
            "rss_baseline_gib": self.rss_base / GIB,
            "cpu_peak_rss_gib": peak / GIB,
            "cpu_peak_above_model_gib": (peak - self.rss_base) / GIB,
            "cpu_peak_method": "VmHWM (exact)" if self.sampler is None else "sampled every 10 ms",
        }
        if self.cuda:
            out["cuda_peak_above_model_gib"] = (torch.cuda.max_memory_allocated() - self.cuda_base) / GIB
        return out


def cpu_counters() -> dict[str, float]:
    """CPU time (user, system) and minor/major page faults of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "user_s": r.ru_utime,
        "sys_s": r.ru_stime,
        "minor_faults": r.ru_minflt,
        "major_faults": r.ru_majflt,
    }


def _child(conn, fn: Callable[..., dict], kwargs: dict) -> None:
    try:
        conn.send(("ok", fn(**kwargs)))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run_isolated(fn: Callable[..., dict], **kwargs: Any) -> dict:
    """``fn(**kwargs)`` in a fresh process of its own (its own allocator and peak), forked from a
    server that imported torch, transformers and peft once (``forkserver``; ``spawn`` where there is
    none). ``fn`` must be a module-level function; its result must pickle."""
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(PRELOAD)
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, kwargs))
    proc.start()
    child.close()
    try:
        status, value = parent.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(f"{fn.__name__} died (exit code {proc.exitcode}) before reporting") from None
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{fn.__name__}({kwargs}) failed in its own process:\n{value}")
    return value
