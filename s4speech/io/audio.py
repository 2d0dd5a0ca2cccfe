"""Audio: block-wise reading for transcription (mono, resampled on the fly, checked), whole files and
segments for data preparation, atomic FLAC/WAV writing.


    reader = AudioReader("talk.flac", target_rate=16000)   # opens the header, checks it
    for block in reader.blocks():                           # float32 mono blocks at 16 kHz
        ...
    reader.peak, reader.clipped, reader.samples_out         # filled in while reading

Memory does not grow with the length of the recording: the file is read in
blocks (``soundfile.SoundFile.read(frames)``, or audioread's buffers for the
formats libsndfile cannot open), each block is mixed down to mono and pushed
through a streaming resampler (``soxr.ResampleStream``, a dependency of
librosa), and only that block is held.

Every problem is an :class:`AudioError` whose message is one line naming the
file and the cause: missing path, a directory, an empty file, a header
without samples, a corrupt or truncated file, an unsupported format, NaN/inf
samples, more than 2 channels, silence only, under 0.1 s. Clipping is not an
error: :func:`check_levels` returns a warning for it.
"""
from __future__ import annotations

import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

log = logging.getLogger(__name__)

MIN_DURATION = 0.1  # seconds
MAX_CHANNELS = 2
SILENCE_PEAK = 10 ** (-70 / 20)  # a peak below -70 dBFS (~10 LSB of 16-bit audio) is silence
CLIP_LEVEL = 0.999  # |x| at or above this is at the rail
CLIP_FRACTION = 1e-4  # warn when more than this fraction of the samples (and at least 3) are at the rail
BLOCK_SECONDS = 10.0

# magic numbers of the formats libsndfile reads: a file starting with one of these that
# libsndfile cannot read is corrupt rather than of an unsupported format
_MAGIC = {b"RIFF": "WAV", b"RF64": "WAV", b"RIFX": "WAV", b"fLaC": "FLAC", b"OggS": "OGG",
          b"NIST": "SPHERE", b"FORM": "AIFF", b".snd": "AU", b"caff": "CAF"}


class AudioError(Exception):
    """A recording that cannot be transcribed; ``str()`` is ``"<path>: <cause>"`` on one line."""

    def __init__(self, path, cause: str):
        self.path, self.cause = str(path), " ".join(str(cause).split())
        super().__init__(f"{self.path}: {self.cause}")


@dataclass
class AudioInfo:
    path: str
    sample_rate: int
    channels: int
    frames: int  # per channel; for audioread sources an estimate from the duration
    format: str  # WAV, FLAC, ... or the audioread backend
    backend: str  # "soundfile" or "audioread"

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def _sf_message(e: Exception) -> str:
    """libsndfile's message without its 'Error opening ...:' / 'Error :' wrapping."""
    msg = str(e)
    if msg.startswith("Error opening"):
        msg = msg.split(":", 1)[-1].strip()
    if msg.startswith("Error :"):
        msg = msg[len("Error :"):]
    return " ".join(msg.split()).rstrip(".") or type(e).__name__


def _magic(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(4)
    return _MAGIC.get(head)


def _declared_data_bytes(path: Path, fmt: str | None) -> tuple[int, int] | None:
    """(declared sample bytes, bytes present) from a RIFF WAV or NIST SPHERE header, or None.

    libsndfile silently shortens a truncated WAV/SPHERE to the bytes present; the header tells."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(65536)
    if fmt == "WAV" and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        pos = 12
        while pos + 8 <= len(head):
            cid, n = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
            if cid == b"data":
                if n in (0, 0xFFFFFFFF):  # streaming writers leave the size unset
                    return None
                return n, size - (pos + 8)
            pos += 8 + n + (n & 1)
        return None
    if fmt == "SPHERE" and head.startswith(b"NIST_1A"):
        lines = head.split(b"\n")
        try:
            hdr = int(lines[1])
        except (IndexError, ValueError):
            return None
        fields = {}
        for line in lines[2:]:
            parts = line.split()
            if parts[:1] == [b"end_head"]:
                break
            if len(parts) == 3 and parts[1] == b"-i":
                try:
                    fields[parts[0].decode("ascii", "replace")] = int(parts[2])
                except ValueError:
                    return None
            elif len(parts) == 3 and parts[0] == b"sample_coding" and not parts[2].startswith(b"pcm"):
                return None  # compressed (shorten ...): the size says nothing
        if "sample_count" in fields:
            n = fields["sample_count"] * fields.get("sample_n_bytes", 2) * fields.get("channel_count", 1)
            return n, size - hdr
    return None


def probe(path: str | os.PathLike) -> AudioInfo:
    """Open the header of ``path`` and check everything that can be checked without the samples."""
    p = Path(path)
    if not p.exists():
        raise AudioError(p, "no such file")
    if p.is_dir():
        raise AudioError(p, "is a directory, not an audio file")
    if not os.access(p, os.R_OK):
        raise AudioError(p, "permission denied")
    if p.stat().st_size == 0:
        raise AudioError(p, "empty file (0 bytes)")
    import soundfile as sf

    magic = _magic(p)
    try:
        i = sf.info(str(p))
        info = AudioInfo(str(p), int(i.samplerate), int(i.channels), int(i.frames), i.format, "soundfile")
    except Exception as e:  # noqa: BLE001 - libsndfile's errors have no useful hierarchy
        why = _sf_message(e)
        if magic is not None:
            raise AudioError(p, f"corrupt {magic} file ({why})") from None
        info = _probe_audioread(p, why)
    if info.channels > MAX_CHANNELS:
        raise AudioError(p, f"{info.channels} channels; at most {MAX_CHANNELS} (mono or stereo) are supported")
    if info.sample_rate <= 0:
        raise AudioError(p, f"invalid sample rate {info.sample_rate}")
    if info.frames == 0:
        raise AudioError(p, "no audio samples (header only)")
    declared = _declared_data_bytes(p, magic)
    if declared is not None and declared[1] < declared[0]:
        have, want = declared[1], declared[0]
        raise AudioError(p, f"truncated: the header declares {want} bytes of samples, the file holds {max(have, 0)}"
                            f" ({max(have, 0) / max(want, 1):.0%})")
    if info.duration < MIN_DURATION:
        raise AudioError(p, f"too short: {info.duration * 1000:.0f} ms (under {MIN_DURATION * 1000:.0f} ms)")
    return info


def _probe_audioread(p: Path, sf_error: str) -> AudioInfo:
    try:
        import audioread

        with audioread.audio_open(str(p)) as f:
            sr, ch, dur = int(f.samplerate), int(f.channels), float(f.duration)
            backend = type(f).__name__
    except Exception as e:  # noqa: BLE001 - NoBackendError, DecodeError, EOFError, wave.Error ...
        raise AudioError(p, f"unsupported or unrecognised audio format (soundfile: {sf_error}; "
                            f"audioread: {type(e).__name__}{': ' + str(e) if str(e) else ''})") from None
    return AudioInfo(str(p), sr, ch, int(round(dur * sr)), backend, "audioread")


class AudioReader:
    """Mono float32 blocks of one recording at ``target_rate``; see the module docstring.

    ``blocks()`` can be iterated more than once (each pass re-reads the file). While reading it
    raises AudioError for NaN/inf samples and for data that ends early or cannot be decoded, and
    records ``peak`` (max |x| over the source channels), ``clipped`` (samples at the rail) and
    ``samples_in`` / ``samples_out`` (frames read / mono samples produced)."""

    def __init__(self, path: str | os.PathLike, target_rate: int | None = None, block_seconds: float = BLOCK_SECONDS):
        self.info = probe(path)
        self.path = self.info.path
        self.target_rate = int(target_rate or self.info.sample_rate)
        self.block_frames = max(1024, int(block_seconds * self.info.sample_rate))
        self.peak = 0.0
        self.clipped = 0
        self.samples_in = 0
        self.samples_out = 0

    @property
    def resampling(self) -> bool:
        return self.target_rate != self.info.sample_rate

    @property
    def duration(self) -> float:
        return self.info.duration

    def _source_blocks(self) -> Iterator[np.ndarray]:
        """(frames, channels) float32 blocks at the source rate."""
        if self.info.backend == "soundfile":
            import soundfile as sf

            try:
                f = sf.SoundFile(self.path)
            except Exception as e:  # noqa: BLE001
                raise AudioError(self.path, f"cannot open: {_sf_message(e)}") from None
            with f:
                while True:
                    try:
                        x = f.read(self.block_frames, dtype="float32", always_2d=True)
                    except Exception as e:  # noqa: BLE001
                        at = self.samples_in / self.info.sample_rate
                        raise AudioError(self.path, f"corrupt or truncated data at {at:.2f} s ({_sf_message(e)})") from None
                    if len(x) == 0:
                        return
                    yield x
        else:
            import audioread

            try:
                with audioread.audio_open(self.path) as f:
                    ch = int(f.channels)
                    for buf in f:  # 16-bit little-endian interleaved PCM
                        x = np.frombuffer(buf, dtype="<i2").astype(np.float32) / 32768.0
                        yield x[: len(x) // ch * ch].reshape(-1, ch)
            except AudioError:
                raise
            except Exception as e:  # noqa: BLE001
                at = self.samples_in / self.info.sample_rate
                raise AudioError(self.path, f"cannot decode data at {at:.2f} s ({type(e).__name__}: {e})") from None

    def blocks(self) -> Iterator[np.ndarray]:
        """1-D float32 blocks at ``target_rate``; the concatenation is the whole recording."""
        self.peak, self.clipped, self.samples_in, self.samples_out = 0.0, 0, 0, 0
        rs = None
        if self.resampling:
            import soxr

            rs = soxr.ResampleStream(self.info.sample_rate, self.target_rate, 1, dtype="float32", quality="HQ")
        for x in self._source_blocks():
            if not np.isfinite(x).all():
                bad = int(np.argmax(~np.isfinite(x).all(axis=1)))
                at = (self.samples_in + bad) / self.info.sample_rate
                raise AudioError(self.path, f"NaN or infinite sample values (first at {at:.2f} s)")
            a = np.abs(x)
            self.peak = max(self.peak, float(a.max()))
            self.clipped += int((a >= CLIP_LEVEL).any(axis=1).sum())
            self.samples_in += len(x)
            mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
            mono = np.ascontiguousarray(mono, dtype=np.float32)
            if rs is not None:
                mono = rs.resample_chunk(mono, last=False)
            if len(mono):
                self.samples_out += len(mono)
                yield mono
        if rs is not None:
            tail = rs.resample_chunk(np.zeros(0, np.float32), last=True)
            if len(tail):
                self.samples_out += len(tail)
                yield tail
        if self.info.backend == "soundfile" and self.samples_in < self.info.frames:
            have, want = self.samples_in / self.info.sample_rate, self.info.duration
            raise AudioError(self.path, f"truncated: data ends at {have:.2f} s, the header says {want:.2f} s")
        if self.samples_in / self.info.sample_rate < MIN_DURATION:
            raise AudioError(self.path, f"too short: {self.samples_in / self.info.sample_rate * 1000:.0f} ms "
                                        f"(under {MIN_DURATION * 1000:.0f} ms)")


def check_levels(reader: AudioReader) -> list[str]:
    """After a full pass over ``reader.blocks()``: raise AudioError for silence only; return warnings (clipping)."""
    if reader.peak < SILENCE_PEAK:
        db = 20 * math.log10(reader.peak) if reader.peak > 0 else -math.inf
        raise AudioError(reader.path, f"silence only (peak {db:.0f} dBFS)")
    warnings = []
    n = max(reader.samples_in, 1)
    if reader.clipped >= 3 and reader.clipped / n > CLIP_FRACTION:
        warnings.append(f"{reader.path}: clipped audio ({reader.clipped} samples, {reader.clipped / n:.2%}, "
                        f"at full scale); decoding anyway")
    return warnings


def read(path: str | os.PathLike, target_rate: int | None = None) -> tuple[np.ndarray, int]:
    """The whole recording as mono float32 at ``target_rate`` (for short files), checked like the stream."""
    r = AudioReader(path, target_rate)
    blocks = list(r.blocks())
    check_levels(r)
    return (np.concatenate(blocks) if blocks else np.zeros(0, np.float32)), r.target_rate


# ---- whole files and segments (data preparation) ---------------------------------------------------
AUDIO_FORMATS = {"flac": ("FLAC", "PCM_16"), "wav": ("WAV", "PCM_16")}


def load_segment(spec: str, start: float | None = None, end: float | None = None,
                 dtype: str = "float32") -> tuple[np.ndarray, int]:
    """A wav.scp entry (a path; Kaldi pipes are not supported), optionally only ``start``..``end`` seconds
    of it -> (mono samples, rate). ``dtype`` "int16" keeps 16-bit sources bit-exact."""
    import soundfile as sf

    if spec.rstrip().endswith("|"):
        raise ValueError(f"Kaldi pipe entries are not supported in wav.scp: {spec!r}")
    with sf.SoundFile(spec) as f:
        rate = f.samplerate
        a = 0 if start is None else int(round(start * rate))
        b = f.frames if end is None else min(int(round(end * rate)), f.frames)
        if a >= b:
            raise ValueError(f"{spec}: empty segment {start}-{end} s (the file has {f.frames / rate:.2f} s)")
        f.seek(a)
        x = f.read(b - a, dtype=dtype, always_2d=True)
    if x.shape[1] == 1:
        return x[:, 0], rate
    mono = x.astype(np.float32).mean(axis=1)
    return (np.round(mono).astype(x.dtype) if x.dtype.kind == "i" else mono), rate


def write_audio(path: str | os.PathLike, x: np.ndarray, rate: int, audio_format: str | None = None) -> Path:
    """Write mono samples atomically as 16-bit FLAC or WAV (``audio_format``, default: the path's suffix).
    Float samples beyond [-1, 1] are scaled down, not clipped."""
    import soundfile as sf

    from s4speech.io.files import atomic_output

    fmt = (audio_format or Path(path).suffix.lstrip(".")).lower()
    if fmt not in AUDIO_FORMATS:
        raise ValueError(f"{path}: unknown audio format {fmt!r} (one of {', '.join(AUDIO_FORMATS)})")
    if x.dtype.kind == "f" and x.size:
        peak = float(np.abs(x).max())
        if peak > 1.0:
            x = x / peak * 0.99
    container, subtype = AUDIO_FORMATS[fmt]
    return atomic_output(path, lambda tmp: sf.write(tmp, x, rate, format=container, subtype=subtype))


class SegmentReader:
    """ESPnet loader of a segmented data dir: ``segments`` (utt recording start end) beside ``wav.scp``
    (recording path) -> {utt: (rate, samples)}, each segment read from its recording on access.
    Registered in ESPnet's data types as ``kaldi_segments`` (``<dir>/segments,speech,kaldi_segments``)."""

    def __init__(self, segments: str | os.PathLike, dtype: str = "float32"):
        from s4speech.io.kaldi import read_segments, read_table

        self.path = Path(segments)
        self.segments = read_segments(self.path)
        self.wav = read_table(self.path.parent / "wav.scp")
        self.dtype = dtype

    def __getitem__(self, utt: str) -> tuple[int, np.ndarray]:
        rec, start, end = self.segments[utt]
        x, rate = load_segment(self.wav[rec], start, end, dtype=self.dtype)
        return rate, x

    def __contains__(self, utt) -> bool:
        return utt in self.segments

    def __len__(self) -> int:
        return len(self.segments)

    def __iter__(self):
        return iter(self.segments)

    def keys(self):
        return self.segments.keys()
