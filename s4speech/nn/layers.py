"""Small building blocks shared by the ASR and TTS modules."""
from __future__ import annotations

from typing import List, NamedTuple, Optional

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


def rows_linear(lin: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``lin(x)`` for a few rows x (n, d_in), computed as (W x^T + b)^T.

    Same result as ``lin(x)``; for the handful of rows of a decoding step (n = beam) this orientation
    lets the BLAS stream the weight once without packing it. Returns a transposed (non-contiguous) view.
    Any other module in the place of a plain ``nn.Linear`` with a bias (a dynamically quantized Linear,
    whose ``weight``/``bias`` are methods over int8 packed weights; a subclass with its own forward) is
    simply called."""
    if type(lin) is not nn.Linear or lin.bias is None:
        return lin(x)
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


class MemoryRows(NamedTuple):
    """Which of U stacked memories (k, v: (U, heads, T, dk)) each of n query rows attends to.

    The rows are laid out as U groups of ``per_memory`` query slots, row i in slot ``slot[i]`` of the
    (U * per_memory) flat layout (unused slots hold zero queries): one attention call over the batch of
    U memories serves every row, and no memory is copied per row."""

    memory: torch.Tensor  # (n,) long: the memory of each row
    slot: torch.Tensor  # (n,) long: its query slot, memory * per_memory + rank among that memory's rows
    count: int  # U
    per_memory: int  # query slots per memory: the most rows any memory has
    mask: Optional[torch.Tensor]  # (U, 1, 1, T) True = a frame of that memory; None: all have T frames

    @classmethod
    def of(cls, memory: List[int], count: int, mask: Optional[torch.Tensor] = None, device=None) -> "MemoryRows":
        rank, slot_rank = [0] * count, []
        for u in memory:
            slot_rank.append(rank[u])
            rank[u] += 1
        m = max(rank)
        slot = [u * m + r for u, r in zip(memory, slot_rank)]
        as_long = lambda v: torch.tensor(v, dtype=torch.long, device=device)
        return cls(as_long(memory), as_long(slot), count, m, mask)


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

    def step(self, x, k, v, return_weights=False, rows: Optional[MemoryRows] = None):
        """One query per hypothesis (inference).

        x: (n, d) -> (n, d) [and weights (n, heads, T)]. ``rows`` None: k, v (1, heads, T, dk), one memory
        shared by all rows, whose n hypotheses are the query positions of a single attention call (the
        keys/values are neither expanded nor copied). ``rows``: k, v (U, heads, T, dk), row i attends to
        memory ``rows.memory[i]`` (its padded frames masked out), still in one attention call.
        """
        n = x.shape[0]
        q = rows_linear(self.q, x).reshape(n, self.h, self.dk)
        mask = None
        if rows is None:
            q = q.transpose(0, 1)[None]  # (1, heads, n, dk)
        else:  # each row at its slot of (U, per_memory) query positions
            U, m = rows.count, rows.per_memory
            q = q.new_zeros(U * m, self.h, self.dk).index_copy_(0, rows.slot, q)
            q = q.view(U, m, self.h, self.dk).transpose(1, 2)  # (U, heads, m, dk)
            mask = rows.mask
        if return_weights:
            w = (q @ k.transpose(-1, -2)) / self.dk**0.5  # (U, heads, m, T)
            if mask is not None:
                w = w.masked_fill(~mask, float("-inf"))
            w = w.softmax(-1)
            o = w @ v
            w = w.transpose(1, 2).flatten(0, 1)  # (U m, heads, T)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        o = o.transpose(1, 2).reshape(-1, self.h * self.dk)  # (U m, d)
        if rows is not None:  # back to the rows' order
            o = o.index_select(0, rows.slot)
            w = w.index_select(0, rows.slot) if return_weights else None
        o = rows_linear(self.out, o)
        return (o, w) if return_weights else o


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
