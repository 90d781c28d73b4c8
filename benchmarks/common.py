"""Shared helpers for the benchmarks: interleaved timing, peak-memory deltas, the machine, result tables.

Every benchmark runs the baseline and ours in the same process, alternating (baseline, ours, baseline, ours, ...)
so that load from other users of a shared machine hits both alike, and reports medians, their ratio and the peak
resident memory each one added (Linux VmHWM, reset before each measured call through /proc/self/clear_refs).
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _status_kb(field_name: str) -> int | None:
    """A field of /proc/self/status in kB (VmRSS, VmHWM), or None off Linux."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def _trim_heap() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so the next peak starts from a clean baseline."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_delta_mb(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run fn once; its result and the peak RSS it added above the RSS before it (MB; nan if not measurable)."""
    _trim_heap()
    before = _status_kb("VmRSS")
    ok = _reset_peak() and before is not None
    result = fn()
    peak = _status_kb("VmHWM")
    return result, (peak - before) / 1024 if ok and peak is not None else float("nan")


@dataclass
class Timing:
    """Wall times of one contender: seconds[r][c] for repeat r, chunk c; and the largest peak-RSS delta seen."""

    name: str
    seconds: list[list[float]] = field(default_factory=list)
    peak_mb: float = float("nan")

    @property
    def median(self) -> float:
        """Median over repeats of the total over chunks."""
        return statistics.median(sum(r) for r in self.seconds)

    @property
    def best(self) -> float:
        """Sum over chunks of each chunk's fastest repeat: the least disturbed estimate on a shared machine."""
        return sum(min(times) for times in zip(*self.seconds))


def timed_call(fn: Callable[[], Any], timing: Timing, new_repeat: bool = True) -> Any:
    """Call fn once, recording its wall time (as a new repeat, or the next chunk of the last one) and updating
    the peak-memory delta; returns fn's result."""
    def run() -> tuple[Any, float]:
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start

    (result, seconds), peak = peak_delta_mb(run)
    if new_repeat or not timing.seconds:
        timing.seconds.append([])
    timing.seconds[-1].append(seconds)
    if not timing.peak_mb >= peak:  # nan-safe max
        timing.peak_mb = peak
    return result


def interleave(contenders: dict[str, Callable[[int], Any]], n_chunks: int = 1, repeats: int = 1,
               warmup: bool = True) -> tuple[dict[str, Timing], dict[str, list[Any]]]:
    """Time each contender on chunks 0..n_chunks-1, alternating contenders chunk by chunk (A B, then B A, ...).

    Fine-grained alternation spreads other users' load on a shared machine evenly over the contenders. Results
    hold each contender's per-chunk results of the last repeat.
    """
    if warmup:
        for fn in contenders.values():
            fn(0)
    timings = {name: Timing(name) for name in contenders}
    results: dict[str, list[Any]] = {name: [None] * n_chunks for name in contenders}
    names = list(contenders)
    for r in range(repeats):
        for c in range(n_chunks):
            for name in names if (r + c) % 2 == 0 else names[::-1]:
                results[name][c] = timed_call(lambda: contenders[name](c), timings[name], new_repeat=c == 0)
    return timings, results


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = found.group(1) if found else cpu
    except OSError:
        pass
    mem = (_meminfo_gb() or float("nan"))
    names = ("torch", "transformers", "sentence-transformers", "faiss-cpu", "faiss-gpu", "ray")  # one faiss build
    versions = {n: _version(n) for n in names}
    return {"cpu": cpu, "cores": str(os.cpu_count()), "torch_threads": str(torch.get_num_threads()),
            "memory_gb": f"{mem:.0f}", "python": platform.python_version(),
            **{k: v for k, v in versions.items() if v}}


def _meminfo_gb() -> float | None:
    try:
        found = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
    except OSError:
        return None
    return int(found.group(1)) / 1024**2 if found else None


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


def print_machine() -> None:
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine().items()))


def print_table(rows: list[dict[str, Any]]) -> None:
    """A markdown table of rows (all with the same keys), floats to 4 significant digits."""
    if not rows:
        return
    cols = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(fmt(row[c]) for c in cols) + " |")


def timing_rows(timings: dict[str, Timing], baseline: str, per: int = 1, unit: str = "item") -> list[dict[str, Any]]:
    """One row per contender: median and best seconds, per-unit time, speed-up over `baseline`, peak MB."""
    base = timings[baseline]
    return [{"contender": t.name, "median_s": t.median, "best_s": t.best, f"ms_per_{unit}": 1000 * t.median / per,
             "speedup_median": base.median / t.median, "speedup_best": base.best / t.best,
             "peak_rss_delta_mb": t.peak_mb} for t in timings.values()]
