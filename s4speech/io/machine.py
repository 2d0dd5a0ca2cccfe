"""What machine a figure was measured on, and this process' memory (Linux /proc, ru_maxrss elsewhere)."""
from __future__ import annotations

import os
import platform
import resource


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """Resident set size now (VmRSS)."""
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_bytes() -> int:
    """Peak resident set size (VmHWM; unlike ru_maxrss it is not inherited from the parent through fork + exec)."""
    kib = _status_kib("VmHWM")
    return kib * 1024 if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> bool:
    """Reset this process' peak RSS (VmHWM) to its current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def device_name(ngpu: int = 0) -> str:
    """"GPU: <name>" when ngpu > 0 and CUDA is there, else "CPU: <model>, <threads> threads"."""
    import torch

    if ngpu and torch.cuda.is_available():
        return "GPU: " + torch.cuda.get_device_name(0)
    return f"CPU: {cpu_model()}, {torch.get_num_threads()} threads"
