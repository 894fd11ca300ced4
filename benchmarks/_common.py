"""Timing and peak-memory helpers shared by the benchmark scripts.

Timing: the median of ``reps`` runs after one warm-up, with CUDA synchronised around each run.

Peak memory: on CPU a probe runs in a fresh subprocess: glibc is told to serve big blocks with mmap
(so freed memory leaves the RSS), the kernel's peak-RSS counter is reset once the inputs exist and a
warm-up pass ran, and the figure is VmHWM − VmRSS after the measured pass. On CUDA it is
``torch.cuda.max_memory_allocated`` above the allocated bytes before the pass.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(run: Callable[[], None], device: torch.device, reps: int) -> float:
    """Median wall time of ``reps`` calls of ``run`` after one warm-up call (allocator, kernel choice)."""
    run()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def abba_seconds(
    run_a: Callable[[], None], run_b: Callable[[], None], device: torch.device, reps: int, warmup: int = 2
) -> tuple[float, float]:
    """Median wall times of two paths timed in A B B A order after ``warmup`` calls of each.

    For before / after comparisons: interleaving cancels drift (allocator growth, thermal state, other
    load) that timing one path after the other would charge to whichever ran first.
    """
    for _ in range(warmup):
        run_a(), run_b()
    sync(device)
    times: dict[int, list[float]] = {0: [], 1: []}
    for r in range(reps):
        for which in (0, 1) if r % 2 == 0 else (1, 0):
            t0 = time.perf_counter()
            (run_a if which == 0 else run_b)()
            sync(device)
            times[which].append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def peak_after_warmup(run: Callable[[], None], device: torch.device) -> int:
    """Peak bytes above the resting footprint of one ``run`` call, measured after a warm-up call."""
    run()
    gc.collect()
    return peak_above_resting(run, device)


def fmt_bytes(n: float | None) -> str:
    """Human-readable bytes ("-" for unknown)."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def status_kib(field_name: str) -> int:
    """A ``/proc/self/status`` field in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field_name} missing from /proc/self/status")


def peak_above_resting(run: Callable[[], None], device: torch.device) -> int:
    """Peak bytes above the current footprint while ``run()`` executes (call after a warm-up run)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    base = status_kib("VmRSS")
    run()
    return (status_kib("VmHWM") - base) * 1024


def probe_in_subprocess(script: str, spec: dict, threads: int, flag: str = "--_memory") -> int | None:
    """Run ``script flag <spec as JSON>`` in a fresh process and read the bytes it prints last."""
    env = dict(
        os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", OMP_NUM_THREADS=str(threads)
    )
    cmd = [sys.executable, script, flag, json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if res.returncode != 0:
        print(f"  ! memory probe failed for {spec}: {res.stderr.strip()[-400:]}", file=sys.stderr)
        return None
    return int(res.stdout.strip().splitlines()[-1])
