"""Benchmarks: our ``decoder: ssm`` against ESPnet's ``decoder: s4`` and ``decoder: transformer``.

    python -m s4speech.bench [--quick] [--only a,b,c,d] [--threads 2] [--out BENCHMARKS.md] [--readme README.md]
    s4speech bench ...
    s4speech bench data [--hours H] [--nj N] [--json F] [--out BENCHMARKS.md]   (f: the data stages, see
        s4speech.bench.data)

(a) beam-search step: ``batch_score`` of 8 hypotheses at prefix lengths 16 ... 2048
(a2) where our step's time goes: threads, allocator settings, profiler counts
(b) teacher-forced forward + backward: time and peak memory at output lengths 256, 1024, 4096
(c) whole-utterance ``BatchBeamSearch`` of a long input (3000 encoder frames = 2 min at 40 ms)
(d) SSM kernel generation, L = 1k ... 64k, against ESPnet's ``espnet2.asr.state_spaces`` kernels
(e) TTS: time per generated frame at 100 ... 2000 frames, ``tts: ssm`` against ESPnet's Transformer-TTS

Every table runs its decoders in one process on the same sizes and the same inputs (random weights,
random encoder output; the work per call does not depend on the values). Times are wall-clock, the
best and the median of several repetitions (``best`` is what the targets use: it is the least
disturbed by other processes). Memory (b, d) is measured in a fresh subprocess per case as the
peak resident set size (VmHWM, reset just before the call) minus the resident size just before the
measured call: it sees every allocation, torch's included, unlike tracemalloc.

Floors: the analytic floating-point work of our decoder (``s4speech.bench.flops``) divided by the
machine's float32 matmul rate measured at the same thread count (a 2048^3 matmul); some tables add
a memory floor (bytes that must be streamed / measured copy bandwidth).

``--readme README.md`` also writes the summary table between the README's bench-summary markers.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from s4speech.bench import kernel, search, step, step_profile, train, tts
from s4speech.bench.env import copy_bandwidth, load, machine, matmul_rate, setup
from s4speech.bench.report import ANALYSIS, report
from s4speech.bench.sections import between, replace_between, write_between
from s4speech.bench.summary import SUMMARY_MARKERS, summary
from s4speech.io.files import atomic_write

# results key -> measure(res, options, save): fills res[key] (in this order)
TABLES = {"a": step.measure, "a2": step_profile.measure, "b": train.measure, "c": search.measure,
          "d": kernel.measure, "e": tts.measure}
# --_case {"what": ..., arguments}: one case measured in this (fresh) process
CASES = {"step": step_profile.case_step, "train": train.case_train, "kernel": kernel.case_kernel}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s4speech bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a subset that finishes in a few minutes: (a) d 256, T 200; (b) U 256, 1024; "
                        "(c) 20 output tokens; (d) L up to 16k; (e) 100, 500 frames")
    p.add_argument("--only", default=",".join(TABLES), help="comma-separated sub-benchmarks (a, a2, b, c, d, e)")
    p.add_argument("--update", action="store_true",
                   help="start from the results in --json and replace only the sub-benchmarks run now")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"), help="report (default BENCHMARKS.md)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results as JSON")
    p.add_argument("--search_tokens", type=int, default=None, help="(c) output tokens (default 20 quick, 100 full)")
    p.add_argument("--report_from", type=Path, default=None,
                   help="only rewrite --out from the results saved earlier with --json (no measuring)")
    p.add_argument("--readme", type=Path, default=None,
                   help="also write the summary table into this file, between "
                        f"{SUMMARY_MARKERS[0]} and {SUMMARY_MARKERS[1]} (which it must have)")
    p.add_argument("--_case", default=None, help=argparse.SUPPRESS)
    return p


DECODING_MARKERS = "<!-- decoding-bench -->", "<!-- /decoding-bench -->"  # section (g): prose + the two tables


def write_reports(res: dict, argv, out: Path, readme: Path | None) -> None:
    """--out from ``res`` (keeping its analysis section and the sections the separate benchmarks write:
    ``bench data``, ``bench.step``, ``bench.breakdown``), and the summary into --readme."""
    from s4speech.bench import breakdown
    from s4speech.bench.data import MARKERS as DATA_MARKERS

    old = out.read_text(encoding="utf-8") if out.exists() else ""
    new = report(res, argv, between(old, *ANALYSIS) or "")
    for markers in (DECODING_MARKERS, step.MARKERS, breakdown.MARKERS, DATA_MARKERS):  # the outer block first
        kept = between(old, *markers)
        if kept is not None:
            new = replace_between(new, *markers, kept)
    atomic_write(out, new)
    if readme:
        write_between(readme, *SUMMARY_MARKERS, summary(res), missing="error")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["data"]:  # `s4speech bench data ...`: the data-stage benchmark (s4speech.bench.data)
        from s4speech.bench import data

        return data.main(argv[1:])
    p = parser()
    a = p.parse_args(argv)
    if a.readme and between(a.readme.read_text(encoding="utf-8") if a.readme.exists() else "",
                            *SUMMARY_MARKERS) is None:
        p.error(f"--readme {a.readme}: no {SUMMARY_MARKERS[0]} ... {SUMMARY_MARKERS[1]} section")
    if a.report_from:
        res = json.loads(a.report_from.read_text())
        write_reports(res, res.get("argv", argv), a.out, a.readme)
        print(f"wrote {a.out}" + (f" and {a.readme}" if a.readme else ""))
        return 0
    setup(a.threads)

    if a._case:  # a subprocess measuring one case
        spec = json.loads(a._case)
        print(json.dumps(CASES[spec.pop("what")](**spec)))
        return 0

    only = set(a.only.split(","))

    def save(res):  # after every sub-benchmark: a long run that dies keeps what it measured
        if a.json:
            atomic_write(a.json, json.dumps(res, indent=1))

    t0 = time.time()
    res = {"machine": machine(), "load_start": load(), "argv": argv}
    if a.update:
        if not (a.json and a.json.exists()):
            p.error("--update needs --json with the results of an earlier run")
        old = json.loads(a.json.read_text())
        upd = {"argv": argv, "load_start": res["load_start"]}
        res = dict(old, updates=old.get("updates", []) + [upd])
    else:  # (an update keeps the machine figures the earlier tables were computed with)
        res["rate"] = matmul_rate()
        res["bandwidth"] = copy_bandwidth()
    print(f"machine: {res['machine']}, matmul {res['rate']:.1f} GFLOP/s, copy {res['bandwidth']:.1f} GB/s, "
          f"load {res['load_start']}", flush=True)
    for key, measure in TABLES.items():
        if key in only:
            measure(res, a, save)
    if a.update:
        upd.update(load_end=load(), wall=time.time() - t0)
    else:
        res["load_end"] = load()
        # the matmul rate is measured again at the end: other processes may have slowed either measurement
        res["rate_start"], res["rate_end"] = res["rate"], matmul_rate()
        res["rate"] = max(res["rate_start"], res["rate_end"])
        res["wall"] = time.time() - t0
    save(res)
    write_reports(res, res["argv"], a.out, a.readme)
    print(f"wrote {a.out} ({(upd if a.update else res)['wall'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
