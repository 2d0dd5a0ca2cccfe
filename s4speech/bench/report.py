"""BENCHMARKS.md from the results JSON: the machine and command, then one section per table measured.

``report(res, argv, analysis)``: ``res`` as ``s4speech.bench.run`` saves it (``--json``); ``analysis``:
the hand-written part kept between ``<!-- analysis -->`` and ``<!-- /analysis -->`` of the old file.
Each table's targets come from ``s4speech.bench.targets``."""
from __future__ import annotations

from s4speech.bench.flops import flops_s4_kernel
from s4speech.bench.models import BEAM, N_STATE, NAMES, V
from s4speech.bench.step_profile import MALLOC_KEEP
from s4speech.bench.targets import target_lines

ANALYSIS = ("<!-- analysis -->", "<!-- /analysis -->")


def ms(s: float) -> str:
    """Seconds as milliseconds, 2 decimals below 10 s."""
    return f"{s * 1e3:.2f}" if s < 10 else f"{s * 1e3:.0f}"


def mb(b: float) -> str:
    """Bytes as whole MiB."""
    return f"{b / 2**20:.0f}"


def ratio(x: dict, y: dict) -> str:
    """x's best time / y's best time as "3.2×", "n/a" if either case has no time."""
    return f"{x['best'] / y['best']:.1f}×" if "best" in x and "best" in y else "n/a"


def command(argv) -> str:
    return " ".join(["python -m s4speech.bench"] + list(argv))


def header(res: dict, argv, analysis: str) -> list[str]:
    m, rate, bw = res["machine"], res["rate"], res["bandwidth"]
    out = ["# Benchmarks", "",
           "Our `decoder: ssm` (`s4speech.asr.decoder.SSMDecoder`) against ESPnet's built-in `decoder: s4` "
           "(`espnet2.asr.decoder.s4_decoder.S4Decoder`, the LibriSpeech layer list `[s4 (postact glu, measure legs, "
           "n_ssm 1), mha, ff (expand 4, gelu)] x 6`, prenorm, residual, LayerNorm; recurrence set up with its "
           "`setup_step`, as `espnet2.bin.asr_inference` does) and ESPnet's `TransformerDecoder`. "
           f"All: 6 blocks, FF 4·d, d/64 heads, state size N = {N_STATE}, vocabulary {V}, beam {BEAM}, float32, CPU.",
           "",
           "## Machine and command", "",
           f"- CPU: {m['cpu']} ({m['cores']} cores visible), {m['mem_gb']} GiB memory; torch {m['torch']}, "
           f"Python {m['python']}; **torch threads: {m['threads']}**, `OMP_WAIT_POLICY={m['omp_wait_policy']}`",
           f"- measured float32 matmul rate (2048³, {m['threads']} threads, best of the measurements at the start and "
           f"the end: {res.get('rate_start', rate):.1f} / {res.get('rate_end', rate):.1f}): **{rate:.1f} GFLOP/s**; "
           f"copy bandwidth (256 MiB): {bw:.1f} GB/s",
           f"- load average (1, 5, 15 min) at start: {res['load_start']}, at end: {res['load_end']} "
           "(the machine was shared with other jobs: timings are the best of several repetitions)",
           f"- command: `{command(argv)}` ({res['wall'] / 60:.1f} min)",
           ""]
    for u in res.get("updates", []):  # later runs that replaced some tables (--update)
        out[-1:] = [f"- then: `{command(u['argv'])}` (measured the tables it names, "
                    f"{u.get('wall', float('nan')) / 60:.1f} min; load at its start / end: {u['load_start']} / "
                    f"{u.get('load_end', '?')})", ""]
    if analysis:
        out += [ANALYSIS[0], analysis.strip(), ANALYSIS[1], ""]
    return out


def table_a(res: dict) -> list[str]:
    rate, bw = res["rate"], res["bandwidth"]
    out = ["## (a) Beam-search step: `batch_score` of 8 hypotheses, one new token each", "",
           "ms per call, best of repetitions (median in parentheses). ESPnet's decoders get the states of "
           "the L−1 token prefix (the Transformer's cache computed by its own `forward_one_step`; the S4 "
           "states random); ours gets random states of the L−1 prefix with the rows permuted, as after a "
           "beam re-ordering. Floor = FLOPs of our step (`flops_ssm_step`) / matmul rate; "
           "mem floor = bytes our step must stream (weights, shared keys/values, states) / copy bandwidth.", "",
           "| d | enc T | prefix L | ours | ESPnet s4 | ESPnet transformer | s4 / ours | transformer / ours "
           "| our FLOPs | floor | ours / floor | mem floor | ESPnet s4 FLOPs | transformer FLOPs |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["a"]:
        o, s, t = r["ssm"], r["s4"], r["transformer"]
        floor = r["flops_ssm"] / (rate * 1e9)
        out.append(
            f"| {r['d']} | {r['T']} | {r['L']} | {ms(o['best'])} ({ms(o['median'])}) | {ms(s['best'])} ({ms(s['median'])}) "
            f"| {ms(t['best'])} ({ms(t['median'])}) | {ratio(s, o)} | {ratio(t, o)} "
            f"| {r['flops_ssm'] / 1e6:.1f} M | {ms(floor)} | {o['best'] / floor:.1f}× | {ms(r['bytes_ssm'] / (bw * 1e9))} "
            f"| {r['flops_s4'] / 1e9:.2f} G | {r['flops_transformer'] / 1e9:.2f} G |")
    return out + target_lines(res, "a") + [""]


def table_a2(res: dict) -> list[str]:
    out = ["## (a2) Where our step's time goes (d 256, enc T 200, beam 8)", "",
           "Our `batch_score` of (a), each row in a fresh subprocess: with 2 or 1 torch threads, and with glibc's "
           "default allocator settings or with `" + " ".join(f"{k}={v}" for k, v in MALLOC_KEEP.items()) +
           "` (freed blocks stay in the heap, so the fresh per-step tensors, e.g. the gathered (8, 256, 64) "
           "states, cost no page faults). Then 10 calls under `torch.profiler`: aten calls per step, and the "
           "time of the 31 Linear layers (`aten::addmm`); profiled total = the aten ops' own CPU time summed (the "
           "Python between them not included), the share is addmm's part of it.", "",
           "| prefix L | threads | malloc | best (ms) | median (ms) | aten calls / step | addmm calls | "
           "addmm (ms) | profiled total (ms) | addmm share |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["a2"]:
        if "error" in r:
            out.append(f"| {r['L']} | {r['threads']} | {r['malloc']} | n/a ({r['error']}) |  |  |  |  |  |  |")
            continue
        out.append(f"| {r['L']} | {r['threads']} | {r['malloc']} | {ms(r['best'])} | {ms(r['median'])} | "
                   f"{r['aten_calls']:.0f} | {r['addmm_calls']:.0f} | {ms(r['addmm_s'])} | {ms(r['profiled_s'])} | "
                   f"{r['addmm_s'] / r['profiled_s']:.0%} |")
    return out + [""]


def _cell(c: dict, key: str) -> str:
    """A (b) case's time ("t", s) or peak memory (MiB; "(≥)" when the peak could not be reset)."""
    if "error" in c:
        return f"n/a ({c['error']})"
    if key == "t":
        return f"{c['best']:.2f}"
    return mb(c["peak_delta"]) + ("" if c.get("peak_valid", True) else " (≥)")


def _memory_ratio(x: dict, y: dict) -> str:
    """x's peak memory / y's, "n/a" if either has none."""
    return f"{x['peak_delta'] / y['peak_delta']:.2f}" if "peak_delta" in x and "peak_delta" in y else "n/a"


def table_b(res: dict) -> list[str]:
    rate = res["rate"]
    out = ["## (b) Teacher-forced forward + backward (training step)", "",
           "B sequences of U output tokens (B·U = 4096 tokens per batch), encoder T = 200, d = 256, "
           "dropout 0.1, train mode, cross-entropy over the 5000-way output, `loss.backward()`. Each case in a "
           "fresh subprocess; peak memory = peak RSS (VmHWM, reset with /proc/self/clear_refs) − RSS just before the first forward (includes "
           "every torch allocation: activations, gradients, the kernels' temporaries). "
           "Time: best of the repetitions after the first call. Floor: `flops_ssm_train` (forward × 3) / matmul rate.", "",
           "| U | B | ours (s) | ESPnet s4 (s) | ESPnet transformer (s) | s4 / ours | our peak (MiB) "
           "| s4 peak (MiB) | transformer peak (MiB) | ours / s4 memory | our floor (s) | ours / floor |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["b"]:
        o, s, t = r["ssm"], r["s4"], r["transformer"]
        floor = r["flops"] / (rate * 1e9)
        over = f"{o['best'] / floor:.1f}×" if "best" in o else "n/a"
        out.append(f"| {r['U']} | {r['B']} | {_cell(o, 't')} | {_cell(s, 't')} | {_cell(t, 't')} | {ratio(s, o)} | {_cell(o, 'm')} "
                   f"| {_cell(s, 'm')} | {_cell(t, 'm')} | {_memory_ratio(o, s)} | {floor:.2f} | {over} |")
    if res.get("b_layer"):
        out += ["", "The part that differs: one causal S4 layer alone (ours `SSMLayer` vs ESPnet's `S4`, d 256, N 64, "
                "dropout 0.1), forward + backward of mean(y²), same B × U, fresh subprocess per case:", "",
                "| U | B | ours (s) | ESPnet S4 (s) | ESPnet / ours | our peak (MiB) | ESPnet peak (MiB) | ours / ESPnet memory |",
                "|---|---|---|---|---|---|---|---|"]
        for r in res["b_layer"]:
            o, s = r["ssm-layer"], r["s4-layer"]
            if "best" in o and "best" in s:
                out.append(f"| {r['U']} | {r['B']} | {o['best']:.3f} | {s['best']:.3f} | {ratio(s, o)} "
                           f"| {mb(o['peak_delta'])} | {mb(s['peak_delta'])} | {_memory_ratio(o, s)} |")
            else:
                out.append(f"| {r['U']} | {r['B']} | {_cell(o, 't')} | {_cell(s, 't')} | n/a | | | |")
    return out + target_lines(res, "b") + [""]


def table_c(res: dict) -> list[str]:
    rate, rows = res["rate"], res["c"]
    T = rows[0]["T"]
    out = [f"## (c) Whole-utterance beam search: {T} encoder frames ({T * 0.04 / 60:.0f} min at 40 ms)", "",
           f"ESPnet's `BatchBeamSearch`, beam {BEAM}, decoder score only (no CTC, no LM), d = {rows[0]['d']}, "
           f"the same random encoder output for all; `<eos>` suppressed (output bias −30) and `maxlenratio` set "
           f"so every decoder runs the same number of steps. Floor: FLOPs of our steps / matmul rate.", "",
           "| decoder | output tokens | steps | total (s) | ms / step | vs ours | floor (s) | / floor |",
           "|---|---|---|---|---|---|---|---|"]
    ours = next(r for r in rows if r["kind"] == "ssm")
    for r in rows:
        floor = r["steps"] * r["flops_ssm_step"] / (rate * 1e9)
        out.append(f"| {NAMES[r['kind']]} | {r['tokens']} | {r['steps']} | {r['wall']:.2f} | {r['wall'] / r['steps'] * 1e3:.1f} "
                   f"| {r['wall'] / ours['wall']:.1f}× | {floor:.3f} | {r['wall'] / floor:.1f}× |")
    return out + [""]


def _kernel_cells(c: dict) -> tuple[str, str]:
    """A (d) case's ms and MiB."""
    if "error" in c:
        return f"n/a ({c['error']})", "n/a"
    return ms(c["best"]), mb(c["peak_delta"])


def table_d(res: dict) -> list[str]:
    rate, H = res["rate"], res["d"][0]["H"]
    out = [f"## (d) Kernel generation: H = {H} channels, N = {N_STATE}, no grad", "",
           "ms per call (best of repetitions; ESPnet NPLR after its one-time C~ set-up for that length) and peak "
           "memory (MiB, ΔRSS in a fresh subprocess, first call included). ESPnet without pykeops and without its "
           "CUDA extension (this machine) uses `cauchy_naive` / the naive `log_vandermonde`, which materialise "
           "(…, N/2, L) tensors; a case whose predicted size exceeds the free memory is not run. "
           "Floor: `flops_s4_kernel` / `flops_s4d_kernel` / matmul rate.", "",
           "| L | ours S4 ms | ours S4 MiB | ESPnet NPLR ms | ESPnet NPLR MiB | NPLR / ours | S4 floor ms | ours / floor "
           "| ours S4D ms | ours S4D MiB | ESPnet diag (zoh) ms | ESPnet diag MiB | diag / ours S4D |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["d"]:
        a, b, c, e = (_kernel_cells(r[k]) for k in ("ours-s4", "espnet-nplr", "ours-s4d", "espnet-diag"))
        fl = flops_s4_kernel(r["L"], H) / (rate * 1e9)
        over = f"{r['ours-s4']['best'] / fl:.1f}×" if "best" in r["ours-s4"] else "n/a"
        out.append(f"| {r['L']} | {a[0]} | {a[1]} | {b[0]} | {b[1]} | {ratio(r['espnet-nplr'], r['ours-s4'])} | {ms(fl)} "
                   f"| {over} | {c[0]} | {c[1]} | {e[0]} | {e[1]} | {ratio(r['espnet-diag'], r['ours-s4d'])} |")
    return out + [""]


def table_e(res: dict) -> list[str]:
    out = ["## (e) TTS: time per generated frame", "",
           "`tts: ssm` (S4 decoder) against ESPnet's `tts: transformer`, both at the size of "
           "`conf/ljspeech/tts_{ssm,transformer}.yaml` (adim 512, 8 heads, 6 + 6 blocks, FF 1024, 80 mel bins, "
           "r = 1, postnet 5 × 256), random weights, 100 input tokens, `inference` with `threshold` 2 (never "
           "stops) and `maxlenratio` set for exactly n frames. Per frame = whole call / n (encoder and postnet "
           "included); marginal = extra time / extra frames between consecutive n (the cost of a frame at that "
           "position). Best of the repetitions.", "",
           "| frames | ours total (s) | ours ms/frame | ours marginal ms/frame | Transformer-TTS total (s) "
           "| Transformer ms/frame | Transformer marginal ms/frame | Transformer / ours (per frame) |",
           "|---|---|---|---|---|---|---|---|"]
    ours = {r["frames"]: r for r in res["e"] if r["kind"] == "ssm"}
    theirs = {r["frames"]: r for r in res["e"] if r["kind"] == "transformer"}

    def marginal(r):
        return f"{r['marginal'] * 1e3:.2f}" if "marginal" in r else ""

    for n in sorted(ours):
        o, t = ours[n], theirs.get(n)
        if t is None:
            continue
        out.append(f"| {n} | {o['best']:.2f} | {o['best'] / n * 1e3:.2f} | {marginal(o)} | {t['best']:.2f} "
                   f"| {t['best'] / n * 1e3:.2f} | {marginal(t)} | {ratio(t, o)} |")
    return out + target_lines(res, "e") + [""]


TABLES = {"a": table_a, "a2": table_a2, "b": table_b, "c": table_c, "d": table_d, "e": table_e}


def report(res: dict, argv, analysis: str) -> str:
    """The whole BENCHMARKS.md text."""
    out = header(res, argv, analysis)
    for key, table in TABLES.items():
        if key in res:
            out += table(res)
    return "\n".join(out) + "\n"
