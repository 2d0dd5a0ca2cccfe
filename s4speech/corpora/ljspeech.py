"""Data preparation for LJSpeech 1.1 (one female speaker, 13,100 clips, ~24 h, 22.05 kHz, public domain).

Layout below the corpus directory (what the release archive unpacks to)::

    <corpus_dir>/LJSpeech-1.1/metadata.csv     id|transcription|normalized transcription
    <corpus_dir>/LJSpeech-1.1/wavs/<id>.wav

``prepare`` downloads and unpacks the archive when the tree is missing (the
download resumes a partial ``LJSpeech-1.1.tar.bz2.part``), parses
``metadata.csv`` (the normalized transcription, numbers written out; the raw
one when that field is empty) and writes Kaldi data dirs ``train``, ``dev`` and
``test``: as ESPnet's ljspeech recipe, the last 500 clips are held out, 250 for
dev and 250 for test (a tenth each for corpora smaller than 5,000 clips).
Malformed lines, duplicate ids, missing or unreadable WAVs and empty texts are
skipped with a warning naming the line.

Usage::

    python -m s4speech.corpora.ljspeech --corpus_dir downloads --data_dir data
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

import soundfile as sf

from s4speech.corpora.cli import corpus_main
from s4speech.io import download
from s4speech.io.kaldi import Utterance, write_kaldi_dir

logger = logging.getLogger(__name__)

URL = "https://data.keithito.com/data/speech/LJSpeech-1.1.tar.bz2"
ARCHIVE = "LJSpeech-1.1.tar.bz2"
TREE = "LJSpeech-1.1"
SPEAKER = "LJ"
HELD_OUT = 250  # dev and test each, as ESPnet's egs2/ljspeech/tts1
SETS = ("train", "dev", "test")

_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u2014": "-", "\u2013": "-"})
_NOT_KEPT = re.compile(r"[^a-z0-9 ',.?!;:\"-]")


def normalize_text(text: str) -> str:
    """Lowercase; typographic quotes and dashes as ASCII; letters, digits, spaces and ' , . ? ! ; : " -
    kept (punctuation helps the prosody of a character TTS), anything else a space; spaces collapsed."""
    text = _NOT_KEPT.sub(" ", text.translate(_QUOTES).lower())
    return " ".join(text.split())


def _is_tree(root: Path) -> bool:
    return (root / TREE / "metadata.csv").is_file() and (root / TREE / "wavs").is_dir()


def fetch(corpus_dir: str | Path, url: str = URL) -> Path:
    """The directory holding ``LJSpeech-1.1/``: ``corpus_dir`` itself, after downloading and unpacking if needed."""
    corpus_dir = Path(corpus_dir)
    if _is_tree(corpus_dir):
        return corpus_dir
    archive = download.fetch(url, corpus_dir / ARCHIVE)
    download.extract(archive, TREE, corpus_dir / TREE)
    if not _is_tree(corpus_dir):
        raise RuntimeError(f"{archive} holds no {TREE}/metadata.csv and {TREE}/wavs (delete it to download again)")
    return corpus_dir


def read_metadata(root: str | Path) -> list[Utterance]:
    """Usable clips of ``<root>/LJSpeech-1.1/metadata.csv``, in file order."""
    tree = Path(root) / TREE
    utts, seen = [], {}
    with open(tree / "metadata.csv", encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            where = f"{tree / 'metadata.csv'}:{n}"
            fields = line.split("|")
            if len(fields) < 2 or len(fields) > 3:
                logger.warning("%s: skipped malformed line (%d fields, expected 3): %r", where, len(fields), line[:80])
                continue
            utt = fields[0].strip()
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", utt):
                logger.warning("%s: skipped line with a bad clip id %r", where, utt)
                continue
            if utt in seen:
                logger.warning("%s: skipped duplicate clip id %r (first on line %d)", where, utt, seen[utt])
                continue
            seen[utt] = n
            text = normalize_text(fields[2] if len(fields) == 3 and fields[2].strip() else fields[1])
            if not text:
                logger.warning("%s: skipped %s: empty transcription", where, utt)
                continue
            wav = tree / "wavs" / f"{utt}.wav"
            try:
                if sf.info(str(wav)).frames == 0:
                    raise RuntimeError("no samples")
            except Exception as e:  # missing, unreadable or empty
                logger.warning("%s: skipped %s: %s", where, wav, e)
                continue
            utt_id = utt if utt.startswith(SPEAKER) else f"{SPEAKER}-{utt}"
            utts.append(Utterance(utt_id, SPEAKER, str(wav.resolve()), text))
    return utts


def split(utts: Sequence[Utterance]) -> dict[str, list[Utterance]]:
    """The last clips held out (250 dev, then 250 test; a tenth each below 5,000 clips)."""
    if len(utts) < 3:
        raise ValueError(f"need at least 3 usable clips, got {len(utts)}")
    k = HELD_OUT if len(utts) >= 20 * HELD_OUT else max(1, len(utts) // 10)
    return {"train": list(utts[: -2 * k]), "dev": list(utts[-2 * k : -k]), "test": list(utts[-k:])}


def prepare(corpus_dir: str | Path, data_dir: str | Path, sets: Sequence[str] = SETS) -> dict[str, int]:
    """Fetch the corpus if needed and write the Kaldi dirs ``data_dir/{train,dev,test}``; returns their sizes."""
    unknown = set(sets) - set(SETS)
    if unknown:
        raise ValueError(f"unknown LJSpeech sets {sorted(unknown)} (have {SETS})")
    utts = read_metadata(fetch(corpus_dir))
    logger.info("%d usable clips", len(utts))
    parts = split(utts)
    return {s: write_kaldi_dir(Path(data_dir) / s, parts[s]) for s in sets}


def main(argv: Sequence[str] | None = None) -> int:
    return corpus_main(argv, __doc__.split("\n\n")[0], prepare, sets=SETS)

if __name__ == "__main__":
    raise SystemExit(main())
