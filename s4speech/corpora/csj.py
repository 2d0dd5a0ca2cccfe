"""Data preparation for the Corpus of Spontaneous Japanese (CSJ).

CSJ is licensed and never downloaded: ``--corpus_dir`` is the root of the
distributed corpus (version "CSJ", the USB/HDD layout)::

    MORPH/SDB/{core,noncore}/<lecture>.sdb    morphological database, one short unit word per line
    WAV/{core,noncore}/<lecture>.wav          16 kHz lecture audio
    WAV/{core,noncore}/<lecture>-{L,R}.wav    dialogues (D*): one file per channel

SDB files
---------
Shift-JIS text (decoded as ``cp932``), tab-separated columns, one line per
short unit word (SUW) in time order. The columns this module relies on
(0-based, the same ones the Kaldi/ESPnet ``csj_make_trans`` scripts read):

* 3: IPU (inter-pausal unit) information: ``<ipu id> <start>-<end> <ch>:...``,
  e.g. ``0001 00050.425-00052.350 L:-001-001``: IPU number, its start and end in
  seconds from the start of the recording, the channel (``L``/``R``, which
  matters for dialogues only). Every SUW line of an IPU repeats it.
* 5: the orthographic form of the word, with the transcription tags, e.g.
  ``(F えー)``, ``(D こ)``, ``(A エーアイ;ＡＩ)``, ``<H>``.
* 10: its pronunciation in katakana, with the same kind of tags (used when
  ``form="kana"``).

Other columns (POS etc.) are not used; a line needs at least 6 columns (11
with ``form="kana"``) and a parsable column 3. ``encoding="auto"`` (default)
decodes strict UTF-8, then strict EUC-JP, then Shift-JIS (cp932), and
rejects text with private-use or C1 control characters: the order goes from
the strictest byte grammar to the loosest, so a Shift-JIS file (as
distributed) is never taken for one of the others, and EUC-JP or UTF-8
conversions made by other tools are still read right.

Text normalisation (``normalize_words``)
----------------------------------------
The word strings of an IPU (or of IPUs linked by a tag, below) are joined and:

1. ``<...>`` tags are deleted: noise and events (``<笑>``, ``<咳>``,
   ``<息>``, ``<雑音>``, ``<拍手>``, ``<フロア発話>``...), lengthening ``<H>``,
   glottal stop ``<Q>``, pauses ``<P:...>``, etc.
2. ``(X ...)`` tags are unwrapped, nested and spanning several words alike,
   keeping what was said in the written form: fillers ``(F えー)`` → えー,
   disfluent fragments ``(D こ)`` → こ, and likewise M, O, R, X, B, L, K,
   笑, 泣, 咳 and any other tag. A tag with alternatives ``a;b`` keeps the
   last one (the orthographic form: ``(A エーアイ;ＡＩ)`` → ＡＩ,
   ``(W ウー;ウーン)`` → ウーン, ``(K ...;...)`` likewise). In ``(? a,b)``
   (uncertain hearing with candidates) the first candidate is kept.
3. All remaining ASCII characters are deleted from each word (CSJ text is
   full-width: ASCII is markup only), as the Kaldi recipe does; then a
   trailing ``・`` is removed, ``んー``/``ンー`` → ``ん``/``ン``, ``ゎ``/``ヮ``
   → ``わ``/``ワ``; empty words are dropped.
4. A unit whose text contains ``×`` (unintelligible or anonymised speech,
   e.g. ``(R ××)``) or that is empty after 1–3 (only noise) is dropped.

Words are joined with ``word_sep`` (default ``""``: no spaces, as ESPnet's
CSJ recipe has its text).

Segmentation
------------
1. SUW lines are grouped into IPUs (consecutive lines with the same column 3),
   per channel.
2. An IPU that ends inside an open ``(`` tag is linked with the following
   IPU(s) until the tag closes (tags do span IPUs), forming one unit.
3. Units that are dropped (``×``, empty, a malformed line, an unclosed or
   stray tag) are never part of an utterance, and no utterance spans them.
4. Consecutive units are merged into one utterance while the pause between
   them is at least 0 (never across overlapping or out-of-order IPUs) and at
   most ``max_gap`` (0.5 s, the pause threshold of ESPnet/Kaldi's
   CSJ recipe) and the merged utterance lasts at most ``max_duration``
   (20 s); a single unit longer than ``max_duration`` stays whole.

Utterance id ``<speaker>_<start ms, 7 digits>_<end ms, 7 digits>`` (the Kaldi
CSJ convention); speaker = lecture id (``<lecture>-L``/``-R`` for the two
channels of a dialogue); ``segments`` points into the lecture WAV.

Data sets
---------
``eval1``/``eval2``/``eval3``: the standard evaluation lectures (``EVAL``).
``EXCLUDED``: other lectures by eval speakers, left out of train and dev.
``dev``: training lectures held out by a fixed rule on the lecture id
(``is_dev``: md5 of the id modulo 100 is below ``DEV_PERCENT``, about 1 % of
the lectures, ~6 h; the same whatever subset of the corpus is present).
``train``: every other lecture of core and noncore.

Bad input: a malformed line, an undecodable SDB file, a missing or
unreadable WAV is logged (``logging.warning`` naming the file) and the item
(IPU or lecture) skipped; a duplicate lecture or utterance id is a
``ValueError``.

Usage, from the repository root::

    python -m s4speech.corpora.csj --corpus_dir /db/CSJ --data_dir data
    python -m s4speech.corpora.csj --long_form data/eval1 --data_dir data/eval1_long
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import soundfile as sf

from s4speech.corpora.cli import corpus_main
from s4speech.io.kaldi import Utterance, write_kaldi_dir

from s4speech.corpora.longform import by_speaker, concat_long_form

log = logging.getLogger(__name__)

EVAL: dict[str, tuple[str, ...]] = {
    "eval1": ("A01M0110", "A01M0137", "A01M0097", "A04M0123", "A04M0121",
              "A04M0051", "A03M0156", "A03M0112", "A03M0106", "A05M0011"),
    "eval2": ("A01M0056", "A03F0072", "A02M0012", "A03M0016", "A06M0064",
              "A06F0135", "A01F0034", "A01F0063", "A01F0001", "A01M0141"),
    "eval3": ("S00M0112", "S00F0066", "S00M0213", "S00F0019", "S00M0079",
              "S01F0105", "S00F0152", "S00M0070", "S00M0008", "S00F0148"),
}
# Other recordings of an evaluation speaker (the speaker of A01M0056).
EXCLUDED: tuple[str, ...] = ("S05M0613", "R00M0187", "D01M0019", "D04M0056", "D02M0028", "D03M0017")
DEV_PERCENT = 1
SETS = ("train", "dev", "eval1", "eval2", "eval3")

TIME_COL, ORTH_COL, KANA_COL = 3, 5, 10
_TIME_RE = re.compile(r"^\s*(\d+)\s+(\d+(?:\.\d*)?)-(\d+(?:\.\d*)?)(?:\s+(\S+))?")
_NOISE_RE = re.compile(r"<[^<>]*>")
_TAG_RE = re.compile(r"\(([^\s()<>;\x1f]{1,4}) ")
_ASCII_RE = re.compile(r"[\x00-\x7f]")
_SEP = "\x1f"  # word boundary while parsing
_ODD_RE = re.compile("[\x80-\x9f\ue000-\uf8ff\U000f0000-\U0010ffff]")  # C1 controls, private use


def split_of(lecture: str) -> str:
    """``eval1``/``eval2``/``eval3``, ``excluded``, ``dev`` or ``train``."""
    for name, ids in EVAL.items():
        if lecture in ids:
            return name
    if lecture in EXCLUDED:
        return "excluded"
    return "dev" if is_dev(lecture) else "train"


def is_dev(lecture: str) -> bool:
    """The fixed held-out rule (see the module docstring); eval/excluded lectures are never dev."""
    return int(hashlib.md5(lecture.encode()).hexdigest(), 16) % 100 < DEV_PERCENT


# --------------------------------------------------------------------------
# SDB reading


class SdbError(ValueError):
    pass


def decode_sdb(data: bytes, encoding: str = "auto") -> str:
    """Bytes of an SDB file -> text (see the module docstring); ``SdbError`` when it does not decode."""
    if encoding == "auto":
        if data.isascii():
            return data.decode("ascii")
        for enc in ("utf-8", "euc_jp", "cp932"):
            try:
                return _checked(data.decode(enc), enc)
            except (UnicodeDecodeError, SdbError):
                continue
        raise SdbError("not UTF-8, EUC-JP or Shift-JIS text")
    try:
        return _checked(data.decode(encoding), encoding)
    except UnicodeDecodeError as e:
        raise SdbError(f"does not decode as {encoding}: {e}") from None


def _checked(text: str, enc: str) -> str:
    m = _ODD_RE.search(text)
    if m:
        raise SdbError(f"decodes as {enc} only to control/private-use character U+{ord(m.group()):04X}")
    return text


@dataclass
class Ipu:
    ipu: str
    start: float
    end: float
    channel: str
    words: list[str] = field(default_factory=list)
    bad: bool = False


def read_sdb(path: str | Path, form: str = "orth", encoding: str = "auto") -> list[Ipu]:
    """IPUs of an SDB file in file order. Raises ``SdbError`` if the file does not decode.

    A malformed line is warned about; the IPU it is in (or the IPUs either
    side of it, when it cannot be placed) is marked ``bad``.
    """
    path = Path(path)
    col = {"orth": ORTH_COL, "kana": KANA_COL}[form]
    text = decode_sdb(path.read_bytes(), encoding)
    ipus: list[Ipu] = []
    cur: Ipu | None = None
    pending_bad = False
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        m = _TIME_RE.match(cols[TIME_COL]) if len(cols) > TIME_COL else None
        problem = None
        if m is None:
            problem = f"no IPU time information in column {TIME_COL}"
        elif len(cols) <= col:
            problem = f"{len(cols)} columns, need {col + 1}"
        elif float(m.group(3)) < float(m.group(2)):
            problem = "IPU ends before it starts"
        if problem:
            log.warning("%s:%d: malformed line (%s); its IPU is skipped", path, n, problem)
            if cur is not None:
                cur.bad = True
            pending_bad = True
            continue
        ipu, start, end = m.group(1), float(m.group(2)), float(m.group(3))
        info = m.group(4) or ""
        channel = info.split(":")[0] if ":" in info and info.split(":")[0] else "L"
        key = (ipu, start, end, channel)
        if cur is None or (cur.ipu, cur.start, cur.end, cur.channel) != key:
            cur = Ipu(ipu, start, end, channel, bad=pending_bad)
            ipus.append(cur)
        pending_bad = False
        cur.words.append(cols[col].strip())
    return ipus


# --------------------------------------------------------------------------
# text


def _tag_depth(word: str) -> int:
    w = _NOISE_RE.sub("", word)
    return w.count("(") - w.count(")")


def _parse(s: str, i: int, tag: str | None) -> tuple[str, int]:
    """Evaluate tags in ``s`` from ``i``; inside a tag, stop after its ``)``."""
    alts = [""]
    while i < len(s):
        c = s[i]
        if c == "(":
            m = _TAG_RE.match(s, i)
            if m is None:
                raise SdbError(f"'(' without a tag name at {s[i:i + 10]!r}")
            inner, i = _parse(s, m.end(), m.group(1))
            alts[-1] += inner
            continue
        if c == ")":
            if tag is None:
                raise SdbError("')' without '('")
            return _choose(alts, tag), i + 1
        if c == ";" and tag is not None:
            alts.append("")
        else:
            alts[-1] += c
        i += 1
    if tag is not None:
        raise SdbError(f"tag ({tag} not closed")
    return alts[-1], i


def _choose(alts: list[str], tag: str) -> str:
    if tag.startswith("?") and "," in alts[0] and len(alts) == 1:
        return alts[0].split(",")[0]
    return alts[-1]


def _clean_word(w: str) -> str:
    w = _ASCII_RE.sub("", w).replace("\u3000", "")
    w = w.rstrip("・")
    w = re.sub(r"([んン])ー+", r"\1", w)
    return w.replace("ゎ", "わ").replace("ヮ", "ワ")


def normalize_words(words: Sequence[str], word_sep: str = "") -> str:
    """Normalised text of a run of SDB word strings (rules in the module docstring).

    Raises ``SdbError`` on unbalanced tags. May return text containing ``×``.
    """
    s = _SEP.join(_NOISE_RE.sub("", w).replace(_SEP, "") for w in words)
    out, _ = _parse(s, 0, None)
    return word_sep.join(w for w in (_clean_word(x) for x in out.split(_SEP)) if w)


# --------------------------------------------------------------------------
# segmentation


@dataclass
class Segment:
    channel: str
    start: float
    end: float
    text: str


def segment_ipus(ipus: Sequence[Ipu], max_gap: float = 0.5, max_duration: float = 20.0,
                 word_sep: str = "", source: str = "") -> list[Segment]:
    """Utterance segments from the IPUs of one lecture (rules in the module docstring)."""
    segments: list[Segment] = []
    for channel in dict.fromkeys(i.channel for i in ipus):
        # units: runs of IPUs linked by a tag left open at an IPU's end
        units: list[list[Ipu]] = []
        depth = 0
        for ipu in (i for i in ipus if i.channel == channel):
            if depth > 0:
                units[-1].append(ipu)
            else:
                units.append([ipu])
            depth += sum(_tag_depth(w) for w in ipu.words)
            if depth < 0:
                depth = 0
                units[-1][0].bad = True  # a stray ')': malformed, dropped below
        cur: Segment | None = None
        for unit in units:
            where = f"{source} IPU {unit[0].ipu}" + (f"-{unit[-1].ipu}" if len(unit) > 1 else "")
            text = None
            if not any(i.bad for i in unit):
                try:
                    text = normalize_words([w for i in unit for w in i.words], word_sep)
                except SdbError as e:
                    log.warning("%s: %s; skipped", where, e)
            if not text or "×" in text:
                if text:
                    log.debug("%s: unintelligible/anonymised ('×'); skipped", where)
                if cur is not None:
                    segments.append(cur)
                cur = None
                continue
            start, end = unit[0].start, max(i.end for i in unit)
            if cur is not None and 0 <= start - cur.end <= max_gap and end - cur.start <= max_duration:
                cur.end = max(cur.end, end)
                cur.text = f"{cur.text}{word_sep}{text}"
            else:
                if cur is not None:
                    segments.append(cur)
                cur = Segment(channel, start, end, text)
        if cur is not None:
            segments.append(cur)
    return segments


# --------------------------------------------------------------------------
# lectures and data dirs


def find_lectures(corpus_dir: str | Path) -> dict[str, Path]:
    """{lecture id: SDB path} for ``MORPH/SDB/*/*.sdb``; a lecture found twice is an error."""
    root = Path(corpus_dir) / "MORPH" / "SDB"
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not found (is {corpus_dir} the CSJ root?)")
    out: dict[str, Path] = {}
    for p in sorted(root.glob("*/*")):
        if p.suffix.lower() != ".sdb" or not p.is_file():
            continue
        if p.stem in out:
            raise ValueError(f"duplicate lecture id {p.stem!r}: {out[p.stem]} and {p}")
        out[p.stem] = p
    return out


def _find_wav(corpus_dir: Path, volume: str, name: str) -> Path | None:
    for d in (corpus_dir / "WAV" / volume, corpus_dir / "WAV"):
        if (d / f"{name}.wav").is_file():
            return d / f"{name}.wav"
    return None


def prepare_lecture(corpus_dir: str | Path, sdb: str | Path, form: str = "orth", max_gap: float = 0.5,
                    max_duration: float = 20.0, word_sep: str = "", encoding: str = "auto") -> list[Utterance]:
    """Utterances of one lecture (``sdb`` under ``corpus_dir/MORPH/SDB/<volume>/``)."""
    corpus_dir, sdb = Path(corpus_dir), Path(sdb)
    lecture, volume = sdb.stem, sdb.parent.name
    try:
        ipus = read_sdb(sdb, form, encoding)
    except (OSError, SdbError) as e:
        log.warning("%s: %s; lecture skipped", sdb, e)
        return []
    channels = list(dict.fromkeys(i.channel for i in ipus))
    wavs: dict[str, tuple[str, Path, float]] = {}  # channel -> speaker, wav, duration
    for ch in channels:
        if len(channels) == 1:
            speaker, wav = lecture, _find_wav(corpus_dir, volume, lecture) or _find_wav(
                corpus_dir, volume, f"{lecture}-{ch}")
        else:
            speaker, wav = f"{lecture}-{ch}", _find_wav(corpus_dir, volume, f"{lecture}-{ch}")
        if wav is None:
            log.warning("%s: no WAV/%s/%s.wav for channel %s; lecture skipped", sdb, volume, speaker, ch)
            return []
        try:
            info = sf.info(str(wav))
            if info.frames <= 0:
                raise RuntimeError("no samples")
        except Exception as e:
            log.warning("%s: unreadable audio (%s); lecture %s skipped", wav, e, lecture)
            return []
        if info.samplerate != 16000:
            log.warning("%s: sample rate %d, expected 16000", wav, info.samplerate)
        wavs[ch] = (speaker, wav.resolve(), info.frames / info.samplerate)
    utts = []
    for seg in segment_ipus(ipus, max_gap, max_duration, word_sep, source=str(sdb)):
        speaker, wav, dur = wavs[seg.channel]
        end = min(seg.end, dur)
        if end - seg.start < 0.01:
            log.warning("%s: segment %.3f-%.3f lies beyond the end of %s (%.3f s); skipped",
                        sdb, seg.start, seg.end, wav, dur)
            continue
        utt_id = f"{speaker}_{round(seg.start * 1000):07d}_{round(end * 1000):07d}"
        utts.append(Utterance(utt_id, speaker, str(wav), seg.text, seg.start, end))
    return utts


def prepare(corpus_dir: str | Path, data_dir: str | Path, sets: Sequence[str] = SETS, form: str = "orth",
            max_gap: float = 0.5, max_duration: float = 20.0, word_sep: str = "",
            encoding: str = "auto") -> dict[str, int]:
    """Write ``data_dir/<set>`` for ``sets`` (of ``SETS``); returns {set: utterance count}."""
    for s in sets:
        if s not in SETS:
            raise ValueError(f"unknown CSJ set {s!r} (known: {', '.join(SETS)})")
    lectures = find_lectures(corpus_dir)
    by_set: dict[str, list[Utterance]] = {s: [] for s in sets}
    found: dict[str, set[str]] = {s: set() for s in sets}
    for lecture, sdb in lectures.items():
        split = split_of(lecture)
        if split not in by_set:
            continue
        utts = prepare_lecture(corpus_dir, sdb, form, max_gap, max_duration, word_sep, encoding)
        if utts:
            found[split].add(lecture)
        by_set[split].extend(utts)
    counts = {}
    for s in sets:
        if s in EVAL and (missing := sorted(set(EVAL[s]) - found[s])):
            log.warning("%s: %d of %d lectures missing: %s", s, len(missing), len(EVAL[s]), " ".join(missing))
        counts[s] = write_kaldi_dir(Path(data_dir) / s, by_set[s])
        log.info("%s: %d utterances from %d lectures", Path(data_dir) / s, counts[s], len(found[s]))
    return counts


def long_form(data_dir_in: str | Path, data_dir_out: str | Path,
              durations: Sequence[float] = (30, 60, 120, 300), text_sep: str = "",
              audio_format: str = "flac") -> dict[float, int]:
    """CSJ long-form sets: same-lecture concatenation (see ``longform.concat_long_form``)."""
    return concat_long_form(data_dir_in, data_dir_out, durations, group_key=by_speaker, text_sep=text_sep,
                            audio_format=audio_format)


def main(argv: Sequence[str] | None = None) -> int:
    return corpus_main(
        argv, __doc__, prepare, sets=SETS, long_form=long_form,
        options=[(("--form",), dict(choices=("orth", "kana"), default="orth",
                                    help="transcript from the orthographic (column 5) or katakana (column 10) form")),
                 (("--max_gap",), dict(type=float, default=0.5, help="merge IPUs separated by at most this (s)")),
                 (("--max_duration",), dict(type=float, default=20.0, help="longest merged utterance (s)")),
                 (("--word_sep",), dict(default="", help="between words in text (default: none)")),
                 (("--encoding",), dict(default="auto", help="SDB encoding (default: auto-detect)"))],
        kwargs=lambda a: dict(form=a.form, max_gap=a.max_gap, max_duration=a.max_duration, word_sep=a.word_sep,
                              encoding=a.encoding))

if __name__ == "__main__":
    raise SystemExit(main())
