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

import logging
import os
from typing import Any, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from espnet2.asr.decoder.abs_decoder import AbsDecoder
from espnet.nets.scorer_interface import BatchScorerInterface

from s4speech.nn import MemoryRows, StrictLoadMixin, rows_linear
from s4speech.nn.blocks import DecoderBlock

log = logging.getLogger(__name__)

COMPILE_ENV = "S4SPEECH_COMPILE_STEP"  # set (not "0"): every SSMDecoder built compiles its step (see compile_step)


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
        drop_path: stochastic depth (training only): each residual branch (S4, cross-attention,
            feed-forward) of each sequence is dropped with this probability, as ESPnet's decoder: s4.
        normalize_before: pre-LayerNorm blocks and a final LayerNorm (default); ``false``:
            post-LayerNorm blocks (x = LayerNorm(x + f(x))) and no final LayerNorm.
        compile_step: beam-search scoring (``batch_score``) through one ``torch.compile``'d step (see
            ``compile_step``); no effect on training or on the parameters. Also turned on for every
            decoder built in a process by the environment variable ``S4SPEECH_COMPILE_STEP=1`` (e.g. for
            ``espnet2.bin.asr_inference``, whose decode config cannot reach decoder options).
    """

    multi_utterance = True  # batch_score takes hypotheses of several utterances (s4speech.asr.search)

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
        compile_step: bool = False,
        drop_path: float = 0.0,
    ):
        super().__init__()
        d = d_model or encoder_output_size
        self.d_model, self.d_state, self.num_blocks = d, d_state, num_blocks
        self.embed = nn.Embedding(vocab_size, d)
        self.decoders = nn.ModuleList(
            DecoderBlock(
                d, encoder_output_size, attention_heads, linear_units, dropout_rate,
                ff_activation=ff_activation, normalize_before=normalize_before, drop_path=drop_path,
                d_state=d_state, kernel=kernel, dt_min=dt_min, dt_max=dt_max,
                ssm_lr=ssm_lr, s4d_init=s4d_init, n_ssm=n_ssm,
            )
            for _ in range(num_blocks)
        )
        self.after_norm = nn.LayerNorm(d) if normalize_before else nn.Identity()
        self.output_layer = nn.Linear(d, vocab_size)
        self._compiled: Optional[_CompiledStep] = None
        if compile_step or os.environ.get(COMPILE_ENV, "0") not in ("", "0"):
            self.compile_step()

    def compile_step(self, enabled: bool = True) -> "SSMDecoder":
        """Score beam-search steps through ``torch.compile`` (inductor; a C++ compiler on CPU); returns self.

        The step of ``batch_score`` -- hypotheses of one utterance, one new token each, in eval mode
        without autograd -- runs as one compiled function of (tokens, states, keys/values) -> (log-probs,
        new states): the per-op dispatch of the eager step goes, its pointwise work and the gathering of
        the beam rows are fused. Compiled on first use (about a minute on a busy 2-core CPU, ~20 s
        once inductor's on-disk cache has it), for any number of hypotheses and encoder length (dynamic
        shapes). Same scores as the eager step within float rounding. Anything else (training mode,
        autograd, several utterances per call, quantized layers, another kernel class, or a compile
        that fails: logged once) runs the eager step. ``enabled=False``: back to the eager step."""
        self._compiled = _CompiledStep() if enabled else None
        return self

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
    # A hypothesis' state: {"ssm": list over blocks of (m, H, N) tensors (the compiled step's: (m, H, 2, N/2),
    # see _planar; either step reads either layout), "row": its row in them,
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
        """The rows' states of one block, (n, H, N) contiguous and their own (written in place)."""
        base = states[0]["ssm"]
        if all(s["ssm"] is base for s in states):
            idx = torch.tensor([s["row"] for s in states], device=base[block].device)
            g = base[block].index_select(0, idx)
        else:
            g = torch.cat([_interleaved(s["ssm"][block][s["row"] : s["row"] + 1]) for s in states])
        return _interleaved(g)

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
        L = ys.shape[1]
        out = None
        if self._compiled is not None and mem.count == 1 and pos == L - 1:
            out = self._compiled(self, ys[:, -1], states, mem.kv)
        if out is not None:
            logp, h, ssm = out
        else:
            logp, h, ssm = self._eager_step(ys, pos, states, mem, utt)
        new_states = [{"ssm": ssm, "row": i, "kv": mem, "utt": utt[i], "pos": L} for i in range(n)]
        return ((logp, h) if return_hs else logp), new_states

    def _eager_step(self, ys, pos, states, mem, utt):
        """Tokens pos .. L-1 of the prefixes, op by op -> log-probs (n, V), h (n, d), per-block states."""
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
        return torch.log_softmax(logits, dim=-1), h, ssm


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


# ---- the compiled step ---------------------------------------------------------------------------------
# The compiled step keeps each block's recurrent state "planar", (n, H, 2, N/2): real parts, then imaginary
# parts of the N/2 complex state entries (the eager step's is (n, H, N), interleaved (re, im) pairs, whose
# stride-2 access inductor does not vectorize). Either layout is accepted by either step.
def _interleaved(s: torch.Tensor) -> torch.Tensor:
    """A block's states (n, H, N) interleaved: planar ones converted (a fresh contiguous copy)."""
    return s if s.dim() == 3 else s.transpose(-1, -2).reshape(s.shape[0], s.shape[1], -1)


def _planar(s: torch.Tensor) -> torch.Tensor:
    """A block's states (n, H, 2, N/2) planar: interleaved ones converted (a fresh contiguous copy)."""
    return s if s.dim() == 4 else s.view(s.shape[0], s.shape[1], -1, 2).transpose(-1, -2).contiguous()


def _planar_params(kernel: nn.Module) -> Optional[tuple]:
    """The kernel's recurrence x' = a x - f Re(q . x) + g u, y = c . x' (the form of its own ``step``, from
    its cached step parameters) on planar states: (a_re, a_im (H, N/2), f, q, g, c (H, 2, N/2)); f, q None
    for a diagonal kernel. None for a kernel class whose step is not one of these."""
    from s4speech.ssm.kernels import S4DKernel, S4Kernel

    if type(kernel) is S4Kernel:  # a (complex), f, q, g, c: (H, N) interleaved (re, im) pairs
        a, f, q, g, c = kernel._step.get(kernel, kernel._step_params)
        pl = lambda t: t.view(t.shape[0], -1, 2).transpose(1, 2).contiguous()
        return a.real.contiguous(), a.imag.contiguous(), pl(f), pl(q), pl(g), pl(c)
    if type(kernel) is S4DKernel:  # x' = dA x + dB u, y = 2 Re(C . x')
        dA, dB, C = kernel._step.get(kernel, kernel._step_params)
        g = torch.stack([dB.real, dB.imag], 1).float()
        c = torch.stack([2 * C.real, -2 * C.imag], 1).float()
        return dA.real.float().contiguous(), dA.imag.float().contiguous(), None, None, g, c
    return None


def _planar_ssm_step(layer: nn.Module, p: tuple, u: torch.Tensor, s: torch.Tensor):
    """``SSMLayer.step`` (eval mode) on a planar state: u (n, H), s (n, H, 2, N/2) -> y (n, H), new state."""
    a_re, a_im, f, q, g, c = p
    sr, si = s[:, :, 0], s[:, :, 1]
    x = torch.stack([a_re * sr - a_im * si, a_re * si + a_im * sr], 2) + g * u[..., None, None]
    if f is not None:
        x = x - f * (s * q).sum((-1, -2))[..., None, None]
    y = (x * c).sum((-1, -2)) + u * layer.D
    return F.glu(rows_linear(layer.output_linear, F.gelu(y)), dim=-1), x


def _step_function(dec: "SSMDecoder", tok, idx, bases, kv, params):
    """What is compiled: tok (n,) tokens, idx (n,) each row's row in bases (per block (m, H, 2, N/2)), kv per
    block (1, heads, T, dk) -> log-probs (n, V), h (n, d), per block new states (n, H, 2, N/2)."""
    x = dec.embed(tok)
    new = []
    for blk, base, (k, v), p in zip(dec.decoders, bases, kv, params):
        step = lambda u, s, _layer=blk.ssm, _p=p: _planar_ssm_step(_layer, _p, u, s)
        x, s = blk.step(x, base[idx], k, v, None, ssm_step=step)
        new.append(s)
    h = dec.after_norm(x)
    return torch.log_softmax(rows_linear(dec.output_layer, h), dim=-1), h, new


class _CompiledStep:
    """``SSMDecoder.compile_step``'s state: the compiled function (made on first use, not copied or pickled
    with the decoder) and the kernels' planar step parameters (re-derived when a kernel's step cache
    changes)."""

    def __init__(self):
        self.fn = None
        self.off: Optional[str] = None  # why the eager step is used for good
        self._src: list = []
        self._params: list = []

    def __getstate__(self):
        return {"off": self.off}

    def __setstate__(self, state):
        self.__init__()
        self.off = state.get("off")

    def __deepcopy__(self, memo):
        new = _CompiledStep()
        new.off = self.off
        return new

    def _supported(self, dec: "SSMDecoder") -> Optional[str]:
        """Why this decoder's step cannot be compiled, or None."""
        for m in dec.modules():
            if isinstance(m, nn.Linear) and type(m) is not nn.Linear:
                return f"a {type(m).__name__} layer"
            if "quantized" in type(m).__module__:
                return f"a {type(m).__name__} layer"
        for blk in dec.decoders:
            if _planar_params(blk.ssm.kernel) is None:
                return f"kernel {type(blk.ssm.kernel).__name__}"
        return None

    def params(self, dec: "SSMDecoder") -> list:
        src = [blk.ssm.kernel._step.get(blk.ssm.kernel, blk.ssm.kernel._step_params) for blk in dec.decoders]
        if len(src) != len(self._src) or any(a is not b for a, b in zip(src, self._src)):
            self._params = [_planar_params(blk.ssm.kernel) for blk in dec.decoders]
            self._src = src
        return self._params

    def __call__(self, dec: "SSMDecoder", tok: torch.Tensor, states: List[dict], kv) -> Optional[tuple]:
        """(log-probs (n, V), h (n, d), per-block planar states (n, H, 2, N/2)), or None: use the eager step."""
        if self.off is not None or dec.training or torch.is_grad_enabled() or kv[0][0].shape[2] < 2:
            return None
        if self.fn is None:
            self.off = self._supported(dec)
            if self.off is not None:
                log.warning("SSMDecoder: eager step (%s; the compiled step covers s4/s4d kernels and plain "
                            "Linear layers)", self.off)
                return None
            self.fn = torch.compile(_step_function, dynamic=None, fullgraph=True)
        n, base = len(states), states[0]["ssm"]
        if all(s["ssm"] is base for s in states):
            idx = torch.tensor([s["row"] for s in states], device=tok.device)
            bases = [_planar(b) for b in base]
        else:  # rows of several calls' states: gathered here
            idx = torch.arange(n, device=tok.device)
            bases = [torch.cat([_planar(s["ssm"][b][s["row"] : s["row"] + 1]) for s in states])
                     for b in range(dec.num_blocks)]
        # sizes 1 are specialised by the compiler: one row (the first step), one base row (the second) padded
        if n == 1:
            tok, idx = tok.repeat(2), idx.repeat(2)
        if bases[0].shape[0] == 1:
            bases = [b.repeat(2, 1, 1, 1) for b in bases]
        for t in (tok, idx, *bases):
            torch._dynamo.mark_dynamic(t, 0)
        for k, v in kv:
            torch._dynamo.mark_dynamic(k, 2)
            torch._dynamo.mark_dynamic(v, 2)
        try:
            logp, h, new = self.fn(dec, tok, idx, bases, kv, self.params(dec))
        except Exception as e:  # no C++ compiler, an unsupported op, ...: the eager step from now on
            self.off = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            log.warning("SSMDecoder: compiling the step failed, using the eager step (%s)", self.off)
            return None
        if n == 1:
            logp, h, new = logp[:1], h[:1], [s[:1] for s in new]
        return logp, h, new
