"""(d) SSM kernel generation, L = 1k ... 64k, H = 256, no grad: ours (S4, S4D) against ESPnet's
``espnet2.asr.state_spaces`` kernels (NPLR, diagonal zoh); time and peak memory, fresh process a case."""
from __future__ import annotations

from s4speech.bench.cases import first_call, run_case, too_big
from s4speech.bench.env import timeit
from s4speech.bench.flops import predict_kernel_bytes
from s4speech.bench.models import build_kernel

KINDS = ("ours-s4", "espnet-nplr", "ours-s4d", "espnet-diag")
LENGTHS = [1024, 2048, 4096, 8192, 16384, 32768, 65536]  # L
QUICK_LENGTHS = [1024, 4096, 16384]
H = 256


def case_kernel(kind: str, L: int, H: int, reps: int) -> dict:
    """Seconds (best, median of reps after the first call; first) and peak memory (bytes) of one kernel call."""
    import torch

    torch.manual_seed(0)
    k = build_kernel(kind, H)
    with torch.no_grad():
        m = first_call(lambda: k(L))  # ESPnet NPLR: also sets up C~ for length L (once per length)
        best, med = timeit(lambda: k(L), reps, 0)
    return {"best": best, "median": med, **m}


def measure(res: dict, opts, save) -> None:
    """``res["d"]``: every kind at every L; a case predicted to need > 60 % of the free memory is not run."""
    res["d"] = []
    for L in QUICK_LENGTHS if opts.quick else LENGTHS:
        row = {"L": L, "H": H}
        for kind in KINDS:
            row[kind] = too_big(predict_kernel_bytes(kind, L, H), 0.6) or run_case(
                {"what": "kernel", "kind": kind, "L": L, "H": H, "reps": 3 if L <= 16384 else 1}, opts.threads)
            print(f"  (d) L={L} {kind}: {row[kind]}", flush=True)
        res["d"].append(row)
        save(res)
