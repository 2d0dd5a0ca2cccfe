"""(a) Beam-search step: ``batch_score`` of 8 hypotheses, one new token each, at prefix lengths 16 ... 2048.

All three decoders in this process on the same random encoder output; ESPnet's get the states of the
L - 1 token prefix, ours random states of it with the rows permuted, as after a beam re-ordering."""
from __future__ import annotations

from s4speech.bench.env import timeit
from s4speech.bench.flops import bytes_ssm_step, flops_s4_step, flops_ssm_step, flops_transformer_step
from s4speech.bench.models import BEAM, BLOCKS, N_STATE, V, build, espnet_s4_setup_step

PREFIXES = [16, 128, 512, 1024, 2048]  # L
SIZES = [(256, 200), (256, 1000), (512, 200), (512, 1000)]  # (d, encoder T); --quick: the first


MARKERS = "<!-- step-compare -->", "<!-- /step-compare -->"


def ssm_step_call(dec, x, ys, perm):
    """Our ``batch_score`` of the last token of ``ys`` (BEAM, L) against memory ``x`` (T, d), as a
    no-argument callable: the (BEAM, d, N) states of an L - 1 token prefix (random contents), rows
    permuted by ``perm`` as in a search (``utterances_step_call`` of one utterance)."""
    return utterances_step_call(dec, [x], ys, perm)


def espnet_step_call(dec, x, ys):
    """ESPnet's ``batch_score`` of the last token of ``ys`` (BEAM, L) against memory ``x`` (T, d), as a
    no-argument callable: its ``decoder: s4`` with random layer states per hypothesis, its Transformer
    with the cache of the L - 1 token prefix (computed by its own ``forward_one_step``)."""
    import torch
    from espnet.nets.pytorch_backend.transformer.mask import subsequent_mask

    xs = x.expand(BEAM, *x.shape)
    L = ys.shape[1]
    if type(dec).__name__ == "S4Decoder":  # ESPnet's s4: per hypothesis a list of layer states
        proto = dec.init_state(x)
        states = [[None if s is None else 0.1 * torch.randn_like(s) for s in proto] for _ in range(BEAM)]
    elif L > 1:  # transformer: per hypothesis its cache of the L - 1 prefix tokens
        _, cache = dec.forward_one_step(ys[:, :-1], subsequent_mask(L - 1, device=x.device).unsqueeze(0), xs,
                                        cache=None)
        states = [[c[b] for c in cache] for b in range(BEAM)]
    else:
        states = [None] * BEAM
    return lambda: dec.batch_score(ys, states, xs)


def bench_step(d: int, T: int, Ls, reps: int) -> list[dict]:
    """One row per prefix length L: best / median seconds of each decoder's step, and the analytic models."""
    import torch

    torch.manual_seed(0)
    decs = {k: build(k, d).eval() for k in ("ssm", "s4", "transformer")}
    espnet_s4_setup_step(decs["s4"])
    x = torch.randn(T, d)
    perm = torch.randperm(BEAM).tolist()  # beam search re-orders hypotheses every step
    rows = []
    for L in Ls:
        ys = torch.randint(0, V - 1, (BEAM, L))
        ys[:, 0] = V - 1
        res = {}
        with torch.no_grad():
            res["ssm"] = timeit(ssm_step_call(decs["ssm"], x, ys, perm), reps, 3)
            res["s4"] = timeit(espnet_step_call(decs["s4"], x, ys), reps, 1)
            res["transformer"] = timeit(espnet_step_call(decs["transformer"], x, ys), reps, 1)
        rows.append({"d": d, "T": T, "L": L, **{k: {"best": v[0], "median": v[1]} for k, v in res.items()},
                     "flops_ssm": flops_ssm_step(BEAM, d, T), "flops_s4": flops_s4_step(BEAM, d, T),
                     "flops_transformer": flops_transformer_step(BEAM, d, T, L),
                     "bytes_ssm": bytes_ssm_step(BEAM, d, T)})
        print(f"  (a) d={d} T={T} L={L}: " + ", ".join(f"{k} {v['best'] * 1e3:.2f} ms" for k, v in rows[-1].items()
                                                      if isinstance(v, dict)), flush=True)
    return rows


def measure(res: dict, opts, save) -> None:
    """``res["a"]``: every (d, T) of SIZES (the first with --quick) at every prefix length."""
    res["a"] = []
    for d, T in SIZES[:1] if opts.quick else SIZES:
        res["a"] += bench_step(d, T, PREFIXES, reps=5 if opts.quick else 7)
    save(res)


# ---- ``python -m s4speech.bench.step``: the decoding-speed options side by side, in one process ----------
def _build(kind: str, d: int, vocab: int):
    """``models.build(kind, d)`` with a vocabulary of ``vocab`` (seed 0), in eval mode."""
    import torch

    from s4speech.bench import models

    models.V, saved = vocab, models.V
    try:
        torch.manual_seed(0)
        return build(kind, d).eval()
    finally:
        models.V = saved


def _interleaved(fns: dict, reps: int) -> dict:
    """Each no-argument callable of ``fns`` run ``reps`` times, calls interleaved -> {name: seconds}."""
    import time

    ts = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t)
    return ts


def compare_step(d: int = 256, T: int = 200, L: int = 16, vocab: int = 500, reps: int = 60) -> dict:
    """Our batch_score eager, compiled (``SSMDecoder.compile_step``) and int8 (dynamic quantization of the
    Linear layers, as ``Speech2Text(quantize_asr_model=True)``), and ESPnet's s4 step on the same inputs,
    calls interleaved: median / best ms each, the first compiled call's seconds (the compile), and the
    largest difference of each from the eager step's scores."""
    import copy
    import statistics
    import time

    import torch

    eager = _build("ssm", d, vocab)
    comp = copy.deepcopy(eager).compile_step()
    int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(eager), {torch.nn.Linear}, dtype=torch.qint8)
    s4 = _build("s4", d, vocab)
    espnet_s4_setup_step(s4)
    x = torch.randn(T, d)
    perm = torch.randperm(BEAM).tolist()
    ys = torch.randint(0, vocab - 1, (BEAM, L))
    ys[:, 0] = vocab - 1
    with torch.no_grad():
        torch.manual_seed(1)
        fns = {"eager": ssm_step_call(eager, x, ys, perm)}
        torch.manual_seed(1)
        fns["compiled"] = ssm_step_call(comp, x, ys, perm)
        t = time.perf_counter()
        diff = (fns["compiled"]()[0] - fns["eager"]()[0]).abs().max().item()
        compile_s = time.perf_counter() - t
        torch.manual_seed(1)
        fns["int8"] = ssm_step_call(int8, x, ys, perm)
        int8_diff = (fns["int8"]()[0] - fns["eager"]()[0]).abs().max().item()
        fns["espnet s4"] = espnet_step_call(s4, x, ys)
        for f in fns.values():
            f()
        ts = _interleaved(fns, reps)
    return {"compile_s": compile_s, "max_abs_diff": diff, "int8_max_abs_diff": int8_diff,
            **{k: {"median": statistics.median(v) * 1e3, "best": min(v) * 1e3} for k, v in ts.items()}}


def step_linears(dec) -> list:
    """The Linear layers one step of ``dec`` runs, in order: per block the S4 output (GLU), the attention
    query and output, the two feed-forward layers; then the output layer (31 at 6 blocks)."""
    out = []
    for blk in dec.decoders:
        out += [blk.ssm.output_linear, blk.src_attn.q, blk.src_attn.out, blk.ff.w1, blk.ff.w2]
    return out + [dec.output_layer]


def compare_linears(d: int = 256, vocab: int = 500, reps: int = 60) -> dict:
    """Best ms of the step's Linear layers alone on BEAM rows (as the step runs them, one after the other):
    fp32 (``rows_linear``, the eager and compiled steps' product), bf16 weights and inputs, int8 dynamic
    quantization (as ``quantize_asr_model``)."""
    import copy

    import torch
    import torch.nn.functional as F

    from s4speech.nn import rows_linear

    lins = step_linears(_build("ssm", d, vocab))
    xs = [torch.randn(BEAM, lin.in_features) for lin in lins]
    bf = [(lin.weight.bfloat16(), lin.bias.bfloat16(), x.bfloat16()) for lin, x in zip(lins, xs)]
    q8 = [torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(copy.deepcopy(lin)), {torch.nn.Linear},
                                                 dtype=torch.qint8) for lin in lins]
    fns = {"fp32": lambda: [rows_linear(lin, x) for lin, x in zip(lins, xs)],
           "bf16": lambda: [F.linear(x, w, b) for w, b, x in bf],
           "int8": lambda: [m(x) for m, x in zip(q8, xs)]}
    with torch.no_grad():
        for f in fns.values():
            f()
        ts = _interleaved(fns, reps)
    return {"count": len(lins), **{k: min(v) * 1e3 for k, v in ts.items()}}


def utterances_step_call(dec, xs, ys, perm):
    """Our ``batch_score`` of the last token of ``ys`` (U * BEAM, L) for BEAM hypotheses of each of the U
    utterances ``xs`` ((T, d) each), as a no-argument callable: all rows' states of an L - 1 token prefix
    (random contents) in one (U * BEAM, d, N) base, rows permuted by ``perm`` as in a search, in the layout
    the decoder's step leaves them in a search (the compiled step's planar (n, d, 2, N/2); ``_planar``),
    so that no call converts them."""
    import torch

    from s4speech.asr.decoder import _Memory, _planar

    n = BEAM * len(xs)
    mem = _Memory([dec.init_state(x)["kv"].parts[0] for x in xs])  # one utterance: init_state's own memory
    base = [0.1 * torch.randn(n, xs[0].shape[-1], N_STATE) for _ in range(BLOCKS)]
    if getattr(dec, "_compiled", None) is not None:
        base = [_planar(b) for b in base]
    states = [dict(ssm=base, row=perm[i], kv=mem, utt=i // BEAM, pos=ys.shape[1] - 1) for i in range(n)]
    x = xs[0].expand(n, *xs[0].shape)  # not read: every state carries its utterance's memory
    return lambda: dec.batch_score(ys, states, x)


def compare_utterances(d: int = 256, T: int = 200, L: int = 16, vocab: int = 500, utts: int = 4,
                       reps: int = 40) -> dict:
    """Per-hypothesis ms of one ``batch_score`` of BEAM hypotheses of one utterance (eager and compiled)
    and of BEAM hypotheses of each of ``utts`` utterances (one call), calls interleaved."""
    import copy
    import statistics

    import torch

    eager = _build("ssm", d, vocab)
    comp = copy.deepcopy(eager).compile_step()
    xs = [torch.randn(T, d) for _ in range(utts)]
    rows = {"1": BEAM, "U": BEAM * utts}
    ys = {k: torch.randint(0, vocab - 1, (n, L)) for k, n in rows.items()}
    with torch.no_grad():
        fns = {"1 eager": ssm_step_call(eager, xs[0], ys["1"], torch.randperm(BEAM).tolist()),
               "1 compiled": ssm_step_call(comp, xs[0], ys["1"], torch.randperm(BEAM).tolist()),
               "U eager": utterances_step_call(eager, xs, ys["U"], torch.randperm(rows["U"]).tolist()),
               "U compiled": utterances_step_call(comp, xs, ys["U"], torch.randperm(rows["U"]).tolist())}
        for f in fns.values():
            f(), f()
        ts = _interleaved(fns, reps)
    n = {k: rows[k.split()[0]] for k in fns}
    return {k: {"rows": n[k], "best": min(v) * 1e3, "median": statistics.median(v) * 1e3,
                "per_hyp": min(v) * 1e3 / n[k]} for k, v in ts.items()}


def compare_search(d: int = 256, T: int = 200, vocab: int = 500, utts: int = 4, tokens: int = 40) -> dict:
    """Wall seconds of the beam searches (decoder only, beam BEAM, ``<eos>`` suppressed so that every search
    runs ``tokens`` steps) of ``utts`` random encoder outputs of T frames: one at a time (ESPnet's
    ``BatchBeamSearch``) and together (``s4speech.asr.search.search_many``); the n-best must agree."""
    import time

    import torch
    from espnet.nets.batch_beam_search import BatchBeamSearch

    from s4speech.asr.search import search_many

    dec = _build("ssm", d, vocab)
    with torch.no_grad():
        dec.output_layer.bias[vocab - 1] = -30.0
    xs = [torch.randn(T - 7 * u, d) for u in range(utts)]  # different lengths, as a batch of segments
    bs = BatchBeamSearch(scorers={"decoder": dec}, weights={"decoder": 1.0}, beam_size=BEAM, vocab_size=vocab,
                         sos=vocab - 1, eos=vocab - 1, token_list=None, pre_beam_score_key=None)
    out = {}
    with torch.no_grad():
        for way in ("one at a time", "together"):
            t = time.perf_counter()
            if way == "together":
                hyps = search_many(bs, xs, maxlenratio=-tokens)
            else:
                hyps = [bs(x, maxlenratio=-tokens) for x in xs]
            out[way] = {"wall": time.perf_counter() - t, "best": [h[0].yseq.tolist() for h in hyps]}
    assert out["together"]["best"] == out["one at a time"]["best"], "search_many changed the hypotheses"
    return {k: v["wall"] for k, v in out.items()}


def main(argv=None) -> None:
    import argparse

    from s4speech.bench import env

    p = argparse.ArgumentParser(prog="python -m s4speech.bench.step",
                                description="Eager vs compiled vs int8 decoder step vs ESPnet's s4 step (beam 8).")
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--T", type=int, default=200, help="encoder frames")
    p.add_argument("--vocab", type=int, default=500)
    p.add_argument("--reps", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--utterances", type=int, default=4, help="utterances scored together in the second table")
    p.add_argument("--search_tokens", type=int, default=40, help="steps of each search in the third table")
    p.add_argument("--out", default=None, help="also write the table between the step-compare markers of this file")
    a = p.parse_args(argv)
    torch = env.setup(a.threads)
    load0 = env.load()
    r = compare_step(a.d, a.T, vocab=a.vocab, reps=a.reps)
    floor = flops_ssm_step(BEAM, a.d, a.T, vocab=a.vocab) / (env.matmul_rate() * 1e9) * 1e3
    import sys

    from s4speech.io.machine import cpu_model

    lines = [f"Command: `python -m s4speech.bench.step {' '.join(sys.argv[1:] if argv is None else argv)}`; CPU: "
             f"{cpu_model()}, {torch.get_num_threads()} threads, one process, calls interleaved, {a.reps} repetitions; "
             f"load average {load0} before, {env.load()} after. d {a.d}, encoder T {a.T}, vocabulary {a.vocab}, beam "
             f"{BEAM}, prefix length 16. First compiled call {r['compile_s']:.1f} s; largest difference from the "
             f"eager step's log-probabilities: compiled {r['max_abs_diff']:.1e}, int8 {r['int8_max_abs_diff']:.1e}. "
             f"FLOP floor {floor:.2f} ms (flops_ssm_step / this process' 2048^3 matmul rate).\n",
             "|step|median (ms)|best (ms)|ESPnet s4 / this (best)|this / FLOP floor (best)|", "|---|---|---|---|---|"]
    for k in ("eager", "compiled", "int8", "espnet s4"):
        lines.append(f"|{k}|{r[k]['median']:.2f}|{r[k]['best']:.2f}|{r['espnet s4']['best'] / r[k]['best']:.1f}|"
                     f"{r[k]['best'] / floor:.1f}|")
    lin = compare_linears(a.d, a.vocab, a.reps)
    lines += ["", f"The step's {lin['count']} Linear layers alone on {BEAM} rows, one after the other (best of "
                  f"{a.reps}): fp32 {lin['fp32']:.2f} ms ({lin['fp32'] / floor:.1f}x the FLOP floor by "
                  f"themselves), bf16 weights {lin['bf16']:.2f} ms, int8 {lin['int8']:.2f} ms."]
    U = a.utterances
    u = compare_utterances(a.d, a.T, vocab=a.vocab, utts=U, reps=max(10, a.reps // 2))
    names = {"1 eager": "1 utterance, eager", "1 compiled": "1 utterance, compiled",
             "U eager": f"{U} utterances, eager", "U compiled": f"{U} utterances, compiled (runs the eager step)"}
    lines += ["", f"Hypotheses of several utterances in one `batch_score` (beam {BEAM} each, same settings, calls "
                  f"interleaved): per-hypothesis cost = best call / rows.\n",
              "|rows|call best (ms)|call median (ms)|per hypothesis (ms)|/ 1 utterance eager|", "|---|---|---|---|---|"]
    for k, v in u.items():
        lines.append(f"|{names[k]}: {v['rows']}|{v['best']:.2f}|{v['median']:.2f}|{v['per_hyp']:.3f}|"
                     f"{v['per_hyp'] / u['1 eager']['per_hyp']:.2f}|")
    s = compare_search(a.d, a.T, vocab=a.vocab, utts=U, tokens=a.search_tokens)
    lines += ["", f"Whole beam searches of {U} utterances ({a.T} to {a.T - 7 * (U - 1)} frames, decoder only, beam "
                  f"{BEAM}, {a.search_tokens} steps each, the same n-best both ways): one at a time "
                  f"{s['one at a time']:.2f} s, together (`search_many`) {s['together']:.2f} s "
                  f"({s['one at a time'] / s['together']:.2f}x)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        from s4speech.bench.sections import write_between

        write_between(a.out, *MARKERS, text)


if __name__ == "__main__":
    main()
