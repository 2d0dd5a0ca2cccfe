"""GPU check (``make gpu-check``): our SSM code on CUDA, in at most ~5 minutes, nothing downloaded.

    python -m s4speech.bench.gpu [--out gpu-check.md] [--json gpu-check.json] [--quick] [--budget_s 270]

Without a CUDA device it prints one line saying so and exits 0. Otherwise, in this order, each check a
function of a ``device`` (the tests run them on CPU) that returns a dict (``status`` "ok" or "fail"):

1. ``check_kernels``: ``S4Kernel`` and ``S4DKernel`` (H 256, N 64): K(L) and the gradient of every
   parameter (for a fixed random upstream gradient) on the device against a CPU copy, float32; then
   the kernels called directly under bf16 / fp16 autocast (reported, not judged: ``SSMLayer`` runs its
   kernel with autocast off, and the S4 kernel is not meant to run under autocast).
2. ``check_layer``: ``SSMLayer`` (causal S4, bidirectional S4, causal S4D): output, input gradient and
   parameter gradients on the device in float32 and under bf16 / fp16 autocast, against the float32 CPU
   result; and the causal recurrence (``step``, what decoding runs) on the device against the CPU
   convolution.
3. ``check_decode_step``: ``SSMDecoder.batch_score`` per call (beam 8, d 256, 6 blocks, vocabulary 5000;
   encoder 200 and 1000 frames) beside ESPnet's ``decoder: s4`` and ``transformer``, built and set up
   as the CPU table (a) does (``s4speech.bench.step``), float32, timed with CUDA synchronisation.
4. ``check_train_step``: one AMP training step (forward, backward, gradient clipping, optimizer step,
   as ESPnet's trainer does it) of each paper-scale config, built by ESPnet's ``ASRTask`` / ``TTSTask``
   ``build_model`` and ``build_optimizers``, on a synthetic batch of the size ESPnet's numel sampler
   gives one GPU (``batch_for``); peak memory, output tokens and speech seconds per second. Then the
   Transformer-decoder configs for comparison while the time budget lasts.

Errors: max |x - x_ref| / max |x_ref| per tensor (max-norm relative), the worst over the tensors
compared. Tolerances (``TOL``), from the same comparisons measured on CPU (bf16 / fp16 autocast on CPU
against float32: <= 7e-3 / <= 1.1e-3; S4 kernel float32 against float64: <= 1e-4) with margin:
float32 1e-3, bf16 3e-2, fp16 1e-2 (~8 and ~20 units of rounding of bf16 / fp16: a wrong result is far above).

A time budget (``--budget_s``) is checked before each check (and between the rows of a decoding
table): what no longer fits is skipped with a line saying so. A check that raises is reported and
the others run (within the decoding table, each decoder is guarded the same way). The Markdown
(``--out``) and JSON (``--json``) are rewritten after every check, so a run that is cut short still
leaves what it measured. Exit status 1 if a check of our code failed (an error over its tolerance, a
non-finite loss or gradient) or raised, else 0; the Transformer-decoder comparison runs and ESPnet's
decoders in the decoding table are reported but do not change it.

Checked on CPU only (the tests run every function with ``device="cpu"``); the CUDA branches (device
synchronisation, CUDA peak-memory counters, ``torch.autocast("cuda")``) have not run where this was
written.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUDGET_S = 270.0

TOL = {"fp32": 1e-3, "bf16": 3e-2, "fp16": 1e-2}  # max-norm relative error against the float32 CPU result
AMP = {"bf16": "bfloat16", "fp16": "float16"}  # mode -> torch dtype name

# the paper-scale configs (step 4), then their Transformer-decoder twins (for comparison, budget allowing)
PAPER_CONFIGS = ["conf/librispeech/asr_conformer_ssm.yaml", "conf/librispeech_100/asr_conformer_ssm.yaml",
                 "conf/csj/asr_conformer_ssm.yaml", "conf/ljspeech/tts_ssm.yaml"]
BASELINE_CONFIGS = ["conf/librispeech/asr_conformer_transformer.yaml",
                    "conf/librispeech_100/asr_conformer_transformer.yaml",
                    "conf/csj/asr_conformer_transformer.yaml", "conf/ljspeech/tts_transformer.yaml"]


@dataclass(frozen=True)
class Utterance:
    """One utterance of a corpus as the batch sizing sees it: seconds of speech, output tokens per second
    and the size of the token list (the second column of ``text_shape.<token_type>``, which ESPnet's
    numel sampler multiplies the token count by). Typical long training utterances; estimates."""

    seconds: float
    tokens_per_s: float
    vocab: int
    note: str


CORPORA = {  # config directory -> its utterances
    "librispeech": Utterance(15.0, 3.6, 5000, "unigram BPE 5000: ~2.7 words/s x ~1.3 pieces per word"),
    "librispeech_100": Utterance(15.0, 3.6, 5000, "unigram BPE 5000: ~2.7 words/s x ~1.3 pieces per word"),
    "csj": Utterance(15.0, 8.0, 3300, "characters, ~8 per second; a ~3.3k-character token list"),
    "ljspeech": Utterance(10.0, 15.0, 48, "input characters, ~15 per second; 45 symbols + 3 specials"),
    "demo": Utterance(3.0, 10.0, 30, "asterisk prompts, characters"),
}


# ---- device helpers ---------------------------------------------------------------------------------
def _torch():
    import torch

    return torch


def _dev(device):
    return _torch().device(device)


def sync(device) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    torch = _torch()
    d = _dev(device)
    if d.type == "cuda":
        torch.cuda.synchronize(d)


def timed(fn, device, reps: int, warmup: int = 1) -> dict:
    """Wall seconds of ``fn()`` with the device synchronised before and after each call: best, median of
    ``reps`` calls after ``warmup`` untimed ones, and the first call's time ("first")."""
    ts = []
    first = None
    for i in range(warmup + reps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        dt = time.perf_counter() - t
        first = dt if first is None else first
        if i >= warmup:
            ts.append(dt)
    return {"best": min(ts), "median": statistics.median(ts), "first": first, "reps": reps}


class PeakMemory:
    """Peak memory of what runs between ``reset()`` and ``read()``: CUDA ``max_memory_allocated`` (and
    reserved) on a CUDA device; on CPU the increase of the process' peak resident size (VmHWM)."""

    def __init__(self, device):
        self.device = _dev(device)
        self.kind = ("torch.cuda.max_memory_allocated" if self.device.type == "cuda"
                     else "peak resident size increase (VmHWM)")
        self.reset()

    def reset(self):
        torch = _torch()
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            from s4speech.io.machine import reset_peak, rss_bytes

            reset_peak()
            self.before = rss_bytes()

    def read(self) -> dict:
        torch = _torch()
        if self.device.type == "cuda":
            sync(self.device)
            return {"peak": torch.cuda.max_memory_allocated(self.device),
                    "peak_reserved": torch.cuda.max_memory_reserved(self.device)}
        from s4speech.io.machine import peak_bytes

        return {"peak": max(0, peak_bytes() - self.before)}


def free(device) -> None:
    """Return the memory of what was dropped (between checks)."""
    gc.collect()
    if _dev(device).type == "cuda":
        _torch().cuda.empty_cache()


def rel_err(x, ref) -> float:
    """max |x - ref| / max |ref| (computed in float64 on the CPU); inf where x is not finite."""
    torch = _torch()
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(x).all():
        return math.inf
    scale = ref.abs().max().item()
    diff = (x - ref).abs().max().item()
    return diff / scale if scale > 0 else diff


def _worst(errs: dict) -> tuple[str, float]:
    name = max(errs, key=lambda k: errs[k])
    return name, errs[name]


def _autocast(device, mode: str):
    """``torch.autocast`` of the device type for "bf16" / "fp16"; no autocast for "fp32"."""
    torch = _torch()
    if mode == "fp32":
        return torch.autocast(_dev(device).type, enabled=False)
    return torch.autocast(_dev(device).type, dtype=getattr(torch, AMP[mode]))


# ---- 1. kernels ---------------------------------------------------------------------------------------
def _kernel_run(kernel, L: int, g, mode: str = "fp32"):
    """K(L) and the gradients of the kernel's parameters for the upstream gradient g (H, L)."""
    kernel.zero_grad(set_to_none=True)
    with _autocast(g.device, mode):
        K = kernel(L)
    (K.float() * g).sum().backward()
    return K.detach(), {n: p.grad.detach().clone() for n, p in kernel.named_parameters()}


def check_kernels(device="cuda", ref_device="cpu", H: int = 256, N: int = 64, lengths=(1024, 16384),
                  amp=("bf16", "fp16"), fp64: bool = True, seed: int = 0) -> dict:
    """S4Kernel (n_ssm 1, as the configs) and S4DKernel on ``device`` against a copy on ``ref_device``.

    Rows: float32 output and parameter-gradient errors (judged against ``TOL["fp32"]``); the S4 kernel's
    own float32 error against its float64 evaluation on ``ref_device`` (context: how far apart two float32
    evaluations may be); each kernel called directly under ``amp`` autocast (reported only, "judged": False)."""
    torch = _torch()
    from s4speech.ssm.kernels import S4DKernel, S4Kernel

    rows, ok = [], True
    for L in lengths:
        for name, make in (("S4Kernel", lambda: S4Kernel(H, N, n_ssm=1)), ("S4DKernel", lambda: S4DKernel(H, N))):
            torch.manual_seed(seed)
            ref = make().to(ref_device)
            dev = copy.deepcopy(ref).to(device)
            g = torch.randn(ref.H, L, device=ref_device)
            K0, g0 = _kernel_run(ref, L, g)
            K1, g1 = _kernel_run(dev, L, g.to(device))
            errs = {n: rel_err(g1[n], g0[n]) for n in g0}
            pname, perr = _worst(errs)
            row = {"kernel": name, "L": L, "mode": "fp32", "out": rel_err(K1, K0), "grad": perr, "grad_param": pname,
                   "tol": TOL["fp32"], "judged": True}
            row["ok"] = row["out"] <= row["tol"] and row["grad"] <= row["tol"]
            ok &= row["ok"]
            rows.append(row)
            if fp64 and name == "S4Kernel":  # float32 against float64, on the reference device
                ref.zero_grad(set_to_none=True)
                K64 = ref(L, dtype=torch.float64)
                (K64 * g.double()).sum().backward()
                g64 = {n: p.grad.detach() for n, p in ref.named_parameters()}
                pn, pe = _worst({n: rel_err(g0[n], g64[n]) for n in g0})
                rows.append({"kernel": name, "L": L, "mode": f"fp32 vs fp64 ({_dev(ref_device).type})",
                             "out": rel_err(K0, K64), "grad": pe, "grad_param": pn, "tol": None, "judged": False})
            for mode in amp:
                row = {"kernel": name, "L": L, "mode": f"{mode} autocast (direct call)", "tol": None, "judged": False}
                try:
                    Ka, ga = _kernel_run(dev, L, g.to(device), mode)
                    pn, pe = _worst({n: rel_err(ga[n], g0[n]) for n in g0})
                    row.update(out=rel_err(Ka, K0), grad=pe, grad_param=pn)
                except Exception as e:  # the S4 kernel's complex arithmetic has no bf16 (the layer turns autocast off)
                    row["error"] = _why(e)
                rows.append(row)
            del ref, dev, g
    return {"status": "ok" if ok else "fail", "H": H, "N": N, "rows": rows}


# ---- 2. the S4 layer ------------------------------------------------------------------------------------
LAYERS = {"S4 causal": dict(kernel="s4", n_ssm=1), "S4 bidirectional": dict(kernel="s4", n_ssm=1, bidirectional=True),
          "S4D causal": dict(kernel="s4d")}


def _layer_run(layer, u, gy, mode: str):
    """Output (float32), input gradient and parameter gradients of ``layer(u)`` for the upstream gradient gy."""
    layer.zero_grad(set_to_none=True)
    u = u.detach().clone().requires_grad_(True)
    with _autocast(u.device, mode):
        y = layer(u)
    (y.float() * gy).sum().backward()
    return y.detach().float(), u.grad.detach(), {n: p.grad.detach().clone() for n, p in layer.named_parameters()}


def check_layer(device="cuda", ref_device="cpu", B: int = 8, L: int = 2048, H: int = 256, N: int = 64,
                modes=("fp32", "bf16", "fp16"), step_len: int = 256, seed: int = 0) -> dict:
    """``SSMLayer`` variants (``LAYERS``, dropout 0, train mode) on ``device`` in each mode (float32,
    autocast) against float32 on ``ref_device``: output, input gradient, worst parameter gradient, judged
    against ``TOL[mode]``. Then, for the causal ones, ``step_len`` recurrence steps on ``device`` (eval,
    no grad, in-place state as decoding runs it) against the convolution on ``ref_device``."""
    torch = _torch()
    from s4speech.ssm.layer import SSMLayer

    rows, ok = [], True
    for name, kw in LAYERS.items():
        torch.manual_seed(seed)
        ref = SSMLayer(H, N, dropout=0.0, **kw).to(ref_device).train()
        dev = copy.deepcopy(ref).to(device)
        u = torch.randn(B, L, H, device=ref_device)
        gy = torch.randn(B, L, H, device=ref_device)
        y0, gu0, gp0 = _layer_run(ref, u, gy, "fp32")
        for mode in modes:
            row = {"layer": name, "mode": mode, "tol": TOL[mode], "judged": True}
            y1, gu1, gp1 = _layer_run(dev, u.to(device), gy.to(device), mode)
            pn, pe = _worst({n: rel_err(gp1[n], gp0[n]) for n in gp0})
            row.update(out=rel_err(y1, y0), grad_in=rel_err(gu1, gu0), grad=pe, grad_param=pn)
            row["ok"] = max(row["out"], row["grad_in"], row["grad"]) <= row["tol"]
            ok &= row["ok"]
            rows.append(row)
            del y1, gu1, gp1
        if not kw.get("bidirectional"):
            n = min(step_len, L)
            ref.eval(), dev.eval()
            with torch.no_grad():
                yc = ref(u[:, :n])  # the convolution, on the reference device
                state = dev.default_state(B, device=_dev(device))
                ud, ys = u[:, :n].to(device), []
                for t in range(n):
                    y, state = dev.step(ud[:, t], state, inplace=True)
                    ys.append(y)
                ys = torch.stack(ys, 1)
            row = {"layer": name, "mode": f"fp32 step x{n} vs conv", "out": rel_err(ys, yc), "tol": TOL["fp32"],
                   "judged": True}
            row["ok"] = row["out"] <= row["tol"]
            ok &= row["ok"]
            rows.append(row)
        del ref, dev, u, gy
    return {"status": "ok" if ok else "fail", "B": B, "L": L, "H": H, "N": N, "rows": rows}


# ---- 3. the decoding step ------------------------------------------------------------------------------
def check_decode_step(device="cuda", d: int = 256, T: int = 200, prefixes=None, reps: int = 20, warmup: int = 3,
                      kinds=("ssm", "s4", "transformer"), deadline: float | None = None, seed: int = 0) -> dict:
    """``batch_score`` of BEAM hypotheses, one new token each, at each prefix length L (default
    ``s4speech.bench.step.PREFIXES``): best / median ms per call, device synchronised around each call.

    The decoders are ``s4speech.bench.models.build`` (ESPnet's s4 set up by ``espnet_s4_setup_step``);
    ours gets the random, row-permuted states of ``s4speech.bench.step.ssm_step_call``, ESPnet's s4 random
    states of its own shape, ESPnet's transformer the cache of the L - 1 token prefix, as in table (a).
    Rows stop early (``partial``) once ``deadline`` (a ``time.perf_counter()`` value) has passed."""
    torch = _torch()

    from s4speech.bench.models import BEAM, BLOCKS, N_STATE, NAMES, V, build, espnet_s4_setup_step
    from s4speech.bench.step import PREFIXES, espnet_step_call, ssm_step_call

    dv = _dev(device)
    prefixes = PREFIXES if prefixes is None else prefixes
    torch.manual_seed(seed)
    decs, failed = {}, {}  # a decoder that cannot be built or run is reported, and the others still run
    for k in kinds:
        try:
            decs[k] = build(k, d).to(dv).eval()
            if k == "s4":
                espnet_s4_setup_step(decs[k])
        except Exception as e:
            failed[k] = _why(e)
    x = torch.randn(T, d, device=dv)
    perm = torch.randperm(BEAM).tolist()

    def step_call(kind, dec, ys):
        if kind == "ssm":
            with dv:  # ssm_step_call makes its states with torch.randn: on the device
                return ssm_step_call(dec, x, ys, perm)
        return espnet_step_call(dec, x, ys)

    rows, partial = [], False
    with torch.no_grad():
        for L in prefixes:
            if deadline is not None and rows and time.perf_counter() > deadline:
                partial = True
                break
            ys = torch.randint(0, V - 1, (BEAM, L), device=dv)
            ys[:, 0] = V - 1
            row = {"L": L}
            for kind in kinds:
                if kind in failed:
                    row[kind] = {"error": failed[kind]}
                    continue
                try:
                    row[kind] = timed(step_call(kind, decs[kind], ys), dv, reps, warmup)
                except Exception as e:
                    row[kind] = {"error": _why(e)}
                    failed[kind] = f"(failed at L {L}) {row[kind]['error']}"
                if "error" in row[kind]:
                    free(dv)
            rows.append(row)
            print("  decode d={} T={} L={}: {}".format(d, T, L, ", ".join(
                f"{k} " + (f"{row[k]['best'] * 1e3:.2f} ms" if "best" in row[k] else "error") for k in kinds)), flush=True)
    res = {"status": "ok", "device": dv.type, "d": d, "T": T, "beam": BEAM, "blocks": BLOCKS, "N": N_STATE, "vocab": V,
           "reps": reps, "warmup": warmup, "rows": rows, "partial": partial}
    if failed:
        res["why"] = "; ".join(f"{NAMES.get(k, k)}: {w}" for k, w in failed.items())
        if "ssm" in failed:  # ours: an error of this check (ESPnet's decoders: reported only)
            res["status"] = "error"
    return res


def _why(e: BaseException) -> str:
    """An exception as one short line."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"


# ---- 4. one AMP training step ----------------------------------------------------------------------------
def recipe_ngpu(cfg: Path) -> int:
    """GPUs the corpus' recipe trains on: ``--ngpu N`` of ``recipes/<config dir>/*/run.sh`` (1 if none)."""
    for run_sh in sorted((ROOT / "recipes" / cfg.parent.name).glob("*/run.sh")):
        m = re.search(r"--ngpu\s+(\d+)", run_sh.read_text(encoding="utf-8"))
        if m:
            return int(m.group(1))
    return 1


def batch_for(conf: dict, utt: Utterance, sample_rate: int, ngpu: int = 1) -> dict:
    """The batch ESPnet's numel sampler makes of equal utterances, and one GPU's share of it.

    ``NumElementsBatchSampler`` (padding): a batch of n utterances counts n * sum over the shape files of
    (length x feature dim): speech_shape holds samples (dim 1), text_shape.<token_type> "tokens,vocab",
    so one utterance counts samples + tokens * vocab; utterances are added until the count exceeds
    ``batch_bins`` (the one that crosses it included): n = batch_bins // per_utt + 1. With ngpu GPUs,
    ESPnet gives rank r the utterances ``batch[r::ngpu]``: rank 0 gets ceil(n / ngpu)."""
    samples = int(round(utt.seconds * sample_rate))
    tokens = max(1, int(round(utt.seconds * utt.tokens_per_s)))
    per_utt = samples + tokens * utt.vocab
    if conf.get("batch_type", "folded") == "numel":
        n = int(conf["batch_bins"]) // per_utt + 1
    else:
        n = int(conf.get("batch_size", 20))
    return {"utt_s": utt.seconds, "samples": samples, "tokens": tokens, "vocab": utt.vocab, "bins_per_utt": per_utt,
            "batch_bins": conf.get("batch_bins"), "batch_type": conf.get("batch_type", "folded"), "batch_full": n,
            "ngpu": ngpu, "batch": -(-n // ngpu), "utt_note": utt.note}


def _rel(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _sample_rate(conf: dict) -> int:
    fe = conf.get("frontend_conf") or conf.get("feats_extract_conf") or {}
    return int(str(fe.get("fs", 16000)).replace("k", "000"))


def build_espnet(cfg: Path, vocab: int):
    """(task, args, model) of a config through ESPnet's ``ASRTask`` / ``TTSTask`` (``import s4speech``
    registers ours), as tests/test_recipe.py builds the shipped configs: a token list of ``vocab``
    entries; ASR normalization utterance_mvn, TTS none (the recipes' global_mvn needs corpus stats)."""
    import importlib

    import yaml

    import s4speech  # noqa: F401

    conf = yaml.safe_load(Path(cfg).read_text(encoding="utf-8"))
    tts = "tts" in conf
    task = getattr(_import_quietly(importlib.import_module, "espnet2.tasks." + ("tts" if tts else "asr")),
                   "TTSTask" if tts else "ASRTask")
    extra = ["--normalize", "none"] if tts else []
    args = task.get_parser().parse_args(["--config", str(cfg), "--token_list", "x", "--token_type", "char", *extra])
    args.token_list = ["<blank>", "<unk>", *[f"t{i}" for i in range(max(1, vocab - 3))], "<sos/eos>"]
    if not tts:
        args.normalize, args.normalize_conf = "utterance_mvn", {}
    return task, args, conf, task.build_model(args)


def _import_quietly(fn, *args):
    """``fn(*args)`` (an import) with its output kept off the terminal and ``nltk.download`` a no-op meanwhile:
    ESPnet's task modules import g2p_en, which tries to download NLTK data at import (this check downloads
    nothing; no tokenizer is used)."""
    import contextlib
    import io

    try:
        import nltk
    except ImportError:
        nltk = None
    saved = nltk.download if nltk else None
    buf = io.StringIO()
    try:
        if nltk:
            nltk.download = lambda *a, **k: False
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            return fn(*args)
    finally:
        if nltk:
            nltk.download = saved


def check_train_step(cfg, device="cuda", amp: str = "bf16", utt: Utterance | None = None, batch: int | None = None,
                     reps: int = 3, seed: int = 0) -> dict:
    """One training step as ESPnet's trainer runs it with ``use_amp``: zero_grad, forward under
    autocast (``amp`` "bf16" / "fp16"; "fp32" none), backward (fp16: through a GradScaler), clip the
    gradient norm to the config's ``grad_clip``, optimizer step. The first step is timed on its own
    ("first"), then ``reps`` more (device synchronised around each; with reps 0 the first is the figure).

    The batch: ``batch_for`` the config's corpus (``CORPORA``, ``utt`` to replace it) and its recipe's GPU
    count, or ``batch`` utterances; equal lengths (the sampler sorts by length, so a batch's lengths are
    close), random speech (0.1 * N(0, 1)) and random tokens. Peak memory is over the timed steps (the
    optimizer state exists then) and over the first step; throughput per step: output tokens (ASR) or
    output frames (TTS) and seconds of speech, per second."""
    torch = _torch()
    cfg = Path(cfg)
    cfg = cfg if cfg.is_absolute() or cfg.exists() else ROOT / cfg  # else relative to the repository
    dv = _dev(device)
    import yaml

    conf = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    utt = utt or CORPORA.get(cfg.parent.name, CORPORA["librispeech"])
    sr = _sample_rate(conf)
    size = batch_for(conf, utt, sr, recipe_ngpu(cfg))
    if batch is not None:
        size.update(batch=batch, batch_full=batch, ngpu=1, utt_note=size["utt_note"] + f"; batch set to {batch}")
    B = size["batch"]
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    task, args, conf, model = build_espnet(cfg, utt.vocab)
    build_s = time.perf_counter() - t0
    model = model.to(dv).train()
    opts = task.build_optimizers(args, model)
    is_tts = "tts" in conf
    S, U = size["samples"], size["tokens"]
    speech = 0.1 * torch.randn(B, S, device=dv)
    slen = torch.full((B,), S, dtype=torch.long, device=dv)
    text = torch.randint(1, utt.vocab - 1, (B, U), device=dv)
    tlen = torch.full((B,), U, dtype=torch.long, device=dv)
    inputs = (text, tlen, speech, slen) if is_tts else (speech, slen, text, tlen)
    scaler = torch.amp.GradScaler(dv.type) if amp == "fp16" else None
    grad_clip = float(getattr(args, "grad_clip", 5.0) or 0) or math.inf
    out = {}

    def step():
        for o in opts:
            o.zero_grad(set_to_none=True)
        with _autocast(dv, amp):
            loss, _, _ = model(*inputs)
        if scaler is not None:
            scaler.scale(loss).backward()
            for o in opts:
                scaler.unscale_(o)
        else:
            loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=grad_clip,
                                            norm_type=float(getattr(args, "grad_clip_type", 2.0)))
        finite = bool(torch.isfinite(gn))  # a host sync, as in ESPnet's trainer
        if scaler is not None:
            for o in opts:
                scaler.step(o)  # skips the update where the scaled gradients overflowed
            scaler.update()
        elif finite:
            for o in opts:
                o.step()
        out.update(loss=float(loss.detach()), grad_norm=float(gn), grad_finite=finite)

    mem = PeakMemory(dv)
    t_first = timed(step, dv, 1, 0)["best"]  # cuBLAS / cuDNN set-up, allocator growth, optimizer state
    first = dict(out, peak=mem.read()["peak"])
    mem.reset()  # the steady state: over the timed steps
    t = timed(step, dv, reps, 0) if reps else {"best": t_first, "median": t_first, "reps": 0}
    t["first"] = t_first
    peak = mem.read() if reps else {"peak": first["peak"]}
    n_out = B * (S // int((conf.get("feats_extract_conf") or {}).get("hop_length", 256)) + 1) if is_tts else B * U
    bad = not math.isfinite(out["loss"]) or (scaler is None and not out["grad_finite"])
    res = {"status": "fail" if bad else "ok", "config": _rel(cfg), "task": "tts" if is_tts else "asr",
           "decoder": conf.get("tts") if is_tts else conf.get("decoder"), "amp": amp, "grad_scaler": scaler is not None,
           **size, "params": sum(p.numel() for p in model.parameters()), "build_s": build_s, "step_s": t,
           "peak": peak["peak"], "peak_first": first["peak"], "peak_kind": mem.kind,
           "loss": out["loss"], "loss_first": first["loss"], "grad_norm": out["grad_norm"],
           "output_units": "frames" if is_tts else "tokens", "outputs_per_step": n_out,
           "outputs_per_s": n_out / t["best"], "speech_s_per_s": B * size["utt_s"] / t["best"],
           "accum_grad": conf.get("accum_grad", 1)}
    if "peak_reserved" in peak:
        res["peak_reserved"] = peak["peak_reserved"]
    if scaler is not None:
        res["loss_scale"] = float(scaler.get_scale())
        if not out["grad_finite"]:
            res["note"] = "the last step's scaled gradients overflowed (the GradScaler skipped its update)"
    if bad:
        res["why"] = f"non-finite loss ({out['loss']}) or gradient norm ({out['grad_norm']})"
    return res  # the model, optimizer state and batch go with this frame (run_checks then calls free)


# ---- running the checks --------------------------------------------------------------------------------
KINDS = ("kernels", "layer", "decode", "train")
CORRECTNESS = ("kernels", "layer")


def plan(opts) -> list[tuple]:
    """(name, kind, fn(deadline) -> result, extra fields) of every check ``opts`` selects, in run order."""
    dev, q = opts.device, opts.quick
    checks = [("kernels", "kernels", lambda dl: check_kernels(dev, lengths=(4096,) if q else (1024, 16384))),
              ("layer", "layer", lambda dl: check_layer(dev, L=1024 if q else 2048))]
    for T in (200, 1000):
        checks.append((f"decode d=256 T={T}", "decode",
                       lambda dl, T=T: check_decode_step(dev, 256, T, prefixes=(16, 512) if q else None,
                                                         reps=5 if q else 20, deadline=dl)))
    configs = opts.configs or (PAPER_CONFIGS + ([] if q else BASELINE_CONFIGS))
    for c in configs:
        checks.append((f"train {c}", "train", lambda dl, c=c: check_train_step(c, dev, amp=opts.amp, reps=1 if q else 3)))
    # the Transformer-decoder twins are ESPnet's models: their errors are reported, not ours to fail on
    checks = [(n, k, f, {"comparison": n.removeprefix("train ") in BASELINE_CONFIGS}) for n, k, f in checks]
    only = set(opts.only.split(",")) if opts.only else set(KINDS)
    return [c for c in checks if c[1] in only]


def summary_line(r: dict) -> str:
    """One line per check for the terminal."""
    head = f"{r['status']:7s} {r['name']}"
    if r["status"] == "skipped":
        return f"{head}: skipped, {r['why']}"
    head += f" ({r.get('wall_s', 0):.1f} s)"
    if r["status"] == "error":
        return f"{head}: {r['why']}"
    if r["kind"] in CORRECTNESS:
        judged = [x for x in r["rows"] if x.get("judged")]
        parts = []
        for mode in dict.fromkeys(x["mode"] for x in judged):
            xs = [x for x in judged if x["mode"] == mode]
            worst = max(max(x.get(k, 0) for k in ("out", "grad_in", "grad")) for x in xs)
            parts.append(f"{mode} worst {worst:.1e} (tol {xs[0]['tol']:.0e})")
        return f"{head}: " + "; ".join(parts)
    if r["kind"] == "decode":
        rows = r["rows"]
        ms = lambda k: "-".join(f"{row[k]['best'] * 1e3:.2f}" for row in (rows[0], rows[-1]) if "best" in row[k]) or "error"
        return (f"{head}: " + ", ".join(f"{k} {ms(k)} ms" for k in rows[0] if k != "L")
                + f" over L {rows[0]['L']}-{rows[-1]['L']}" + (" (partial)" if r["partial"] else ""))
    return (f"{head}: batch {r['batch']} x {r['utt_s']:g} s (of {r['batch_full']}, {r['ngpu']} GPU), {r['amp']}, "
            f"step {r['step_s']['best']:.3f} s, peak {r['peak'] / 2**30:.2f} GiB, "
            f"{r['outputs_per_s']:.0f} {r['output_units']}/s, {r['speech_s_per_s']:.0f} speech s/s, loss {r['loss']:.3g}")


def run_checks(checks, budget_s: float, device, on_result=None) -> list[dict]:
    """Run the checks in order; once ``budget_s`` seconds have passed the rest are skipped (with a line
    each). A check that raises is recorded as an "error" and the next one runs. ``on_result(results)``
    after each check (to save what there is)."""
    t0 = time.perf_counter()
    results = []
    for name, kind, fn, *extra in checks:
        extra = extra[0] if extra else {}
        elapsed = time.perf_counter() - t0
        if elapsed >= budget_s:
            r = {"name": name, "kind": kind, **extra, "status": "skipped",
                 "why": f"the time budget (--budget_s {budget_s:g}) was used up after {elapsed:.0f} s"}
        else:
            t = time.perf_counter()
            try:
                r = fn(t0 + budget_s)
            except Exception as e:
                r = {"status": "error", "why": _why(e), "traceback": traceback.format_exc(limit=-8)}
            free(device)
            r = {"name": name, "kind": kind, **extra, **r, "wall_s": time.perf_counter() - t}
        print(summary_line(r), flush=True)
        results.append(r)
        if on_result:
            on_result(results)
    return results


def environment(device) -> dict:
    """The machine, the GPU and the versions the figures were measured with."""
    torch = _torch()
    from s4speech.io.machine import cpu_model

    m = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_model(),
         "cores": os.cpu_count(), "threads": torch.get_num_threads()}
    try:
        import espnet

        m["espnet"] = espnet.__version__
    except Exception:
        pass
    d = _dev(device)
    if d.type == "cuda":
        p = torch.cuda.get_device_properties(d)
        m.update(gpu=torch.cuda.get_device_name(d), gpu_mem_gib=round(p.total_memory / 2**30, 1),
                 capability=f"{p.major}.{p.minor}", cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                 bf16_supported=torch.cuda.is_bf16_supported(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                 tf32_cudnn=torch.backends.cudnn.allow_tf32, cudnn_benchmark=torch.backends.cudnn.benchmark,
                 float32_matmul_precision=torch.get_float32_matmul_precision())
    return m


# ---- the report ------------------------------------------------------------------------------------------
def _e(x) -> str:
    return "n/a" if x is None else ("inf" if x == math.inf else f"{x:.1e}")


def _ms(x: dict) -> str:
    return f"{x['best'] * 1e3:.2f} / {x['median'] * 1e3:.2f}"


def _gib(b) -> str:
    return f"{b / 2**30:.2f}"


def _correctness_md(r: dict) -> list[str]:
    if r["kind"] == "kernels":
        out = [f"Kernels, H {r['H']}, N {r['N']}: K(L) and the gradients of all parameters for a fixed random "
               "upstream gradient. The fp32-vs-fp64 rows (the S4 kernel's float32 error against its float64 "
               "evaluation, on the CPU) and the autocast rows (the kernels called directly under autocast; the "
               "layer runs them with autocast off) are reported, not judged.", "",
               "| kernel | L | mode | K error | worst gradient error (parameter) | tolerance | verdict |",
               "|---|---:|---|---:|---:|---:|---|"]
        for x in r["rows"]:
            if "error" in x:
                out.append(f"| {x['kernel']} | {x['L']} | {x['mode']} | raised: {x['error']} | | | reported |")
                continue
            verdict = ("pass" if x["ok"] else "**FAIL**") if x["judged"] else "reported"
            out.append(f"| {x['kernel']} | {x['L']} | {x['mode']} | {_e(x['out'])} | {_e(x['grad'])} "
                       f"({x['grad_param']}) | {_e(x['tol'])} | {verdict} |")
        return out
    out = [f"`SSMLayer` (d {r['H']}, N {r['N']}, dropout 0), batch {r['B']} x {r['L']} frames, train mode: the "
           "output, the input gradient and the worst parameter gradient under each mode against the float32 CPU "
           "result; the recurrence rows: `step` frame by frame on the device (eval, no grad, in-place state, as in "
           "decoding) against the CPU convolution.", "",
           "| layer | mode | output error | input-gradient error | worst parameter-gradient error (parameter) "
           "| tolerance | verdict |", "|---|---|---:|---:|---:|---:|---|"]
    for x in r["rows"]:
        verdict = "pass" if x["ok"] else "**FAIL**"
        out.append(f"| {x['layer']} | {x['mode']} | {_e(x['out'])} | {_e(x.get('grad_in'))} | "
                   + (f"{_e(x['grad'])} ({x['grad_param']})" if "grad" in x else "n/a")
                   + f" | {_e(x['tol'])} | {verdict} |")
    return out


def _decode_md(rs: list[dict]) -> list[str]:
    from s4speech.bench.models import NAMES

    kinds = [k for k in rs[0]["rows"][0] if k != "L"] if rs[0]["rows"] else []
    r0 = rs[0]
    out = [f"`batch_score` of {r0['beam']} hypotheses, one new token each (ours: random states of the L - 1 token "
           f"prefix, rows permuted as after a beam re-ordering; ESPnet's transformer: the cache of the prefix), "
           f"d {r0['d']}, {r0['blocks']} blocks, N {r0['N']}, vocabulary {r0['vocab']}, float32, no grad; "
           f"best / median ms of {r0['reps']} calls after {r0['warmup']} warm-up calls"
           + (", `torch.cuda.synchronize()` before and after each." if r0.get("device") == "cuda" else "."), "",
           "| enc T | L | " + " | ".join(f"{NAMES.get(k, k)} ms" for k in kinds) + " | "
           + " | ".join(f"{NAMES.get(k, k)} / ours" for k in kinds if k != "ssm") + " |",
           "|---:|---:|" + "---:|" * (2 * len(kinds) - ("ssm" in kinds))]
    for r in rs:
        for row in r["rows"]:
            ours = row.get("ssm", {})
            ratios = [f"{row[k]['best'] / ours['best']:.1f}×" if "best" in row[k] and "best" in ours else "n/a"
                      for k in kinds if k != "ssm"]
            out.append(f"| {r['T']} | {row['L']} | " + " | ".join(_ms(row[k]) if "best" in row[k] else "error"
                                                                  for k in kinds) + " | " + " | ".join(ratios) + " |")
        if r["partial"]:
            out.append(f"| {r['T']} | (the remaining prefix lengths: skipped, time budget) |" + " |" * (2 * len(kinds) - 1))
    return out


def _train_md(rs: list[dict]) -> list[str]:
    r0 = rs[0]
    fwd = "in float32 (no autocast)" if r0["amp"] == "fp32" else f"under {r0['amp']} autocast"
    out = [f"One training step (zero_grad, forward {fwd}"
           + (", backward through a GradScaler" if r0["grad_scaler"] else ", backward")
           + ", gradient clipping, optimizer step; models and optimizers from ESPnet's `build_model` / "
           "`build_optimizers`, train mode, SpecAugment on) on one GPU's share of a batch of the config's "
           "`batch_bins`: ESPnet's numel sampler counts samples + tokens x vocabulary per utterance and fills a "
           "batch past `batch_bins`; with the recipe's N GPUs, one GPU gets 1/N of it. Equal synthetic utterances "
           f"(random speech and tokens). Step: best / median of {r0['step_s'].get('reps', 0)} steps after the "
           f"first (its time in brackets). Peak: {r0['peak_kind']} over those steps (first step's in brackets). "
           "Throughput = outputs (ASR: output tokens, TTS: mel frames) or seconds of speech per step / best step time.",
           "", "| config | decoder | utterance (s, outputs) | batch: this GPU (of all, GPUs) | params (M) | step s "
           "| peak GiB | outputs/s | speech s/s | loss |", "|---|---|---|---|---:|---|---|---:|---:|---:|"]
    for r in rs:
        t = r["step_s"]
        out.append(f"| {r['config']} | {r['decoder']} | {r['utt_s']:g} s, {r['tokens'] if r['task'] == 'asr' else r['outputs_per_step'] // r['batch']} "
                   f"{'tokens' if r['task'] == 'asr' else 'frames'} | {r['batch']} ({r['batch_full']}, {r['ngpu']}) "
                   f"| {r['params'] / 1e6:.1f} | {t['best']:.3f} / {t['median']:.3f} ({t['first']:.2f}) "
                   f"| {_gib(r['peak'])} ({_gib(r['peak_first'])}) | {r['outputs_per_s']:.0f} {r['output_units']} "
                   f"| {r['speech_s_per_s']:.0f} | {r['loss']:.4g} |")
    out += ["", "Batch sizing (per utterance: samples + tokens x vocabulary = bins; `batch_bins` // bins + 1 "
            "utterances):", ""]
    for r in rs:
        out.append(f"- {r['config']}: {r['utt_s']:g} s = {r['samples']} samples, {r['tokens']} tokens x {r['vocab']} "
                   f"({r['utt_note']}) = {r['bins_per_utt']} bins; batch_bins {r['batch_bins']} -> {r['batch_full']} "
                   f"utterances, {r['ngpu']} GPU(s) in the recipe -> {r['batch']} on this one; accum_grad {r['accum_grad']}")
    return out


def render_markdown(res: dict) -> str:
    """The Markdown section of a results dict (as ``main`` saves it with ``--json``)."""
    m, checks = res["meta"], res["checks"]
    gpu = m.get("gpu")
    title = f"## GPU check: {gpu}" if gpu else f"## GPU check (run on {m['device']}: {m['cpu']})"
    bad = not_passed(checks)
    other = [c for c in checks if c["status"] in ("fail", "error") and c.get("comparison")]
    out = [title, ""]
    if gpu:
        out.append(f"- GPU: **{gpu}** ({m['gpu_mem_gib']} GiB, compute capability {m['capability']}), CUDA {m['cuda']}, "
                   f"cuDNN {m['cudnn']}; bf16 supported: {m['bf16_supported']}; TF32 matmul: {m['tf32_matmul']}, "
                   f"TF32 cuDNN: {m['tf32_cudnn']}, float32 matmul precision: {m['float32_matmul_precision']}")
    out += [f"- torch {m['torch']}, ESPnet {m.get('espnet', '?')}, Python {m['python']}; CPU (references, model "
            f"building): {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads",
            f"- command: `{res['command']}` ({res['wall_s']:.0f} s of a {res['budget_s']:g} s budget)",
            "- errors: max |x − x_ref| / max |x_ref| per tensor, the worst over the tensors compared; tolerances: "
            + ", ".join(f"{k} {v:.0e}" for k, v in TOL.items()) + " (against the float32 CPU result)",
            "- result: " + ("**all checks passed**" if not bad else
                            f"**{len(bad)} check(s) failed or raised**: " + ", ".join(c["name"] for c in bad))
            + ("; comparison runs that raised: " + ", ".join(c["name"] for c in other) if other else "")
            + (f"; {n} skipped (time budget)" if (n := sum(c["status"] == "skipped" for c in checks)) else ""), ""]
    sections = [("kernels", "### SSM kernels: device against CPU", None), ("layer", "### S4 layer: device against CPU", None),
                ("decode", "### Decoding step (beam search `batch_score`)", _decode_md),
                ("train", "### One AMP training step at the paper configs' batch size", _train_md)]
    for kind, heading, fn in sections:
        rs = [c for c in checks if c["kind"] == kind]
        if not rs:
            continue
        out += [heading, ""]
        good = [c for c in rs if c["status"] in ("ok", "fail")]
        if good:
            out += (fn(good) if fn else [line for c in good for line in _correctness_md(c)]) + [""]
        for c in rs:
            if c["status"] in ("skipped", "error"):
                out.append(f"- {c['name']}: **{c['status']}**: {c['why']}")
            elif c.get("why") or c.get("note"):
                out.append(f"- {c['name']}: {c.get('why') or c.get('note')}")
        if out[-1]:
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m s4speech.bench.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("gpu-check.md"), help="Markdown section (default gpu-check.md)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    p.add_argument("--quick", action="store_true",
                   help="smaller: kernels at L 4096, layer at L 1024, decoding at L 16 and 512 (5 calls), one timed "
                        "training step, no Transformer-decoder configs")
    p.add_argument("--budget_s", type=float, default=DEFAULT_BUDGET_S,
                   help=f"skip the checks that start after this many seconds (default {DEFAULT_BUDGET_S:g})")
    p.add_argument("--only", default=None, help="comma-separated kinds: " + ",".join(KINDS))
    p.add_argument("--configs", nargs="+", default=None,
                   help="training-step configs (default: the paper-scale ones, then their Transformer-decoder twins)")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="training-step autocast dtype (auto: bf16 where the GPU supports it, as ESPnet's trainer "
                        "chooses, else fp16 with a GradScaler)")
    p.add_argument("--device", default="cuda", help="device to check (default cuda; cpu runs the same on the CPU)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads (CPU references)")
    return p


def _start(threads: int):
    """torch, set up as ``s4speech.bench.env.setup`` does when it is not yet imported (quiet warnings)."""
    if "torch" in sys.modules:
        torch = _torch()
        torch.set_num_threads(threads)
        return torch
    from s4speech.bench.env import setup

    return setup(threads)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    a = p.parse_args(argv)
    if a.only and not set(a.only.split(",")) <= set(KINDS):
        p.error(f"--only: unknown kind(s) {sorted(set(a.only.split(',')) - set(KINDS))} (known: {', '.join(KINDS)})")
    torch = _start(a.threads)
    dv = _dev(a.device)
    if dv.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device is available (torch {torch.__version__}, "
              f"torch.cuda.is_available() is False): nothing checked")
        return 0
    if a.amp == "auto":
        a.amp = "bf16" if dv.type != "cuda" or torch.cuda.is_bf16_supported() else "fp16"
    res = {"meta": environment(dv), "command": " ".join(["python -m s4speech.bench.gpu", *argv]),
           "budget_s": a.budget_s, "wall_s": 0.0, "checks": []}
    print(f"gpu-check on {res['meta'].get('gpu', a.device)} (torch {torch.__version__}), budget {a.budget_s:g} s",
          flush=True)
    t0 = time.perf_counter()

    def save(results):
        from s4speech.io.files import atomic_write

        res.update(checks=results, wall_s=time.perf_counter() - t0)
        res["ok"] = exit_status(results) == 0
        atomic_write(a.out, render_markdown(res))
        if a.json:
            atomic_write(a.json, json.dumps(res, indent=1, default=str) + "\n")

    save([])
    results = run_checks(plan(a), a.budget_s, dv, save)
    save(results)
    count = {s: sum(c["status"] == s for c in results) for s in ("ok", "fail", "error", "skipped")}
    bad = [c["name"] for c in results if c["status"] in ("fail", "error")]  # comparisons included
    print(f"gpu-check: {count['ok']} passed, {count['fail']} failed, {count['error']} raised, "
          f"{count['skipped']} skipped (time budget)" + (f"; not passed: {', '.join(bad)}" if bad else "")
          + f"; wrote {a.out}" + (f" and {a.json}" if a.json else ""))
    return exit_status(results)


def not_passed(results: list[dict]) -> list[dict]:
    """The checks of our code that failed (over a tolerance, non-finite) or raised; not the skipped ones, nor
    the comparison runs of ESPnet's own models (reported all the same)."""
    return [c for c in results if c["status"] in ("fail", "error") and not c.get("comparison")]


def exit_status(results: list[dict]) -> int:
    """1 if ``not_passed``, else 0."""
    return 1 if not_passed(results) else 0


if __name__ == "__main__":
    sys.exit(main())
