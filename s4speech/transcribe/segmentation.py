"""Segmentation: where the speech of a recording is, in bounded memory whatever its length.

Pass 1 over a recording (``find_segments``) reduces it block-wise to a 10 ms log-energy envelope (400 bytes
a second) and, with a model, to a 10 ms speech/blank mask from the model's CTC output on 20 s windows.
``segment`` turns the mask into segments: pauses shorter than ``min_silence`` are bridged, blips shorter
than 0.1 s dropped, each region padded by ``pad`` seconds and regions longer than ``max_segment`` split at
their quietest point. Pass 2 (``_cut``) cuts the segments out of a second read of the stream.
"""
from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np

from s4speech.io.audio import AudioReader, check_levels
from s4speech.io.expdir import ModelError

if TYPE_CHECKING:
    from s4speech.transcribe.model import Model

log = logging.getLogger("s4speech.transcribe")

FPS = 100  # energy / mask frames per second
CTC_WINDOW, CTC_CONTEXT = 20.0, 2.0  # seconds: CTC VAD windows and the context either side
CTC_SPREAD = 0.1  # seconds: a non-blank CTC frame marks this much either side as speech (spikes are sparse)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def _box(x: np.ndarray, n: int) -> np.ndarray:
    if n <= 1 or len(x) == 0:
        return x
    c = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
    h = n // 2
    i = np.arange(len(x))
    lo, hi = np.maximum(i - h, 0), np.minimum(i + n - h, len(x))
    return (c[hi] - c[lo]) / (hi - lo)


def energy_mask(power: np.ndarray, *, window: float = 60.0, hop: float = 10.0, ratio: float = 0.3,
                min_range: float = 10.0) -> np.ndarray:
    """Speech mask from 10 ms frame powers: a threshold adapted to the level around each 10 s.

    Over the frames within ``window/2`` of a 10 s stretch (digital silence left out) the noise floor
    is the 10th percentile and the speech level the 99th, both in dB; frames louder than
    floor + max(6 dB, ratio * (speech - floor)) are speech. Where speech and floor are less than
    ``min_range`` dB apart (silence, steady noise) nothing is speech."""
    db = 10 * np.log10(_box(power, 3) + 1e-12)
    n, step, half = len(db), int(hop * FPS), int(window * FPS / 2)
    thr = np.full(n, np.inf)
    for c0 in range(0, n, step):
        mid = c0 + step // 2
        w = db[max(0, mid - half): mid + half]
        w = w[w > -90]
        if len(w) < 10:
            continue
        floor, top = np.percentile(w, [10, 99])
        if top - floor >= min_range:
            thr[c0: c0 + step] = floor + max(6.0, ratio * (top - floor))
    return db > thr


def segment(mask: np.ndarray, power: np.ndarray, duration: float, *, max_segment: float = 20.0,
            min_silence: float = 0.3, min_speech: float = 0.1, pad: float = 0.15) -> list[tuple[float, float]]:
    """Speech mask (10 ms frames) -> segments (start, end) in seconds, each at most max_segment long.

    Pauses under ``min_silence`` are bridged, regions under ``min_speech`` dropped, regions padded by
    ``pad`` (never past the middle of the pause to the next one) and regions over ``max_segment``
    split at the quietest 0.2 s in the second half of each ``max_segment`` stretch."""
    runs = _runs(mask)
    merged: list[list[int]] = []
    for s, e in runs:
        if merged and s - merged[-1][1] < min_silence * FPS:
            merged[-1][1] = e
        else:
            merged.append([s, e])
    regions = [(s, e) for s, e in merged if e - s >= min_speech * FPS]
    n, p = len(mask), int(round(pad * FPS))
    padded = []
    for i, (s, e) in enumerate(regions):
        lo = (regions[i - 1][1] + s) // 2 if i else 0
        hi = (e + regions[i + 1][0]) // 2 if i + 1 < len(regions) else n
        padded.append((max(lo, s - p), min(hi, e + p)))
    smooth = _box(power, int(0.2 * FPS))
    m = max(int(max_segment * FPS), 2)
    out = []
    for s, e in padded:
        cur = s
        while e - cur > m:
            lo, hi = cur + m // 2, cur + m
            k = lo + int(np.argmin(smooth[lo:hi]))
            out.append((cur, k))
            cur = k
        out.append((cur, e))
    return [(s / FPS, min(e / FPS, duration)) for s, e in out if min(e / FPS, duration) > s / FPS]


class _Envelope:
    """10 ms frame powers of a stream of blocks; frame k covers samples [round(k*hop), round((k+1)*hop))."""

    def __init__(self, rate: int):
        self.hop = rate / FPS
        self.frames: list[np.ndarray] = []
        self.rest, self.rest_start, self.k = np.zeros(0, np.float32), 0, 0

    def push(self, x: np.ndarray) -> None:
        self.rest = np.concatenate([self.rest, x])
        end = self.rest_start + len(self.rest)
        k_end = int(end / self.hop)
        while k_end > self.k and round(k_end * self.hop) > end:
            k_end -= 1
        while round((k_end + 1) * self.hop) <= end:
            k_end += 1
        if k_end <= self.k:
            return
        edges = np.round(np.arange(self.k, k_end + 1) * self.hop).astype(np.int64) - self.rest_start
        sq = np.concatenate([[0.0], np.cumsum(self.rest[: edges[-1]].astype(np.float64) ** 2)])
        self.frames.append(((sq[edges[1:]] - sq[edges[:-1]]) / np.maximum(np.diff(edges), 1)).astype(np.float32))
        self.rest, self.rest_start, self.k = self.rest[edges[-1]:], self.rest_start + int(edges[-1]), k_end

    def power(self) -> np.ndarray:
        tail = [np.array([np.mean(self.rest.astype(np.float64) ** 2)], np.float32)] if len(self.rest) else []
        return np.concatenate(self.frames + tail) if self.frames or tail else np.zeros(0, np.float32)


class _CTCMask:
    """Speech/blank per 10 ms frame from the model's CTC output on overlapping windows."""

    def __init__(self, model: Model):
        self.model, self.rate = model, model.sample_rate
        self.win, self.ctx = int(CTC_WINDOW * self.rate), int(CTC_CONTEXT * self.rate)
        self.buf, self.buf_start, self.pos = np.zeros(0, np.float32), 0, 0  # pos: next body start
        self.mask: list[np.ndarray] = []
        if getattr(model.asr, "ctc", None) is None:
            raise ModelError(f"model {model.name} has no CTC module: --vad ctc is not possible")

    def push(self, x: np.ndarray, last: bool = False) -> None:
        self.buf = np.concatenate([self.buf, x])
        while self.buf_start + len(self.buf) >= self.pos + self.win + self.ctx or (last and self.pos < self.buf_start + len(self.buf)):
            self._window()

    def _window(self) -> None:
        import torch

        end_all = self.buf_start + len(self.buf)
        a, b = max(self.pos - self.ctx, self.buf_start), min(self.pos + self.win + self.ctx, end_all)
        x = self.model.padded(self.buf[a - self.buf_start: b - self.buf_start])
        with torch.no_grad():
            enc, olens = self.model.encode([x])
            logp = self.model.ctc_logp(enc[0, : int(olens[0])])
        speech = np.exp(logp[:, self.model.blank_id]) < 0.5
        shift = len(x) / len(logp) / self.rate  # seconds per encoder frame
        body_end = min(self.pos + self.win, end_all)
        n10 = int(round((body_end - self.pos) / self.rate * FPS))
        m = np.zeros(n10, bool)
        t0 = (self.pos - a) / self.rate  # body start, seconds into the window
        for j in np.flatnonzero(speech):
            s, e = (j * shift - t0 - CTC_SPREAD) * FPS, ((j + 1) * shift - t0 + CTC_SPREAD) * FPS
            if e > 0 and s < n10:
                m[max(0, int(s)): min(n10, int(math.ceil(e)))] = True
        self.mask.append(m)
        self.pos = body_end
        keep = max(self.pos - self.ctx, self.buf_start)
        self.buf, self.buf_start = self.buf[keep - self.buf_start:], keep

    def result(self, n: int) -> np.ndarray:
        m = np.concatenate(self.mask) if self.mask else np.zeros(0, bool)
        return np.pad(m, (0, max(0, n - len(m))))[:n]


def _cut(blocks: Iterable[np.ndarray], spans: Sequence[tuple[int, int]]) -> Iterator[tuple[int, np.ndarray]]:
    """Cut sample spans (sorted by start) out of a stream of blocks, holding at most a span and a block.

    The stream is always read to its end (the reader checks the whole file)."""
    buf, start, i = np.zeros(0, np.float32), 0, 0
    for x in blocks:
        buf = np.concatenate([buf, x]) if len(buf) else x
        while i < len(spans) and start + len(buf) >= spans[i][1]:
            a, b = spans[i]
            yield i, buf[max(0, a - start): b - start].copy()
            i += 1
        keep_from = spans[i][0] if i < len(spans) else start + len(buf)
        drop = min(max(0, keep_from - start), len(buf))
        buf, start = buf[drop:], start + drop
    while i < len(spans):  # the stream ended before the span did (rounding): what there is
        a, b = spans[i]
        yield i, buf[max(0, a - start): max(0, b - start)].copy()
        i += 1


def find_segments(reader: AudioReader, ctc_model: Model | None = None, *, segment_audio: bool = True,
                  max_segment: float = 20.0, min_silence: float = 0.3) -> tuple[list[tuple[float, float]], list[str]]:
    """Pass 1 over a recording: check it, find its segments (seconds). Returns (segments, warnings).

    Energy segmentation without ``ctc_model``, the model's CTC blanks with it; ``segment_audio=False``
    gives the whole recording as one segment (after the same checks)."""
    rate = reader.target_rate
    env = _Envelope(rate)
    ctcm = _CTCMask(ctc_model) if segment_audio and ctc_model is not None else None
    for x in reader.blocks():
        env.push(x)
        if ctcm is not None:
            ctcm.push(x)
    if ctcm is not None:
        ctcm.push(np.zeros(0, np.float32), last=True)
    warnings = check_levels(reader)
    for w in warnings:
        log.warning("%s", w)
    duration = reader.samples_out / rate
    if not segment_audio:
        if duration > 60:
            log.warning("%s: decoding %.0f s as one utterance (--no_segment): memory grows with the length",
                        reader.path, duration)
        return [(0.0, duration)], warnings
    power = env.power()
    mask = ctcm.result(len(power)) if ctcm is not None else energy_mask(power)
    segs = segment(mask, power, duration, max_segment=max_segment, min_silence=min_silence)
    if not segs:
        warnings.append(f"{reader.path}: no speech found")
        log.warning("%s: no speech found", reader.path)
    return segs, warnings


def segment_file(path: str | os.PathLike, sample_rate: int = 16000, **kw) -> list[tuple[float, float]]:
    """Energy segmentation of one file (no model): [(start, end)] in seconds; options as find_segments."""
    return find_segments(AudioReader(path, sample_rate), None, **kw)[0]
