"""Transcribe long recordings with an ESPnet ASR model (S4 or any other decoder).

    s4speech transcribe --model exp/asr_asr_ssm talk.flac interview.wav --format srt --out_dir subs

or from Python (the package is callable; ``s4speech.transcribe`` is this package)::

    import s4speech
    results = s4speech.transcribe("exp/asr_asr_ssm", ["talk.flac"], out_dir="subs", formats=["srt"])

How a recording goes through, in bounded memory whatever its length:

1. the header is checked and the file is read once block-wise (``s4speech.io.audio``): samples are
   checked (NaN/inf, clipping, silence only), mixed to mono, resampled to the model's rate and
   reduced to a 10 ms log-energy envelope (400 bytes a second) -- and, with ``vad="ctc"``, to a
   10 ms speech/blank mask from the model's own CTC output on 20 s windows;
2. segmentation (``segment``): a local, adaptive energy threshold (or the CTC mask) marks speech;
   pauses shorter than ``min_silence`` are bridged, blips shorter than 0.1 s dropped, each region
   padded by ``pad`` seconds, and regions longer than ``max_segment`` split at their quietest
   point. ``segment=False`` decodes the whole recording as one utterance (memory then grows with
   its length);
3. the file is read a second time, cutting the segments out of the stream; they are encoded in
   padded batches of ``batch_size`` and the batch's segments are beam-searched together with the
   rules of ESPnet's ``Speech2Text`` (decoder and CTC prefix scores; ``s4speech.asr.search``: each
   segment gets the hypotheses it gets alone, the S4 decoder scoring all of theirs in one call).
   Word times come from a Viterbi CTC alignment of the hypothesis to the segment's encoder output.
   Only one batch of audio and encoder output is held.

Outputs (``<out_dir>/<file stem>.<format>``: txt, srt, vtt, json) are written atomically once a
recording is done, so a failed recording never truncates an earlier output. A bad recording is a
one-line error naming the file and the cause; the others go on.
"""

from __future__ import annotations

import sys
import types

from s4speech.io.expdir import ModelError, model_files
from s4speech.transcribe.alignment import ctc_align, words_from_tokens
from s4speech.transcribe.api import TranscribeOptions, transcribe
from s4speech.transcribe.cli import get_parser, main
from s4speech.transcribe.model import Model
from s4speech.transcribe.results import Segment, Transcript, Word
from s4speech.transcribe.segmentation import energy_mask, find_segments, segment, segment_file
from s4speech.transcribe.writers import FORMATS, output_paths, parse_formats, render

__all__ = ["FORMATS", "Model", "ModelError", "Segment", "TranscribeOptions", "Transcript", "Word", "ctc_align",
           "energy_mask", "find_segments", "get_parser", "main", "model_files", "output_paths", "parse_formats",
           "render", "segment", "segment_file", "transcribe", "words_from_tokens"]


class _CallableModule(types.ModuleType):
    """``s4speech.transcribe(...)`` calls ``transcribe`` although ``s4speech.transcribe`` is this package."""

    def __call__(self, *args, **kwargs):
        return transcribe(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
