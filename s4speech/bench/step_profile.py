"""(a2) Where our step's time goes: the step of (a) at d 256, T 200 in a fresh process per thread count
and allocator setting, timed, then profiled (aten calls per step, time in the Linear layers' addmm)."""
from __future__ import annotations

from s4speech.bench.cases import run_case
from s4speech.bench.env import timeit
from s4speech.bench.models import BEAM, V, build
from s4speech.bench.step import ssm_step_call

# glibc returns freed blocks above its mmap threshold to the OS, so a fresh (n, H, N) state or activation
# costs page faults at every step; these settings keep such blocks in the heap (same process otherwise)
MALLOC_KEEP = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456",
               "MALLOC_TOP_PAD_": "67108864"}
PROFILED = 10  # steps under the profiler


def case_step(d: int, T: int, L: int, reps: int) -> dict:
    """Our batch_score as in (a), timed (s), then profiled: aten calls per step and the time (s) in addmm."""
    import torch
    from torch.profiler import profile

    torch.manual_seed(0)
    dec = build("ssm", d).eval()
    x = torch.randn(T, d)
    perm = torch.randperm(BEAM).tolist()
    ys = torch.randint(0, V - 1, (BEAM, L))
    with torch.no_grad():
        fn = ssm_step_call(dec, x, ys, perm)
        best, med = timeit(fn, reps, 3)
        with profile() as prof:
            for _ in range(PROFILED):
                fn()
    ev = prof.key_averages()
    top = [e for e in ev if e.key.startswith("aten::")]
    addmm = [e for e in top if e.key == "aten::addmm"]
    n = PROFILED
    return {"best": best, "median": med, "aten_calls": sum(e.count for e in top) / n,
            "addmm_calls": sum(e.count for e in addmm) / n,
            "addmm_s": sum(e.self_cpu_time_total for e in addmm) / n / 1e6,
            "profiled_s": sum(e.self_cpu_time_total for e in ev) / n / 1e6}


def measure(res: dict, opts, save) -> None:
    """``res["a2"]``: prefix 16 and 2048 x 2 and 1 threads x default and MALLOC_KEEP allocator."""
    res["a2"] = []
    for L in (16, 2048):
        for threads in (2, 1):
            for alloc, env in (("default", {}), ("keep", MALLOC_KEEP)):
                r = run_case({"what": "step", "d": 256, "T": 200, "L": L, "reps": 15}, threads, env=env)
                res["a2"].append({"L": L, "threads": threads, "malloc": alloc, **r})
                print(f"  (a2) L={L} threads={threads} malloc={alloc}: {r}", flush=True)
    save(res)
