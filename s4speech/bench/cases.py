"""One benchmark case in a fresh process, so that its peak memory is its own.

``run_case(spec)`` runs ``python -m s4speech.bench --_case <spec as JSON>``; that process measures
the case (``s4speech.bench.run.CASES[spec["what"]]``) and prints its result as the last line of JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from s4speech.io.machine import mem_available, peak_bytes, reset_peak, rss_bytes


def run_case(spec: dict, threads: int, timeout: float = 1800, env: dict | None = None) -> dict:
    """The result dict of one case, or ``{"error": ...}`` if the process failed or timed out."""
    cmd = [sys.executable, "-m", "s4speech.bench", "--threads", str(threads), "--_case", json.dumps(spec)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), **(env or {}))  # OMP_WAIT_POLICY inherited (env.setup)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout {timeout:.0f} s"}
    if p.returncode != 0:
        return {"error": f"exit {p.returncode}: {(p.stderr or p.stdout).strip().splitlines()[-1:]}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def child_json(cmd: list) -> dict:
    """Run a benchmark's child process ``cmd``: the JSON it printed after ``BENCH ``; its stderr's tail and
    the command when it failed."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("BENCH ")), None)
    if proc.returncode != 0 or line is None:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"bench run failed: {' '.join(map(str, cmd))}")
    return json.loads(line[6:])


def first_call(fn) -> dict:
    """Call ``fn()`` once: its time (s, "first") and the peak resident memory it added (bytes, "peak_delta":
    VmHWM, reset just before, minus the RSS just before; "peak_valid" False if the peak could not be reset
    and was not exceeded either)."""
    reset = reset_peak()
    before, before_max = rss_bytes(), peak_bytes()
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    peak = peak_bytes()
    return {"first": first, "peak_delta": peak - before, "peak_valid": reset or peak > before_max,
            "rss_before": before}


def too_big(need: float, share: float) -> dict | None:
    """The "not run" result of a case predicted to need more than ``share`` of the free memory, else None."""
    free = mem_available()
    if need > share * free:
        return {"error": f"not run: needs ~{need / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free"}
    return None
