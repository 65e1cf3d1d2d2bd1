"""Peak memory of a stage: CPU resident set (sampled) and CUDA max allocated."""

from __future__ import annotations

import threading

import psutil
import torch


class PeakMemory:
    """Context manager measuring the peak RSS (sampled every ``interval`` s) and CUDA peak allocation."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_rss = 0
        self.cuda_peak: int | None = None
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.peak_rss = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)
        if torch.cuda.is_available():
            self.cuda_peak = torch.cuda.max_memory_allocated()

    def as_dict(self) -> dict[str, float | None]:
        gib = 1024**3
        return {
            "cpu_peak_rss_gib": round(self.peak_rss / gib, 4),
            "cuda_max_allocated_gib": None if self.cuda_peak is None else round(self.cuda_peak / gib, 4),
        }
