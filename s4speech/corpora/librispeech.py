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

    python -m s4speech.corpora.librispeech --corpus_dir downloads --data_dir data [--no_download]
    python -m s4speech.corpora.librispeech --long_form data/test_clean --data_dir data/test_clean_long
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Iterable, Sequence

import soundfile as sf

from s4speech.corpora.longform import by_speaker, concat_long_form
from s4speech.corpora.cli import corpus_main
from s4speech.io.download import extract, fetch, md5sum
from s4speech.io.kaldi import Utterance, write_kaldi_dir

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



# --------------------------------------------------------------------------
# download


def _librispeech_root(corpus_dir: str | Path) -> Path:
    corpus_dir = Path(corpus_dir)
    if (corpus_dir / "LibriSpeech").is_dir() or corpus_dir.name != "LibriSpeech":
        return corpus_dir / "LibriSpeech"
    return corpus_dir


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
                fetch(f"{base_url}/{part}.tar.gz", archive)
            except OSError as e:  # no network, DNS, HTTP error: one clear line
                raise OSError(f"{e}; or put LibriSpeech/{part} under {corpus_dir} by hand") from e
        if part in sums:
            got = md5sum(archive)
            if got != sums[part]:
                archive.unlink()
                raise ValueError(f"{archive}: MD5 {got} != expected {sums[part]}; deleted, run again")
        else:
            log.warning("%s: no known MD5, not verified", archive)
        root = corpus_dir / "LibriSpeech"
        extract(archive, f"LibriSpeech/{part}", root / part,
                extras={f"LibriSpeech/{x}": root / x for x in ("README.TXT", "CHAPTERS.TXT", "SPEAKERS.TXT",
                                                                "BOOKS.TXT", "LICENSE.TXT")})
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
        raise FileNotFoundError(f"{root}: LibriSpeech part not found (and not downloaded)")
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


def long_form(data_dir_in: str | Path, data_dir_out: str | Path,
              durations: Sequence[float] = (30, 60, 120, 300), audio_format: str = "flac") -> dict[float, int]:
    """LibriSpeech long-form sets: same-chapter concatenation (see ``longform.concat_long_form``)."""
    return concat_long_form(data_dir_in, data_dir_out, durations, group_key=by_speaker, text_sep=" ",
                            audio_format=audio_format)


def main(argv: Sequence[str] | None = None) -> int:
    return corpus_main(argv, __doc__, prepare, sets=tuple(PARTS), default_sets=("train_960", "dev", "test_clean", "test_other"),
                       long_form=long_form,
                       options=[(("--no_download",), dict(action="store_true", help="do not download missing parts")),
                                (("--no_check_audio",), dict(action="store_true", help="do not open each FLAC to check it"))],
                       kwargs=lambda a: {"check_audio": not a.no_check_audio, "download_missing": not a.no_download})

if __name__ == "__main__":
    raise SystemExit(main())


LM_TEXT_URL = "https://www.openslr.org/resources/11/librispeech-lm-norm.txt.gz"


def lm_text(corpus_dir: str | Path, out_prefix: str | Path, url: str = LM_TEXT_URL) -> Path:
    """The normalized LibriSpeech LM corpus (OpenSLR 11, ~800M words, upper case like the transcripts),
    downloaded into ``corpus_dir`` when missing (resumable); returns its path (gzipped text)."""
    path = Path(corpus_dir) / "librispeech-lm-norm.txt.gz"
    if not path.exists():
        try:
            fetch(url, path)
        except OSError as e:
            raise OSError(f"{e}; or put librispeech-lm-norm.txt.gz into {corpus_dir}, "
                          "or give --lm_train_text") from e
    return path
