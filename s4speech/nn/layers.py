"""Small building blocks shared by the ASR and TTS modules."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "swish": F.silu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "sqrelu": lambda x: F.relu(x) ** 2,
    "identity": lambda x: x,
}


def rows_linear(lin: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``lin(x)`` for a few rows x (n, d_in), computed as (W x^T + b)^T.

    Same result as ``lin(x)``; for the handful of rows of a decoding step (n = beam) this orientation
    lets the BLAS stream the weight once without packing it. Returns a transposed (non-contiguous) view."""
    return torch.addmm(lin.bias[:, None], lin.weight, x.T).T


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float, activation: str = "gelu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r} (expected one of {sorted(ACTIVATIONS)})")
        self.w1, self.w2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)
        self.act = ACTIVATIONS[activation]

    def forward(self, x):
        return self.w2(self.dropout(self.act(self.w1(x))))

    def step(self, x):
        """x: (n, d) one frame per row (inference)."""
        return rows_linear(self.w2, self.act(rows_linear(self.w1, x)))


class CrossAttention(nn.Module):
    """Multi-head attention over a memory whose keys/values are computed once (``memory``)."""

    def __init__(self, d_model: int, d_memory: int, heads: int, dropout: float):
        super().__init__()
        assert d_model % heads == 0, f"d_model {d_model} is not divisible by {heads} heads"
        self.h, self.dk = heads, d_model // heads
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_memory, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def memory(self, mem: torch.Tensor):
        """mem: (B, T, d_memory) -> k, v: (B, heads, T, dk)."""
        B, T, _ = mem.shape
        k, v = self.kv(mem).view(B, T, 2, self.h, self.dk).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x, k, v, mask=None, return_weights=False):
        """x: (B, L, d); k, v: (B, heads, T, dk); mask: (B, 1, 1, T) True = attend."""
        B, L, _ = x.shape
        q = self.q(x).view(B, L, self.h, self.dk).transpose(1, 2)
        if return_weights:
            w = (q @ k.transpose(-1, -2)) / self.dk**0.5
            if mask is not None:
                w = w.masked_fill(~mask, float("-inf"))
            w = w.softmax(-1)
            o = F.dropout(w, self.dropout, self.training) @ v
        else:
            w = None
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
            )
        o = self.out(o.transpose(1, 2).reshape(B, L, -1))
        return (o, w) if return_weights else o

    def step(self, x, k, v, return_weights=False):
        """One query per hypothesis, all attending to the same memory (no mask).

        x: (n, d); k, v: (1, heads, T, dk) -> (n, d) [and weights (n, heads, T)]. The n hypotheses are
        the query positions of a single attention call, so the shared keys/values are neither expanded
        nor copied.
        """
        n = x.shape[0]
        q = rows_linear(self.q, x).reshape(n, self.h, self.dk).transpose(0, 1)[None]  # (1, heads, n, dk)
        if return_weights:
            w = ((q @ k.transpose(-1, -2)) / self.dk**0.5).softmax(-1)  # (1, heads, n, T)
            o = w @ v
        else:
            o = F.scaled_dot_product_attention(q, k, v)
        o = rows_linear(self.out, o[0].transpose(0, 1).reshape(n, -1))
        return (o, w[0].transpose(0, 1)) if return_weights else o


class StrictLoadMixin:
    """Refuse a state dict whose keys under this module don't match it exactly.

    ESPnet loads checkpoints with strict=False; for our modules a mismatch is an error
    that names the keys, not a silently half-initialised model.
    """

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        expected = {prefix + k for k in self.state_dict().keys()}
        present = {k for k in state_dict if k.startswith(prefix)}
        missing, unexpected = sorted(expected - present), sorted(present - expected)
        if missing or unexpected:
            raise RuntimeError(
                f"checkpoint does not match {type(self).__name__} at '{prefix}': "
                f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
                f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
