"""Analytic models: the floating-point work of each benchmarked call, and the bytes it must touch.

FLOP counts are float32 operations (a multiply-add is 2); the report divides them by the measured
matmul rate for the "floor" columns. d: model width, T: encoder frames, L / U: prefix / output
tokens, n / B: hypotheses / sequences, N: state size, H: channels."""
from __future__ import annotations

import math

from s4speech.bench.models import BLOCKS, N_STATE, V, heads


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


# ------------------------------------------------------ predicted peak memory (bytes), to skip a case


def predict_train_bytes(kind, d, U, B, T) -> float:
    """Bytes a (b) training case needs: logits and activations, plus the attention maps (transformer)
    or ESPnet's materialised Cauchy matrix (s4)."""
    h = heads(d)
    common = B * U * V * 4 * 4 + BLOCKS * B * U * d * 4 * 20
    if kind == "transformer":
        return common + BLOCKS * B * h * U * U * 4 * 5
    if kind == "s4":  # ESPnet's materialised Cauchy matrix (2, 2, H, N/2, U/2+1) complex + grads
        return common + 3 * 4 * d * (N_STATE // 2) * (U // 2 + 1) * 8 + B * d * U * 8 * 6 * BLOCKS
    return common


def predict_kernel_bytes(kind, L, H) -> float:
    """Bytes a (d) kernel case needs: ESPnet's naive kernels materialise (H, N/2, L) tensors."""
    n = N_STATE // 2
    if kind == "espnet-nplr":  # (2, 2, H, n, L/2+1) complex quotient + (H, n, L/2+1) denominators
        return (4 + 2) * H * n * (L // 2 + 1) * 8
    if kind == "espnet-diag":  # (H, n, L) complex exponent and exponential
        return 2 * H * n * L * 8
    return 4 * H * L * 4
