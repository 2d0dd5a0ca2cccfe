"""Data preparation for the demo corpus: the Asterisk core sound prompts in English.

The corpus is two Debian packages: ``asterisk-core-sounds-en-wav`` (one female
speaker, ~568 prompts, ~25 min of 8 kHz 16-bit PCM WAV) and
``asterisk-core-sounds-en`` (the transcripts, CC-BY-SA-3.0). Unpacked (or
installed) they form this tree below a root directory::

    <root>/usr/share/asterisk/sounds/en_US_f_Allison/<prompt_id>.wav
        (e.g. ``activated.wav``, ``digits/1.wav``; on an installed system the
        ``en`` alternative may point to the same files)
    <root>/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz
        (``; comment`` lines and ``<prompt_id>: <text>`` lines)

``prepare`` writes Kaldi data dirs ``train``, ``dev``, ``test`` (a
deterministic ~80/10/10 split by prompt); ``long_form`` makes ``test_long_<d>s``
from ``test``: ``per_length`` (10) recordings of at least ``d`` seconds each,
made by concatenating test prompts (which therefore repeat across recordings),
for long-form decoding and segmentation. The recipes ask for them by name
(``--long_sets test_long_30s test_long_60s test_long_120s``).

Usage, from the repository root::

    python -m s4speech.corpora.asterisk --corpus_dir downloads/asterisk --data_dir data
    python -m s4speech.corpora.asterisk --long_form data/test --data_dir data/test_long --durations 30 60 120
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import soundfile as sf

from s4speech.corpora.cli import corpus_main
from s4speech.io.audio import write_audio
from s4speech.io.files import atomic_write
from s4speech.io.kaldi import KaldiDir, Utterance, write_kaldi_dir

logger = logging.getLogger("s4speech.corpora.asterisk")  # also when run as __main__

PACKAGES = ("asterisk-core-sounds-en-wav", "asterisk-core-sounds-en")
SOUNDS_DIR = Path("usr/share/asterisk/sounds")
SOUNDS_SUBDIRS = ("en_US_f_Allison", "en")  # first one holding WAV files wins
TRANSCRIPT_DIR = Path("usr/share/doc/asterisk-core-sounds-en")
TRANSCRIPT_NAMES = ("core-sounds-en.txt.gz", "core-sounds-en.txt")
SYSTEM_ROOT = Path("/")

SPEAKER = "f1"
SAMPLE_RATE = 8000
PAUSE_S = 0.3  # silence inserted between prompts in the long recordings
DEV_FRACTION = 0.1
TEST_FRACTION = 0.1
SETS = ("train", "dev", "test")
LONG_PER_LENGTH = 10  # recordings per target length in a long-form set


class Prompt(NamedTuple):
    """One usable prompt: its id in the transcript file, its WAV file and its normalised text."""

    prompt_id: str  # e.g. "digits/1"
    wav_path: Path
    text: str  # normalised, non-empty


# --------------------------------------------------------------------------- locating the corpus


def sounds_dir(root: str | Path) -> Path | None:
    """The directory holding the prompt WAVs below ``root``, or None if there is none."""
    base = Path(root) / SOUNDS_DIR
    for name in SOUNDS_SUBDIRS:
        d = base / name
        if d.is_dir() and next(d.rglob("*.wav"), None) is not None:
            return d
    return None


def transcript_path(root: str | Path) -> Path | None:
    """The transcript file below ``root``, or None if there is none."""
    for name in TRANSCRIPT_NAMES:
        p = Path(root) / TRANSCRIPT_DIR / name
        if p.is_file():
            return p
    return None


def _is_tree(root: Path) -> bool:
    return sounds_dir(root) is not None and transcript_path(root) is not None


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise RuntimeError(f"cannot run {cmd[0]!r} ({e.strerror}); install {' and '.join(PACKAGES)} "
                           f"or put an unpacked tree in {cwd}") from None


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit status {proc.returncode}"


def _download(package: str, corpus_dir: Path) -> Path:
    """``apt-get download`` one package into corpus_dir (unless a .deb is already there)."""
    debs = sorted(corpus_dir.glob(f"{package}_*.deb"))
    if debs:
        return debs[-1]
    proc = _run(["apt-get", "download", package], corpus_dir)
    if proc.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        # A fresh system (e.g. a container image) often has no package lists yet.
        logger.warning("apt-get download %s failed (%s); retrying after apt-get update", package, _last_line(proc))
        _run(["apt-get", "update", "-qq"], corpus_dir)
        proc = _run(["apt-get", "download", package], corpus_dir)
    debs = sorted(corpus_dir.glob(f"{package}_*.deb"))
    if proc.returncode != 0 or not debs:
        raise RuntimeError(f"apt-get download {package} failed in {corpus_dir}: {_last_line(proc)} "
                           "(try `apt-get update`, or put an unpacked tree there)")
    return debs[-1]


def fetch(corpus_dir: str | Path) -> Path:
    """Find or fetch the corpus; return the root of the tree holding the sound files and transcript.

    In order: ``corpus_dir`` if it already holds an unpacked tree; ``/`` if the
    packages are installed on this system; otherwise both packages are fetched
    with ``apt-get download`` into ``corpus_dir`` and unpacked there with
    ``dpkg-deb -x`` (into a temporary directory first, so that an interrupted
    run leaves no half tree behind). Idempotent. Raises RuntimeError, naming
    what failed, if the corpus cannot be had.
    """
    corpus_dir = Path(corpus_dir).resolve()  # commands below run inside it
    if _is_tree(corpus_dir):
        return corpus_dir
    if _is_tree(SYSTEM_ROOT):
        logger.info("using the installed packages under %s", SYSTEM_ROOT / "usr/share")
        return SYSTEM_ROOT
    corpus_dir.mkdir(parents=True, exist_ok=True)
    debs = [_download(p, corpus_dir) for p in PACKAGES]
    unpack = corpus_dir / ".unpack.tmp"
    if unpack.exists():  # left over from an interrupted run
        shutil.rmtree(unpack)
    unpack.mkdir()
    try:
        for deb in debs:
            proc = _run(["dpkg-deb", "-x", str(deb), str(unpack)], corpus_dir)
            if proc.returncode != 0:
                raise RuntimeError(f"dpkg-deb -x {deb} failed: {_last_line(proc)} (delete the file to download it again)")
        if not _is_tree(unpack):
            raise RuntimeError(f"{', '.join(d.name for d in debs)} hold no {SOUNDS_DIR}/*/*.wav and transcript")
        for entry in sorted(unpack.iterdir()):
            target = corpus_dir / entry.name
            if target.exists():
                raise RuntimeError(f"{target} exists but holds no complete corpus tree; remove it and re-run")
            os.replace(entry, target)
    finally:
        shutil.rmtree(unpack, ignore_errors=True)
    if not _is_tree(corpus_dir):
        raise RuntimeError(f"unpacking into {corpus_dir} gave no complete corpus tree")
    return corpus_dir


# --------------------------------------------------------------------------- transcripts


_NOTES = re.compile(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>|\{[^}]*\}")
_NOT_KEPT = re.compile(r"[^\w' ]|_")  # \w: letters and digits (and '_', dropped too)
_LONE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")  # quotes, not apostrophes inside words


def normalize_text(text: str) -> str:
    """Normalise a prompt transcript for ASR.

    Lowercase; drop bracketed notes (``[beep]``, ``(note)``, ``<tone>``,
    ``{x}``); turn every other character except letters, digits, apostrophes
    inside words and spaces into a space; collapse spaces. May return "".
    """
    text = _NOTES.sub(" ", text.lower())
    text = _NOT_KEPT.sub(" ", text)
    text = _LONE_APOSTROPHE.sub(" ", text)
    return " ".join(text.split())


def _read_text(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


def _audio_problem(wav: Path) -> str | None:
    """Why soundfile cannot give audio samples from ``wav``, or None if it can."""
    if not wav.is_file():
        return "no such wav file"
    try:
        data, _ = sf.read(wav, dtype="int16", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError (a RuntimeError), also OSError etc.
        return f"unreadable audio ({e})"
    if data.shape[0] == 0:
        return "audio has no samples"
    return None


def read_prompts(root: str | Path) -> list[Prompt]:
    """Parse the transcript file below ``root`` and return the usable prompts, in file order.

    A prompt is kept when its WAV exists, soundfile reads samples from it and
    its normalised text (see ``normalize_text``) is non-empty. Every line or
    prompt that is skipped (no colon, empty id, duplicate id -- the first one
    is kept --, missing or unreadable WAV, no text) is logged with
    ``logging.warning`` naming the file and the reason. Comments (``;``) and
    blank lines are ignored. Raises RuntimeError if ``root`` holds no tree.
    """
    root = Path(root)
    sounds, transcript = sounds_dir(root), transcript_path(root)
    if sounds is None or transcript is None:
        raise RuntimeError(f"{root}: no {SOUNDS_DIR}/<lang>/*.wav or {TRANSCRIPT_DIR}/{TRANSCRIPT_NAMES[0]}")
    prompts: list[Prompt] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(_read_text(transcript).splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        where = f"{transcript}:{n}"
        prompt_id, colon, raw = line.partition(":")
        prompt_id = prompt_id.strip()
        if not colon:
            logger.warning("%s: skipped malformed line (no ':'): %r", where, line)
            continue
        if not prompt_id or prompt_id.startswith("/") or ".." in Path(prompt_id).parts:
            logger.warning("%s: skipped line with a bad prompt id: %r", where, line)
            continue
        if prompt_id in seen:
            logger.warning("%s: skipped duplicate prompt id %r (first on line %d)", where, prompt_id, seen[prompt_id])
            continue
        seen[prompt_id] = n
        wav = sounds / f"{prompt_id}.wav"
        problem = _audio_problem(wav)
        if problem is not None:
            logger.warning("%s: skipped %s: %s", where, wav, problem)
            continue
        text = normalize_text(raw)
        if not text:
            logger.warning("%s: skipped %s: no words in transcript %r", where, wav, raw.strip())
            continue
        prompts.append(Prompt(prompt_id, wav, text))
    return prompts


# --------------------------------------------------------------------------- data dirs


def utterance_id(prompt_id: str) -> str:
    """Kaldi utterance id for a prompt: ``f1-`` + the id with anything but ``[A-Za-z0-9.-]`` as ``_``."""
    return f"{SPEAKER}-" + re.sub(r"[^A-Za-z0-9.-]", "_", prompt_id)


def split_prompts(prompts: Sequence[Prompt], seed: int = 0) -> dict[str, list[Prompt]]:
    """Split prompts ~80/10/10 into train/dev/test, deterministically from the prompt ids and ``seed``.

    Prompts are ordered by a hash of ``seed`` and the prompt id (a seeded
    shuffle that does not depend on input order); the first 10% (at least
    one) go to test, the next 10% (at least one) to dev, the rest to train.
    Each list is sorted by utterance id. Needs at least 3 prompts.
    """
    if len(prompts) < 3:
        raise ValueError(f"need at least 3 usable prompts to split, got {len(prompts)}")

    def key(p: Prompt) -> str:
        return hashlib.sha256(f"{seed}:{p.prompt_id}".encode()).hexdigest()

    order = sorted(prompts, key=key)
    n_test = max(1, round(TEST_FRACTION * len(order)))
    n_dev = max(1, round(DEV_FRACTION * len(order)))
    parts = {"test": order[:n_test], "dev": order[n_test:n_test + n_dev], "train": order[n_test + n_dev:]}
    return {k: sorted(v, key=lambda p: utterance_id(p.prompt_id)) for k, v in parts.items()}


def _load_8k(wav: Path) -> np.ndarray:
    """Mono int16 samples of ``wav`` at SAMPLE_RATE."""
    data, sr = sf.read(wav, dtype="int16", always_2d=True)
    if data.shape[1] == 1 and sr == SAMPLE_RATE:
        return data[:, 0]
    audio = data.astype(np.float32).mean(axis=1) / 32768.0
    if sr != SAMPLE_RATE:
        import librosa  # slow import; only needed for audio that is not 8 kHz

        audio = librosa.resample(audio, orig_sr=sr, target_sr=SAMPLE_RATE)
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)


def _long_recordings(test: Sequence[Utterance], out_dir: Path, target: float, n: int,
                     cache: dict[str, np.ndarray]) -> tuple[list[Utterance], str]:
    """Concatenate test prompts into ``n`` recordings of at least ``target`` seconds; returns utterances
    and joins lines.

    Prompts are taken in order (sorted by utterance id), each recording going on
    where the previous one stopped and wrapping around when the prompts run
    out, with PAUSE_S of silence between prompts, until the recording lasts at
    least its target. A join time is the centre of a pause, in seconds.
    """
    pause = np.zeros(round(PAUSE_S * SAMPLE_RATE), dtype=np.int16)
    utts, joins, cursor = [], [], 0
    for k in range(n):
        utt_id = f"{SPEAKER}-long{target:g}s-{k:02d}"
        pieces: list[np.ndarray] = []
        texts: list[str] = []
        times: list[float] = []
        n_samples = 0
        while n_samples < target * SAMPLE_RATE:
            prompt = test[cursor % len(test)]
            cursor += 1
            if pieces:
                times.append((n_samples + len(pause) / 2) / SAMPLE_RATE)
                pieces.append(pause)
                n_samples += len(pause)
            audio = cache.get(prompt.audio)
            if audio is None:
                audio = cache[prompt.audio] = _load_8k(Path(prompt.audio))
            pieces.append(audio)
            texts.append(prompt.text)
            n_samples += len(audio)
        wav = out_dir / f"{utt_id}.wav"
        write_audio(wav, np.concatenate(pieces), SAMPLE_RATE, "wav")
        utts.append(Utterance(utt_id, SPEAKER, str(wav.absolute()), " ".join(texts)))
        joins.append(f"{utt_id} {' '.join(f'{t:.3f}' for t in times)}".rstrip() + "\n")
    # Recordings this run does not produce (e.g. other targets earlier) would be stale.
    keep = {Path(u.audio).name for u in utts}
    for old in out_dir.glob(f"{SPEAKER}-long*.wav"):
        if old.name not in keep:
            old.unlink()
    return utts, "".join(sorted(joins))


def _duration(wav: str | Path) -> float:
    return sf.info(str(wav)).duration


def prepare(corpus_dir: str | Path, data_dir: str | Path, seed: int = 0) -> dict[str, int]:
    """Fetch the corpus and write Kaldi data dirs ``data_dir/{train,dev,test}``.

    One utterance per prompt (``split_prompts``), speaker ``f1``, utterance ids from ``utterance_id``,
    WAV paths absolute. Deterministic: re-running with the same arguments rewrites identical files.
    Returns the number of utterances per set.
    """
    data_dir = Path(data_dir)
    prompts = read_prompts(fetch(corpus_dir))
    logger.info("%d usable prompts", len(prompts))
    ids: dict[str, str] = {}
    for p in prompts:
        utt_id = utterance_id(p.prompt_id)
        if utt_id in ids:  # e.g. "a/b" and "a_b"
            raise ValueError(f"prompts {ids[utt_id]!r} and {p.prompt_id!r} map to the same utterance id {utt_id!r}")
        ids[utt_id] = p.prompt_id

    counts: dict[str, int] = {}
    splits = split_prompts(prompts, seed)
    for name in SETS:
        utts = [Utterance(utterance_id(p.prompt_id), SPEAKER, str(p.wav_path.absolute()), p.text)
                for p in splits[name]]
        counts[name] = write_kaldi_dir(data_dir / name, utts)
        logger.info("%s: %d utterances, %.1f s", data_dir / name, counts[name], sum(_duration(u.audio) for u in utts))
    return counts


def long_form(data_dir_in: str | Path, data_dir_out: str | Path, durations: Sequence[float] = (30, 60, 120),
              per_length: int = LONG_PER_LENGTH, audio_format: str = "wav") -> dict[float, int]:
    """Long-form sets from a prepared set (``test``): for each target ``d`` (seconds), the Kaldi dir
    ``f"{data_dir_out}_{d:g}s"`` with ``per_length`` recordings ``wav/<utt_id>.wav`` (8 kHz, 16-bit WAV)
    of consecutive prompts joined with 0.3 s pauses, each at least ``d`` long and transcribed by the
    concatenated texts; its ``joins`` lists ``<utt_id> <t1> <t2> ...``, the times (s) of the pauses'
    centres. The prompts repeat across recordings (``test`` has ~150 s). Deterministic; re-running
    rewrites identical files and removes recordings of an earlier, larger ``per_length``. Returns
    ``{d: recordings}``. (``audio_format``: the recipes' option; the recordings are always WAV.)
    """
    if not durations or any(not d > 0 for d in durations):
        raise ValueError(f"long-form durations must be positive numbers, got {list(durations)!r}")
    if per_length < 1:
        raise ValueError(f"per_length must be at least 1, got {per_length}")
    d_in = KaldiDir.read(data_dir_in)
    src = [d_in.utterance(u) for u in sorted(d_in.text)]
    if not src:
        raise ValueError(f"{data_dir_in}: no utterances to make long-form recordings from")
    counts, cache = {}, {}  # the prompts' audio, read once for all lengths
    for d in durations:
        out = Path(f"{data_dir_out}_{d:g}s")
        utts, joins = _long_recordings(src, out / "wav", d, per_length, cache)
        counts[d] = write_kaldi_dir(out, utts)
        atomic_write(out / "joins", joins)
        logger.info("%s: %d recordings, %.1f s", out, counts[d], sum(_duration(u.audio) for u in utts))
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m s4speech.corpora.asterisk --corpus_dir DIR --data_dir DIR [--seed N]``."""
    return corpus_main(argv, __doc__.split("\n\n")[0], prepare, long_form=long_form,
                       options=[(("--seed",), dict(type=int, default=0, help="seed of the train/dev/test split"))],
                       kwargs=lambda a: {"seed": a.seed})

if __name__ == "__main__":
    raise SystemExit(main())
