"""The process and machine a benchmark runs in: thread set-up, timing, matmul rate, copy bandwidth.

Memory probes and the CPU model are ``s4speech.io.machine``'s."""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
import warnings

from s4speech.io.machine import cpu_model


def setup(threads: int):
    """Set torch's threads (and OpenMP's, before torch starts it); quiet warnings and logging; returns torch."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    # Idle OpenMP threads sleep instead of spinning. With the default (spinning), on a machine where
    # other processes also run, every parallel region of a small op can wait a scheduler time slice
    # for a descheduled worker: op-heavy code (a recurrence step, a chunked kernel) then runs up to 10x
    # slower with 2 threads than with 1. Must be set before torch starts its OpenMP runtime.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "torch" in sys.modules:
        print("note: torch was imported before s4speech.bench set OMP_WAIT_POLICY", file=sys.stderr)
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    import torch

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    return torch


def timeit(fn, reps: int, warmup: int = 1) -> tuple[float, float]:
    """(best, median) wall seconds of ``reps`` calls of ``fn()`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts), statistics.median(ts)


def machine() -> dict:
    """What the report's "Machine" lines name: CPU, cores, memory (GiB), torch, threads, Python, OpenMP policy."""
    import torch

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
            "mem_gb": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)}


def matmul_rate() -> float:
    """float32 GFLOP/s of a 2048^3 matmul (best of 5)."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best, _ = timeit(lambda: a @ b, 5, 2)
    return 2 * 2048**3 / best / 1e9


def copy_bandwidth() -> float:
    """GB/s of a 256 MiB float32 copy (read + write counted)."""
    import torch

    a = torch.empty(64 << 20)
    a.normal_()
    b = torch.empty_like(a)
    best, _ = timeit(lambda: b.copy_(a), 5, 2)
    return 2 * a.numel() * 4 / best / 1e9


def load() -> str:
    """Load average (1, 5, 15 min), e.g. "1.01 1.06 1.18"."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
