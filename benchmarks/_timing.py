"""Measurement helpers shared by the benchmark scripts."""

from __future__ import annotations

import ctypes
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import torch


class RssPeak:
    """Highest resident set size (MiB) seen while the context is open, minus the size at entry."""

    _page = os.sysconf("SC_PAGE_SIZE")

    def __init__(self) -> None:
        try:
            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except OSError:  # not glibc: measure without trimming
            self._trim = None

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def __enter__(self) -> RssPeak:
        if self._trim is not None:
            self._trim(0)
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.mib = (self.peak - self.base) / 2**20


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str | torch.device) -> float:
    """Seconds one call takes; on CUDA between two synchronised events."""
    if torch.device(device).type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(
    arms: dict[str, Callable[[], Any]], repeats: int, device: str | torch.device, warmup: int = 1
) -> dict[str, list[float]]:
    """Times every arm ``repeats`` times, round-robin, so that machine noise hits all arms alike."""
    for fn in arms.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name, fn in arms.items():
            times[name].append(timed(fn, device))
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(v) for name, v in times.items()}


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (0 <= q <= 1) of a non-empty list."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def paired_ratios(times: dict[str, list[float]], arm: str, ref: str) -> list[float]:
    """Per-round ratios ``arm / ref`` of interleaved timings (round i of both arms ran side by side)."""
    return [a / b for a, b in zip(times[arm], times[ref], strict=True)]


def summary(values: list[float]) -> dict[str, float]:
    """Median and spread (quartiles, extremes) of repeated measurements."""
    return {
        "median": statistics.median(values),
        "p25": quantile(values, 0.25),
        "p75": quantile(values, 0.75),
        "min": min(values),
        "max": max(values),
    }


def tune_allocator() -> bool:
    """Keep freed memory for reuse (glibc): no ``mmap`` per large tensor and no trimming.

    By default glibc serves each allocation above 32 MiB (and, after its threshold adapts, some
    below) with a fresh ``mmap``, so every call of a loss on a large feature map pays page faults
    on new memory, in amounts that vary from call to call: that, not the arithmetic, made a base
    loss's timing swing 3x between runs. With ``mmap`` off and trimming off, freed buffers are
    reused, as a caching allocator does on GPU. Applied to every arm alike. False when not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**30))


def peak_tensor_bytes(fn: Callable[[], Any], device: str | torch.device) -> int | None:
    """Highest sum of live tensor bytes allocated during ``fn`` (tensors alive before it excluded).

    CUDA: the caching allocator's peak. CPU: torch.profiler's memory timeline (allocations and frees
    of every tensor), which unlike the resident-set size does not depend on the malloc arena; None
    when that (private) profiler API is unavailable.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(
            activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
        ) as prof:
            fn()
        timeline = prof._memory_profile().timeline
    except Exception:
        return None
    live = peak = 0
    for _, action, _, size in timeline:
        if action.name == "CREATE":
            live += size
        elif action.name == "DESTROY":
            live -= size
        peak = max(peak, live)
    return peak
