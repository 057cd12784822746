"""Counters and latency percentiles of the service (kept in memory, over a sliding window)."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

import numpy as np


class Metrics:
    """Per-operation counts, failures and the latencies of the last ``window`` calls."""

    def __init__(self, window: int = 10_000) -> None:
        self.started = time.time()
        self._window = window
        self._lock = threading.Lock()
        self._latency: dict[str, deque[float]] = {}
        self._count: Counter[str] = Counter()
        self._failed: Counter[str] = Counter()

    def observe(self, name: str, seconds: float, ok: bool = True) -> None:
        """Record one call of ``name`` that took ``seconds`` (failed calls count, their time does not)."""
        with self._lock:
            self._count[name] += 1
            if ok:
                self._latency.setdefault(name, deque(maxlen=self._window)).append(seconds)
            else:
                self._failed[name] += 1

    def summary(self) -> dict[str, Any]:
        """``{name: {count, failed, p50_ms, p90_ms, p99_ms, mean_ms}}`` (percentiles over the window)."""
        out: dict[str, Any] = {}
        with self._lock:
            names = sorted(set(self._count))
            for name in names:
                lat = np.asarray(self._latency.get(name, ()), dtype=np.float64) * 1000.0
                entry: dict[str, Any] = {"count": self._count[name], "failed": self._failed[name]}
                if len(lat):
                    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
                    entry.update(p50_ms=round(float(p50), 3), p90_ms=round(float(p90), 3),
                                 p99_ms=round(float(p99), 3), mean_ms=round(float(lat.mean()), 3))
                out[name] = entry
        return out
