"""``encoder: ssm`` -- bidirectional S4 blocks over ESPnet's convolutional subsampling.

    feats -> Conv2dSubsampling -> N x [ (1/2 FF) -> bi-S4 -> (conv module) -> (1/2) FF ] -> LayerNorm

Padding never leaks: every sequence-mixing step (S4, depthwise convolution)
zeroes padded frames first, and the subsampling is unpadded convolution over
input whose padding is zeroed, so an utterance gives the same output alone and
padded inside a batch.

Output lengths are the exact lengths of the unpadded convolutions (ESPnet's
Conformer counts its subsampled mask instead: a few frames more, computed
partly from padding), but never below 1: an utterance shorter than the
subsampling's receptive field (``min_input_frames``: 7 for conv2d and conv2d2,
11 for conv2d6, 15 for conv2d8) gets one frame, computed from the utterance and
zeros after it (ESPnet's Conformer gives such an utterance 1-3 frames in a
batch). A batch whose padded length is below ``min_input_frames`` is padded with
zeros up to it, so short utterances work alone too (where ESPnet's Conformer
raises TooShortUttError), with the same output as in a longer batch.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet.nets.pytorch_backend.nets_utils import make_pad_mask
from espnet.nets.pytorch_backend.transformer.subsampling import (
    Conv2dSubsampling,
    Conv2dSubsampling2,
    Conv2dSubsampling6,
    Conv2dSubsampling8,
)

from s4speech.nn import StrictLoadMixin
from s4speech.nn.blocks import EncoderBlock

SUBSAMPLING = {
    "conv2d": Conv2dSubsampling,
    "conv2d2": Conv2dSubsampling2,
    "conv2d6": Conv2dSubsampling6,
    "conv2d8": Conv2dSubsampling8,
}


class SSMEncoder(StrictLoadMixin, AbsEncoder):
    """S4 encoder.

    Args:
        input_size: feature dimension.
        output_size: model width.
        linear_units, num_blocks, dropout_rate: as ESPnet's Conformer encoder.
        input_layer: conv2d (1/4), conv2d2, conv2d6, conv2d8 (shorter utterances than the receptive
            field, ``min_input_frames``, get one output frame: see the module docstring).
        macaron_style: two half feed-forwards around the S4 layer.
        cnn_module_kernel: kernel of the convolution module; 0 disables it.
        d_state, kernel, dt_min, dt_max, ssm_lr, s4d_init: as ``decoder: ssm``.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        linear_units: int = 1024,
        num_blocks: int = 6,
        dropout_rate: float = 0.1,
        input_layer: str = "conv2d",
        macaron_style: bool = True,
        cnn_module_kernel: int = 15,
        d_state: int = 64,
        kernel: str = "s4",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        ssm_lr: float | None = None,
        s4d_init: str = "lin",
    ):
        super().__init__()
        if input_layer not in SUBSAMPLING:
            raise ValueError(f"input_layer {input_layer!r} not in {sorted(SUBSAMPLING)}")
        self._output_size = output_size
        # no positional encoding: the S4 layers see positions themselves
        self.embed = SUBSAMPLING[input_layer](input_size, output_size, dropout_rate, nn.Identity())
        # (kernel, stride) along time of the subsampling's convolutions
        self._convs = [(m.kernel_size[0], m.stride[0]) for m in self.embed.conv if isinstance(m, nn.Conv2d)]
        need = 1  # input frames behind one output frame: the receptive field of the convolutions
        for k, st in reversed(self._convs):
            need = (need - 1) * st + k
        self.min_input_frames = need
        self.encoders = nn.ModuleList(
            EncoderBlock(
                output_size, linear_units, dropout_rate, macaron_style, cnn_module_kernel,
                d_state=d_state, kernel=kernel, dt_min=dt_min, dt_max=dt_max,
                ssm_lr=ssm_lr, s4d_init=s4d_init,
            )
            for _ in range(num_blocks)
        )
        self.after_norm = nn.LayerNorm(output_size)

    def output_size(self) -> int:
        return self._output_size

    def forward(
        self, xs_pad: torch.Tensor, ilens: torch.Tensor, prev_states: torch.Tensor = None
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """xs_pad: (B, T, input_size) -> (B, T', output_size), olens (>= 1), None."""
        ilens = ilens.to(xs_pad.device)
        # zeros after each utterance (the one frame of an utterance shorter than min_input_frames sees them)
        xs_pad = xs_pad.masked_fill(make_pad_mask(ilens, maxlen=xs_pad.shape[1]).to(xs_pad.device)[..., None], 0.0)
        if xs_pad.shape[1] < self.min_input_frames:
            xs_pad = F.pad(xs_pad, (0, 0, 0, self.min_input_frames - xs_pad.shape[1]))
        xs, _ = self.embed(xs_pad, None)
        # exact output lengths (ESPnet's subsampled mask can count frames computed from padding), at least 1
        olens = ilens
        for k, st in self._convs:
            olens = (olens - k) // st + 1
        olens = olens.clamp(min=1)
        mask = ~make_pad_mask(olens, maxlen=xs.shape[1]).to(xs.device)  # (B, T') True = valid
        for blk in self.encoders:
            xs = blk(xs, mask)
        xs = self.after_norm(xs)
        return xs, olens, None
