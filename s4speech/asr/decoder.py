"""``decoder: ssm`` -- the S4 decoder of Miyazaki et al. (ICASSP 2023) as an ESPnet decoder.

    tokens -> embedding -> N x [ causal S4 -> cross-attention(encoder) -> feed-forward ]
           -> LayerNorm -> output layer

Pre-LayerNorm residual blocks, no positional encoding (the S4 layer is causal
and knows positions). In beam search every hypothesis carries its own
recurrent state (num_blocks, H, N) and one step costs the same at any prefix
length; the cross-attention keys/values are computed once per utterance in
``init_state`` and shared by every hypothesis of that utterance.
"""
from __future__ import annotations

from typing import Any, List, Tuple

import torch
import torch.nn as nn
from espnet2.asr.decoder.abs_decoder import AbsDecoder
from espnet.nets.scorer_interface import BatchScorerInterface

from s4speech.nn import StrictLoadMixin, rows_linear
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
    # "kv": the utterance's cross-attention keys/values, "pos": tokens consumed}. The hypotheses
    # returned by one batch_score share the same per-block tensors (no per-hypothesis copies);
    # the next batch_score gathers the rows it needs with one index_select per block.
    def init_state(self, x: torch.Tensor) -> dict:
        """x: (T, D_enc) encoder output of one utterance."""
        kv = [tuple(t.contiguous() for t in blk.src_attn.memory(x[None])) for blk in self.decoders]  # once
        ssm = [torch.zeros(1, self.d_model, self.d_state, device=x.device, dtype=x.dtype)
               for _ in range(self.num_blocks)]
        return {"ssm": ssm, "row": 0, "kv": kv, "pos": 0}

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

    def batch_score(self, ys: torch.Tensor, states: List[Any], xs: torch.Tensor, return_hs: bool = False):
        """ys: (n, L) prefixes, states: n states, xs: (n, T, D_enc) -> log-probs (n, V), n states."""
        states = [s if s is not None else self.init_state(x) for s, x in zip(states, xs)]
        kv0, pos = states[0]["kv"], states[0]["pos"]
        if any(s["kv"] is not kv0 or s["pos"] != pos for s in states[1:]):
            # hypotheses of different utterances or prefix lengths: score each on its own
            outs = [self.batch_score(y[None], [s], x[None], return_hs) for y, s, x in zip(ys, states, xs)]
            logp = torch.cat([o[0][0] if return_hs else o[0] for o in outs])
            new = [o[1][0] for o in outs]
            if return_hs:
                return (logp, torch.cat([o[0][1] for o in outs])), new
            return logp, new
        if pos >= ys.shape[1]:
            raise ValueError(f"state has consumed {pos} tokens but the prefix has only {ys.shape[1]}")
        n = ys.shape[0]
        ssm = [self._gather(states, b) for b in range(self.num_blocks)]  # (n, H, N) per block
        for t in range(pos, ys.shape[1]):  # normally one token: the last one
            x = self.embed(ys[:, t])
            for b, (blk, (k, v)) in enumerate(zip(self.decoders, kv0)):
                # ssm[b] is this call's own copy (gathered rows): updated in place
                x, ssm[b] = blk.step(x, ssm[b], k, v, None, inplace=True)  # k, v: (1, heads, T, dk), shared
        h = self.after_norm(x)
        logits = self.output_layer(h) if self.training else rows_linear(self.output_layer, h)
        logp = torch.log_softmax(logits, dim=-1)
        L = ys.shape[1]
        new_states = [{"ssm": ssm, "row": i, "kv": kv0, "pos": L} for i in range(n)]
        return ((logp, h) if return_hs else logp), new_states
