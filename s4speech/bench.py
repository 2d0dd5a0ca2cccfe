"""Benchmarks: our ``decoder: ssm`` against ESPnet's ``decoder: s4`` and ``decoder: transformer``.

    python -m s4speech.bench [--quick] [--only a,b,c,d] [--threads 2] [--out BENCHMARKS.md]
    s4speech bench ...

(a) beam-search step: ``batch_score`` of 8 hypotheses at prefix lengths 16 ... 2048
(b) teacher-forced forward + backward: time and peak memory at output lengths 256, 1024, 4096
(c) whole-utterance ``BatchBeamSearch`` of a long input (3000 encoder frames = 2 min at 40 ms)
(d) SSM kernel generation, L = 1k ... 64k, against ESPnet's ``espnet2.asr.state_spaces`` kernels
(e) TTS: time per generated frame at 100 ... 2000 frames, ``tts: ssm`` against ESPnet's Transformer-TTS

Every table runs its decoders in one process on the same sizes and the same inputs (random weights,
random encoder output; the work per call does not depend on the values). Times are wall-clock, the
best and the median of several repetitions (``best`` is what the targets use: it is the least
disturbed by other processes). Memory (b, d) is measured in a fresh subprocess per case as the
peak resident set size (VmHWM, reset just before the call) minus the resident size just before the measured call: it
sees every allocation, torch's included, unlike tracemalloc.

Floors: the analytic floating-point work of our decoder (formulas in ``flops_*``) divided by the
machine's float32 matmul rate measured at the same thread count (a 2048^3 matmul); some tables add
a memory floor (bytes that must be streamed / measured copy bandwidth).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

from s4speech.io.files import atomic_write

V = 5000  # LibriSpeech BPE vocabulary
N_STATE = 64
BLOCKS = 6
BEAM = 8


# ---------------------------------------------------------------------------------------- utils
def _setup(threads: int):
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


def timeit(fn, reps: int, warmup: int = 1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts), statistics.median(ts)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> bool:
    """Reset this process' peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes() -> int:
    """Peak resident set size of this process (VmHWM; unlike ru_maxrss it is not inherited from the
    parent through fork + exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mem_available() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable"):
            return int(line.split()[1]) * 1024
    return 0


def machine() -> dict:
    import torch

    from s4speech.io.machine import cpu_model

    cpu = cpu_model()

    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
            "mem_gb": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)}


def matmul_rate(torch) -> float:
    """float32 GFLOP/s of a 2048^3 matmul (best of 5)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best, _ = timeit(lambda: a @ b, 5, 2)
    return 2 * 2048**3 / best / 1e9


def copy_bandwidth(torch) -> float:
    """GB/s of a 256 MiB copy (read + write counted)."""
    a = torch.empty(64 << 20)
    a.normal_()
    b = torch.empty_like(a)
    best, _ = timeit(lambda: b.copy_(a), 5, 2)
    return 2 * a.numel() * 4 / best / 1e9


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ----------------------------------------------------------------------------- the decoders
def heads(d):
    return max(1, d // 64)


def build(kind: str, d: int, dropout: float = 0.0):
    """One of the three decoders at width d, 6 blocks, FF 4d, vocabulary 5000."""
    if kind == "ssm":
        from s4speech.asr.decoder import SSMDecoder

        return SSMDecoder(V, d, attention_heads=heads(d), linear_units=4 * d, num_blocks=BLOCKS,
                          dropout_rate=dropout, d_state=N_STATE, kernel="s4")
    if kind == "s4":  # ESPnet's LibriSpeech S4-decoder layer list
        from espnet2.asr.decoder.s4_decoder import S4Decoder

        layer = [
            {"_name_": "s4", "postact": "glu", "dropout": dropout, "n_ssm": 1, "bidirectional": False,
             "lr": 0.0025, "dt_min": 0.001, "dt_max": 0.1, "measure": "legs", "d_state": N_STATE},
            {"_name_": "mha", "n_head": heads(d), "dropout": dropout},
            {"_name_": "ff", "expand": 4, "activation": "gelu", "dropout": dropout},
        ]
        return S4Decoder(V, d, dropinp=0.0, dropout=dropout, drop_path=0.0, prenorm=True, n_layers=BLOCKS,
                         transposed=False, layer=layer, residual="residual", norm="layer")
    if kind == "transformer":
        from espnet2.asr.decoder.transformer_decoder import TransformerDecoder

        return TransformerDecoder(V, d, attention_heads=heads(d), linear_units=4 * d, num_blocks=BLOCKS,
                                  dropout_rate=dropout, positional_dropout_rate=dropout,
                                  self_attention_dropout_rate=dropout, src_attention_dropout_rate=dropout)
    raise ValueError(kind)


NAMES = {"ssm": "ours (ssm)", "s4": "ESPnet s4", "transformer": "ESPnet transformer"}


def espnet_s4_setup_step(dec):
    """What espnet2.bin.asr_inference does before a search with an S4Decoder."""
    for m in dec.modules():
        if hasattr(m, "setup_step"):
            m.setup_step()


# ------------------------------------------------------------------------ analytic FLOPs
def flops_ssm_step(n, d, T, N=N_STATE, blocks=BLOCKS, vocab=V, parts=False):
    """One batch_score of n hypotheses (one token each) of our decoder.

    Per block: S4 step (diagonal plus rank one on N/2 complex pairs, ~11 N flops per channel incl.
    the output read-out and D skip), S4 output Linear d->2d + GLU, cross-attention (q, out: 2 d^2 MACs;
    scores and weighted sum over T memory frames: 2 T d MACs; softmax ~5 flops per score), FF d->4d->d
    (8 d^2 MACs) + GELU (~8 flops), 3 LayerNorms (~8 flops per element), residual adds. Then the final
    LayerNorm, the output layer (d V MACs) and log-softmax (~4 flops per logit).
    ``parts=True``: a dict linear / attention / softmax / ssm / elementwise (``linear`` + ``attention``
    is what torch's FlopCounterMode counts: the addmm of every Linear and the two products of the
    attention)."""
    h = heads(d)
    linear = blocks * (2 * d * 2 * d + 2 * (2 * d * d) + 2 * (8 * d * d)) + 2 * d * vocab
    attention = blocks * 2 * (2 * T * d)
    softmax = blocks * 5 * h * T
    ssm = blocks * 11 * N * d
    elementwise = blocks * (3 * d + 8 * 4 * d + 3 * 8 * d + 3 * d) + 8 * d + 4 * vocab
    p = {k: float(n * v) for k, v in
         dict(linear=linear, attention=attention, softmax=softmax, ssm=ssm, elementwise=elementwise).items()}
    return p if parts else sum(p.values())


def flops_s4_step(n, d, T, N=N_STATE, blocks=BLOCKS, vocab=V) -> float:
    """ESPnet's S4Decoder.batch_score as it runs: per block the dense complex (H, 2N, 2N) state update
    (done for ONE state, hypothesis 0's, see README of the tables) + complex read-out for n, the MHA with
    k and v projections of all n x T memory frames (recomputed every step), FF and S4 output as ours."""
    h = heads(d)
    N2 = 2 * N
    per_block = (8 * d * N2 * N2 + n * 8 * d * N2 * 2  # state update (batch 1) + input / read-out (n)
                 + n * (2 * 2 * d * d + 3 * d)  # output linear + GLU
                 + n * (2 * 2 * d * d) + n * T * (2 * 2 * d * d) + n * (2 * 2 * T * d + 5 * h * T)  # mha
                 + n * (2 * 8 * d * d + 8 * 4 * d) + n * 3 * 8 * d)
    return float(blocks * per_block + n * (8 * d + 2 * d * vocab + 4 * vocab))


def flops_transformer_step(n, d, T, L, blocks=BLOCKS, vocab=V) -> float:
    """ESPnet's TransformerDecoder.batch_score: every layer normalises all L prefix positions and
    projects them to k and v (its cache holds layer outputs, not keys/values), attends the last one;
    the source attention projects all T memory frames to k and v every step."""
    h = heads(d)
    per_block = (n * L * 8 * d  # norm1 over the prefix
                 + n * (2 * d * d) + n * L * (2 * 2 * d * d) + n * (2 * 2 * L * d + 5 * h * L) + n * 2 * d * d
                 + n * (2 * d * d) + n * T * (2 * 2 * d * d) + n * (2 * 2 * T * d + 5 * h * T) + n * 2 * d * d
                 + n * (2 * 8 * d * d + 8 * 4 * d) + n * 2 * 8 * d)
    return float(blocks * per_block + n * L * 2 * d + n * (8 * d + 2 * d * vocab + 4 * vocab))


def bytes_ssm_step(n, d, T, N=N_STATE, blocks=BLOCKS, vocab=V) -> float:
    """Bytes our step must stream at least: every weight it uses once (float32), the shared
    cross-attention keys/values, and the recurrent states read and written."""
    weights = blocks * (2 * d * d + 2 * d * d + 8 * d * d + 2 * N * d * 4) + d * vocab
    kv = blocks * 2 * T * d
    states = blocks * 2 * n * d * N
    return 4.0 * (weights + kv + states)


def flops_ssm_train(B, U, d, T, N=N_STATE, blocks=BLOCKS, vocab=V) -> float:
    """Teacher-forced forward of our decoder on B x U tokens; forward + backward counted as 3x.

    Per block: kernel generation (~50 flops per (channel, pair, frequency) for the Cauchy sums over
    U/2+1 frequencies + the dense matrix power for C~: (log2 U + popcount) (H, N, N) products),
    FFT convolution (rfft of input and kernel, irfft: ~3 x 2.5 (2U) log2(2U) per channel and
    sequence), S4 output linear, cross-attention (q, out, scores and weighted sum over T; k and v of
    the memory once per sequence), FF; output layer + log-softmax."""
    h = heads(d)
    n_pow = int(math.log2(U)) + bin(U).count("1")
    kernel = d * (N // 2) * (U // 2 + 1) * 50 + n_pow * 2 * d * N**3 + d * 2.5 * U * math.log2(U)
    conv = B * d * 3 * 2.5 * 2 * U * math.log2(2 * U)
    per_tok = (2 * 2 * d * d + 3 * d + 2 * 2 * d * d + 2 * 2 * T * d + 5 * h * T + 2 * 8 * d * d + 8 * 4 * d
               + 3 * 8 * d)
    mem = B * T * 2 * 2 * d * d
    fwd = blocks * (kernel + conv + B * U * per_tok + mem) + B * U * (8 * d + 2 * d * vocab + 6 * vocab)
    return 3.0 * fwd


def flops_s4_kernel(L, H=256, N=N_STATE) -> float:
    """Our S4 kernel: ~50 flops per (channel, conjugate pair, frequency) + Woodbury (~40 per
    (channel, frequency)) + irfft + the C~ matrix power + the O(N^2) discretisation."""
    n_pow = int(math.log2(L)) + bin(L).count("1")
    return H * ((N // 2) * (L // 2 + 1) * 50 + (L // 2 + 1) * 40 + 2.5 * L * math.log2(L) + n_pow * 2 * N**3
                + 10 * N * N)


def flops_s4d_kernel(L, H=256, N=N_STATE) -> float:
    """Our S4D kernel: the blocked Vandermonde product, 2 N real flops per output sample, plus
    ~30 flops per complex exponential (H N/2 (S + L/S) of them, S ~ sqrt(L))."""
    S = 1 << max(0, math.ceil(math.log2(L) / 2))
    return H * (2 * N * L + 30 * (N // 2) * (S + L // S))


# ----------------------------------------------------------------------------- (a) step
def ssm_step_call(torch, dec, x, ys, perm):
    """Our ``batch_score`` of the last token of ``ys`` (BEAM, L), as a no-argument callable: the
    states of an L - 1 token prefix (random contents), rows permuted by ``perm`` as in a search."""
    st0 = dec.init_state(x)
    base = [0.1 * torch.randn(BEAM, x.shape[-1], N_STATE) for _ in range(BLOCKS)]
    states = [dict(st0, ssm=base, row=perm[i], pos=ys.shape[1] - 1) for i in range(BEAM)]
    xs = x.expand(BEAM, *x.shape)
    return lambda: dec.batch_score(ys, states, xs)


def bench_step(torch, d: int, T: int, Ls, reps: int):
    torch.manual_seed(0)
    decs = {k: build(k, d).eval() for k in ("ssm", "s4", "transformer")}
    espnet_s4_setup_step(decs["s4"])
    x = torch.randn(T, d)
    xs = x.expand(BEAM, T, d)
    perm = torch.randperm(BEAM).tolist()  # beam search re-orders hypotheses every step
    rows = []
    for L in Ls:
        ys = torch.randint(0, V - 1, (BEAM, L))
        ys[:, 0] = V - 1
        res = {}
        with torch.no_grad():
            res["ssm"] = timeit(ssm_step_call(torch, decs["ssm"], x, ys, perm), reps, 3)
            # ESPnet s4: per hypothesis a list of layer states (complex (1, H, 2N) for S4 layers)
            dec = decs["s4"]
            proto = dec.init_state(x)
            states = [[None if s is None else 0.1 * torch.randn_like(s) for s in proto] for _ in range(BEAM)]
            res["s4"] = timeit(lambda: dec.batch_score(ys, states, xs), reps, 1)
            # ESPnet transformer: per hypothesis its cache, computed for the L - 1 prefix tokens
            dec = decs["transformer"]
            from espnet.nets.pytorch_backend.transformer.mask import subsequent_mask

            if L > 1:
                _, cache = dec.forward_one_step(ys[:, :-1], subsequent_mask(L - 1).unsqueeze(0), xs, cache=None)
                states = [[c[b] for c in cache] for b in range(BEAM)]
            else:
                states = [None] * BEAM
            res["transformer"] = timeit(lambda: dec.batch_score(ys, states, xs), reps, 1)
        rows.append({"d": d, "T": T, "L": L, **{k: {"best": v[0], "median": v[1]} for k, v in res.items()},
                     "flops_ssm": flops_ssm_step(BEAM, d, T), "flops_s4": flops_s4_step(BEAM, d, T),
                     "flops_transformer": flops_transformer_step(BEAM, d, T, L),
                     "bytes_ssm": bytes_ssm_step(BEAM, d, T)})
        print(f"  (a) d={d} T={T} L={L}: " + ", ".join(f"{k} {v['best'] * 1e3:.2f} ms" for k, v in rows[-1].items()
                                                      if isinstance(v, dict)), flush=True)
    return rows


# ------------------------------------------------- (a2) where our step's time goes (subprocess)
# glibc returns freed blocks above its mmap threshold to the OS, so a fresh (n, H, N) state or activation
# costs page faults at every step; these settings keep such blocks in the heap (same process otherwise)
MALLOC_KEEP = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456",
               "MALLOC_TOP_PAD_": "67108864"}


def case_step(torch, d: int, T: int, L: int, reps: int) -> dict:
    """Our batch_score as in (a), timed, then profiled: aten calls per step and the time in addmm."""
    from torch.profiler import profile

    torch.manual_seed(0)
    dec = build("ssm", d).eval()
    x = torch.randn(T, d)
    perm = torch.randperm(BEAM).tolist()
    ys = torch.randint(0, V - 1, (BEAM, L))
    with torch.no_grad():
        fn = ssm_step_call(torch, dec, x, ys, perm)
        best, med = timeit(fn, reps, 3)
        n = 10
        with profile() as prof:
            for _ in range(n):
                fn()
    ev = prof.key_averages()
    top = [e for e in ev if e.key.startswith("aten::")]
    addmm = [e for e in top if e.key == "aten::addmm"]
    return {"best": best, "median": med, "aten_calls": sum(e.count for e in top) / n,
            "addmm_calls": sum(e.count for e in addmm) / n,
            "addmm_s": sum(e.self_cpu_time_total for e in addmm) / n / 1e6,
            "profiled_s": sum(e.self_cpu_time_total for e in ev) / n / 1e6}


# -------------------------------------------------------------------- (b) fwd + bwd (subprocess)
def build_layer(kind: str, d: int, dropout: float = 0.1):
    """One causal S4 layer alone (kernel, convolution, D, GELU, Linear + GLU): ours or ESPnet's."""
    if kind == "ssm-layer":
        from s4speech.ssm.layer import SSMLayer

        return SSMLayer(d, N_STATE, kernel="s4", dropout=dropout)
    from espnet2.asr.state_spaces.s4 import S4

    return S4(d, d_state=N_STATE, postact="glu", dropout=dropout, n_ssm=1, bidirectional=False, lr=0.0025,
              measure="legs", transposed=False)


def case_train(torch, kind: str, d: int, U: int, B: int, T: int, reps: int) -> dict:
    torch.manual_seed(0)
    if kind.endswith("-layer"):
        layer = build_layer(kind, d).train()
        u = torch.randn(B, U, d, requires_grad=True)

        def step():
            y = layer(u)
            (y[0] if isinstance(y, tuple) else y).square().mean().backward()
            layer.zero_grad(set_to_none=True)
            u.grad = None
    else:
        dec = build(kind, d, dropout=0.1).train()
        hs = torch.randn(B, T, d)
        hl = torch.full((B,), T)
        ys = torch.randint(0, V - 1, (B, U))
        yl = torch.full((B,), U)
        tgt = torch.randint(0, V - 1, (B, U))

        def step():
            logits, _ = dec(hs, hl, ys, yl)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1))
            loss.backward()
            dec.zero_grad(set_to_none=True)

    reset = reset_peak()
    before = rss_bytes()
    before_max = peak_bytes()
    t = time.perf_counter()
    step()  # first call: also measures the peak
    first = time.perf_counter() - t
    peak = peak_bytes()
    best, med = timeit(step, reps, 0) if reps else (first, first)
    return {"best": min(best, first), "median": med, "first": first, "peak_delta": peak - before,
            "peak_valid": reset or peak > before_max, "rss_before": before}


def predict_train_bytes(kind, d, U, B, T) -> float:
    h = heads(d)
    common = B * U * V * 4 * 4 + BLOCKS * B * U * d * 4 * 20
    if kind == "transformer":
        return common + BLOCKS * B * h * U * U * 4 * 5
    if kind == "s4":  # ESPnet's materialised Cauchy matrix (2, 2, H, N/2, U/2+1) complex + grads
        return common + 3 * 4 * d * (N_STATE // 2) * (U // 2 + 1) * 8 + B * d * U * 8 * 6 * BLOCKS
    return common


# ------------------------------------------------------------------ (c) whole-utterance search
def bench_search(torch, d: int, T: int, tokens: int):
    from espnet.nets.batch_beam_search import BatchBeamSearch

    torch.manual_seed(0)
    x = torch.randn(T, d)
    rows = []
    for kind in ("ssm", "s4", "transformer"):
        dec = build(kind, d).eval()
        out = dec.output_layer if kind in ("ssm", "transformer") else dec.output
        with torch.no_grad():
            out.bias[V - 1] = -30.0  # no <eos> before maxlen: every decoder runs the same number of steps
        if kind == "s4":
            espnet_s4_setup_step(dec)
        calls = []
        orig = dec.batch_score

        def counted(*a, _orig=orig, **k):
            calls.append(1)
            return _orig(*a, **k)

        dec.batch_score = counted
        bs = BatchBeamSearch(scorers={"decoder": dec}, weights={"decoder": 1.0}, beam_size=BEAM, vocab_size=V,
                             sos=V - 1, eos=V - 1, token_list=None, pre_beam_score_key=None)
        t = time.perf_counter()
        with torch.no_grad():
            hyps = bs(x, maxlenratio=tokens / T, minlenratio=0.0)
        wall = time.perf_counter() - t
        rows.append({"kind": kind, "T": T, "d": d, "tokens": len(hyps[0].yseq) - 2, "steps": len(calls),
                     "wall": wall, "flops_ssm_step": flops_ssm_step(BEAM, d, T)})
        print(f"  (c) {kind}: {wall:.1f} s for {len(calls)} steps", flush=True)
    return rows


# ------------------------------------------------------------------------------- (e) TTS
TTS_SIZE = dict(adim=512, aheads=8, elayers=6, eunits=1024, dlayers=6, dunits=1024, eprenet_conv_layers=0,
                dprenet_layers=2, dprenet_units=256, postnet_layers=5, postnet_chans=256, postnet_filts=5,
                reduction_factor=1)  # conf/ljspeech/tts_{ssm,transformer}.yaml


def build_tts(kind: str, idim: int = 60, odim: int = 80):
    """``tts: ssm`` or ESPnet's ``tts: transformer`` at the LJSpeech configs' size."""
    if kind == "ssm":
        from s4speech.tts.model import SSMTTS

        return SSMTTS(idim, odim, embed_dim=0, d_state=N_STATE, kernel="s4", **TTS_SIZE)
    from espnet2.tts.transformer import Transformer

    return Transformer(idim, odim, embed_dim=0, positionwise_layer_type="linear", use_scaled_pos_enc=True,
                       **TTS_SIZE)


def bench_tts(torch, frames, text_len: int = 100, reps: int = 2):
    """Generate exactly n frames (threshold above 1: no stop; maxlenratio = n / (text + 1)) and time it.

    Per frame = total / n (the encoder and postnet included, so short outputs carry their cost too);
    marginal = (t(n) - t(n_prev)) / (n - n_prev): the cost of the frames added, which shows whether
    a frame's cost grows with its position."""
    torch.manual_seed(0)
    rows = []
    text = torch.randint(1, 59, (text_len,))
    for kind in ("ssm", "transformer"):
        model = build_tts(kind).eval()
        prev = None
        for n in frames:
            ratio = n / (text_len + 1)

            def gen():
                out = model.inference(text, threshold=2.0, minlenratio=0.0, maxlenratio=ratio)
                return out["feat_gen"].shape[0]

            with torch.no_grad():
                got = gen()
                best, med = timeit(gen, reps, 0)
            row = {"kind": kind, "frames": got, "best": best, "median": med}
            if prev is not None:
                row["marginal"] = (best - prev["best"]) / (got - prev["frames"])
            rows.append(row)
            prev = row
            print(f"  (e) {kind} {got} frames: {best:.2f} s, {best / got * 1e3:.2f} ms/frame", flush=True)
    return rows


# ------------------------------------------------------------------------ (d) kernels (subprocess)
def case_kernel(torch, kind: str, L: int, H: int, reps: int) -> dict:
    torch.manual_seed(0)
    if kind == "ours-s4":
        from s4speech.ssm.kernels import S4Kernel

        k = S4Kernel(H, N_STATE, n_ssm=1)
        fn = lambda: k(L)  # noqa: E731
    elif kind == "ours-s4d":
        from s4speech.ssm.kernels import S4DKernel

        k = S4DKernel(H, N_STATE)
        fn = lambda: k(L)  # noqa: E731
    elif kind == "espnet-nplr":
        from espnet2.asr.state_spaces.s4 import SSKernel

        k = SSKernel(H, N=N_STATE, mode="nplr", measure="legs", n_ssm=1)
        fn = lambda: k.kernel(L=L, rate=1.0)  # noqa: E731
    elif kind == "espnet-diag":
        from espnet2.asr.state_spaces.s4 import SSKernel

        k = SSKernel(H, N=N_STATE, mode="diag", measure="diag-lin", disc="zoh")
        fn = lambda: k.kernel(L=L, rate=1.0)  # noqa: E731
    else:
        raise ValueError(kind)
    with torch.no_grad():
        reset = reset_peak()
        before, before_max = rss_bytes(), peak_bytes()
        t = time.perf_counter()
        fn()  # ESPnet NPLR: also sets up C~ for length L (once per length)
        first = time.perf_counter() - t
        peak = peak_bytes()
        best, med = timeit(fn, reps, 0)
    return {"best": best, "median": med, "first": first, "peak_delta": peak - before,
            "peak_valid": reset or peak > before_max}


def predict_kernel_bytes(kind, L, H) -> float:
    n = N_STATE // 2
    if kind == "espnet-nplr":  # (2, 2, H, n, L/2+1) complex quotient + (H, n, L/2+1) denominators
        return (4 + 2) * H * n * (L // 2 + 1) * 8
    if kind == "espnet-diag":  # (H, n, L) complex exponent and exponential
        return 2 * H * n * L * 8
    return 4 * H * L * 4


def run_case(spec: dict, threads: int, timeout: float = 1800, env: dict | None = None) -> dict:
    cmd = [sys.executable, "-m", "s4speech.bench", "--threads", str(threads), "--_case", json.dumps(spec)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), **(env or {}))  # OMP_WAIT_POLICY inherited (_setup)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout {timeout:.0f} s"}
    if p.returncode != 0:
        return {"error": f"exit {p.returncode}: {(p.stderr or p.stdout).strip().splitlines()[-1:]}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------- reporting
def ms(s):
    return f"{s * 1e3:.2f}" if s < 10 else f"{s * 1e3:.0f}"


def mb(b):
    return f"{b / 2**20:.0f}"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def report(res: dict, argv, analysis: str) -> str:
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
           f"- command: `{' '.join(['python -m s4speech.bench'] + list(argv))}` ({res['wall'] / 60:.1f} min)",
           ""]
    for u in res.get("updates", []):  # later runs that replaced some tables (--update)
        out[-1:] = [f"- then: `{' '.join(['python -m s4speech.bench'] + list(u['argv']))}` (measured the tables it names, "
                    f"{u.get('wall', float('nan')) / 60:.1f} min; load at its start / end: {u['load_start']} / "
                    f"{u.get('load_end', '?')})", ""]
    if analysis:
        out += ["<!-- analysis -->", analysis.strip(), "<!-- /analysis -->", ""]

    if "a" in res:
        out += ["## (a) Beam-search step: `batch_score` of 8 hypotheses, one new token each", "",
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
                f"| {ms(t['best'])} ({ms(t['median'])}) | {s['best'] / o['best']:.1f}× | {t['best'] / o['best']:.1f}× "
                f"| {r['flops_ssm'] / 1e6:.1f} M | {ms(floor)} | {o['best'] / floor:.1f}× | {ms(r['bytes_ssm'] / (bw * 1e9))} "
                f"| {r['flops_s4'] / 1e9:.2f} G | {r['flops_transformer'] / 1e9:.2f} G |")
        tgt = [r for r in res["a"] if r["d"] == 256 and r["T"] == 200]
        if tgt:
            by = {r["L"]: r for r in tgt}
            worst = max(r["ssm"]["best"] / r["s4"]["best"] for r in tgt)
            flat = by[2048]["ssm"]["best"] / by[16]["ssm"]["best"] if 2048 in by and 16 in by else float("nan")
            fl = max(r["ssm"]["best"] / (r["flops_ssm"] / (rate * 1e9)) for r in tgt)
            out += ["", "Targets (d 256, 6 blocks, enc T 200, beam 8):", "",
                    f"- our step ≤ 1/10 of ESPnet's s4 step: worst ours/s4 = {worst:.3f} (1/{1 / worst:.0f}) → {verdict(worst <= 0.1)}",
                    f"- flat in prefix length (L 2048 within 1.2× of L 16): {flat:.2f}× → {verdict(flat <= 1.2)}",
                    f"- within 3× of the floor: worst {fl:.1f}× → {verdict(fl <= 3)}"]
        out.append("")

    if "a2" in res:
        out += ["## (a2) Where our step's time goes (d 256, enc T 200, beam 8)", "",
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
        out.append("")

    if "b" in res:
        out += ["## (b) Teacher-forced forward + backward (training step)", "",
                "B sequences of U output tokens (B·U = 4096 tokens per batch), encoder T = 200, d = 256, "
                "dropout 0.1, train mode, cross-entropy over the 5000-way output, `loss.backward()`. Each case in a "
                "fresh subprocess; peak memory = peak RSS (VmHWM, reset with /proc/self/clear_refs) − RSS just before the first forward (includes "
                "every torch allocation: activations, gradients, the kernels' temporaries). "
                "Time: best of the repetitions after the first call. Floor: `flops_ssm_train` (forward × 3) / matmul rate.", "",
                "| U | B | ours (s) | ESPnet s4 (s) | ESPnet transformer (s) | s4 / ours | our peak (MiB) "
                "| s4 peak (MiB) | transformer peak (MiB) | ours / s4 memory | our floor (s) | ours / floor |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]

        def cell(c, key):
            if "error" in c:
                return f"n/a ({c['error']})"
            if key == "t":
                return f"{c['best']:.2f}"
            return mb(c["peak_delta"]) + ("" if c.get("peak_valid", True) else " (≥)")

        for r in res["b"]:
            o, s, t = r["ssm"], r["s4"], r["transformer"]
            sp = f"{s['best'] / o['best']:.1f}×" if "best" in s and "best" in o else "n/a"
            mr = f"{o['peak_delta'] / s['peak_delta']:.2f}" if "peak_delta" in s and "peak_delta" in o else "n/a"
            floor = r["flops"] / (rate * 1e9)
            ratio = f"{o['best'] / floor:.1f}×" if "best" in o else "n/a"
            out.append(f"| {r['U']} | {r['B']} | {cell(o, 't')} | {cell(s, 't')} | {cell(t, 't')} | {sp} | {cell(o, 'm')} "
                       f"| {cell(s, 'm')} | {cell(t, 'm')} | {mr} | {floor:.2f} | {ratio} |")
        if res.get("b_layer"):
            out += ["", "The part that differs: one causal S4 layer alone (ours `SSMLayer` vs ESPnet's `S4`, d 256, N 64, "
                    "dropout 0.1), forward + backward of mean(y²), same B × U, fresh subprocess per case:", "",
                    "| U | B | ours (s) | ESPnet S4 (s) | ESPnet / ours | our peak (MiB) | ESPnet peak (MiB) | ours / ESPnet memory |",
                    "|---|---|---|---|---|---|---|---|"]
            for r in res["b_layer"]:
                o, s = r["ssm-layer"], r["s4-layer"]
                if "best" in o and "best" in s:
                    out.append(f"| {r['U']} | {r['B']} | {o['best']:.3f} | {s['best']:.3f} | {s['best'] / o['best']:.1f}× "
                               f"| {mb(o['peak_delta'])} | {mb(s['peak_delta'])} | {o['peak_delta'] / s['peak_delta']:.2f} |")
                else:
                    out.append(f"| {r['U']} | {r['B']} | {cell(o, 't')} | {cell(s, 't')} | n/a | | | |")
        r1k = [r for r in res["b"] if r["U"] == 1024]
        if r1k and "best" in r1k[0]["s4"] and "best" in r1k[0]["ssm"]:
            r = r1k[0]
            sp = r["s4"]["best"] / r["ssm"]["best"]
            mr = r["ssm"]["peak_delta"] / r["s4"]["peak_delta"]
            out += ["", "Targets (U = 1024):", "",
                    f"- ≥ 2× faster than ESPnet's s4: {sp:.2f}× → {verdict(sp >= 2)}",
                    f"- ≤ 1/4 of its peak memory: {mr:.2f} → {verdict(mr <= 0.25)}"]
        out.append("")

    if "c" in res:
        rows = res["c"]
        T = rows[0]["T"]
        out += [f"## (c) Whole-utterance beam search: {T} encoder frames ({T * 0.04 / 60:.0f} min at 40 ms)", "",
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
        out.append("")

    if "d" in res:
        H = res["d"][0]["H"]
        out += [f"## (d) Kernel generation: H = {H} channels, N = {N_STATE}, no grad", "",
                "ms per call (best of repetitions; ESPnet NPLR after its one-time C~ set-up for that length) and peak "
                "memory (MiB, ΔRSS in a fresh subprocess, first call included). ESPnet without pykeops and without its "
                "CUDA extension (this machine) uses `cauchy_naive` / the naive `log_vandermonde`, which materialise "
                "(…, N/2, L) tensors; a case whose predicted size exceeds the free memory is not run. "
                "Floor: `flops_s4_kernel` / `flops_s4d_kernel` / matmul rate.", "",
                "| L | ours S4 ms | ours S4 MiB | ESPnet NPLR ms | ESPnet NPLR MiB | NPLR / ours | S4 floor ms | ours / floor "
                "| ours S4D ms | ours S4D MiB | ESPnet diag (zoh) ms | ESPnet diag MiB | diag / ours S4D |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

        def c2(c):
            if "error" in c:
                return f"n/a ({c['error']})", "n/a"
            return ms(c["best"]), mb(c["peak_delta"])

        for r in res["d"]:
            a, b, c, e = (c2(r[k]) for k in ("ours-s4", "espnet-nplr", "ours-s4d", "espnet-diag"))
            rat = lambda x, y: f"{r[x]['best'] / r[y]['best']:.1f}×" if "best" in r[x] and "best" in r[y] else "n/a"  # noqa: E731
            fl = flops_s4_kernel(r["L"], H) / (rate * 1e9)
            ofl = f"{r['ours-s4']['best'] / fl:.1f}×" if "best" in r["ours-s4"] else "n/a"
            out.append(f"| {r['L']} | {a[0]} | {a[1]} | {b[0]} | {b[1]} | {rat('espnet-nplr', 'ours-s4')} | {ms(fl)} | {ofl} "
                       f"| {c[0]} | {c[1]} | {e[0]} | {e[1]} | {rat('espnet-diag', 'ours-s4d')} |")
        out.append("")

    if "e" in res:
        out += ["## (e) TTS: time per generated frame", "",
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
        mg = lambda r: f"{r['marginal'] * 1e3:.2f}" if "marginal" in r else ""  # noqa: E731
        for n in sorted(ours):
            o, t = ours[n], theirs.get(n)
            if t is None:
                continue
            out.append(f"| {n} | {o['best']:.2f} | {o['best'] / n * 1e3:.2f} | {mg(o)} | {t['best']:.2f} "
                       f"| {t['best'] / n * 1e3:.2f} | {mg(t)} | {t['best'] / o['best']:.1f}× |")
        if 1000 in ours and 1000 in theirs and 500 in ours:
            sp = theirs[1000]["best"] / ours[1000]["best"]
            big = max(ours)
            flat = ours[big]["marginal"] / ours[500]["marginal"]
            out += ["", "Targets:", "",
                    f"- time per frame flat: our marginal ms/frame at {big} frames / at 500 frames = {flat:.2f} → "
                    f"{verdict(flat <= 1.2)}",
                    f"- ≥ 5× faster than Transformer-TTS at 1000 frames: {sp:.1f}× → {verdict(sp >= 5)}"]
        out.append("")
    return "\n".join(out) + "\n"


def existing_analysis(path: Path) -> str:
    if not path.exists():
        return ""
    text = path.read_text()
    a, b = "<!-- analysis -->", "<!-- /analysis -->"
    if a in text and b in text:
        return text[text.index(a) + len(a):text.index(b)]
    return ""


# ------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="s4speech bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a subset that finishes in a few minutes: (a) d 256, T 200; (b) U 256, 1024; "
                        "(c) 20 output tokens; (d) L up to 16k; (e) 100, 500 frames")
    p.add_argument("--only", default="a,a2,b,c,d,e", help="comma-separated sub-benchmarks (a, a2, b, c, d, e)")
    p.add_argument("--update", action="store_true",
                   help="start from the results in --json and replace only the sub-benchmarks run now")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"), help="report (default BENCHMARKS.md)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results as JSON")
    p.add_argument("--search_tokens", type=int, default=None, help="(c) output tokens (default 20 quick, 100 full)")
    p.add_argument("--report_from", type=Path, default=None,
                   help="only rewrite --out from the results saved earlier with --json (no measuring)")
    p.add_argument("--_case", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.report_from:
        res = json.loads(a.report_from.read_text())
        atomic_write(a.out, report(res, res.get("argv", argv), existing_analysis(a.out)))
        print(f"wrote {a.out}")
        return 0
    torch = _setup(a.threads)

    if a._case:  # a subprocess measuring one case
        spec = json.loads(a._case)
        if spec["what"] == "step":
            r = case_step(torch, spec["d"], spec["T"], spec["L"], spec["reps"])
        elif spec["what"] == "train":
            r = case_train(torch, spec["kind"], spec["d"], spec["U"], spec["B"], spec["T"], spec["reps"])
        else:
            r = case_kernel(torch, spec["kind"], spec["L"], spec["H"], spec["reps"])
        print(json.dumps(r))
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
        res["rate"] = matmul_rate(torch)
        res["bandwidth"] = copy_bandwidth(torch)
    print(f"machine: {res['machine']}, matmul {res['rate']:.1f} GFLOP/s, copy {res['bandwidth']:.1f} GB/s, "
          f"load {res['load_start']}", flush=True)
    if "a" in only:
        res["a"] = []
        Ls = [16, 128, 512, 1024, 2048]
        for d, T in ([(256, 200)] if a.quick else [(256, 200), (256, 1000), (512, 200), (512, 1000)]):
            res["a"] += bench_step(torch, d, T, Ls, reps=5 if a.quick else 7)
        save(res)
    if "a2" in only:
        res["a2"] = []
        for L in (16, 2048):
            for threads in (2, 1):
                for alloc, env in (("default", {}), ("keep", MALLOC_KEEP)):
                    r = run_case({"what": "step", "d": 256, "T": 200, "L": L, "reps": 15}, threads, env=env)
                    res["a2"].append({"L": L, "threads": threads, "malloc": alloc, **r})
                    print(f"  (a2) L={L} threads={threads} malloc={alloc}: {r}", flush=True)
        save(res)
    if "b" in only:
        res["b"] = []
        for U in ([256, 1024] if a.quick else [256, 1024, 4096]):
            B = 4096 // U
            row = {"U": U, "B": B, "flops": flops_ssm_train(B, U, 256, 200)}
            for kind in ("ssm", "s4", "transformer"):
                need = predict_train_bytes(kind, 256, U, B, 200)
                if need > 0.7 * mem_available():
                    row[kind] = {"error": f"not run: needs ~{need / 2**30:.0f} GiB, {mem_available() / 2**30:.0f} GiB free"}
                else:
                    row[kind] = run_case({"what": "train", "kind": kind, "d": 256, "U": U, "B": B, "T": 200,
                                          "reps": 1 if (a.quick or U >= 4096) else 2}, a.threads)
                print(f"  (b) U={U} {kind}: {row[kind]}", flush=True)
            res["b"].append(row)
        res["b_layer"] = []
        for U in ([1024] if a.quick else [256, 1024, 4096]):
            B = 4096 // U
            row = {"U": U, "B": B}
            for kind in ("ssm-layer", "s4-layer"):
                row[kind] = run_case({"what": "train", "kind": kind, "d": 256, "U": U, "B": B, "T": 0,
                                      "reps": 2}, a.threads)
                print(f"  (b) layer U={U} {kind}: {row[kind]}", flush=True)
            res["b_layer"].append(row)
            save(res)
    if "c" in only:
        tokens = a.search_tokens or (20 if a.quick else 100)
        res["c"] = bench_search(torch, 256, 3000, tokens)
        save(res)
    if "d" in only:
        res["d"] = []
        H = 256
        for L in ([1024, 4096, 16384] if a.quick else [1024, 2048, 4096, 8192, 16384, 32768, 65536]):
            row = {"L": L, "H": H}
            for kind in ("ours-s4", "espnet-nplr", "ours-s4d", "espnet-diag"):
                need = predict_kernel_bytes(kind, L, H)
                if need > 0.6 * mem_available():
                    row[kind] = {"error": f"not run: needs ~{need / 2**30:.0f} GiB, {mem_available() / 2**30:.0f} GiB free"}
                else:
                    row[kind] = run_case({"what": "kernel", "kind": kind, "L": L, "H": H,
                                          "reps": 3 if L <= 16384 else 1}, a.threads)
                print(f"  (d) L={L} {kind}: {row[kind]}", flush=True)
            res["d"].append(row)
            save(res)
    if "e" in only:
        res["e"] = bench_tts(torch, [100, 500] if a.quick else [100, 500, 1000, 2000], reps=1 if a.quick else 2)
    if a.update:
        upd.update(load_end=load(), wall=time.time() - t0)
    else:
        res["load_end"] = load()
        # the matmul rate is measured again at the end: other processes may have slowed either measurement
        res["rate_start"], res["rate_end"] = res["rate"], matmul_rate(torch)
        res["rate"] = max(res["rate_start"], res["rate_end"])
        res["wall"] = time.time() - t0
    save(res)
    atomic_write(a.out, report(res, res["argv"], existing_analysis(a.out)))
    print(f"wrote {a.out} ({(upd if a.update else res)['wall'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
