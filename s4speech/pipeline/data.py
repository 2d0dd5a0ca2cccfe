"""The data stages every recipe shares: preparation, format, length filter, tokens, and the settings
they read (``DataRecipe``, the base of the ASR and TTS recipes).

Audio is not copied where it already fits the model: ``dump/raw/<set>/wav.scp`` points at the corpus
files when they are mono at the model's rate in a format libsndfile reads (LibriSpeech's FLAC, the
demo's WAV), and a segmented set (CSJ) keeps its ``segments`` into the recordings, read by the
``kaldi_segments`` loader (``s4speech.io.audio.SegmentReader``). Only recordings at another rate or
with two channels are converted, once per recording, to ``--audio_format`` (FLAC by default).
Speed perturbation happens in the training data loader (ESPnet's preprocessor ``data_aug_effects``),
not as files. The format stage runs in ``--nj`` processes.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from s4speech import corpora
from s4speech.io.audio import AUDIO_FORMATS
from s4speech.io.expdir import ESPNET_DEFAULT_FS, ModelError, config_rate, load_config, model_file
from s4speech.io.files import atomic_write
from s4speech.io.kaldi import KaldiDir, Utterance, read_table, write_kaldi_dir
from s4speech.pipeline.runner import StageError, done, mark_done
from s4speech.pipeline.train import Launch

log = logging.getLogger("s4speech.recipe")
KEPT_FORMATS = ("WAV", "FLAC")  # read by ESPnet's sound loader as they are


@dataclass
class DataRecipe:
    corpus: str
    train_set: str = "train"
    valid_set: str = "dev"
    test_sets: list[str] = field(default_factory=lambda: ["test"])
    long_sets: list[str] = field(default_factory=list)
    corpus_dir: Path = Path("downloads")
    datadir: Path = Path("data")
    dumpdir: Path = Path("dump")
    expdir: Path = Path("exp")
    token_type: str = "char"  # char | bpe | unigram
    nbpe: int = 5000
    fs: int | None = None  # default: the configs' (frontend_conf / feats_extract_conf).fs
    min_sec: float = 0.2
    max_sec: float = 30.0
    nj: int = 4  # processes of the data stages
    audio_format: str = "flac"  # what the data stages write when they must write audio
    speed_perturb_factors: list[float] = field(default_factory=list)
    launch: Launch = field(default_factory=Launch)  # how training runs (GPUs, processes, nodes)
    train_jobs: int = 1  # systems trained side by side (CPU; the cores shared out)
    results: Path = Path("RESULTS.md")  # the report, beside run.sh

    task = "asr"  # what the configs train ("asr" or "tts": which key holds the sample rate)

    def configs(self) -> list[str]:
        raise NotImplementedError

    # ---- paths -------------------------------------------------------------------------
    @property
    def token_dir(self) -> Path:
        return self.datadir / "token_list" / (self.token_type if self.token_type == "char" else f"{self.token_type}{self.nbpe}")

    @property
    def token_list(self) -> Path:
        return self.token_dir / "tokens.txt"

    @property
    def bpemodel(self) -> Path | None:
        return None if self.token_type == "char" else self.token_dir / "bpe.model"

    def raw(self, s: str) -> Path:
        return self.dumpdir / "raw" / s

    def filtered(self, s: str) -> Path:
        return self.raw(f"{s}_filtered")

    def all_test_sets(self) -> list[str]:
        return self.test_sets + self.long_sets

    def sample_rate(self) -> int:
        """--fs, else the rate the configs state (they must agree), else ESPnet's default ASR frontend rate;
        a TTS config without a rate is an error (ESPnet has no one default for it)."""
        if self.fs:
            return self.fs
        rates = {c: config_rate(load_config(c), self.task) for c in self.configs()}
        stated = {r for r in rates.values() if r}
        if len(stated) > 1:
            raise StageError(f"the configs state different sample rates: {rates}; give --fs")
        if stated:
            return stated.pop()
        if self.task == "asr":
            log.info("sample rate: %d Hz (no config states frontend_conf.fs: ESPnet's default)", ESPNET_DEFAULT_FS)
            return ESPNET_DEFAULT_FS
        raise StageError("no --fs and no feats_extract_conf.fs in the configs: state the sample rate")

    def trained(self, sysdir: Path) -> Path:
        """The trained model of a system (the first of ``MODEL_FILES[task]`` there is)."""
        try:
            return model_file(sysdir, self.task)
        except ModelError as e:
            raise StageError(str(e)) from None

    def speech_spec(self, d: Path) -> str:
        """ESPnet's ``--*_data_path_and_name_and_type`` for the speech of a dumped set."""
        if (d / "segments").exists():
            return f"{d}/segments,speech,kaldi_segments"
        return f"{d}/wav.scp,speech,sound"


# ---- stage: data preparation -----------------------------------------------------------------------
LONG_SET = re.compile(r"(.+)_long_(\d+(?:\.\d+)?)s")


def stage_data(r: DataRecipe) -> None:
    """``s4speech.corpora.<corpus>.prepare`` for the sets; long-form sets named ``<set>_long_<N>s``
    are made from ``<set>`` by the corpus' ``long_form``."""
    sets = [r.train_set, r.valid_set] + r.all_test_sets()
    if all(done(r.datadir / s) for s in sets):
        return log.info("data: already prepared")
    long_from: dict[str, list[float]] = {}
    for s in r.long_sets:
        m = LONG_SET.fullmatch(s)
        if m:
            long_from.setdefault(m.group(1), []).append(float(m.group(2)))
    base = [s for s in sets if s not in r.long_sets] + [s for s in long_from if s not in sets]
    log.info("data: %s", corpora.prepare(r.corpus, r.corpus_dir, r.datadir, base))
    mod = corpora.get(r.corpus)
    for src, durations in long_from.items():
        if mod is None or not hasattr(mod, "long_form"):
            raise StageError(f"corpus {r.corpus} makes no long-form sets ({src}_long_*)")
        mod.long_form(r.datadir / src, r.datadir / f"{src}_long", durations, audio_format=r.audio_format)
    for s in sets:
        if not (r.datadir / s / "wav.scp").exists():
            raise StageError(f"data preparation of {r.corpus} did not create {r.datadir / s}")
        mark_done(r.datadir / s)


# ---- stage: format ---------------------------------------------------------------------------------
def _fit_recording(rec: str, path: str, out_dir: str, fs: int, audio_format: str) -> tuple[str, str | None, int, str]:
    """One recording made to fit the model: (rec, path to use or None, frames at fs, problem).

    Kept where it lies when it is mono at ``fs`` in a format ESPnet reads; else converted once
    (mono, resampled) into ``out_dir``. Runs in a worker process."""
    import numpy as np
    import soundfile as sf

    from s4speech.io.audio import load_segment, write_audio

    try:
        if path.rstrip().endswith("|"):
            raise ValueError("Kaldi pipe entries are not supported in wav.scp")
        info = sf.info(path)
        if info.frames == 0:
            raise ValueError("no samples")
        if info.samplerate == fs and info.channels == 1 and info.format in KEPT_FORMATS:
            return rec, str(Path(path).resolve()), info.frames, ""
        out = Path(out_dir) / f"{rec}.{audio_format}"
        if not out.exists():
            x, rate = load_segment(path)
            if not np.isfinite(x).all():
                raise ValueError("NaN or inf samples")
            if rate != fs:
                import librosa

                x = librosa.resample(x, orig_sr=rate, target_sr=fs)
            write_audio(out, np.clip(x, -1, 1), fs, audio_format)
        return rec, str(out.resolve()), sf.info(str(out)).frames, ""
    except Exception as e:  # noqa: BLE001 - one bad file never stops the set
        return rec, None, 0, f"{type(e).__name__}: {e}"


def format_set(src: Path, dst: Path, fs: int, audio_format: str = "flac", nj: int = 1) -> int:
    """A data dir made ready for ESPnet at rate ``fs`` (see the module doc); returns the utterances kept.
    Unreadable recordings are warned about (file and cause) and their utterances left out."""
    if audio_format not in AUDIO_FORMATS:
        raise StageError(f"--audio_format {audio_format!r}: one of {', '.join(AUDIO_FORMATS)}")
    d = KaldiDir.read(src)
    jobs = [(rec, path, str(dst / "audio"), fs, audio_format) for rec, path in sorted(d.wav.items())]
    if nj > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(nj, len(jobs))) as pool:
            fitted = list(pool.map(_fit_recording, *zip(*jobs), chunksize=max(1, len(jobs) // (8 * nj))))
    else:
        fitted = [_fit_recording(*j) for j in jobs]
    paths, frames = {}, {}
    for rec, path, n, problem in fitted:
        if path is None:
            log.warning("%s: %s: %s; skipped", src, d.wav[rec], problem)
        else:
            paths[rec], frames[rec] = path, n
    utts, nsamples, bad = [], [], 0
    for utt in sorted(d.text):
        seg = d.segments.get(utt) if d.segments is not None else (utt, None, None)
        if seg is None or seg[0] not in paths:
            if seg is None or seg[0] not in d.wav:
                log.warning("%s: no audio for %s; skipped", src, utt)
            bad += 1
            continue
        rec, start, end = seg
        n = frames[rec] if start is None else min(round(end * fs), frames[rec]) - round(start * fs)
        if n <= 0:
            log.warning("%s: segment %s (%s-%s s) lies beyond the end of %s; skipped", src, utt, start, end, rec)
            bad += 1
            continue
        utts.append(Utterance(utt, d.utt2spk[utt], paths[rec], d.text[utt], start, end))
        nsamples.append(f"{utt} {n}\n")
    write_kaldi_dir(dst, utts)
    atomic_write(dst / "utt2num_samples", "".join(nsamples))
    log.info("format: %s -> %s (%d utterances, %d skipped, %d of %d recordings converted)", src, dst, len(utts),
             bad, sum(1 for p in paths.values() if Path(p).parent == (dst / "audio").resolve()), len(d.wav))
    return len(utts)


def stage_format(r: DataRecipe) -> None:
    fs = r.sample_rate()
    for s in [r.train_set, r.valid_set] + r.all_test_sets():
        dst = r.raw(s)
        if done(dst):
            continue
        format_set(r.datadir / s, dst, fs, r.audio_format, r.nj)
        mark_done(dst)


# ---- stage: length filter ---------------------------------------------------------------------------
def stage_filter(r: DataRecipe) -> None:
    fs = r.sample_rate()
    for s in [r.train_set, r.valid_set]:
        src, dst = r.raw(s), r.filtered(s)
        if done(dst):
            continue
        n = {k: int(v) for k, v in read_table(src / "utt2num_samples").items()}
        d = KaldiDir.read(src)
        keep = [u for u in sorted(d.text) if r.min_sec * fs <= n[u] <= r.max_sec * fs]
        log.info("filter: %s keeps %d of %d utterances (%.1f-%.1f s)", s, len(keep), len(d.text), r.min_sec, r.max_sec)
        write_kaldi_dir(dst, [d.utterance(u) for u in keep])
        atomic_write(dst / "utt2num_samples", "".join(f"{u} {n[u]}\n" for u in keep))
        mark_done(dst)


# ---- stage: tokens ------------------------------------------------------------------------------------
def build_tokenizer(r: DataRecipe):
    import contextlib
    import io

    buf = io.StringIO()  # ESPnet's g2p modules try nltk downloads at import: keep that off the terminal
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        from espnet2.text.build_tokenizer import build_tokenizer as espnet_tokenizer
    if buf.getvalue().strip():
        log.debug("importing ESPnet's tokenizers printed:\n%s", buf.getvalue())
    if r.token_type == "char":
        return espnet_tokenizer(token_type="char")
    return espnet_tokenizer(token_type="bpe", bpemodel=str(r.bpemodel))


def stage_tokenizer(r: DataRecipe) -> None:
    if done(r.token_dir):
        return
    texts = list(read_table(r.filtered(r.train_set) / "text").values())
    r.token_dir.mkdir(parents=True, exist_ok=True)
    if r.token_type in ("bpe", "unigram"):
        import sentencepiece as spm

        atomic_write(r.token_dir / "train.txt", "".join(t + "\n" for t in texts))
        spm.SentencePieceTrainer.train(
            input=str(r.token_dir / "train.txt"), model_prefix=str(r.token_dir / "bpe"),
            vocab_size=r.nbpe, model_type=r.token_type, character_coverage=1.0,
            input_sentence_size=100_000_000, shuffle_input_sentence=True, minloglevel=2,
        )
    elif r.token_type != "char":
        raise StageError(f"unknown token_type {r.token_type!r} (char, bpe or unigram)")
    tok = build_tokenizer(r)
    counts = Counter(t for line in texts for t in tok.text2tokens(line))
    # ESPnet's order: <blank>, <unk>, tokens by decreasing frequency, <sos/eos>
    tokens = ["<blank>", "<unk>"] + [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                                      if t not in ("<blank>", "<unk>", "<sos/eos>")] + ["<sos/eos>"]
    atomic_write(r.token_list, "".join(t + "\n" for t in tokens))
    log.info("tokenizer: %d tokens in %s", len(tokens), r.token_list)
    mark_done(r.token_dir)


def speed_perturb_conf(factors: list[float], fs: int) -> list[str]:
    """ESPnet options for speed perturbation in the training loader: one factor drawn per utterance,
    each with the same probability (factor 1.0: unchanged)."""
    if not factors:
        return []
    import json

    effects = [[1.0 / len(factors), "speed_perturb", {"factor": f}] for f in factors]
    return ["--preprocessor_conf", json.dumps({"data_aug_effects": effects, "data_aug_num": [1, 1],
                                               "data_aug_prob": 1.0, "fs": fs})]
