"""The residual blocks shared by the ASR and TTS models.

    DecoderBlock:  x -> [causal S4] -> [cross-attention(memory)] -> [feed-forward]
    EncoderBlock:  x -> [½ FF] -> [bidirectional S4] -> [convolution] -> [½ FF] (-> LayerNorm)

Each sub-layer is residual; ``normalize_before`` (decoder) puts its LayerNorm before the sub-layer
(pre-norm, ``x + f(norm(x))``) or after the sum (post-norm, ``norm(x + f(x))``).
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from s4speech.nn.layers import CrossAttention, FeedForward, MemoryRows
from s4speech.ssm.layer import SSMLayer


class DecoderBlock(nn.Module):
    def __init__(self, d_model, d_memory, heads, d_ff, dropout, ff_activation="gelu", normalize_before=True,
                 drop_path=0.0, **ssm_kw):
        super().__init__()
        self.ssm = SSMLayer(d_model, dropout=dropout, **ssm_kw)
        self.src_attn = CrossAttention(d_model, d_memory, heads, dropout)
        self.ff = FeedForward(d_model, d_ff, dropout, ff_activation)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d_model) for _ in range(3))
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        self.drop_path = drop_path  # stochastic depth: in training, each branch dropped per sequence

    def _drop_path(self, h):
        """Training: a branch's output kept for each sequence with probability 1 - drop_path (and scaled by
        1 / (1 - drop_path)), else zero, as ESPnet's DropPath; identity otherwise."""
        if not self.training or not self.drop_path:
            return h
        keep = 1.0 - self.drop_path
        return h * h.new_empty(h.shape[0], *(1,) * (h.dim() - 1)).bernoulli_(keep) / keep

    def _residual(self, x, norm, f):
        if self.normalize_before:
            return x + self._drop_path(f(norm(x)))
        return norm(x + self._drop_path(f(x)))

    def forward(self, x, k, v, mask, return_weights=False):
        """Teacher forcing. x: (B, L, d); k, v: (B, heads, T, dk); mask: (B, 1, 1, T) True = attend.
        -> x (B, L, d) [, cross-attention weights (B, heads, L, T)]."""
        w = None

        def attend(h):
            nonlocal w
            a = self.src_attn(h, k, v, mask, return_weights=return_weights)
            if return_weights:
                a, w = a
            return self.dropout(a)

        x = self._residual(x, self.norm1, lambda h: self.dropout(self.ssm(h)))
        x = self._residual(x, self.norm2, attend)
        x = self._residual(x, self.norm3, lambda h: self.dropout(self.ff(h)))
        return (x, w) if return_weights else x

    def _attend(self, x, k, v, mask, return_weights, rows):
        if mask is None and not self.training and (rows is not None or k.shape[0] == 1):
            return self.src_attn.step(x, k, v, return_weights=return_weights, rows=rows)  # memories shared by rows
        if rows is not None:  # (training mode) per-row copies of the memories
            k, v = k.index_select(0, rows.memory), v.index_select(0, rows.memory)
            mask = None if rows.mask is None else rows.mask.index_select(0, rows.memory)
        a = self.src_attn(x[:, None], k, v, mask, return_weights=return_weights)
        return (a[0][:, 0], a[1][:, :, 0]) if return_weights else a[:, 0]

    def step(self, x, state, k, v, mask, inplace=False, return_weights=False, rows: MemoryRows | None = None,
             ssm_step=None):
        """One position. x: (B, d), state: (B, H, N); k, v: (B or 1, heads, T, dk), or with ``rows``
        (U, heads, T, dk), U memories that the rows share (row i attends to ``rows.memory[i]``; then mask
        is None) -> x, new state [, weights (B, heads, T)]. ``inplace``: the new state overwrites ``state``
        where no autograd graph is built (see ``SSMLayer.step``). ``ssm_step``: a function (h, state) ->
        (y, new state) run in the place of ``self.ssm.step`` (the decoder's compiled step keeps the
        recurrent state in a layout of its own)."""
        new_state, w = None, None

        def ssm(h):
            nonlocal new_state
            y, new_state = self.ssm.step(h, state, inplace) if ssm_step is None else ssm_step(h, state)
            return y

        def attend(h):
            nonlocal w
            a = self._attend(h, k, v, mask, return_weights, rows)
            if return_weights:
                a, w = a
            return a

        x = self._residual(x, self.norm1, ssm)
        x = self._residual(x, self.norm2, attend)
        x = self._residual(x, self.norm3, self.ff if self.training else self.ff.step)
        return (x, new_state, w) if return_weights else (x, new_state)


class ConvModule(nn.Module):
    """Conformer-style: pointwise -> GLU -> depthwise (masked) -> LayerNorm -> SiLU -> pointwise."""

    def __init__(self, d: int, kernel_size: int):
        super().__init__()
        assert kernel_size % 2 == 1, "conv kernel size must be odd"
        self.pw1 = nn.Conv1d(d, 2 * d, 1)
        self.dw = nn.Conv1d(d, d, kernel_size, padding=kernel_size // 2, groups=d)
        self.norm = nn.LayerNorm(d)
        self.pw2 = nn.Conv1d(d, d, 1)

    def forward(self, x, mask):
        """x: (B, T, d), mask: (B, T) True on valid frames."""
        x = F.glu(self.pw1(x.transpose(1, 2)), dim=1)
        x = self.dw(x.masked_fill(~mask[:, None], 0.0))
        x = F.silu(self.norm(x.transpose(1, 2)))
        return self.pw2(x.transpose(1, 2)).transpose(1, 2)


class EncoderBlock(nn.Module):
    def __init__(self, d, d_ff, dropout, macaron, conv_kernel, **ssm_kw):
        super().__init__()
        self.ff1 = FeedForward(d, d_ff, dropout) if macaron else None
        self.ssm = SSMLayer(d, bidirectional=True, dropout=dropout, **ssm_kw)
        self.conv = ConvModule(d, conv_kernel) if conv_kernel else None
        self.ff2 = FeedForward(d, d_ff, dropout)
        n_norms = 2 + (self.ff1 is not None) + (self.conv is not None) + (self.ff1 is not None)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(n_norms))
        self.dropout = nn.Dropout(dropout)
        self.ff_scale = 0.5 if macaron else 1.0

    def forward(self, x, mask):
        """x: (B, T, d), mask: (B, T) True on valid frames."""
        norms = iter(self.norms)
        if self.ff1 is not None:
            x = x + self.ff_scale * self.dropout(self.ff1(next(norms)(x)))
        x = x + self.dropout(self.ssm(next(norms)(x), mask))
        if self.conv is not None:
            x = x + self.dropout(self.conv(next(norms)(x), mask))
        x = x + self.ff_scale * self.dropout(self.ff2(next(norms)(x)))
        if self.ff1 is not None:
            x = next(norms)(x)  # final norm of a macaron block
        return x
