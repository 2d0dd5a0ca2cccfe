"""``decoder: ssm`` -- the S4 decoder of Miyazaki et al. (ICASSP 2023) as an ESPnet decoder.

    tokens -> embedding -> N x [ causal S4 -> cross-attention(encoder) -> feed-forward ]
           -> LayerNorm -> output layer

Pre-LayerNorm residual blocks, no positional encoding (the S4 layer is causal
and knows positions). In beam search every hypothesis carries its own
recurrent state (num_blocks, H, N) and one step costs the same at any prefix
length; the cross-attention keys/values are computed once per utterance in
``init_state`` and shared by every hypothesis of that utterance. Hypotheses of
several utterances are scored by one ``batch_score`` call as well.
"""
from __future__ import annotations

from typing import Any, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from espnet2.asr.decoder.abs_decoder import AbsDecoder
from espnet.nets.scorer_interface import BatchScorerInterface

from s4speech.nn import MemoryRows, StrictLoadMixin, rows_linear
from s4speech.nn.blocks import DecoderBlock


class SSMDecoder(StrictLoadMixin, AbsDecoder, BatchScorerInterface):
    """S4 decoder.

    Args:
        vocab_size: output vocabulary (from the token list).
        encoder_output_size: dimension of the encoder output.
        d_model: decoder width (default: encoder_output_size).
        attention_heads, linear_units, num_blocks, dropout_rate: as ESPnet's TransformerDecoder.
        d_state: SSM state size N (even).
        kernel: ``s4`` (HiPPO-LegS DPLR) or ``s4d`` (diagonal).
        dt_min, dt_max: range of the initial step sizes.
        ssm_lr: learning rate of the SSM parameters (dt, A, B); honoured with
            ``exclude_weight_decay: true`` (ESPnet's optim groups), which also keeps
            them free of weight decay.
        s4d_init: ``lin`` or ``inv`` (S4D only).
        n_ssm: S4 only: number of independent (A, B) copies shared by the d_model channels
            (channel h uses copy h mod n_ssm); default: one per channel.
        ff_activation: activation of the feed-forward module (gelu, relu, swish, tanh, ...).
        normalize_before: pre-LayerNorm blocks and a final LayerNorm (default); ``false``:
            post-LayerNorm blocks (x = LayerNorm(x + f(x))) and no final LayerNorm.
    """

    def __init__(
        self,
        vocab_size: int,
        encoder_output_size: int,
        d_model: int | None = None,
        attention_heads: int = 4,
        linear_units: int = 2048,
        num_blocks: int = 6,
        dropout_rate: float = 0.1,
        d_state: int = 64,
        kernel: str = "s4",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        ssm_lr: float | None = None,
        s4d_init: str = "lin",
        n_ssm: int | None = None,
        ff_activation: str = "gelu",
        normalize_before: bool = True,
    ):
        super().__init__()
        d = d_model or encoder_output_size
        self.d_model, self.d_state, self.num_blocks = d, d_state, num_blocks
        self.embed = nn.Embedding(vocab_size, d)
        self.decoders = nn.ModuleList(
            DecoderBlock(
                d, encoder_output_size, attention_heads, linear_units, dropout_rate,
                ff_activation=ff_activation, normalize_before=normalize_before,
                d_state=d_state, kernel=kernel, dt_min=dt_min, dt_max=dt_max,
                ssm_lr=ssm_lr, s4d_init=s4d_init, n_ssm=n_ssm,
            )
            for _ in range(num_blocks)
        )
        self.after_norm = nn.LayerNorm(d) if normalize_before else nn.Identity()
        self.output_layer = nn.Linear(d, vocab_size)

    # ---- training ---------------------------------------------------------------------
    def forward(self, hs_pad, hlens, ys_in_pad, ys_in_lens) -> Tuple[torch.Tensor, torch.Tensor]:
        """hs_pad: (B, T, D_enc), ys_in_pad: (B, L) -> logits (B, L, V), ys_in_lens."""
        T = hs_pad.shape[1]
        mask = (torch.arange(T, device=hs_pad.device)[None] < hlens[:, None])[:, None, None]
        x = self.embed(ys_in_pad)
        for blk in self.decoders:
            k, v = blk.src_attn.memory(hs_pad)
            x = blk(x, k, v, mask)
        return self.output_layer(self.after_norm(x)), ys_in_lens

    # ---- scoring (ESPnet beam search) -------------------------------------------------
    # A hypothesis' state: {"ssm": list over blocks of (m, H, N) tensors, "row": its row in them,
    # "kv": a _Memory (the cross-attention keys/values of one or more utterances), "utt": its
    # utterance in it, "pos": tokens consumed}. The hypotheses returned by one batch_score share the
    # same per-block tensors and memory (no per-hypothesis copies); the next batch_score gathers the
    # rows it needs with one index_select per block. Hypotheses of several utterances (a batched
    # multi-utterance search) are scored in one call too: their memories are stacked once, and the
    # stack is kept by the states that call returns.
    def init_state(self, x: torch.Tensor) -> dict:
        """x: (T, D_enc) encoder output of one utterance."""
        kv = [tuple(t.contiguous() for t in blk.src_attn.memory(x[None])) for blk in self.decoders]  # once
        ssm = [blk.ssm.default_state(1, device=x.device, dtype=x.dtype) for blk in self.decoders]
        return {"ssm": ssm, "row": 0, "kv": _Memory([kv]), "utt": 0, "pos": 0}

    def select_state(self, state: Any, i: int, new_id: int = None) -> Any:
        return None if state is None else state[i]

    def score(self, ys: torch.Tensor, state: Any, x: torch.Tensor):
        """ys: (L,) prefix, x: (T, D_enc) -> log-probs (V,), new state."""
        logp, states = self.batch_score(ys[None], [state], x[None])
        return logp[0], states[0]

    @staticmethod
    def _gather(states: List[dict], block: int) -> torch.Tensor:
        base = states[0]["ssm"]
        if all(s["ssm"] is base for s in states):
            idx = torch.tensor([s["row"] for s in states], device=base[block].device)
            return base[block].index_select(0, idx)
        return torch.cat([s["ssm"][block][s["row"] : s["row"] + 1] for s in states])

    @staticmethod
    def _memory(states: List[dict]) -> Tuple["_Memory", List[int]]:
        """The memory the rows attend to and each row's utterance in it: the states' own if they all
        share it and use all of its utterances, else their utterances stacked anew."""
        mem, utt = states[0]["kv"], [s["utt"] for s in states]
        if all(s["kv"] is mem for s in states) and (mem.count == 1 or len(set(utt)) == mem.count):
            return mem, utt
        index, parts = {}, []  # (memory, utterance) -> utterance in the new memory
        for s in states:
            if index.setdefault((id(s["kv"]), s["utt"]), len(parts)) == len(parts):
                parts.append(s["kv"].parts[s["utt"]])
        return _Memory(parts), [index[(id(s["kv"]), s["utt"])] for s in states]

    def _init_missing(self, states: List[Any], xs: torch.Tensor) -> List[dict]:
        """A state None starts from its row of xs: one init_state per distinct row (by storage)."""
        made = {}
        for i, (s, x) in enumerate(zip(states, xs)):
            if s is None:
                key = (x.data_ptr(), x.shape, x.stride())
                if key not in made:
                    made[key] = self.init_state(x)
                states = states[:i] + [made[key]] + states[i + 1 :]
        return states

    def _by_position(self, ys, states, xs, return_hs):
        """States that have consumed different numbers of tokens: one batch_score per number."""
        groups = {}
        for i, s in enumerate(states):
            groups.setdefault(s["pos"], []).append(i)
        order = [i for idx in groups.values() for i in idx]
        outs = [self.batch_score(ys[idx], [states[i] for i in idx], xs[idx], return_hs) for idx in groups.values()]
        back = torch.argsort(torch.tensor(order, device=ys.device))
        join = lambda ts: torch.cat(ts).index_select(0, back)
        new = [st for _, sts in outs for st in sts]
        new = [new[j] for j in back.tolist()]
        if return_hs:
            return (join([o[0][0] for o in outs]), join([o[0][1] for o in outs])), new
        return join([o[0] for o in outs]), new

    def batch_score(self, ys: torch.Tensor, states: List[Any], xs: torch.Tensor, return_hs: bool = False):
        """ys: (n, L) prefixes, states: n states, xs: (n, T, D_enc) -> log-probs (n, V), n states.

        The states may come from different utterances (each keeps its own memory); xs is read only for
        states that are None (a new hypothesis of utterance xs[i])."""
        states = self._init_missing(states, xs)
        pos = states[0]["pos"]
        if any(s["pos"] != pos for s in states[1:]):
            return self._by_position(ys, states, xs, return_hs)
        if pos >= ys.shape[1]:
            raise ValueError(f"state has consumed {pos} tokens but the prefix has only {ys.shape[1]}")
        n = ys.shape[0]
        mem, utt = self._memory(states)
        # one memory: k, v (1, heads, T, dk) shared by all rows; several: row i attends to memory utt[i]
        rows = None if mem.count == 1 else MemoryRows.of(utt, mem.count, mem.mask, device=ys.device)
        ssm = [self._gather(states, b) for b in range(self.num_blocks)]  # (n, H, N) per block
        for t in range(pos, ys.shape[1]):  # normally one token: the last one
            x = self.embed(ys[:, t])
            for b, (blk, (k, v)) in enumerate(zip(self.decoders, mem.kv)):
                # ssm[b] is this call's own copy (gathered rows): updated in place (where no graph is built)
                x, ssm[b] = blk.step(x, ssm[b], k, v, None, inplace=True, rows=rows)
        h = self.after_norm(x)
        logits = self.output_layer(h) if self.training else rows_linear(self.output_layer, h)
        logp = torch.log_softmax(logits, dim=-1)
        L = ys.shape[1]
        new_states = [{"ssm": ssm, "row": i, "kv": mem, "utt": utt[i], "pos": L} for i in range(n)]
        return ((logp, h) if return_hs else logp), new_states


class _Memory:
    """The cross-attention keys/values of U utterances, for hypotheses of any of them.

    ``kv``: per block (k, v) of shape (U, heads, T, dk), padded to the longest utterance; ``mask``:
    (U, 1, 1, T) True on real frames (None when all have T); ``parts``: per utterance its own per-block
    (k, v) (1, heads, T_u, dk), from which another set of utterances is stacked. U = 1: ``kv`` is
    ``parts[0]`` itself (nothing copied)."""

    def __init__(self, parts: List[List[Tuple[torch.Tensor, torch.Tensor]]]):
        self.parts, self.count = parts, len(parts)
        if self.count == 1:
            self.kv, self.mask = parts[0], None
            return
        T = [p[0][0].shape[2] for p in parts]
        Tm, dev = max(T), parts[0][0][0].device
        pad = lambda t: F.pad(t, (0, 0, 0, Tm - t.shape[2]))  # (1, heads, T_u, dk) -> (1, heads, Tm, dk)
        self.kv = [tuple(torch.cat([pad(p[b][i]) for p in parts]) for i in (0, 1)) for b in range(len(parts[0]))]
        lens = torch.tensor(T, device=dev)
        self.mask = None if min(T) == Tm else (torch.arange(Tm, device=dev) < lens[:, None])[:, None, None]
