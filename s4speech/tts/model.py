"""``tts: ssm`` -- Transformer-TTS with an S4 decoder (Miyazaki et al., ICASSP 2023) as an ESPnet TTS.

    text -> text encoder (ESPnet's Transformer encoder, or bidirectional S4 blocks)
    mel_{t-1} -> prenet -> N x [ causal S4 -> cross-attention(text) -> feed-forward ]
              -> LayerNorm -> r mel frames + r stop logits -> postnet (residual)

Pre-LayerNorm residual decoder blocks, no positional encoding in the decoder (the
causal S4 layer knows positions). Inference keeps one recurrent (H, N) state per
decoder block and computes the cross-attention keys/values once per utterance, so
every generated frame costs the same at any output length. Generation stops when
a stop probability reaches ``threshold`` (not before ``minlenratio``) or after
``maxlenratio`` x (text length + 1) / r steps (a warning naming the text length and
the limit is logged then).

Inference safeguards (options of ``inference``, see there): ``use_att_constraint``
limits the cross-attention of the *focus heads* to a window around the text position
they last attended to (``backward_window`` / ``forward_window``, as ESPnet's Tacotron 2),
and ``stop_on_attention`` lets the stop token end the output only once those heads
have reached the end of the text (within ``end_window`` tokens of <eos>). The focus
heads are the ones the guided attention loss trains to be diagonal (the first
``num_heads_applied_guided_attn`` heads of the last ``num_layers_applied_guided_attn``
decoder blocks; all heads of all blocks for a model trained without that loss); the
focus is the argmax over the text of their average weights.

Loss as ESPnet's Transformer-TTS: L1 and/or L2 on the mel frames before and after
the postnet, stop-token BCE with a positive weight, plus the guided attention loss
on the cross-attention weights of the last decoder blocks.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from espnet2.torch_utils.device_funcs import force_gatherable
from espnet2.tts.abs_tts import AbsTTS
from espnet.nets.pytorch_backend.e2e_tts_transformer import GuidedMultiHeadAttentionLoss, TransformerLoss
from espnet.nets.pytorch_backend.nets_utils import make_pad_mask
from espnet.nets.pytorch_backend.tacotron2.decoder import Postnet
from espnet.nets.pytorch_backend.tacotron2.decoder import Prenet as DecoderPrenet
from espnet.nets.pytorch_backend.tacotron2.encoder import Encoder as EncoderPrenet
from espnet.nets.pytorch_backend.transformer.embedding import ScaledPositionalEncoding
from espnet.nets.pytorch_backend.transformer.encoder import Encoder as TransformerEncoder

from s4speech.nn import StrictLoadMixin
from s4speech.nn.blocks import DecoderBlock, EncoderBlock

LOSS_TYPES = ("L1", "L2", "L1+L2")

log = logging.getLogger(__name__)


class SSMTextEncoder(nn.Module):
    """Bidirectional S4 blocks over the token embeddings (no positional encoding)."""

    def __init__(self, input_layer: nn.Module, adim, eunits, elayers, dropout_rate, macaron_style,
                 cnn_module_kernel, **ssm_kw):
        super().__init__()
        self.embed = input_layer
        self.dropout = nn.Dropout(dropout_rate)
        self.encoders = nn.ModuleList(
            EncoderBlock(adim, eunits, dropout_rate, macaron_style, cnn_module_kernel, **ssm_kw)
            for _ in range(elayers)
        )
        self.after_norm = nn.LayerNorm(adim)

    def forward(self, xs, masks):
        """xs: (B, T) token ids, masks: (B, 1, T) True on valid tokens -> (B, T, adim), masks."""
        valid = masks[:, 0]
        h = self.dropout(self.embed(xs))
        for blk in self.encoders:
            h = blk(h, valid)
        return self.after_norm(h), masks


class SSMTTS(StrictLoadMixin, AbsTTS):
    """Transformer-TTS whose decoder is S4 (``tts: ssm``).

    Args:
        idim: vocabulary size (the token list; the last token is <sos/eos>).
        odim: mel bins.
        adim: model width; aheads: cross-attention (and Transformer encoder) heads.
        encoder_type: ``transformer`` (ESPnet's encoder, scaled positional encoding) or ``ssm``
            (bidirectional S4 blocks; ``encoder_macaron_style``, ``encoder_cnn_module_kernel``).
        elayers, eunits: encoder blocks and feed-forward units.
        eprenet_conv_layers, eprenet_conv_chans, eprenet_conv_filts: Tacotron 2 convolutional
            text prenet (0 layers: an embedding only).
        dprenet_layers, dprenet_units: decoder prenet (ESPnet's, dropout always on as Tacotron 2's).
        dlayers, dunits: S4 decoder blocks and their feed-forward units.
        postnet_layers, postnet_chans, postnet_filts: ESPnet's postnet (0 layers: none).
        reduction_factor: frames predicted per decoder step.
        d_state, kernel (``s4``/``s4d``), dt_min, dt_max, ssm_lr, s4d_init: S4 options as ``decoder: ssm``.
        spks, langs: number of speakers / languages (> 1: an id embedding added to the text encoding).
        loss_type: ``L1``, ``L2`` or ``L1+L2``; use_masking, use_weighted_masking, bce_pos_weight:
            as Transformer-TTS.
        use_guided_attn_loss, num_heads_applied_guided_attn, num_layers_applied_guided_attn
            (-1: all), guided_attn_loss_sigma, guided_attn_loss_lambda: guided attention loss on
            the cross-attention of the last decoder blocks.
        init_type: ``xavier_uniform`` (linear and convolution weights; the SSM kernels keep their
            own initialization) or ``pytorch``.
    """

    def __init__(
        self,
        idim: int,
        odim: int,
        adim: int = 384,
        aheads: int = 4,
        encoder_type: str = "transformer",
        elayers: int = 6,
        eunits: int = 1536,
        embed_dim: int = 512,
        eprenet_conv_layers: int = 0,
        eprenet_conv_chans: int = 256,
        eprenet_conv_filts: int = 5,
        encoder_macaron_style: bool = False,
        encoder_cnn_module_kernel: int = 0,
        dprenet_layers: int = 2,
        dprenet_units: int = 256,
        dlayers: int = 6,
        dunits: int = 1536,
        postnet_layers: int = 5,
        postnet_chans: int = 256,
        postnet_filts: int = 5,
        use_batch_norm: bool = True,
        reduction_factor: int = 1,
        d_state: int = 64,
        kernel: str = "s4",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        ssm_lr: Optional[float] = None,
        s4d_init: str = "lin",
        spks: Optional[int] = None,
        langs: Optional[int] = None,
        enc_dropout_rate: float = 0.1,
        enc_positional_dropout_rate: float = 0.1,
        enc_attn_dropout_rate: float = 0.1,
        dec_dropout_rate: float = 0.1,
        eprenet_dropout_rate: float = 0.5,
        dprenet_dropout_rate: float = 0.5,
        postnet_dropout_rate: float = 0.5,
        init_type: str = "xavier_uniform",
        init_enc_alpha: float = 1.0,
        use_masking: bool = True,
        use_weighted_masking: bool = False,
        bce_pos_weight: float = 5.0,
        loss_type: str = "L1+L2",
        use_guided_attn_loss: bool = True,
        num_heads_applied_guided_attn: int = 2,
        num_layers_applied_guided_attn: int = 2,
        guided_attn_loss_sigma: float = 0.4,
        guided_attn_loss_lambda: float = 1.0,
    ):
        super().__init__()
        if encoder_type not in ("transformer", "ssm"):
            raise ValueError(f"encoder_type {encoder_type!r}: expected 'transformer' or 'ssm'")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type {loss_type!r}: expected one of {LOSS_TYPES}")
        if reduction_factor < 1:
            raise ValueError(f"reduction_factor must be >= 1, got {reduction_factor}")
        if init_type not in ("xavier_uniform", "pytorch"):
            raise ValueError(f"init_type {init_type!r}: expected 'xavier_uniform' or 'pytorch'")
        self.idim, self.odim, self.adim = idim, odim, adim
        self.eos, self.padding_idx = idim - 1, 0
        self.reduction_factor = reduction_factor
        self.encoder_type, self.loss_type = encoder_type, loss_type
        self.use_gst = False  # read by ESPnet's Text2Speech
        self.spk_embed_dim = None
        ssm_kw = dict(d_state=d_state, kernel=kernel, dt_min=dt_min, dt_max=dt_max, ssm_lr=ssm_lr, s4d_init=s4d_init)

        # ---- text encoder
        if eprenet_conv_layers > 0:
            input_layer = nn.Sequential(
                EncoderPrenet(idim=idim, embed_dim=embed_dim, elayers=0, econv_layers=eprenet_conv_layers,
                              econv_chans=eprenet_conv_chans, econv_filts=eprenet_conv_filts,
                              use_batch_norm=use_batch_norm, dropout_rate=eprenet_dropout_rate,
                              padding_idx=self.padding_idx),
                nn.Linear(eprenet_conv_chans, adim),
            )
        else:
            input_layer = nn.Embedding(idim, adim, padding_idx=self.padding_idx)
        if encoder_type == "transformer":
            self.encoder = TransformerEncoder(
                idim=idim, attention_dim=adim, attention_heads=aheads, linear_units=eunits,
                num_blocks=elayers, input_layer=input_layer, dropout_rate=enc_dropout_rate,
                positional_dropout_rate=enc_positional_dropout_rate,
                attention_dropout_rate=enc_attn_dropout_rate, pos_enc_class=ScaledPositionalEncoding,
                normalize_before=True, concat_after=False,
            )
        else:
            self.encoder = SSMTextEncoder(input_layer, adim, eunits, elayers, enc_dropout_rate,
                                          encoder_macaron_style, encoder_cnn_module_kernel, **ssm_kw)
        self.spks = spks if spks is not None and spks > 1 else None
        self.langs = langs if langs is not None and langs > 1 else None
        if self.spks:
            self.sid_emb = nn.Embedding(self.spks, adim)
        if self.langs:
            self.lid_emb = nn.Embedding(self.langs, adim)

        # ---- S4 decoder
        if dprenet_layers > 0:
            self.prenet = nn.Sequential(
                DecoderPrenet(idim=odim, n_layers=dprenet_layers, n_units=dprenet_units,
                              dropout_rate=dprenet_dropout_rate),
                nn.Linear(dprenet_units, adim),
            )
        else:
            self.prenet = nn.Linear(odim, adim)
        self.decoders = nn.ModuleList(
            DecoderBlock(adim, adim, aheads, dunits, dec_dropout_rate, **ssm_kw) for _ in range(dlayers)
        )
        self.after_norm = nn.LayerNorm(adim)
        self.feat_out = nn.Linear(adim, odim * reduction_factor)
        self.prob_out = nn.Linear(adim, reduction_factor)
        self.postnet = None if postnet_layers == 0 else Postnet(
            idim=idim, odim=odim, n_layers=postnet_layers, n_chans=postnet_chans, n_filts=postnet_filts,
            use_batch_norm=use_batch_norm, dropout_rate=postnet_dropout_rate,
        )

        # ---- losses
        self.criterion = TransformerLoss(use_masking=use_masking, use_weighted_masking=use_weighted_masking,
                                         bce_pos_weight=bce_pos_weight)
        self.use_guided_attn_loss = use_guided_attn_loss
        if use_guided_attn_loss:
            self.num_layers_applied_guided_attn = (
                dlayers if num_layers_applied_guided_attn == -1 else min(num_layers_applied_guided_attn, dlayers))
            self.num_heads_applied_guided_attn = (
                aheads if num_heads_applied_guided_attn == -1 else min(num_heads_applied_guided_attn, aheads))
            self.attn_criterion = GuidedMultiHeadAttentionLoss(sigma=guided_attn_loss_sigma,
                                                               alpha=guided_attn_loss_lambda)
        self._reset_parameters(init_type, init_enc_alpha)

    def _reset_parameters(self, init_type: str, init_enc_alpha: float) -> None:
        if init_type == "xavier_uniform":
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Conv1d)):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Embedding):
                    nn.init.normal_(m.weight, 0.0, 1.0)
                    if m.padding_idx is not None:
                        with torch.no_grad():
                            m.weight[m.padding_idx].zero_()
        if self.encoder_type == "transformer":
            self.encoder.embed[-1].alpha.data = torch.tensor(float(init_enc_alpha))

    # ---- shared pieces -------------------------------------------------------------------
    def _encode(self, xs: torch.Tensor, ilens: torch.Tensor, sids=None, lids=None):
        """xs: (B, T) ids with <eos> -> hs (B, T, adim), valid mask (B, T)."""
        valid = ~make_pad_mask(ilens, maxlen=xs.shape[1]).to(xs.device)
        hs, _ = self.encoder(xs, valid[:, None])
        if self.spks is not None:
            if sids is None:
                raise ValueError("this model has speaker ids (spks > 1): pass sids")
            hs = hs + self.sid_emb(sids.view(-1))[:, None]
        if self.langs is not None:
            if lids is None:
                raise ValueError("this model has language ids (langs > 1): pass lids")
            hs = hs + self.lid_emb(lids.view(-1))[:, None]
        return hs, valid

    def _decode(self, hs, valid, ys):
        """Teacher forcing. ys: (B, L, odim) targets (L a multiple of r)
        -> before (B, L, odim), after, stop logits (B, L), weights [(B, heads, L/r, T)] per block."""
        r = self.reduction_factor
        ys_in = ys[:, r - 1 :: r] if r > 1 else ys
        ys_in = torch.cat([ys_in.new_zeros(ys_in.shape[0], 1, self.odim), ys_in[:, :-1]], dim=1)
        z = self.prenet(ys_in)
        mask = valid[:, None, None]
        att_ws = []
        for blk in self.decoders:
            k, v = blk.src_attn.memory(hs)
            z, w = blk(z, k, v, mask, return_weights=True)
            att_ws.append(w)
        z = self.after_norm(z)
        before = self.feat_out(z).view(z.shape[0], -1, self.odim)
        logits = self.prob_out(z).view(z.shape[0], -1)
        after = before if self.postnet is None else before + self.postnet(before.transpose(1, 2)).transpose(1, 2)
        return before, after, logits, att_ws

    # ---- training ------------------------------------------------------------------------
    def forward(
        self,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        feats: torch.Tensor,
        feats_lengths: torch.Tensor,
        spembs: Optional[torch.Tensor] = None,
        sids: Optional[torch.Tensor] = None,
        lids: Optional[torch.Tensor] = None,
        joint_training: bool = False,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        """text: (B, T_text) ids, feats: (B, T_feats, odim) -> loss, stats, weight."""
        if spembs is not None:
            raise ValueError("tts: ssm does not take speaker embeddings (spembs); use sids with spks")
        r = self.reduction_factor
        text = text[:, : text_lengths.max()]
        feats = feats[:, : feats_lengths.max()]
        B = text.shape[0]
        xs = F.pad(text, [0, 1], "constant", self.padding_idx)
        xs[torch.arange(B, device=xs.device), text_lengths] = self.eos
        ilens = text_lengths + 1
        if (feats_lengths < r).any():
            raise ValueError(f"an utterance has fewer frames than the reduction factor {r}")
        olens = feats_lengths - feats_lengths % r
        ys = feats[:, : int(olens.max())]
        labels = make_pad_mask(olens - 1, maxlen=ys.shape[1]).to(ys.device, ys.dtype)  # 1 from the last frame on

        hs, valid = self._encode(xs, ilens, sids, lids)
        before, after, logits, att_ws = self._decode(hs, valid, ys)
        l1, l2, bce = self.criterion(after, before, logits, ys, labels, olens)
        loss = {"L1": l1, "L2": l2, "L1+L2": l1 + l2}[self.loss_type] + bce
        stats = dict(l1_loss=l1.item(), l2_loss=l2.item(), bce_loss=bce.item())
        if self.use_guided_attn_loss:
            n, h = self.num_layers_applied_guided_attn, self.num_heads_applied_guided_attn
            ws = torch.cat([w[:, :h] for w in att_ws[::-1][:n]], dim=1)  # (B, h*n, T_feats/r, T_text)
            attn_loss = self.attn_criterion(ws, ilens, olens // r)
            loss = loss + attn_loss
            stats.update(enc_dec_attn_loss=attn_loss.item())
        if self.encoder_type == "transformer":
            stats.update(encoder_alpha=self.encoder.embed[-1].alpha.data.item())
        if joint_training:
            return loss, stats, after
        stats.update(loss=loss.item())
        return force_gatherable((loss, stats, B), loss.device)

    # ---- inference -----------------------------------------------------------------------
    def focus_heads(self) -> Tuple[int, int]:
        """(first block, heads): the focus heads are heads ``[0, heads)`` of the decoder blocks from ``first`` on --
        those of the guided attention loss (``att_ws[::-1][:n]``, ``w[:, :h]`` in ``forward``), all heads of all
        blocks when the model has no guided attention loss."""
        dlayers, aheads = len(self.decoders), self.decoders[0].src_attn.h
        n = getattr(self, "num_layers_applied_guided_attn", 0) if self.use_guided_attn_loss else 0
        h = getattr(self, "num_heads_applied_guided_attn", 0) if self.use_guided_attn_loss else 0
        if n <= 0 or h <= 0:
            return 0, aheads
        return dlayers - n, h

    def attention_focus(self, att_w: torch.Tensor) -> torch.Tensor:
        """att_w: (..., dlayers, aheads, T_text) -> (...,) the text position the focus heads attend to most."""
        first, h = self.focus_heads()
        return att_w[..., first:, :h, :].mean((-3, -2)).argmax(-1)

    @torch.no_grad()
    def inference(
        self,
        text: torch.Tensor,
        feats: Optional[torch.Tensor] = None,
        spembs: Optional[torch.Tensor] = None,
        sids: Optional[torch.Tensor] = None,
        lids: Optional[torch.Tensor] = None,
        threshold: float = 0.5,
        minlenratio: float = 0.0,
        maxlenratio: float = 10.0,
        use_teacher_forcing: bool = False,
        use_att_constraint: bool = False,
        backward_window: int = 1,
        forward_window: int = 3,
        stop_on_attention: bool = False,
        end_window: int = 3,
    ) -> Dict[str, torch.Tensor]:
        """text: (T_text,) ids without <eos>.

        Returns feat_gen (T_feats, odim) after the postnet, prob (T_feats,) stop probabilities and
        att_w (dlayers, aheads, T_feats / r, T_text + 1) cross-attention weights (ESPnet's layout).
        With ``use_teacher_forcing`` the decoder is fed ``feats`` (T_feats, odim) instead.

        Stopping: after the first step (at or after ``minlenratio`` x (T_text + 1) / r steps) where a stop
        probability is >= ``threshold`` -- with ``stop_on_attention``, only once the focus (see
        ``attention_focus``) has been within ``end_window`` tokens of <eos> (position >= T_text - end_window)
        at some step so far -- or after ``maxlenratio`` x (T_text + 1) / r steps, with a warning.

        ``use_att_constraint``: at each step the focus heads may only attend to positions
        [focus - backward_window, focus + forward_window] (both ends included) around the focus of the
        previous step (position 0 before the first); the other heads attend freely. ESPnet's Tacotron 2
        takes the same options, with the forward end excluded there.

        The defaults here leave both safeguards off (the plain rule above); the inference entry points
        (``s4speech.tts.inference.Text2Speech``, ``s4speech.bin.tts_inference``, ``s4speech synthesize``)
        turn ``stop_on_attention`` on.
        """
        if backward_window < 0 or forward_window < 1 or end_window < 0:
            raise ValueError(f"need backward_window >= 0, forward_window >= 1, end_window >= 0; got "
                             f"{backward_window}, {forward_window}, {end_window}")
        if spembs is not None:
            raise ValueError("tts: ssm does not take speaker embeddings (spembs); use sids with spks")
        if text.dim() != 1:
            raise ValueError(f"text must be a 1-d tensor of token ids, got shape {tuple(text.shape)}")
        r = self.reduction_factor
        x = F.pad(text.long(), [0, 1], "constant", self.eos)[None]
        ilens = torch.tensor([x.shape[1]], device=x.device)
        sids = None if sids is None else sids.view(1, -1)
        lids = None if lids is None else lids.view(1, -1)
        hs, valid = self._encode(x, ilens, sids, lids)

        if use_teacher_forcing:
            if feats is None:
                raise ValueError("use_teacher_forcing needs feats")
            ys = feats[None, : feats.shape[0] - feats.shape[0] % r]
            _, after, logits, att_ws = self._decode(hs, valid, ys)
            return dict(feat_gen=after[0], prob=torch.sigmoid(logits[0]), att_w=torch.stack(att_ws, 1)[0])

        T = x.shape[1]
        maxlen = max(1, int(T * maxlenratio / r))
        minlen = int(T * minlenratio / r)
        maxlen = max(maxlen, minlen)
        kv = [blk.src_attn.memory(hs) for blk in self.decoders]  # once per utterance
        states = [blk.ssm.default_state(1, device=hs.device, dtype=hs.dtype) for blk in self.decoders]
        first, h = self.focus_heads()
        if use_att_constraint:
            pos = torch.arange(T, device=hs.device)
            free = (torch.arange(self.decoders[0].src_attn.h, device=hs.device) >= h)[:, None]  # (aheads, 1)
            focus = torch.zeros((), dtype=torch.long, device=hs.device)
            focuses = []
        end = T - 1 - end_window  # the focus has reached the end at a position >= end
        reached, checked = not stop_on_attention or end <= 0, 0
        stopped, held = False, 0  # held: steps whose stop probability stop_on_attention overruled
        y = hs.new_zeros(1, self.odim)
        outs, probs, att = [], [], []
        for step in range(1, maxlen + 1):
            z = self.prenet(y)
            mask = None
            if use_att_constraint:  # (1, aheads, 1, T), broadcast in the block's masked attention
                window = (pos >= focus - backward_window) & (pos <= focus + forward_window)
                mask = (window[None] | free)[None, :, None]
            ws = []
            for i, (blk, (k, v)) in enumerate(zip(self.decoders, kv)):
                m = mask if i >= first else None
                z, states[i], w = blk.step(z, states[i], k, v, m, inplace=True, return_weights=True)  # states: ours alone
                ws.append(w[0])
            z = self.after_norm(z)
            out = self.feat_out(z).view(r, self.odim)
            prob = torch.sigmoid(self.prob_out(z))[0]
            outs.append(out)
            probs.append(prob)
            att.append(torch.stack(ws))  # (dlayers, heads, T_text)
            if use_att_constraint:
                focus = self.attention_focus(att[-1])  # stays on the device: no synchronization per step
                if not reached:
                    focuses.append(focus)
            y = out[-1:]
            if step >= minlen and bool((prob >= threshold).any()):
                if not reached:  # the focus of the steps not looked at yet, computed only now
                    if use_att_constraint:
                        seen, focuses = torch.stack(focuses), []
                    else:
                        seen, checked = self.attention_focus(torch.stack(att[checked:])), step
                    reached = bool((seen >= end).any())
                if reached:
                    stopped = True
                    break
                held += 1
        if not stopped:
            why = (f"; the stop probability reached {threshold} at {held} step(s) but the attention never came within "
                   f"{end_window} token(s) of the end of the text (stop_on_attention)") if held else ""
            log.warning("tts: ssm: no stop for a text of %d tokens (+ <eos>) within the limit of %d decoder steps "
                        "(%d frames: maxlenratio %g x %d / reduction factor %d); the output is cut there%s",
                        T - 1, maxlen, maxlen * r, maxlenratio, T, r, why)
        before = torch.cat(outs)  # (steps * r, odim)
        after = before if self.postnet is None else before + self.postnet(before.T[None])[0].T
        return dict(feat_gen=after, prob=torch.cat(probs), att_w=torch.stack(att, dim=2))
