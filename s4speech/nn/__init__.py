"""Layers and blocks shared by the ASR and TTS models (``layers``: feed-forward, cross-attention,
few-row linears, strict loading; ``blocks``: the decoder and encoder blocks)."""
from s4speech.nn.layers import ACTIVATIONS, CrossAttention, FeedForward, MemoryRows, StrictLoadMixin, rows_linear

__all__ = ["ACTIVATIONS", "CrossAttention", "FeedForward", "MemoryRows", "StrictLoadMixin", "rows_linear"]
