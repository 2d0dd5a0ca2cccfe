"""Long-form test sets: consecutive utterances of one group (a LibriSpeech chapter, a CSJ lecture)
concatenated into recordings of at least a target duration (any Kaldi data dir, with or without
``segments``)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from s4speech.io.audio import load_segment, write_audio
from s4speech.io.files import atomic_write
from s4speech.io.kaldi import KaldiDir, Utterance, write_kaldi_dir

log = logging.getLogger(__name__)


def by_speaker(utt_id: str, speaker: str) -> str:
    """Grouping key: the speaker id (a LibriSpeech chapter, a CSJ lecture)."""
    return speaker


def concat_long_form(data_dir_in: str | Path, data_dir_out: str | Path,
                     durations: Sequence[float] = (30, 60, 120, 300),
                     group_key: Callable[[str, str], str] = by_speaker,
                     text_sep: str = " ", audio_format: str = "flac") -> dict[float, int]:
    """Build long-form data dirs from a Kaldi dir; returns {duration: number of long utterances}.

    Utterances are grouped by ``group_key(utt_id, speaker)`` and taken in sorted utterance-id order;
    for each target ``d`` consecutive ones are concatenated (audio back to back; transcripts joined
    with ``text_sep``) until the recording lasts at least ``d`` seconds, then a new recording starts.
    A group's leftover shorter than ``d`` is dropped. An unreadable utterance is warned about and left
    out (its transcript too). Output per ``d``: the data dir ``f"{data_dir_out}_{d:g}s"`` with the
    recordings (16-bit ``audio_format``: flac or wav) in its ``wav/``, the speaker of each long
    utterance being its group key, its id ``f"{first source utt}_long{d:g}s"``, and ``long_form_map``
    listing the source utterances. Buckets with no recording are skipped with a warning.
    """
    src = KaldiDir.read(data_dir_in)
    groups: dict[str, list[str]] = {}
    for utt in sorted(src.text):
        if utt not in src.utt2spk:
            raise ValueError(f"{src.path}: {utt!r} has no utt2spk entry")
        groups.setdefault(group_key(utt, src.utt2spk[utt]), []).append(utt)

    def load(utt: str) -> tuple[np.ndarray, int] | None:
        try:
            return load_segment(*src.source(utt), dtype="int16")
        except Exception as e:  # noqa: BLE001 - one bad utterance never stops the set
            log.warning("%s: cannot read audio of %s (%s); left out", src.path, utt, e)
            return None

    durations = sorted(set(durations))
    out_dirs = {d: Path(f"{data_dir_out}_{d:g}s") for d in durations}
    utts_out: dict[float, list[Utterance]] = {d: [] for d in durations}
    maps: dict[float, list[str]] = {d: [] for d in durations}
    for key, members in sorted(groups.items()):
        if any(c.isspace() for c in key):
            raise ValueError(f"group key {key!r} contains whitespace")
        audio = {u: a for u in members if (a := load(u)) is not None}  # each group read once for all buckets
        for d in durations:
            run: list[str] = []
            n = 0
            for utt in (u for u in members if u in audio):
                if run and audio[utt][1] != audio[run[0]][1]:
                    log.warning("%s: %s has sample rate %d, %s has %d; left out", src.path, utt,
                                audio[utt][1], run[0], audio[run[0]][1])
                    continue
                run.append(utt)
                n += len(audio[utt][0])
                sr = audio[run[0]][1]
                if n >= d * sr:
                    long_id = f"{run[0]}_long{d:g}s"
                    path = out_dirs[d] / "wav" / f"{long_id}.{audio_format}"
                    write_audio(path, np.concatenate([audio[u][0] for u in run]), sr)
                    joined = text_sep.join(src.text[u] for u in run)
                    utts_out[d].append(Utterance(long_id, key, str(path.resolve()), joined))
                    maps[d].append(f"{long_id} {' '.join(run)}\n")
                    run, n = [], 0
    counts: dict[float, int] = {}
    for d in durations:
        if not utts_out[d]:
            log.warning("%s: no group reaches %gs; %s not written", src.path, d, out_dirs[d])
            counts[d] = 0
            continue
        counts[d] = write_kaldi_dir(out_dirs[d], utts_out[d])
        atomic_write(out_dirs[d] / "long_form_map", "".join(sorted(maps[d])))
    return counts
