"""What the tables compare: our decoder, S4 layer and TTS model against ESPnet's, at the same sizes.

Random weights throughout (the work per call does not depend on the values). torch and ESPnet are
imported on first use (after ``env.setup``)."""
from __future__ import annotations

V = 5000  # LibriSpeech BPE vocabulary
N_STATE = 64  # SSM state size N
BLOCKS = 6  # decoder blocks
BEAM = 8  # hypotheses per search step

NAMES = {"ssm": "ours (ssm)", "s4": "ESPnet s4", "transformer": "ESPnet transformer"}

TTS_SIZE = dict(adim=512, aheads=8, elayers=6, eunits=1024, dlayers=6, dunits=1024, eprenet_conv_layers=0,
                dprenet_layers=2, dprenet_units=256, postnet_layers=5, postnet_chans=256, postnet_filts=5,
                reduction_factor=1)  # conf/ljspeech/tts_{ssm,transformer}.yaml


def heads(d: int) -> int:
    """Attention heads at width d: one per 64 channels."""
    return max(1, d // 64)


def build(kind: str, d: int, dropout: float = 0.0):
    """Decoder "ssm" (ours), "s4" or "transformer" (ESPnet's) at width d, 6 blocks, FF 4d, vocabulary 5000."""
    if kind == "ssm":
        from s4speech.asr.decoder import SSMDecoder

        return SSMDecoder(V, d, attention_heads=heads(d), linear_units=4 * d, num_blocks=BLOCKS,
                          dropout_rate=dropout, d_state=N_STATE, kernel="s4")
    if kind == "s4":  # ESPnet's LibriSpeech S4-decoder layer list
        from espnet2.asr.decoder.s4_decoder import S4Decoder

        layer = [
            {"_name_": "s4", "postact": "glu", "dropout": dropout, "n_ssm": 1, "bidirectional": False,
             "lr": 0.0025, "dt_min": 0.001, "dt_max": 0.1, "measure": "legs", "d_state": N_STATE},
            {"_name_": "mha", "n_head": heads(d), "dropout": dropout},
            {"_name_": "ff", "expand": 4, "activation": "gelu", "dropout": dropout},
        ]
        return S4Decoder(V, d, dropinp=0.0, dropout=dropout, drop_path=0.0, prenorm=True, n_layers=BLOCKS,
                         transposed=False, layer=layer, residual="residual", norm="layer")
    if kind == "transformer":
        from espnet2.asr.decoder.transformer_decoder import TransformerDecoder

        return TransformerDecoder(V, d, attention_heads=heads(d), linear_units=4 * d, num_blocks=BLOCKS,
                                  dropout_rate=dropout, positional_dropout_rate=dropout,
                                  self_attention_dropout_rate=dropout, src_attention_dropout_rate=dropout)
    raise ValueError(kind)


def espnet_s4_setup_step(dec) -> None:
    """What espnet2.bin.asr_inference does before a search with an S4Decoder."""
    for m in dec.modules():
        if hasattr(m, "setup_step"):
            m.setup_step()


def build_layer(kind: str, d: int, dropout: float = 0.1):
    """One causal S4 layer alone (kernel, convolution, D, GELU, Linear + GLU): "ssm-layer" (ours) or "s4-layer"."""
    if kind == "ssm-layer":
        from s4speech.ssm.layer import SSMLayer

        return SSMLayer(d, N_STATE, kernel="s4", dropout=dropout)
    from espnet2.asr.state_spaces.s4 import S4

    return S4(d, d_state=N_STATE, postact="glu", dropout=dropout, n_ssm=1, bidirectional=False, lr=0.0025,
              measure="legs", transposed=False)


def build_kernel(kind: str, H: int):
    """SSM kernel generator over H channels as ``fn(L) -> (..., H, L)``: "ours-s4", "ours-s4d",
    "espnet-nplr" or "espnet-diag" (zoh)."""
    if kind == "ours-s4":
        from s4speech.ssm.kernels import S4Kernel

        return S4Kernel(H, N_STATE, n_ssm=1)
    if kind == "ours-s4d":
        from s4speech.ssm.kernels import S4DKernel

        return S4DKernel(H, N_STATE)
    from espnet2.asr.state_spaces.s4 import SSKernel

    if kind == "espnet-nplr":
        k = SSKernel(H, N=N_STATE, mode="nplr", measure="legs", n_ssm=1)
    elif kind == "espnet-diag":
        k = SSKernel(H, N=N_STATE, mode="diag", measure="diag-lin", disc="zoh")
    else:
        raise ValueError(kind)
    return lambda L: k.kernel(L=L, rate=1.0)


def build_tts(kind: str, idim: int = 60, odim: int = 80):
    """``tts: ssm`` ("ssm") or ESPnet's ``tts: transformer`` at the LJSpeech configs' size."""
    if kind == "ssm":
        from s4speech.tts.model import SSMTTS

        return SSMTTS(idim, odim, embed_dim=0, d_state=N_STATE, kernel="s4", **TTS_SIZE)
    from espnet2.tts.transformer import Transformer

    return Transformer(idim, odim, embed_dim=0, positionwise_layer_type="linear", use_scaled_pos_enc=True,
                       **TTS_SIZE)
