"""(c) Whole-utterance ``BatchBeamSearch`` of a long input: 3000 encoder frames (2 min at 40 ms).

Decoder score only (no CTC, no LM), beam 8, the same random encoder output for all; ``<eos>`` is
suppressed (output bias -30) and ``maxlenratio`` set so that every decoder runs the same steps."""
from __future__ import annotations

import time

from s4speech.bench.flops import flops_ssm_step
from s4speech.bench.models import BEAM, V, build, espnet_s4_setup_step

D, T = 256, 3000


def bench_search(d: int, T: int, tokens: int) -> list[dict]:
    """One row per decoder: output tokens, batch_score calls ("steps") and wall seconds of the search."""
    import torch
    from espnet.nets.batch_beam_search import BatchBeamSearch

    torch.manual_seed(0)
    x = torch.randn(T, d)  # encoder output (T, d)
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


def measure(res: dict, opts, save) -> None:
    """``res["c"]``: --search_tokens output tokens (default 20 with --quick, else 100)."""
    res["c"] = bench_search(D, T, opts.search_tokens or (20 if opts.quick else 100))
    save(res)
