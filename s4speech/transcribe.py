"""Transcribe long recordings with an ESPnet ASR model (S4 or any other decoder).

    s4speech transcribe --model exp/asr_asr_ssm talk.flac interview.wav --format srt --out_dir subs

or from Python (the module is callable; ``s4speech.transcribe`` is this module)::

    import s4speech
    results = s4speech.transcribe("exp/asr_asr_ssm", ["talk.flac"], out_dir="subs", formats=["srt"])

How a recording goes through, in bounded memory whatever its length:

1. the header is checked and the file is read once block-wise (``s4speech.audio``): samples are
   checked (NaN/inf, clipping, silence only), mixed to mono, resampled to the model's rate and
   reduced to a 10 ms log-energy envelope (400 bytes a second) -- and, with ``vad="ctc"``, to a
   10 ms speech/blank mask from the model's own CTC output on 20 s windows;
2. segmentation (``segment``): a local, adaptive energy threshold (or the CTC mask) marks speech;
   pauses shorter than ``min_silence`` are bridged, blips shorter than 0.1 s dropped, each region
   padded by ``pad`` seconds, and regions longer than ``max_segment`` split at their quietest
   point. ``segment=False`` decodes the whole recording as one utterance (memory then grows with
   its length);
3. the file is read a second time, cutting the segments out of the stream; they are encoded in
   padded batches of ``batch_size`` and each is beam-searched with ESPnet's ``Speech2Text``
   (decoder and CTC prefix scores). Word times come from a Viterbi CTC alignment of the
   hypothesis to the segment's encoder output. Only one batch of audio and encoder output is held.

Outputs (``<out_dir>/<file stem>.<format>``: txt, srt, vtt, json) are written atomically once a
recording is done, so a failed recording never truncates an earlier output. A bad recording is a
one-line error naming the file and the cause; the others go on.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from s4speech.io.audio import AudioError, AudioReader, check_levels, probe
from s4speech.io.files import atomic_write

log = logging.getLogger("s4speech.transcribe")

FORMATS = ("txt", "srt", "vtt", "json")
MODEL_FILES = ("valid.acc.ave.pth", "valid.acc.best.pth", "latest.pth")
FPS = 100  # energy / mask frames per second
MIN_DECODE_SECONDS = 0.3  # shorter segments are padded with zeros (convolutional subsampling needs frames)
CTC_WINDOW, CTC_CONTEXT = 20.0, 2.0  # seconds: CTC VAD windows and the context either side
CTC_SPREAD = 0.1  # seconds: a non-blank CTC frame marks this much either side as speech (spikes are sparse)


# ---- results -------------------------------------------------------------------------------------
@dataclass
class Word:
    word: str
    start: float
    end: float


@dataclass
class Segment:
    start: float
    end: float
    text: str = ""
    words: list[Word] = field(default_factory=list)


@dataclass
class Transcript:
    path: str
    text: str = ""
    segments: list[Segment] = field(default_factory=list)
    duration: float = 0.0
    sample_rate: int = 0  # of the file; the model's rate is Model.sample_rate
    error: str | None = None  # one line, "<path>: <cause>", when the recording failed
    skipped: bool = False  # --resume found its outputs
    warnings: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


class ModelError(RuntimeError):
    pass


# ---- the model -----------------------------------------------------------------------------------
def _rate(value, default: int = 16000) -> int:
    if value is None:
        return default
    s = str(value).strip().lower()
    return int(float(s[:-1]) * 1000) if s.endswith("k") else int(float(s))


def _fix_paths(value, bases: Sequence[Path]):
    """Relative paths in an ESPnet config (written relative to the recipe dir) made absolute."""
    if isinstance(value, dict):
        return {k: _fix_paths(v, bases) for k, v in value.items()}
    if isinstance(value, list):
        return [_fix_paths(v, bases) for v in value]
    if isinstance(value, str) and value and not os.path.isabs(value) and ("/" in value or "." in value) \
            and "\n" not in value and len(value) < 4096 and not Path(value).exists():
        for b in bases:
            if (b / value).exists():
                return str((b / value).resolve())
    return value


def _unpack(zip_path: Path) -> dict[str, str]:
    """A packed model (espnet2.main_funcs.pack_funcs) unpacked once into a cache directory."""
    from espnet2.main_funcs.pack_funcs import unpack

    st = zip_path.stat()
    key = hashlib.sha1(f"{zip_path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "s4speech" / "models"
    out = cache / f"{zip_path.stem}-{key}"
    if not (out / ".complete").exists():  # unpack in place (the config gets absolute paths into it)
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        try:
            unpack(zip_path, out, use_cache=False)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        (out / ".complete").write_text("")
    files = {}
    import yaml

    meta = yaml.safe_load((out / "meta.yaml").read_text())
    for k, v in list(meta.get("yaml_files", {}).items()) + list(meta.get("files", {}).items()):
        files[k] = str(out / v)
    return files


def model_files(model: str | os.PathLike) -> tuple[Path, Path]:
    """(config.yaml, model .pth) of an experiment dir or a packed model zip."""
    p = Path(model)
    if not p.exists():
        raise ModelError(f"model {p}: no such file or directory")
    if p.is_dir():
        cfg = p / "config.yaml"
        if not cfg.exists():
            raise ModelError(f"model {p}: no config.yaml (an ESPnet experiment dir or a packed .zip is expected)")
        for name in MODEL_FILES:
            if (p / name).exists():
                return cfg, p / name
        raise ModelError(f"model {p}: none of {', '.join(MODEL_FILES)}")
    import zipfile
    import tarfile

    if not (zipfile.is_zipfile(p) or tarfile.is_tarfile(p)):
        raise ModelError(f"model {p}: neither a directory nor a packed model archive (.zip)")
    try:
        files = _unpack(p)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"model {p}: cannot unpack ({type(e).__name__}: {e})") from None
    if "asr_train_config" not in files or "asr_model_file" not in files:
        raise ModelError(f"model {p}: the archive has no asr_train_config / asr_model_file")
    return Path(files["asr_train_config"]), Path(files["asr_model_file"])


def _speech2text_class():
    """ESPnet's Speech2Text, imported with the ssm components registered. What ESPnet's imports print
    (flash-attn notices, nltk download failures of its g2p modules) goes to the debug log, not the terminal."""
    import contextlib
    import io

    import s4speech  # noqa: F401 - registers the ssm components

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        from espnet2.bin.asr_inference import Speech2Text
    if buf.getvalue().strip():
        log.debug("importing ESPnet printed:\n%s", buf.getvalue())
    return Speech2Text


class Model:
    """A loaded ASR model: ESPnet's Speech2Text plus what transcription needs to know about it."""

    def __init__(self, s2t, name: str = "model"):
        self.s2t = s2t
        self.name = name
        self.asr = s2t.asr_model
        args = s2t.asr_train_args
        self.sample_rate = _rate((getattr(args, "frontend_conf", None) or {}).get("fs"), 16000)
        self.token_type = getattr(args, "token_type", None)
        self.device = s2t.device

    @classmethod
    def load(cls, model: str | os.PathLike, *, device: str = "cpu", beam_size: int = 4,
             ctc_weight: float = 0.3) -> "Model":
        if isinstance(model, Model):
            return model
        if model.__class__.__name__ == "Speech2Text":
            return cls(model, name=type(model).__name__)
        cfg, pth = model_files(model)
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ModelError("--device cuda: no CUDA device is available")
        import yaml

        Speech2Text = _speech2text_class()

        conf = yaml.safe_load(cfg.read_text(encoding="utf-8"))
        bases = [cfg.parent, *list(cfg.parent.parents)[:3]]
        with tempfile.TemporaryDirectory(prefix="s4speech-model-") as tmp:
            fixed = Path(tmp) / "config.yaml"
            fixed.write_text(yaml.safe_dump(_fix_paths(conf, bases)), encoding="utf-8")
            try:
                s2t = Speech2Text(asr_train_config=str(fixed), asr_model_file=str(pth), device=device,
                                  beam_size=beam_size, ctc_weight=ctc_weight, lm_weight=0.0, nbest=1,
                                  batch_size=1, maxlenratio=0.0, minlenratio=0.0)
            except Exception as e:  # noqa: BLE001
                raise ModelError(f"model {model}: cannot load ({type(e).__name__}: "
                                 f"{' '.join(str(e).split())[:300]})") from None
        return cls(s2t, name=str(model))

    # -- encoder, CTC, beam search
    def encode(self, waves: Sequence[np.ndarray]):
        """Padded batch encode -> (encoder output (B, T, D), output lengths (B,))."""
        import torch

        lens = torch.tensor([len(w) for w in waves], dtype=torch.long)
        x = torch.zeros(len(waves), int(lens.max()), dtype=torch.float32)
        for i, w in enumerate(waves):
            x[i, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
        enc, olens = self.asr.encode(x.to(self.device), lens.to(self.device))
        if isinstance(enc, tuple):  # intermediate CTC outputs
            enc = enc[0]
        return enc, olens

    def ctc_logp(self, enc) -> np.ndarray | None:
        """(T, D) encoder output -> (T, V) CTC log-probabilities, or None without CTC."""
        ctc = getattr(self.asr, "ctc", None)
        if ctc is None:
            return None
        return ctc.log_softmax(enc[None])[0].float().cpu().numpy()

    def beam_search(self, enc) -> tuple[str, list[int]]:
        """(T, D) encoder output -> (text, token ids) of the best hypothesis."""
        res = self.s2t._decode_single_sample(enc)  # ESPnet's own: beam search + token/text conversion
        if not res:
            return "", []
        text, _tokens, token_int, _hyp = res[0]
        return (text or "").strip(), list(token_int)


_MALLOC_TRIM = None


def _release_memory() -> None:
    """Give freed heap back to the OS (glibc's malloc_trim). Without it the resident size of a long run
    settles ~400 MB higher on the demo model: freed tensors of the largest batches stay mapped."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


# ---- segmentation ----------------------------------------------------------------------------------
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
        x = self.buf[a - self.buf_start: b - self.buf_start]
        if len(x) < MIN_DECODE_SECONDS * self.rate:
            x = np.concatenate([x, np.zeros(int(MIN_DECODE_SECONDS * self.rate) - len(x), np.float32)])
        with torch.no_grad():
            enc, olens = self.model.encode([x])
            logp = self.model.ctc_logp(enc[0, : int(olens[0])])
        blank = getattr(self.model.asr, "blank_id", 0)
        speech = np.exp(logp[:, blank]) < 0.5
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


# ---- CTC alignment -> word times ------------------------------------------------------------------
def ctc_align(logp: np.ndarray, tokens: Sequence[int], blank: int = 0) -> list[tuple[int, int]] | None:
    """Viterbi CTC alignment: (start, end) frames of each token, or None if it cannot fit in T frames."""
    T, L = len(logp), len(tokens)
    if L == 0:
        return []
    ext = np.full(2 * L + 1, blank, dtype=np.int64)
    ext[1::2] = tokens
    S = len(ext)
    need = L + sum(1 for a, b in zip(tokens, tokens[1:]) if a == b)
    if T < need:
        return None
    skip = np.zeros(S, bool)
    skip[2:] = (ext[2:] != blank) & (ext[2:] != ext[:-2])
    neg = -1e30
    dp = np.full(S, neg)
    dp[0], dp[1] = logp[0, blank], logp[0, ext[1]]
    back = np.zeros((T, S), np.int8)
    for t in range(1, T):
        c1 = np.concatenate([[neg], dp[:-1]])
        c2 = np.where(skip, np.concatenate([[neg, neg], dp[:-2]]), neg)
        stack = np.stack([dp, c1, c2])
        k = np.argmax(stack, axis=0)
        dp = stack[k, np.arange(S)] + logp[t, ext]
        back[t] = k
    s = S - 1 if dp[S - 1] >= dp[S - 2] else S - 2
    if dp[s] <= neg / 2:
        return None
    states = np.empty(T, np.int64)
    for t in range(T - 1, -1, -1):
        states[t] = s
        s -= int(back[t, s])
    spans = []
    for k in range(L):
        fr = np.flatnonzero(states == 2 * k + 1)
        spans.append((int(fr[0]), int(fr[-1]) + 1))
    return spans


def words_from_tokens(tokens: Sequence[str], spans: Sequence[tuple[int, int]], token_type: str | None,
                      t0: float, shift: float) -> list[Word]:
    words: list[Word] = []
    cur: list[tuple[str, int, int]] = []

    def flush():
        text = "".join(t for t, _, _ in cur).replace("\u2581", "")
        if text:
            words.append(Word(text, round(t0 + cur[0][1] * shift, 3), round(t0 + cur[-1][2] * shift, 3)))
        cur.clear()

    for tok, (s, e) in zip(tokens, spans):
        if token_type == "word":
            cur.append((tok, s, e))
            flush()
        elif tok == "<space>":
            flush()
        else:
            if tok.startswith("\u2581"):
                flush()
            cur.append((tok, s, e))
    flush()
    return words


# ---- output formats -------------------------------------------------------------------------------
def _stamp(t: float, sep: str) -> str:
    ms = int(round(max(t, 0.0) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def render(tr: Transcript, fmt: str, model_name: str = "", vad: str = "") -> str:
    cues = [s for s in tr.segments if s.text]
    if fmt == "txt":
        return "".join(s.text + "\n" for s in cues)
    if fmt == "srt":
        return "\n".join(f"{i}\n{_stamp(s.start, ',')} --> {_stamp(s.end, ',')}\n{s.text}\n"
                         for i, s in enumerate(cues, 1))
    if fmt == "vtt":
        return "WEBVTT\n\n" + "\n".join(f"{_stamp(s.start, '.')} --> {_stamp(s.end, '.')}\n{s.text}\n" for s in cues)
    if fmt == "json":
        doc = {"audio": tr.path, "duration": round(tr.duration, 3), "sample_rate": tr.sample_rate,
               "model": model_name, "segmentation": vad, "text": tr.text,
               "segments": [{"id": i, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text,
                             "words": [asdict(w) for w in s.words]} for i, s in enumerate(tr.segments)]}
        return json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
    raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")


def parse_formats(spec: str | Sequence[str]) -> list[str]:
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for f in (x.strip().lower() for x in items):
        for g in (FORMATS if f == "all" else [f]):
            if g not in FORMATS:
                raise ValueError(f"unknown format {g!r} (txt, srt, vtt, json or all)")
            if g not in out:
                out.append(g)
    return out


def output_paths(path: str | os.PathLike, out_dir: str | os.PathLike, formats: Sequence[str]) -> list[Path]:
    return [Path(out_dir) / f"{Path(path).stem}.{f}" for f in formats]


# ---- one recording ------------------------------------------------------------------------------------
def _one_line(e: BaseException, path: str) -> str:
    if isinstance(e, AudioError):
        return str(e)
    msg = " ".join(str(e).split()) or type(e).__name__
    return f"{path}: {type(e).__name__}: {msg[:400]}"


def _transcribe_one(model: Model, path: str, *, batch_size: int, max_segment: float, segment_audio: bool,
                    vad: str, min_silence: float, word_times: bool, bar) -> Transcript:
    import torch

    reader = AudioReader(path, model.sample_rate)
    tr = Transcript(path=str(path), duration=reader.duration, sample_rate=reader.info.sample_rate)
    if reader.resampling:
        log.info("%s: resampling %d Hz -> %d Hz (the model's rate)", path, reader.info.sample_rate, model.sample_rate)
    if reader.info.channels > 1:
        log.info("%s: %d channels mixed down to mono", path, reader.info.channels)
    segs, warnings = find_segments(reader, model if vad == "ctc" else None, segment_audio=segment_audio,
                                   max_segment=max_segment, min_silence=min_silence)
    tr.warnings += warnings
    total = reader.samples_out
    tr.duration = total / model.sample_rate
    tr.segments = [Segment(s, e) for s, e in segs]
    spans = [(int(round(s * model.sample_rate)), min(total, int(round(e * model.sample_rate)))) for s, e in segs]
    # pass 2: cut the segments out of the stream, decode in batches
    done_until = 0.0
    batch: list[tuple[int, np.ndarray]] = []

    def flush():
        nonlocal done_until
        order = sorted(batch, key=lambda b: -len(b[1]))  # similar lengths together: less padding
        min_len = int(MIN_DECODE_SECONDS * model.sample_rate)
        waves = [w if len(w) >= min_len else np.pad(w, (0, min_len - len(w))) for _, w in order]
        with torch.no_grad():
            enc, olens = model.encode(waves)
            for j, (i, w) in enumerate(order):
                e = enc[j, : int(olens[j])]
                text, ids = model.beam_search(e)
                seg = tr.segments[i]
                seg.text = text
                if word_times and ids:
                    logp = model.ctc_logp(e)
                    spans_ = ctc_align(logp, ids, getattr(model.asr, "blank_id", 0)) if logp is not None else None
                    if spans_ is not None:
                        shift = len(waves[j]) / model.sample_rate / len(logp)
                        toks = model.s2t.converter.ids2tokens(ids)
                        seg.words = words_from_tokens(toks, spans_, model.token_type, seg.start, shift)
                        for wd in seg.words:
                            wd.end = min(wd.end, seg.end)
        end = max(tr.segments[i].end for i, _ in batch)
        if bar is not None and end > done_until:
            bar.update(end - done_until)
        done_until = max(done_until, end)
        batch.clear()
        del enc, olens, waves, order
        _release_memory()

    for i, w in _cut(reader.blocks(), spans):
        batch.append((i, w))
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    if bar is not None and tr.duration > done_until:
        bar.update(tr.duration - done_until)
    tr.text = " ".join(s.text for s in tr.segments if s.text)
    return tr


# ---- API -------------------------------------------------------------------------------------------
def transcribe(model, paths: str | os.PathLike | Sequence[str | os.PathLike], *, out_dir: str | os.PathLike | None = None,
               formats: str | Sequence[str] = ("txt",), device: str = "cpu", batch_size: int = 8,
               beam_size: int = 4, ctc_weight: float = 0.3, max_segment: float = 20.0, segment: bool = True,
               vad: str = "energy", min_silence: float = 0.3, word_times: bool = True, resume: bool = False,
               progress: bool | None = None, threads: int | None = None) -> list[Transcript]:
    """Transcribe recordings; returns one Transcript per distinct path, in order.

    model: an ESPnet experiment dir (config.yaml + valid.acc.ave.pth / valid.acc.best.pth / latest.pth),
        a packed model .zip, a ``Model`` or a ``Speech2Text`` (then device/beam_size/ctc_weight are its own).
    out_dir: where ``<stem>.<format>`` files are written (atomically); None writes nothing.
    formats: any of txt, srt, vtt, json ("all", or a comma-separated string, also accepted).
    segment=False: each recording is one utterance. vad: "energy" (default) or "ctc".
    resume: skip recordings whose outputs all exist already.
    threads: torch CPU threads for this call (None: as set). On a busy machine 1 is often much faster.
    A recording that fails has ``error`` set (one line naming the file and the cause); the others go on.
    Raises ModelError if the model cannot be loaded and ValueError for bad options."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    formats = parse_formats(formats)
    if vad not in ("energy", "ctc"):
        raise ValueError(f"vad must be 'energy' or 'ctc', not {vad!r}")
    if batch_size < 1 or max_segment <= 1.0 or min_silence <= 0:
        raise ValueError("batch_size must be >= 1, max_segment > 1 s and min_silence > 0")
    import torch

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _transcribe_all(model, paths, out_dir, formats, device, batch_size, beam_size, ctc_weight,
                               max_segment, segment, vad, min_silence, word_times, resume, progress)
    finally:
        torch.set_num_threads(old_threads)


def _transcribe_all(model, paths, out_dir, formats, device, batch_size, beam_size, ctc_weight, max_segment,
                    segment, vad, min_silence, word_times, resume, progress) -> list[Transcript]:
    m = Model.load(model, device=device, beam_size=beam_size, ctc_weight=ctc_weight)
    results: list[Transcript] = []
    seen: dict[str, str] = {}  # output stem -> input path
    todo: list[tuple[Transcript, list[Path]]] = []
    for p in paths:
        p = str(p)
        outs = output_paths(p, out_dir, formats) if out_dir is not None else []
        tr = Transcript(path=p)
        key = str(Path(p).resolve()) if os.path.exists(p) else p
        stem = Path(p).stem
        if key in seen.values():
            continue  # the same file twice
        if out_dir is not None and stem in seen:
            tr.error = f"{p}: output name {stem}.* clashes with {seen[stem]}; transcribe it in a separate run"
        elif out_dir is not None:
            seen[stem] = key
        if tr.error is None and resume and outs and all(o.exists() for o in outs):
            tr.skipped, tr.outputs = True, [str(o) for o in outs]
            log.info("%s: skipped, its output exists (%s)", p, ", ".join(map(str, outs)))
        results.append(tr)
        if tr.error is None and not tr.skipped:
            todo.append((tr, outs))
    durations = []
    for tr, _ in todo:
        try:
            durations.append(probe(tr.path).duration)
        except AudioError:
            durations.append(0.0)
    from tqdm import tqdm

    bar = tqdm(total=sum(durations), unit="s", desc="audio", disable=None if progress is None else not progress,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}, {rate_fmt}]")
    try:
        for (tr, outs), dur in zip(todo, durations):
            start_n = bar.n
            t0 = time.perf_counter()
            try:
                done = _transcribe_one(m, tr.path, batch_size=batch_size, max_segment=max_segment,
                                       segment_audio=segment, vad=vad, min_silence=min_silence,
                                       word_times=word_times, bar=bar)
                for o in outs:
                    atomic_write(o, render(done, o.suffix[1:], m.name, vad if segment else "none"))
                done.outputs = [str(o) for o in outs]
                tr.__dict__.update(done.__dict__)
                log.info("%s: %.1f s of audio in %.1f s", tr.path, tr.duration, time.perf_counter() - t0)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # noqa: BLE001 - one bad recording never stops the others
                log.debug("%s failed", tr.path, exc_info=True)
                tr.error = _one_line(e, tr.path)
            left = dur - (bar.n - start_n)
            if left > 0:
                bar.update(left)
    finally:
        bar.close()
    return results


# ---- CLI ---------------------------------------------------------------------------------------------
def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s4speech transcribe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("audio", nargs="+", help="recordings (WAV, FLAC, OGG, SPHERE, MP3 ...)")
    p.add_argument("--model", required=True, help="ESPnet experiment dir or packed model .zip")
    p.add_argument("--out_dir", default=".", help="where <stem>.<format> is written (default: .)")
    p.add_argument("--format", default="txt", help="txt, srt, vtt, json, all, or a comma-separated list")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch_size", type=int, default=8, help="segments encoded together")
    p.add_argument("--beam_size", type=int, default=4)
    p.add_argument("--ctc_weight", type=float, default=0.3)
    p.add_argument("--max_segment", type=float, default=20.0, help="longest segment, seconds")
    p.add_argument("--min_silence", type=float, default=0.3, help="shortest pause that splits, seconds")
    p.add_argument("--vad", default="energy", choices=["energy", "ctc"],
                   help="find pauses by an adaptive energy threshold or by the model's CTC blanks")
    p.add_argument("--no_segment", action="store_true", help="decode each recording as one utterance")
    p.add_argument("--no_word_times", action="store_true", help="skip the CTC alignment for word times")
    p.add_argument("--resume", action="store_true", help="skip recordings whose outputs exist")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or info messages")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    # our own messages go to stderr as "info: ..." / "warning: ...", whatever the root logger does
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname_lower)s: %(message)s"))
    handler.addFilter(_lower_level)
    pkg = logging.getLogger("s4speech")
    saved = pkg.level, pkg.propagate
    pkg.addHandler(handler)
    pkg.setLevel(logging.WARNING if args.quiet else logging.INFO)
    pkg.propagate = False
    try:
        return _main(args)
    finally:
        pkg.removeHandler(handler)
        pkg.setLevel(saved[0])
        pkg.propagate = saved[1]


def _lower_level(record) -> bool:
    record.levelname_lower = record.levelname.lower()
    return True


def _main(args) -> int:
    try:
        formats = parse_formats(args.format)
    except ValueError as e:
        print(f"error: --format: {e}", file=sys.stderr)
        return 2
    try:
        results = transcribe(args.model, args.audio, out_dir=args.out_dir, formats=formats, device=args.device,
                             batch_size=args.batch_size, beam_size=args.beam_size, ctc_weight=args.ctc_weight,
                             max_segment=args.max_segment, segment=not args.no_segment, vad=args.vad,
                             min_silence=args.min_silence, word_times=not args.no_word_times,
                             resume=args.resume, progress=False if args.quiet else None, threads=args.threads)
    except (ModelError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"error: {r.error}", file=sys.stderr)
    n_ok = sum(1 for r in results if r.ok and not r.skipped)
    n_skip = sum(1 for r in results if r.skipped)
    if not args.quiet:
        print(f"transcribed {n_ok}, skipped {n_skip}, failed {len(failed)} -> {args.out_dir}", file=sys.stderr)
    return 1 if failed else 0


class _CallableModule(types.ModuleType):
    """``s4speech.transcribe(...)`` calls ``transcribe`` although ``s4speech.transcribe`` is this module."""

    def __call__(self, *args, **kwargs):
        return transcribe(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
