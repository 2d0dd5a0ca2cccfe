"""(f) Data-stage benchmark: time and bytes written of the recipes' data stages on generated corpora.

    python -m s4speech.bench.data [--hours 2] [--nj 2] [--json F] [--out BENCHMARKS.md]
    s4speech bench data ...

Two corpora are generated from real speech (the transcribed ``mini_an4`` recordings and ``jfk.flac`` of
``--shared``, tiled until the corpus holds ``--hours`` of audio):

* LibriSpeech layout: ``LibriSpeech/<part>/<reader>/<chapter>/*.flac`` + ``*.trans.txt``, 16 kHz FLAC,
  utterances of 8-16 s (clips joined with short pauses), chapters of at most 6 min, all seven parts
  (train 80 % in the proportions 100 : 360 : 500, dev-clean / dev-other 3 % each, test-clean 10 %,
  test-other 4 %); sets train_960, dev, test_clean, test_other, long-form test_clean_long_{30,60,120,300}s;
  tokens: unigram, 100 pieces.
* CSJ layout: ``WAV/<volume>/<lecture>.wav`` (16 kHz 16-bit WAV) + ``MORPH/SDB/<volume>/<lecture>.sdb``
  (Shift-JIS, one short-unit word a line with its IPU times, as ``s4speech.corpora.csj`` reads them),
  lectures of at most 6 min of IPUs (a clip each, about 3 words a second, pauses of 0.1-1.2 s); train 86 %,
  dev 2 % (lecture ids the corpus' dev rule picks), eval1 6 %, eval2 / eval3 3 % each (the standard eval
  lecture ids); long-form eval1_long_{30,60,120,300}s; tokens: characters.

The data stages of ``s4speech.pipeline.data`` then run on an ``ASRRecipe`` with ``--nj`` processes, in
the recipes' order: ``stage_data`` (corpus preparation; the long-form sets it makes from the test set
are timed as their own row, ``longform``: the corpus' ``long_form``, as ``stage_data`` calls it),
``stage_format``, ``stage_filter``, ``stage_tokenizer``. Per stage: wall seconds, CPU seconds of this
process and its (reaped) children (``resource.getrusage``), the bytes of the files it created or
replaced under ``data/`` and ``dump/`` (audio by suffix, the rest text/models), and the hours of audio
of the sets it processes (recording durations: whole files, or whole lectures for a segmented set).
ESPnet's tokenizer modules are imported once before the stages (a fixed cost reported on its own).

Report: throughput = hours of audio / wall hours / cores used (``--nj`` for the format stage, capped by
the machine's cores; 1 for the stages that run in one process), bytes per hour of audio, the bytes the
stages write for the training set (``data/<train>``, ``dump/raw/<train>``, ``dump/raw/<train>_filtered``)
over the corpus' training audio, and the wall time extrapolated to LibriSpeech 960 h and CSJ on 32 cores
(hours of the full corpus' sets / (throughput per core x cores)); the targets are
``s4speech.bench.targets`` (table "f"). The section goes between ``<!-- data-bench -->`` and
``<!-- /data-bench -->`` of ``--out`` (appended when the markers are missing, the rest kept).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s4speech.bench.sections import write_between
from s4speech.io.files import atomic_write
from s4speech.io.machine import cpu_model

MARKERS = BEGIN, END = "<!-- data-bench -->", "<!-- /data-bench -->"
SR = 16000
CORES = 32  # the extrapolation's machine
AUDIO_SUFFIXES = {".flac", ".wav", ".sph", ".ogg", ".mp3", ".opus"}
DURATIONS = (30, 60, 120, 300)  # the recipes' long-form sets
STAGES = ("data", "longform", "format", "filter", "tokenizer")
# files whose size does not grow with the hours of audio (the tokenizer's model, the token list, stage markers)
FIXED_NAMES = {"bpe.model", "bpe.vocab", "tokens.txt", ".done"}
SERIAL = {"data", "longform", "filter", "tokenizer"}  # run in one process (the tokenizer: sentencepiece may thread)
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"

# the full corpora the report extrapolates to: hours of audio per set (LibriSpeech: the OpenSLR parts;
# CSJ: about 520 h of training lectures, dev 1 % of them, eval1-3 ~1.8 / 1.9 / 1.3 h)
FULL = {
    "librispeech": {"title": "LibriSpeech 960 h", "train": 960.0, "dev": 10.7, "test": [5.4, 5.1], "long_src": 5.4},
    "csj": {"title": "CSJ (~600 h; 520 h train)", "train": 520.0, "dev": 5.2, "test": [1.8, 1.9, 1.3],
            "long_src": 1.8},
}


def full_stage_hours(kind: str) -> dict[str, float]:
    """Hours of audio each stage processes on the full corpus (the long-form sets: about their source each)."""
    f = FULL[kind]
    base = f["train"] + f["dev"] + sum(f["test"])
    return {"data": base, "longform": f["long_src"], "format": base + len(DURATIONS) * f["long_src"],
            "filter": f["train"] + f["dev"], "tokenizer": f["train"]}


# ------------------------------------------------------------------------------ speech sources
def speech_clips(shared: Path) -> list[tuple[np.ndarray, str]]:
    """[(int16 samples at 16 kHz, upper-case English transcript)]: the transcribed mini_an4 recordings and jfk.flac."""
    import soundfile as sf

    from s4speech.io.audio import read

    texts = {}
    for t in sorted((shared / "mini_an4" / "etc").glob("*.transcription")):
        for line in t.read_text().splitlines():
            words, _, utt = line.strip().rpartition(" (")
            texts[utt.rstrip(")")] = " ".join(w for w in words.split() if w not in ("<s>", "</s>"))
    clips = []
    for sph in sorted((shared / "mini_an4" / "wav").glob("*/*/*.sph")):
        if sph.stem in texts:
            x, rate = sf.read(sph, dtype="int16")
            if rate == SR and x.ndim == 1:
                clips.append((x, texts[sph.stem]))
    jfk = shared / "misc" / "jfk.flac"
    if jfk.exists():
        x, _ = read(jfk, SR)
        text = ("AND SO MY FELLOW AMERICANS ASK NOT WHAT YOUR COUNTRY CAN DO FOR YOU "
                "ASK WHAT YOU CAN DO FOR YOUR COUNTRY")
        clips.append(((np.clip(x, -1, 1) * 32000).astype(np.int16), text))
    if not clips:
        raise SystemExit(f"no speech under {shared} (mini_an4/, misc/jfk.flac): give --shared")
    return clips


def lexicon(n: int = 5000, seed: int = 1) -> tuple[list[str], np.ndarray]:
    """``n`` upper-case pseudo-words of 1-4 syllables and their Zipf probabilities (1 / rank)."""
    rng = np.random.default_rng(seed)
    onsets = ["", "B", "C", "D", "F", "G", "H", "K", "L", "M", "N", "P", "R", "S", "T", "W", "TH", "SH", "ST", "TR"]
    vowels = ["A", "E", "I", "O", "U", "EA", "OU", "AI"]
    codas = ["", "", "N", "R", "S", "T", "D", "L", "NG", "CK"]
    words: dict[str, None] = {}
    while len(words) < n:
        k = rng.choice([1, 1, 2, 2, 2, 3, 3, 4])
        words["".join(onsets[rng.integers(len(onsets))] + vowels[rng.integers(len(vowels))]
                      + codas[rng.integers(len(codas))] for _ in range(k))] = None
    p = 1.0 / np.arange(1, n + 1)
    return list(words), p / p.sum()


WORDS_PER_SEC = 2.7  # LibriSpeech: ~9.4 M words in 960 h


@dataclass
class Tiler:
    """Draws clips at random (gain 0.5-1.0, so that no two files are alike) and transcripts of a length
    like LibriSpeech's for a duration (pseudo-words of a Zipf lexicon: the speech's own words are too few
    for a tokenizer of 100 pieces)."""

    clips: list
    rng: np.random.Generator

    def __post_init__(self):
        self.words, self.p = lexicon()

    def transcript(self, seconds: float) -> str:
        n = max(1, round(WORDS_PER_SEC * seconds))
        return " ".join(self.words[i] for i in self.rng.choice(len(self.words), n, p=self.p))

    def clip(self) -> tuple[np.ndarray, str]:
        x, text = self.clips[self.rng.integers(len(self.clips))]
        return (x * self.rng.uniform(0.5, 1.0)).astype(np.int16), text

    def pause(self, lo: float, hi: float) -> np.ndarray:
        n = int(self.rng.uniform(lo, hi) * SR)
        return self.rng.normal(0, 3, n).astype(np.int16)  # room noise, about -80 dBFS


# ------------------------------------------------------------------------------ LibriSpeech layout
LS_SPLIT = {"train-clean-100": 0.8 * 100 / 960, "train-clean-360": 0.8 * 360 / 960,
            "train-other-500": 0.8 * 500 / 960, "dev-clean": 0.03, "dev-other": 0.03,
            "test-clean": 0.10, "test-other": 0.04}
LS_SETS = dict(train_set="train_960", valid_set="dev", test_sets=["test_clean", "test_other"],
               long_sets=[f"test_clean_long_{d}s" for d in DURATIONS])


def make_librispeech(root: Path, hours: float, tiler: Tiler, chapter_sec: float = 360) -> None:
    """``root/LibriSpeech/<part>/...``: every part at least one utterance, ``hours`` of audio in all."""
    import soundfile as sf

    reader = 100
    for part, share in LS_SPLIT.items():
        left = share * hours * 3600
        chapter = 0
        while left > 0 or chapter == 0:
            reader += 1
            chapter = reader * 10
            d = root / "LibriSpeech" / part / str(reader) / str(chapter)
            d.mkdir(parents=True, exist_ok=True)
            lines, sec, n = [], 0.0, 0
            while (left > 0 or n == 0) and sec < chapter_sec:
                target = tiler.rng.uniform(8, 16)
                pieces, m = [], 0
                while m < target * SR:
                    x, _ = tiler.clip()
                    pieces += [x, tiler.pause(0.1, 0.4)]
                    m += len(x) + len(pieces[-1])
                utt = f"{reader}-{chapter}-{n:04d}"
                sf.write(d / f"{utt}.flac", np.concatenate(pieces), SR, subtype="PCM_16")
                lines.append(f"{utt} {tiler.transcript(m / SR)}\n")
                sec += m / SR
                left -= m / SR
                n += 1
            (d / f"{reader}-{chapter}.trans.txt").write_text("".join(lines))


# ------------------------------------------------------------------------------ CSJ layout
# short-unit words (orthographic form, pronunciation), fillers and disfluencies among them
WORDS = [("今日", "キョー"), ("は", "ワ"), ("音声", "オンセー"), ("認識", "ニンシキ"), ("の", "ノ"), ("話", "ハナシ"),
         ("を", "オ"), ("し", "シ"), ("ます", "マス"), ("これ", "コレ"), ("大切", "タイセツ"), ("です", "デス"),
         ("結果", "ケッカ"), ("次", "ツギ"), ("に", "ニ"), ("表", "ヒョー"), ("機能", "キノー"), ("見", "ミ"),
         ("ソフト", "ソフト"), ("能力", "ノーリョク"), ("声", "コエ"), ("出し", "ダシ"), ("最後", "サイゴ"),
         ("文", "ブン"), ("研究", "ケンキュー"), ("データ", "データ"), ("方法", "ホーホー"), ("実験", "ジッケン"),
         ("発表", "ハッピョー"), ("学習", "ガクシュー"), ("言語", "ゲンゴ"), ("モデル", "モデル"), ("時間", "ジカン"),
         ("で", "デ"), ("が", "ガ"), ("と", "ト"), ("(F えー)", "(F エー)"), ("(F あの)", "(F アノ)"),
         ("(D こ)", "(D コ)"), ("<H>", "<H>")]
CSJ_SPLIT = {"train": 0.86, "dev": 0.02, "eval1": 0.06, "eval2": 0.03, "eval3": 0.03}
CSJ_SETS = dict(train_set="train", valid_set="dev", test_sets=["eval1", "eval2", "eval3"],
                long_sets=[f"eval1_long_{d}s" for d in DURATIONS])


def csj_lecture_ids(split: str):
    """Lecture ids that ``s4speech.corpora.csj`` puts into ``split``."""
    from s4speech.corpora import csj

    if split in csj.EVAL:
        yield from csj.EVAL[split]
        return
    for i in range(10000):
        for lecture in (f"A01M{i:04d}", f"S02F{i:04d}"):
            if csj.split_of(lecture) == split:
                yield lecture


def _sdb_line(lecture: str, n: int, ipu: int, start: float, end: float, orth: str, kana: str) -> str:
    plain = orth.strip("()<>")
    time_col = f"{ipu:04d} {start:09.3f}-{end:09.3f} L:-001-001"
    return "\t".join([lecture, f"{n:06d}", lecture, time_col, plain, orth, kana, plain, kana, plain, kana,
                      "名詞", "", "", "", "", ""])


def make_csj(root: Path, hours: float, tiler: Tiler, lecture_sec: float = 360) -> None:
    """``root/{WAV,MORPH/SDB}/<volume>/<lecture>.{wav,sdb}``: every set at least one lecture, ``hours`` in all."""
    import soundfile as sf

    for split, share in CSJ_SPLIT.items():
        left = share * hours * 3600
        volume = "core" if split.startswith("eval") else "noncore"
        ids = csj_lecture_ids(split)
        first = True
        while left > 0 or first:
            first = False
            lecture = next(ids)
            audio, lines, t, n = [tiler.pause(0.5, 0.5)], [], 0.5, 0
            ipu = 0
            while (left > 0 or ipu == 0) and t < lecture_sec:
                gap = tiler.pause(0.1, 1.2) if ipu else np.zeros(0, np.int16)
                x, _ = tiler.clip()
                start = t + len(gap) / SR
                end = start + len(x) / SR
                ipu += 1
                for _ in range(max(1, round(3.2 * len(x) / SR))):
                    orth, kana = WORDS[tiler.rng.integers(len(WORDS))]
                    n += 1
                    lines.append(_sdb_line(lecture, n, ipu, start, end, orth, kana))
                audio += [gap, x]
                left -= end - t
                t = end
            audio.append(tiler.pause(0.5, 0.5))
            sdb = root / "MORPH" / "SDB" / volume / f"{lecture}.sdb"
            sdb.parent.mkdir(parents=True, exist_ok=True)
            sdb.write_bytes(("\r\n".join(lines) + "\r\n").encode("cp932"))
            (root / "WAV" / volume).mkdir(parents=True, exist_ok=True)
            sf.write(root / "WAV" / volume / f"{lecture}.wav", np.concatenate(audio), SR, subtype="PCM_16")


CORPORA = {"librispeech": (make_librispeech, LS_SETS, dict(token_type="unigram", nbpe=100)),
           "csj": (make_csj, CSJ_SETS, dict(token_type="char"))}


# ------------------------------------------------------------------------------ measuring
def snapshot(*dirs: Path) -> dict[str, tuple[int, int, int]]:
    """{path: (size, mtime ns, inode)} of every file below ``dirs``."""
    out = {}
    for d in dirs:
        for dirpath, _, files in os.walk(d):
            for f in files:
                p = os.path.join(dirpath, f)
                st = os.stat(p)
                out[p] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def set_of(path: str, data: Path, dump: Path) -> str:
    """The data set a written file belongs to: ``data/<set>/...``, ``dump/raw/<set>/...``; else its top folder;
    the tokenizer's copy of the training transcripts (``token_list/*/train.txt``): "train.txt"."""
    p = Path(path)
    if p.name == "train.txt" and "token_list" in p.parts:
        return "train.txt"
    for base in (dump / "raw", data):
        with contextlib.suppress(ValueError):
            return p.relative_to(base).parts[0]
    return p.parent.name


def timed(fn, data: Path, dump: Path, train_dirs: set[str]) -> dict:
    """Run ``fn()``: wall and CPU seconds, and the bytes of the files it created or replaced."""
    before = snapshot(data, dump)
    c0, t0 = cpu_seconds(), time.perf_counter()
    fn()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    written = {p: s for p, s in snapshot(data, dump).items() if before.get(p) != s}
    audio = sum(s[0] for p, s in written.items() if Path(p).suffix.lower() in AUDIO_SUFFIXES)
    total = sum(s[0] for s in written.values())
    train = sum(s[0] for p, s in written.items() if set_of(p, data, dump) in train_dirs)
    fixed = sum(s[0] for p, s in written.items() if Path(p).name in FIXED_NAMES)
    return {"wall": wall, "cpu": cpu, "files": len(written), "bytes_audio": audio, "bytes_other": total - audio,
            "bytes_train": train, "bytes_fixed": fixed}


def recording_hours(d: Path) -> float:
    """Hours of the distinct recordings a data dir's wav.scp names."""
    import soundfile as sf

    from s4speech.io.kaldi import read_table

    paths = set(read_table(d / "wav.scp").values())
    return sum(sf.info(p).duration for p in paths) / 3600


def recording_bytes(d: Path) -> int:
    from s4speech.io.kaldi import read_table

    return sum(os.path.getsize(p) for p in set(read_table(d / "wav.scp").values()))


def bench_corpus(kind: str, work: Path, hours: float, nj: int, tiler: Tiler) -> dict:
    """Generate the corpus, run its data stages; the measurements as a dict."""
    from s4speech import corpora
    from s4speech.pipeline.asr import ASRRecipe
    from s4speech.pipeline.data import (LONG_SET, stage_data, stage_filter, stage_format, stage_tokenizer)
    from s4speech.pipeline.runner import mark_done

    make, sets, tokens = CORPORA[kind]
    root = work / kind
    t0 = time.perf_counter()
    make(root / "corpus", hours, tiler)
    generate = time.perf_counter() - t0
    common = dict(corpus=kind, corpus_dir=root / "corpus", datadir=root / "data", dumpdir=root / "dump",
                  expdir=root / "exp", fs=SR, nj=nj, audio_format="flac", **tokens)
    r = ASRRecipe(**common, **sets)
    base = ASRRecipe(**common, **dict(sets, long_sets=[]))
    data, dump = r.datadir, r.dumpdir
    data.mkdir(parents=True, exist_ok=True)
    dump.mkdir(parents=True, exist_ok=True)
    train_dirs = {r.train_set, f"{r.train_set}_filtered", "train.txt"}

    def longform():  # stage_data's part for the long-form sets
        mod = corpora.get(kind)
        by_src: dict[str, list[float]] = {}
        for s in r.long_sets:
            m = LONG_SET.fullmatch(s)
            by_src.setdefault(m.group(1), []).append(float(m.group(2)))
        for src, durations in by_src.items():
            mod.long_form(data / src, data / f"{src}_long", durations, audio_format=r.audio_format)
        for s in r.long_sets:
            if (data / s / "wav.scp").exists():
                mark_done(data / s)

    out = {"generate_wall": generate, "sets": {}, "stages": {}}
    out["stages"]["data"] = timed(lambda: stage_data(base), data, dump, train_dirs)
    base_sets = [r.train_set, r.valid_set] + r.test_sets
    out["stages"]["longform"] = timed(longform, data, dump, train_dirs)
    made = [s for s in r.long_sets if (data / s / "wav.scp").exists()]
    r.long_sets = made  # a long set no group of the (small) test set reaches is not there to format
    hours_of = {s: recording_hours(data / s) for s in base_sets + made}
    out["sets"] = {s: {"hours": h, "utts": len((data / s / "text").read_text().splitlines())}
                   for s, h in hours_of.items()}
    out["train_audio_bytes"] = recording_bytes(data / r.train_set)
    out["long_sets"] = made
    long_src = sorted({LONG_SET.fullmatch(s).group(1) for s in sets["long_sets"]})
    stage_hours = {"data": sum(hours_of[s] for s in base_sets), "longform": sum(hours_of[s] for s in long_src),
                   "format": sum(hours_of.values()), "filter": hours_of[r.train_set] + hours_of[r.valid_set],
                   "tokenizer": hours_of[r.train_set]}
    out["stages"]["format"] = timed(lambda: stage_format(r), data, dump, train_dirs)
    out["stages"]["filter"] = timed(lambda: stage_filter(r), data, dump, train_dirs)
    out["stages"]["tokenizer"] = timed(lambda: stage_tokenizer(r), data, dump, train_dirs)
    cores = min(nj, os.cpu_count() or 1)
    for name, st in out["stages"].items():
        st["hours"] = stage_hours[name]
        st["cores"] = 1 if name in SERIAL else cores
    out["train_hours"] = hours_of[r.train_set]
    out["train_utts"] = out["sets"][r.train_set]["utts"]
    derive(kind, out)
    return out


def derive(kind: str, c: dict) -> None:
    """Throughputs, bytes per hour, the training-set ratio and the extrapolation to the full corpus (in ``c``)."""
    full = full_stage_hours(kind)
    total_i = total_s = 0.0
    for name, st in c["stages"].items():
        st["per_core"] = st["hours"] / (st["wall"] / 3600) / st["cores"]  # audio h per wall h per core
        st["per_cpu"] = st["hours"] / (st["cpu"] / 3600) if st["cpu"] > 0 else float("inf")
        st["bytes_per_hour"] = (st["bytes_audio"] + st["bytes_other"] - st["bytes_fixed"]) / st["hours"]
        st["full_hours"] = full[name]
        st["full_linear"] = full[name] / (st["per_core"] * CORES)  # every stage on 32 cores
        st["full_serial"] = full[name] / (st["per_core"] * (1 if name in SERIAL else CORES))  # one-process stages on 1
        st["full_bytes"] = st["bytes_per_hour"] * full[name] + st["bytes_fixed"]
        total_i += st["full_linear"]
        total_s += st["full_serial"]
    written_train = sum(st["bytes_train"] for st in c["stages"].values())
    c["train_bytes_written"] = written_train
    c["train_ratio"] = written_train / c["train_audio_bytes"]
    c["total_bytes_written"] = sum(st["bytes_audio"] + st["bytes_other"] for st in c["stages"].values())
    c["extrapolation"] = {"title": FULL[kind]["title"], "cores": CORES, "linear_hours": total_i,
                          "serial_hours": total_s, "fixed_s": c.get("fixed_s", 0.0),
                          "train_audio_bytes": c["train_audio_bytes"] / c["train_hours"] * FULL[kind]["train"]}
    x = c["extrapolation"]
    x["written_bytes"] = sum(st["full_bytes"] for st in c["stages"].values())
    x["written_ratio"] = x["written_bytes"] / x["train_audio_bytes"]


# ------------------------------------------------------------------------------ report
def gb(b: float) -> str:
    return f"{b / 1e9:.1f} GB" if b >= 1e9 else f"{b / 1e6:.1f} MB" if b >= 1e6 else f"{b / 1e3:.1f} kB"


def section(res: dict) -> str:
    from s4speech.bench.targets import TARGETS, target_lines

    f, m = res["f"], res["machine"]
    lines = [
        "## (f) Data stages", "",
        f"Machine: {m['cpu']}, {m['cores']} CPU cores, {m['mem_gb']} GiB; Python {m['python']}; "
        f"{time.strftime('%Y-%m-%d', time.localtime(res['time']))}. Load average (1, 5, 15 min) at start: "
        f"{res['load_start']}, at end: {res['load_end']} (other jobs share the machine: the wall times, and so "
        "the throughputs, are lower than on an idle one).", "",
        f"Command: `python -m s4speech.bench.data {' '.join(res['argv'])}` ({res['wall'] / 60:.1f} min)", "",
        f"Generated corpora (`s4speech.bench.data`: real speech of mini_an4 and jfk.flac tiled; {f['hours']:g} h "
        f"requested each): the stages of `s4speech.pipeline.data` with `--nj {f['nj']}`, timed one by one; "
        "`longform` is the long-form part of `stage_data` (concatenations of the test set, FLAC). "
        "Throughput = hours of audio of the sets the stage processes / wall hours / cores used (format: "
        f"`--nj` processes, {f['cores']} here; the other stages run in one process); CPU = this process and "
        "its children (`getrusage`); bytes = files the stage created or replaced under `data/` and `dump/` "
        "(fixed-size: the tokenizer's model and token list, stage markers: not per hour, extrapolated as they are; "
        "for the training set: `data/<train>`, `dump/raw/<train>`, `dump/raw/<train>_filtered` and the tokenizer's "
        "copy of its transcripts). "
        f"The one-time import of ESPnet's tokenizers ({f['fixed_s']:.1f} s) is not in the stage times.", "",
    ]
    for kind, c in f["corpora"].items():
        x = c["extrapolation"]
        lines += [f"### {'LibriSpeech layout' if kind == 'librispeech' else 'CSJ layout'}", "",
                  f"{c['train_hours']:.3f} h of training audio ({c['train_utts']} utterances, "
                  f"{gb(c['train_audio_bytes'])}), sets: " + ", ".join(
                      f"{s} {v['hours'] * 60:.1f} min" for s, v in c["sets"].items())
                  + f"; long-form sets made: {', '.join(c['long_sets']) or 'none'}.", "",
                  "| stage | audio (h) | wall (s) | CPU (s) | cores | h audio / wall h / core | h audio / CPU h "
                  "| written: audio | written: text | of it fixed-size | bytes / h audio | for the training set "
                  f"| {x['title']}: h of audio | wall on {CORES} cores (linear) | wall, one-process stages on 1 core "
                  "| written |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name in STAGES:
            st = c["stages"][name]
            lines.append(f"| {name} | {st['hours']:.3f} | {st['wall']:.2f} | {st['cpu']:.2f} | {st['cores']} "
                         f"| {st['per_core']:,.0f} | {st['per_cpu']:,.0f} | {gb(st['bytes_audio'])} "
                         f"| {gb(st['bytes_other'])} | {gb(st['bytes_fixed'])} | {gb(st['bytes_per_hour'])} "
                         f"| {gb(st['bytes_train'])} "
                         f"| {st['full_hours']:g} | {st['full_linear'] * 60:.1f} min "
                         f"| {st['full_serial'] * 60:.1f} min "
                         f"| {gb(st['full_bytes'])} |")
        lines += ["", f"Training set: the data stages wrote {gb(c['train_bytes_written'])} for it, "
                      f"**{c['train_ratio']:.4f}×** its {gb(c['train_audio_bytes'])} of audio (before the redesign, "
                      "stages 1-5 wrote 9.0× on a LibriSpeech-layout tree); all data stages together wrote "
                      f"{gb(c['total_bytes_written'])} ({c['total_bytes_written'] / c['train_audio_bytes']:.3f}× the "
                      "training audio: here the test sets are a larger share of the corpus than in the real one, and "
                      "their long-form FLAC the largest part; at the full corpus' set sizes "
                      f"{gb(x['written_bytes'])}, {x['written_ratio']:.3f}× its training audio).",
                  f"{x['title']} on {CORES} cores: **{x['linear_hours'] * 60:.1f} min** with every stage scaled to "
                  f"{CORES} cores, **{x['serial_hours'] * 60:.1f} min** with the one-process stages on one core "
                  f"(+ {x['fixed_s']:.0f} s of imports); its training audio at this tree's bytes per hour: "
                  f"{gb(x['train_audio_bytes'])}" + (" (the real FLAC: about 57 GB)" if kind == "librispeech" else "")
                  + ".", ""]
    lines += ["Extrapolation: wall = hours of audio of the full corpus' sets / (throughput per core × cores), "
              "assuming linear scaling with the hours and with the cores and that I/O does not limit (the corpus "
              "on a disk that serves 32 readers; no file-system cache effects); the token stage is extrapolated "
              "linearly in the transcript size although sentencepiece's training is not exactly linear (and runs "
              "with 100 pieces here, 5000 in the LibriSpeech recipe). The full corpora: "
              + "; ".join(f"{v['title']}: train {v['train']:g} h, dev {v['dev']:g} h, test "
                          f"{' + '.join(f'{t:g}' for t in v['test'])} h, long-form from {v['long_src']:g} h"
                          for v in FULL.values()) + "."]
    lines += target_lines(res, "f", [t for t in TARGETS if t.table == "f" and t.at.get("corpus") in f["corpora"]])
    return "\n".join(lines)


# ------------------------------------------------------------------------------ the command
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s4speech bench data", description=__doc__.split("\n\n")[0])
    p.add_argument("--hours", type=float, default=2.0, help="hours of audio of each generated corpus (default 2)")
    p.add_argument("--nj", type=int, default=os.cpu_count() or 1, help="processes of the data stages (default: cores)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results as JSON")
    p.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"),
                   help=f"file whose {BEGIN} section is replaced, or appended (default BENCHMARKS.md)")
    p.add_argument("--work", type=Path, default=None, help="where the corpora and outputs go (default: a temporary "
                                                          "folder, removed afterwards)")
    p.add_argument("--corpora", default="librispeech,csj", help="comma-separated: librispeech, csj")
    p.add_argument("--shared", type=Path, default=SHARED, help=f"the speech to tile (default {SHARED})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true", help="the stages' log messages")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    work = a.work or Path(tempfile.mkdtemp(prefix="s4speech-bench-data-"))
    if a.work and any(a.work.iterdir() if a.work.exists() else ()):
        raise SystemExit(f"--work {a.work}: not empty (the stages would skip what is done)")
    load = lambda: " ".join(f"{x:.2f}" for x in os.getloadavg())  # noqa: E731
    t0 = time.time()
    res = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": sys.version.split()[0],
                       "mem_gb": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)},
           "argv": argv, "time": t0, "load_start": load()}
    try:
        from s4speech.pipeline.data import DataRecipe, build_tokenizer

        t = time.perf_counter()
        build_tokenizer(DataRecipe(corpus="none"))  # imports ESPnet's tokenizers: a fixed cost, kept out of the stages
        fixed = time.perf_counter() - t
        tiler = Tiler(speech_clips(a.shared), np.random.default_rng(a.seed))
        f = res["f"] = {"hours": a.hours, "nj": a.nj, "cores": min(a.nj, os.cpu_count() or 1), "fixed_s": fixed,
                        "corpora": {}}
        for kind in a.corpora.split(","):
            print(f"bench data: {kind}, {a.hours:g} h, nj {a.nj} ...", file=sys.stderr, flush=True)
            c = f["corpora"][kind] = bench_corpus(kind, work, a.hours, a.nj, tiler)
            c["fixed_s"] = c["extrapolation"]["fixed_s"] = fixed
            for name in STAGES:
                st = c["stages"][name]
                print(f"  {name:9s} {st['hours']:.3f} h  wall {st['wall']:6.2f} s  cpu {st['cpu']:6.2f} s  "
                      f"{st['per_core']:8.0f} h/h/core  wrote {gb(st['bytes_audio'] + st['bytes_other'])}",
                      file=sys.stderr, flush=True)
            print(f"  training set: {c['train_ratio']:.4f}x its audio; {c['extrapolation']['title']} on {CORES} "
                  f"cores: {c['extrapolation']['serial_hours'] * 60:.1f} min", file=sys.stderr, flush=True)
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    res["load_end"], res["wall"] = load(), time.time() - t0
    if a.json:
        atomic_write(a.json, json.dumps(res, indent=1))
    text = section(res)
    write_between(a.out, BEGIN, END, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
