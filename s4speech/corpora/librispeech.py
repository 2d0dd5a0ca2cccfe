"""Data preparation for LibriSpeech (OpenSLR 12), plus long-form test sets.

Corpus layout (as extracted from the OpenSLR archives) below ``corpus_dir``::

    LibriSpeech/<part>/<reader>/<chapter>/<reader>-<chapter>-<utt>.flac
    LibriSpeech/<part>/<reader>/<chapter>/<reader>-<chapter>.trans.txt
        (one ``<reader>-<chapter>-<utt> TRANSCRIPT`` line per utterance)

``corpus_dir`` may also be the ``LibriSpeech`` directory itself.

Data sets follow ESPnet's naming (see ``PARTS``): ``train_960`` is
train-clean-100 + train-clean-360 + train-other-500, ``dev`` is dev-clean +
dev-other, ``test_clean``/``test_other``, and one set per part with ``-``
replaced by ``_``. Speaker id = ``<reader>-<chapter>`` (as in ESPnet/Kaldi),
utterance id as in the transcript; ``wav.scp`` points at the FLAC files
(ESPnet reads FLAC through soundfile).

Bad input: a malformed transcript line, an audio file without transcript, a
transcript line without audio or an unreadable audio file is logged
(``logging.warning`` naming the file) and that utterance skipped; a
duplicate utterance id is a ``ValueError`` naming the id.

Long-form sets (``long_form``/``concat_long_form``): consecutive utterances
of a group (a chapter here, a lecture for CSJ) in sorted utterance-id order
are concatenated into recordings of at least ``d`` seconds, one data dir per
target length ``d``, named ``f"{data_dir_out}_{d}s"`` (e.g.
``data/test_clean_long_60s``), with the WAV files in its ``wav/`` folder and a
``long_form_map`` file (``<long utt id> <source utt id>...``).

Usage, from the repository root::

    python -m local.librispeech --corpus_dir downloads --data_dir data [--download]
    python -m local.librispeech --long_form data/test_clean --data_dir data/test_clean_long
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import soundfile as sf

from s4speech.io.files import atomic_write
from s4speech.io.kaldi import Utterance, read_table, write_kaldi_dir

log = logging.getLogger(__name__)

URL_BASE = "https://www.openslr.org/resources/12"

# Data set name (ESPnet naming) -> LibriSpeech parts.
PARTS: dict[str, list[str]] = {
    "train_960": ["train-clean-100", "train-clean-360", "train-other-500"],
    "train_100": ["train-clean-100"],
    "train_clean_100": ["train-clean-100"],
    "train_clean_360": ["train-clean-360"],
    "train_other_500": ["train-other-500"],
    "dev": ["dev-clean", "dev-other"],
    "dev_clean": ["dev-clean"],
    "dev_other": ["dev-other"],
    "test_clean": ["test-clean"],
    "test_other": ["test-other"],
}
ALL_PARTS = ("train-clean-100", "train-clean-360", "train-other-500",
             "dev-clean", "dev-other", "test-clean", "test-other")

# MD5 of the archives as published by OpenSLR (resources/12/md5sum.txt).
MD5: dict[str, str] = {
    "train-clean-100": "2a93770f6d5c6c964bc36631d331a522",
    "train-clean-360": "c0e676e450a7ff2f54aeade5171606fa",
    "train-other-500": "d1a0fd59409feb2c614ce4d30c387708",
    "dev-clean": "42e2234ba48799c1f50f24a7926300a1",
    "dev-other": "c8d0bcc9cca99d4f8b62fcc847357931",
    "test-clean": "32fa31d27d2e1cad72775fee3f4849a9",
    "test-other": "fb5a50374b501bb3bac4815ee91d3135",
}

# Utterances per part in the full release; a different count is only warned
# about (a partial corpus is still usable), never silently accepted.
EXPECTED_UTTS: dict[str, int] = {
    "train-clean-100": 28539,
    "train-clean-360": 104014,
    "train-other-500": 148688,
    "dev-clean": 2703,
    "dev-other": 2864,
    "test-clean": 2620,
    "test-other": 2939,
}

_CHUNK = 1 << 20


# --------------------------------------------------------------------------
# download


def _librispeech_root(corpus_dir: str | Path) -> Path:
    corpus_dir = Path(corpus_dir)
    if (corpus_dir / "LibriSpeech").is_dir() or corpus_dir.name != "LibriSpeech":
        return corpus_dir / "LibriSpeech"
    return corpus_dir


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _fetch_resumable(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Download ``url`` to ``dest``, resuming a previous ``dest.part`` with an HTTP Range request.

    ``dest`` appears only when the transfer is complete; an interrupted one
    leaves ``dest.part`` for the next call to continue.
    """
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url)
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: .part may already be complete
            total = (e.headers.get("Content-Range") or "").rpartition("/")[2]
            if total.isdigit() and int(total) == have:
                os.replace(part, dest)
                return
            log.warning("%s: server refused to resume at byte %d; starting over", part, have)
            part.unlink()
            return _fetch_resumable(url, dest, timeout)
        raise
    with resp:
        if have and resp.status == 206:
            mode = "ab"
            log.info("resuming %s at byte %d", url, have)
        else:  # 200: whole file (server ignored the range, or a fresh start)
            mode, have = "wb", 0
        length = resp.headers.get("Content-Length")
        expected = have + int(length) if length is not None else None
        with open(part, mode) as f:
            while block := resp.read(_CHUNK):
                f.write(block)
    got = part.stat().st_size
    if expected is not None and got != expected:
        raise OSError(f"{url}: transfer interrupted at {got} of {expected} bytes; run again to resume")
    os.replace(part, dest)


def _extract(archive: Path, corpus_dir: Path, part: str) -> None:
    """Extract ``LibriSpeech/<part>`` from ``archive`` into ``corpus_dir`` (moved into place whole)."""
    target = corpus_dir / "LibriSpeech" / part
    tmp = Path(tempfile.mkdtemp(dir=corpus_dir, prefix=f".extract-{part}."))
    try:
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                for m in tar.getmembers():
                    if m.name.startswith("/") or ".." in Path(m.name).parts or not (m.isfile() or m.isdir()):
                        raise ValueError(f"{archive}: unsafe member {m.name!r}")
                tar.extractall(tmp)
        src = tmp / "LibriSpeech" / part
        if not src.is_dir():
            raise ValueError(f"{archive}: no LibriSpeech/{part} inside")
        target.parent.mkdir(parents=True, exist_ok=True)
        for extra in ("README.TXT", "CHAPTERS.TXT", "SPEAKERS.TXT", "BOOKS.TXT", "LICENSE.TXT"):
            if (tmp / "LibriSpeech" / extra).is_file() and not (target.parent / extra).exists():
                os.replace(tmp / "LibriSpeech" / extra, target.parent / extra)
        os.replace(src, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download(corpus_dir: str | Path, parts: Iterable[str] = ALL_PARTS, base_url: str = URL_BASE,
             md5: dict[str, str] | None = None, keep_archive: bool = False) -> None:
    """Download, verify (MD5) and extract LibriSpeech parts into ``corpus_dir/LibriSpeech``.

    A part whose ``LibriSpeech/<part>`` directory exists is skipped. The
    archive ``corpus_dir/<part>.tar.gz`` is fetched with resume (an existing
    one is reused), checked against ``md5`` (default: the published
    ``MD5`` table; a mismatch deletes it and raises ``ValueError``) and
    extracted; it is deleted afterwards unless ``keep_archive``.
    """
    corpus_dir = Path(corpus_dir)
    sums = MD5 if md5 is None else md5
    for part in parts:
        if part not in ALL_PARTS:
            raise ValueError(f"unknown LibriSpeech part {part!r} (known: {', '.join(ALL_PARTS)})")
        if (corpus_dir / "LibriSpeech" / part).is_dir():
            log.info("%s: already there, skipping download", corpus_dir / "LibriSpeech" / part)
            continue
        corpus_dir.mkdir(parents=True, exist_ok=True)
        archive = corpus_dir / f"{part}.tar.gz"
        if not archive.exists():
            log.info("downloading %s/%s.tar.gz", base_url, part)
            try:
                _fetch_resumable(f"{base_url}/{part}.tar.gz", archive)
            except urllib.error.URLError as e:  # no network, DNS, HTTP error: one clear line
                raise OSError(f"{base_url}/{part}.tar.gz: download failed ({getattr(e, 'reason', e)}); "
                              f"put LibriSpeech/{part} under {corpus_dir} by hand or check the network") from e
        if part in sums:
            got = _md5(archive)
            if got != sums[part]:
                archive.unlink()
                raise ValueError(f"{archive}: MD5 {got} != expected {sums[part]}; deleted, run again")
        else:
            log.warning("%s: no known MD5, not verified", archive)
        _extract(archive, corpus_dir, part)
        if not keep_archive:
            archive.unlink()


# --------------------------------------------------------------------------
# Kaldi data dirs

_UTT_RE = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def _audio_ok(path: Path) -> str | None:
    """None if ``path`` opens as audio with at least one frame, else the problem."""
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises RuntimeError/LibsndfileError
        return f"unreadable audio ({e})"
    if info.frames <= 0:
        return "audio has no samples"
    return None


def _read_trans(trans: Path, speaker: str) -> dict[str, str]:
    """``<utt> TEXT`` lines -> {utt: TEXT}; malformed lines are warned about and skipped."""
    out: dict[str, str] = {}
    try:
        lines = trans.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        log.warning("%s: cannot read transcript (%s); chapter skipped", trans, e)
        return out
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        utt, _, text = line.strip().partition(" ")
        m = _UTT_RE.match(utt)
        if not m or not text.strip():
            log.warning("%s:%d: malformed line %r (want '<reader>-<chapter>-<n> TEXT'); skipped", trans, n, line)
            continue
        if f"{m.group(1)}-{m.group(2)}" != speaker:
            log.warning("%s:%d: utterance %s is not from chapter %s; skipped", trans, n, utt, speaker)
            continue
        if utt in out:
            raise ValueError(f"{trans}:{n}: duplicate utterance id {utt!r}")
        out[utt] = " ".join(text.split())
    return out


def prepare_part(corpus_dir: str | Path, part: str, check_audio: bool = True) -> list[Utterance]:
    """Utterances of one LibriSpeech part (e.g. ``"dev-clean"``), sorted by id."""
    root = _librispeech_root(corpus_dir) / part
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: LibriSpeech part not found (run with --download?)")
    utts: list[Utterance] = []
    for chapter_dir in sorted(p for p in root.glob("*/*") if p.is_dir()):
        reader, chapter = chapter_dir.parent.name, chapter_dir.name
        speaker = f"{reader}-{chapter}"
        flacs = {p.stem: p for p in chapter_dir.glob("*.flac")}
        trans = chapter_dir / f"{speaker}.trans.txt"
        if not trans.is_file():
            if flacs:
                log.warning("%s: missing transcript file; %d audio files skipped", trans, len(flacs))
            continue
        texts = _read_trans(trans, speaker)
        for stem in sorted(set(flacs) - set(texts)):
            log.warning("%s: no transcript line in %s; skipped", flacs[stem], trans.name)
        for utt in sorted(texts):
            audio = flacs.get(utt)
            if audio is None:
                log.warning("%s: transcript line for %s but no %s.flac; skipped", trans, utt, utt)
                continue
            if check_audio and (problem := _audio_ok(audio)):
                log.warning("%s: %s; skipped", audio, problem)
                continue
            utts.append(Utterance(utt, speaker, str(audio.resolve()), texts[utt]))
    if not utts:
        log.warning("%s: no usable utterances", root)
    elif part in EXPECTED_UTTS and len(utts) != EXPECTED_UTTS[part]:
        log.warning("%s: %d utterances, the full release has %d", root, len(utts), EXPECTED_UTTS[part])
    return utts


def prepare(corpus_dir: str | Path, data_dir: str | Path,
            sets: Sequence[str] = ("train_960", "dev", "test_clean", "test_other"),
            check_audio: bool = True, download_missing: bool = True) -> dict[str, int]:
    """Write ``data_dir/<set>`` for each set name in ``PARTS``; returns {set: utterance count}.

    Parts missing under ``corpus_dir`` are downloaded first (``download_missing``).
    """
    unknown = [n for n in sets if n not in PARTS]
    if unknown:
        raise ValueError(f"unknown data set {unknown[0]!r} (known: {', '.join(PARTS)})")
    if download_missing:
        download(corpus_dir, sorted({p for n in sets for p in PARTS[n]}))
    counts: dict[str, int] = {}
    cache: dict[str, list[Utterance]] = {}
    for name in sets:
        utts: list[Utterance] = []
        for part in PARTS[name]:
            if part not in cache:
                cache[part] = prepare_part(corpus_dir, part, check_audio=check_audio)
            utts.extend(cache[part])
        counts[name] = write_kaldi_dir(Path(data_dir) / name, utts)
        log.info("%s: %d utterances", Path(data_dir) / name, counts[name])
    return counts


# --------------------------------------------------------------------------
# long-form sets (generic: any Kaldi dir, any grouping)


def _read_kaldi_dir(data_dir: Path) -> tuple[dict[str, str], dict[str, str], dict[str, str],
                                             dict[str, tuple[str, float, float]] | None]:
    wav = read_table(data_dir / "wav.scp")
    text = read_table(data_dir / "text")
    utt2spk = read_table(data_dir / "utt2spk")
    segments = None
    if (data_dir / "segments").is_file():
        segments = {}
        for utt, value in read_table(data_dir / "segments").items():
            fields = value.split()
            if len(fields) != 3:
                raise ValueError(f"{data_dir / 'segments'}: malformed line for {utt!r}")
            segments[utt] = (fields[0], float(fields[1]), float(fields[2]))
    return wav, text, utt2spk, segments


def _read_audio(path: str, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    """int16 samples (mono) of ``path`` between ``start`` and ``end`` seconds (whole file if None)."""
    if path.rstrip().endswith("|"):
        raise ValueError("Kaldi pipe commands are not supported")
    info = sf.info(path)
    sr = info.samplerate
    a = 0 if start is None else int(round(start * sr))
    b = info.frames if end is None else min(int(round(end * sr)), info.frames)
    if a >= b:
        raise ValueError(f"empty segment {start}-{end}")
    x, _ = sf.read(path, start=a, stop=b, dtype="int16", always_2d=True)
    if x.shape[1] > 1:
        x = np.round(x.astype(np.float32).mean(axis=1)).astype(np.int16)[:, None]
    return x[:, 0], sr


def _atomic_write_wav(path: Path, samples: np.ndarray, sr: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        sf.write(tmp, samples, sr, format="WAV", subtype="PCM_16")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def by_speaker(utt_id: str, speaker: str) -> str:
    """Grouping key: the speaker id (a LibriSpeech chapter, a CSJ lecture)."""
    return speaker


def concat_long_form(data_dir_in: str | Path, data_dir_out: str | Path,
                     durations: Sequence[float] = (30, 60, 120, 300),
                     group_key: Callable[[str, str], str] = by_speaker,
                     text_sep: str = " ") -> dict[float, int]:
    """Build long-form data dirs from a Kaldi dir; returns {duration: number of long utterances}.

    Utterances are grouped by ``group_key(utt_id, speaker)`` and taken in
    sorted utterance-id order; for each target ``d`` consecutive ones are
    concatenated (audio back to back; transcripts joined with ``text_sep``)
    until the recording lasts at least ``d`` seconds, then a new recording
    starts. A group's leftover shorter than ``d`` (so a whole group too short
    for ``d``) is dropped. Audio is read with soundfile, honouring
    ``segments`` when present; an unreadable utterance is warned about and
    left out (its transcript too). Output per ``d``: the data dir
    ``f"{data_dir_out}_{d:g}s"`` with WAVs (16-bit PCM) in its ``wav/``, the
    speaker of each long utterance being its group key, its id
    ``f"{first source utt}_long{d:g}s"``, and ``long_form_map`` listing the
    source utterances. Buckets with no recording are skipped with a warning.
    """
    data_dir_in = Path(data_dir_in)
    wav, text, utt2spk, segments = _read_kaldi_dir(data_dir_in)
    groups: dict[str, list[str]] = {}
    for utt in sorted(text):
        if utt not in utt2spk:
            raise ValueError(f"{data_dir_in}: {utt!r} has no utt2spk entry")
        groups.setdefault(group_key(utt, utt2spk[utt]), []).append(utt)

    def load(utt: str) -> tuple[np.ndarray, int] | None:
        try:
            if segments is not None:
                if utt not in segments:
                    raise ValueError("no segments entry")
                rec, s, e = segments[utt]
                if rec not in wav:
                    raise ValueError(f"recording {rec} not in wav.scp")
                return _read_audio(wav[rec], s, e)
            if utt not in wav:
                raise ValueError("not in wav.scp")
            return _read_audio(wav[utt], None, None)
        except Exception as e:
            log.warning("%s: cannot read audio of %s (%s); left out", data_dir_in, utt, e)
            return None

    counts: dict[float, int] = {}
    durations = sorted(set(durations))
    out_dirs = {d: Path(f"{data_dir_out}_{d:g}s") for d in durations}
    utts_out: dict[float, list[Utterance]] = {d: [] for d in durations}
    maps: dict[float, list[str]] = {d: [] for d in durations}
    for key, members in sorted(groups.items()):
        if any(c.isspace() for c in key):
            raise ValueError(f"group key {key!r} contains whitespace")
        audio = {}
        for utt in members:  # read each group once for all buckets
            got = load(utt)
            if got is not None:
                audio[utt] = got
        usable = [u for u in members if u in audio]
        for d in durations:
            run: list[str] = []
            n = 0
            for utt in usable:
                if run and audio[utt][1] != audio[run[0]][1]:
                    log.warning("%s: %s has sample rate %d, %s has %d; left out", data_dir_in, utt,
                                audio[utt][1], run[0], audio[run[0]][1])
                    continue
                run.append(utt)
                n += len(audio[utt][0])
                sr = audio[run[0]][1]
                if n >= d * sr:
                    long_id = f"{run[0]}_long{d:g}s"
                    path = out_dirs[d] / "wav" / f"{long_id}.wav"
                    _atomic_write_wav(path, np.concatenate([audio[u][0] for u in run]), sr)
                    joined = text_sep.join(text[u] for u in run)
                    utts_out[d].append(Utterance(long_id, key, str(path.resolve()), joined))
                    maps[d].append(f"{long_id} {' '.join(run)}\n")
                    run, n = [], 0
    for d in durations:
        if not utts_out[d]:
            log.warning("%s: no group reaches %gs; %s not written", data_dir_in, d, out_dirs[d])
            counts[d] = 0
            continue
        counts[d] = write_kaldi_dir(out_dirs[d], utts_out[d])
        atomic_write(out_dirs[d] / "long_form_map", "".join(sorted(maps[d])))
    return counts


def long_form(data_dir_in: str | Path, data_dir_out: str | Path,
              durations: Sequence[float] = (30, 60, 120, 300)) -> dict[float, int]:
    """LibriSpeech long-form sets: same-chapter concatenation (see ``concat_long_form``)."""
    return concat_long_form(data_dir_in, data_dir_out, durations, group_key=by_speaker, text_sep=" ")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus_dir", type=Path, help="directory holding (or to receive) LibriSpeech/")
    p.add_argument("--data_dir", type=Path, required=True, help="output: Kaldi data dirs go below it")
    p.add_argument("--sets", nargs="+", default=["train_960", "dev", "test_clean", "test_other"],
                   choices=sorted(PARTS))
    p.add_argument("--download", action="store_true", help="download the parts the sets need first")
    p.add_argument("--no_check_audio", action="store_true", help="do not open each FLAC to check it")
    p.add_argument("--long_form", type=Path, metavar="DATA_DIR_IN",
                   help="instead: make long-form sets from this Kaldi dir into DATA_DIR_<d>s")
    p.add_argument("--durations", nargs="+", type=float, default=[30, 60, 120, 300])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.long_form is not None:
        counts = long_form(args.long_form, args.data_dir, args.durations)
    else:
        if args.corpus_dir is None:
            p.error("--corpus_dir is required")
        if args.download:
            parts = dict.fromkeys(part for s in args.sets for part in PARTS[s])
            download(args.corpus_dir, parts)
        counts = prepare(args.corpus_dir, args.data_dir, args.sets, check_audio=not args.no_check_audio)
    for name, n in counts.items():
        print(f"{name}\t{n}")


if __name__ == "__main__":
    main()
