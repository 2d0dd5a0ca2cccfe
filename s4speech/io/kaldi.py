"""Kaldi-style data directories (wav.scp, text, utt2spk, spk2utt[, segments]).

Everything is written atomically (temp file + rename), sorted by utterance id,
and checked: a duplicate utterance id or an empty transcript is an error
naming the directory and the utterance.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from s4speech.io.files import atomic_write


@dataclass
class Utterance:
    utt_id: str
    speaker: str
    audio: str  # path (or a Kaldi pipe command)
    text: str
    start: float | None = None  # seconds into `audio` (segments file) when set
    end: float | None = None


def write_kaldi_dir(data_dir: str | Path, utts: Iterable[Utterance]) -> int:
    """Write a Kaldi data dir; returns the number of utterances. Utterance ids must start with the speaker id."""
    data_dir = Path(data_dir)
    by_id: dict[str, Utterance] = {}
    for u in utts:
        if u.utt_id in by_id:
            raise ValueError(f"{data_dir}: duplicate utterance id {u.utt_id!r}")
        if not u.text.strip():
            raise ValueError(f"{data_dir}: empty transcript for {u.utt_id!r}")
        if any(c.isspace() for c in u.utt_id) or any(c.isspace() for c in u.speaker):
            raise ValueError(f"{data_dir}: whitespace in utterance/speaker id {u.utt_id!r}")
        by_id[u.utt_id] = u
    if not by_id:
        raise ValueError(f"{data_dir}: no utterances")
    ids = sorted(by_id)
    segmented = any(by_id[i].start is not None for i in ids)
    text = "".join(f"{i} {' '.join(by_id[i].text.split())}\n" for i in ids)
    utt2spk = "".join(f"{i} {by_id[i].speaker}\n" for i in ids)
    spk2utt: dict[str, list[str]] = {}
    for i in ids:
        spk2utt.setdefault(by_id[i].speaker, []).append(i)
    if segmented:
        recs = {}
        segs = []
        for i in ids:
            u = by_id[i]
            rec = recs.setdefault(u.audio, f"{u.speaker}-rec{len(recs):04d}")
            segs.append(f"{i} {rec} {u.start:.3f} {u.end:.3f}\n")
        wav_scp = "".join(f"{r} {a}\n" for a, r in sorted(recs.items(), key=lambda kv: kv[1]))
        atomic_write(data_dir / "segments", "".join(segs))
    else:
        wav_scp = "".join(f"{i} {by_id[i].audio}\n" for i in ids)
    atomic_write(data_dir / "wav.scp", wav_scp)
    atomic_write(data_dir / "text", text)
    atomic_write(data_dir / "utt2spk", utt2spk)
    atomic_write(data_dir / "spk2utt", "".join(f"{s} {' '.join(u)}\n" for s, u in sorted(spk2utt.items())))
    return len(ids)


def read_table(path: str | Path) -> dict[str, str]:
    """`key value...` lines -> {key: value}."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            key, _, value = line.partition(" ")
            if key in out:
                raise ValueError(f"{path}:{n}: duplicate key {key!r}")
            out[key] = value.strip()
    return out


def read_segments(path: str | Path) -> dict[str, tuple[str, float, float]]:
    """A Kaldi ``segments`` file -> {utt: (recording, start s, end s)}; a malformed line is an error naming it."""
    out = {}
    for utt, value in read_table(path).items():
        fields = value.split()
        try:
            rec, start, end = fields[0], float(fields[1]), float(fields[2])
        except (IndexError, ValueError):
            raise ValueError(f"{path}: malformed line for {utt!r} (expected: utt recording start end)") from None
        if len(fields) != 3 or end <= start:
            raise ValueError(f"{path}: malformed line for {utt!r} (expected: utt recording start end, end > start)")
        out[utt] = (rec, start, end)
    return out


@dataclass
class KaldiDir:
    """The tables of a Kaldi data dir, read once: wav.scp, text, utt2spk and segments (None when absent)."""

    path: Path
    wav: dict[str, str]
    text: dict[str, str]
    utt2spk: dict[str, str]
    segments: dict[str, tuple[str, float, float]] | None

    @classmethod
    def read(cls, data_dir: str | Path) -> "KaldiDir":
        d = Path(data_dir)
        seg = read_segments(d / "segments") if (d / "segments").is_file() else None
        return cls(d, read_table(d / "wav.scp"), read_table(d / "text"), read_table(d / "utt2spk"), seg)

    def source(self, utt: str) -> tuple[str, float | None, float | None]:
        """(audio path, start, end) of an utterance: its segment of a recording, or its own file."""
        if self.segments is not None:
            if utt not in self.segments:
                raise KeyError(f"{self.path / 'segments'}: no entry for {utt!r}")
            rec, start, end = self.segments[utt]
            if rec not in self.wav:
                raise KeyError(f"{self.path / 'wav.scp'}: no recording {rec!r} (of {utt!r})")
            return self.wav[rec], start, end
        if utt not in self.wav:
            raise KeyError(f"{self.path / 'wav.scp'}: no entry for {utt!r}")
        return self.wav[utt], None, None

    def utterance(self, utt: str) -> Utterance:
        path, start, end = self.source(utt)
        return Utterance(utt, self.utt2spk[utt], path, self.text[utt], start, end)
