"""The ASR recipe: settings and stages (ESPnet's asr.sh order; data under data/, dumps under dump/,
models under exp/).

  1 data preparation (s4speech.corpora)          7 train the LM (--use_lm) and every --asr_config
  2 LM text (--use_lm: corpus LM text + train)   8 decode every test set with each --inference_config
  3 format: referenced in place, or converted     (without and, with --use_lm, with the LM)
  4 filter train/dev by length                   9 score: WER/CER tables (jiwer)
  5 tokenizer + token list                      10 long-form: decode whole recordings
  6 statistics (ASR and LM)                     11 report: RESULTS.md (and the WER-vs-length plot)
                                                12 pack each system (and the LM) into exp/<system>.zip
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from s4speech import corpora
from s4speech.io.expdir import MODEL_FILES, model_file
from s4speech.io.files import atomic_write
from s4speech.io.kaldi import read_table
from s4speech.pipeline import train as T
from s4speech.pipeline.data import (DataRecipe, speed_perturb_conf, stage_data, stage_filter, stage_format,
                                    stage_tokenizer)
from s4speech.pipeline.runner import Stage, StageError, done, mark_done, run, run_all

log = logging.getLogger("s4speech.recipe")


@dataclass(frozen=True)
class Decoding:
    """One way of decoding: an inference config (None: ESPnet's defaults), with the LM or without."""

    config: str | None
    lm: bool = False

    @property
    def name(self) -> str:
        return f"decode_{Path(self.config).stem if self.config else 'default'}{'_lm' if self.lm else ''}"


@dataclass
class ASRRecipe(DataRecipe):
    asr_configs: list[str] = field(default_factory=list)
    inference_configs: list[str] = field(default_factory=list)
    inference_asr_model: str | None = None  # default: the first of MODEL_FILES["asr"] there is
    inference_nj: int = 2
    inference_batch_size: int = 8  # utterances beam-searched together (s4speech.bin.asr_inference)
    gpu_inference: bool = False
    use_lm: bool = False
    lm_config: str | None = None
    lm_train_text: list[Path] = field(default_factory=list)  # default: the corpus' LM text + the transcripts
    train_args: list[str] = field(default_factory=list)
    lm_args: list[str] = field(default_factory=list)
    longform_plot: Path = Path("longform_wer.png")  # beside RESULTS.md

    task = "asr"

    def configs(self) -> list[str]:
        return self.asr_configs

    def system(self, cfg: str) -> Path:
        return self.expdir / f"asr_{Path(cfg).stem}"

    @property
    def stats_dir(self) -> Path:
        return self.expdir / f"asr_stats_{self.token_type}"

    @property
    def lm_dir(self) -> Path:
        return self.expdir / f"lm_{Path(self.lm_config).stem}" if self.lm_config else self.expdir / "lm"

    @property
    def lm_stats_dir(self) -> Path:
        return self.expdir / f"lm_stats_{self.token_type}"

    @property
    def lm_text_dir(self) -> Path:
        return self.datadir / "lm"

    def decodings(self) -> list[Decoding]:
        confs = self.inference_configs or [None]
        return [Decoding(c, lm) for c in confs for lm in ([False, True] if self.use_lm else [False])]

    def asr_model(self, sysdir: Path) -> Path:
        if self.inference_asr_model:
            p = sysdir / self.inference_asr_model
            if not p.exists():
                raise StageError(f"--inference_asr_model {self.inference_asr_model}: no {p}")
            return p
        return self.trained(sysdir)


def data_args(r: ASRRecipe, split: str, s: str) -> list:
    d = r.filtered(s)
    return [f"--{split}_data_path_and_name_and_type", r.speech_spec(d),
            f"--{split}_data_path_and_name_and_type", f"{d}/text,text,text"]


def token_args(r: ASRRecipe) -> list:
    return ["--token_type", "char" if r.token_type == "char" else "bpe", "--token_list", r.token_list.resolve(),
            "--bpemodel", r.bpemodel.resolve() if r.bpemodel else "none"]


# ---- stage 2: LM text --------------------------------------------------------------------------------
def stage_lm_text(r: ASRRecipe) -> None:
    if not r.use_lm:
        return log.info("LM text: no --use_lm")
    out = r.lm_text_dir
    if done(out):
        return
    sources = list(r.lm_train_text)
    mod = corpora.get(r.corpus)
    if not sources and mod is not None and hasattr(mod, "lm_text"):
        sources.append(mod.lm_text(r.corpus_dir, out / "corpus"))  # e.g. LibriSpeech's normalized LM corpus
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(out / ".train.txt.tmp", "w", encoding="utf-8") as f:
        for text in read_table(r.datadir / r.train_set / "text").values():
            f.write(f"lm{n:010d} {text}\n")
            n += 1
        for src in sources:
            with (gzip.open if str(src).endswith(".gz") else open)(src, "rt", encoding="utf-8") as g:
                for line in g:
                    if line.strip():
                        f.write(f"lm{n:010d} {' '.join(line.split())}\n")
                        n += 1
    os.replace(out / ".train.txt.tmp", out / "train.txt")
    dev = read_table(r.datadir / r.valid_set / "text")
    atomic_write(out / "dev.txt", "".join(f"{u} {t}\n" for u, t in sorted(dev.items())))
    log.info("LM text: %d lines in %s (transcripts of %s%s)", n, out / "train.txt", r.train_set,
             "".join(f" + {s}" for s in sources))
    mark_done(out)


# ---- stage 6: statistics --------------------------------------------------------------------------------
def stage_stats(r: ASRRecipe) -> None:
    if not r.asr_configs:
        raise StageError("no --asr_config")
    if not done(r.stats_dir):
        tr, va = r.filtered(r.train_set), r.filtered(r.valid_set)
        T.collect_stats("asr", r.asr_configs[0], r.stats_dir,
                        {"train": tr / "utt2num_samples", "valid": va / "utt2num_samples"},
                        [*data_args(r, "train", r.train_set), *data_args(r, "valid", r.valid_set)],
                        [*token_args(r), "--use_preprocessor", "true"], r.token_list, r.token_type)
        mark_done(r.stats_dir)
    if r.use_lm and not done(r.lm_stats_dir):
        _need_lm_config(r)
        d = r.lm_text_dir
        T.collect_stats("lm", r.lm_config, r.lm_stats_dir, {"train": d / "train.txt", "valid": d / "dev.txt"},
                        ["--train_data_path_and_name_and_type", f"{d}/train.txt,text,text",
                         "--valid_data_path_and_name_and_type", f"{d}/dev.txt,text,text"],
                        token_args(r), r.token_list, r.token_type)
        mark_done(r.lm_stats_dir)


def _need_lm_config(r: ASRRecipe) -> None:
    if not r.lm_config:
        raise StageError("--use_lm true needs --lm_config")


# ---- stage 7: training -----------------------------------------------------------------------------------
def stage_train(r: ASRRecipe) -> None:
    if r.use_lm and not done(r.lm_dir):
        _need_lm_config(r)
        st, d = r.lm_stats_dir.resolve(), r.lm_text_dir
        T.train("lm", r.lm_config, r.lm_dir, r.launch,
                ["--train_shape_file", st / "train" / f"text_shape.{r.token_type}",
                 "--valid_shape_file", st / "valid" / f"text_shape.{r.token_type}",
                 "--train_data_path_and_name_and_type", f"{d}/train.txt,text,text",
                 "--valid_data_path_and_name_and_type", f"{d}/dev.txt,text,text", *token_args(r), *r.lm_args],
                MODEL_FILES["lm"])
        lm_perplexity(r)
        mark_done(r.lm_dir)
    T.train_systems(r, "asr", [
        *T.stats_args(r.stats_dir, ("speech_shape", f"text_shape.{r.token_type}")),
        *data_args(r, "train", r.train_set), *data_args(r, "valid", r.valid_set), *token_args(r),
        "--use_preprocessor", "true", *speed_perturb_conf(r.speed_perturb_factors, r.sample_rate()), *r.train_args])


def lm_perplexity(r: ASRRecipe) -> float:
    """Dev-set perplexity of the LM (ESPnet's lm_calc_perplexity), kept in exp/lm_*/perplexity."""
    out = r.lm_dir / "perplexity"
    cmd = [sys.executable, "-m", "espnet2.bin.lm_calc_perplexity", "--ngpu", "0", "--batch_size", "1",
           "--train_config", r.lm_dir / "config.yaml", "--model_file", model_file(r.lm_dir, "lm"),
           "--data_path_and_name_and_type", f"{r.lm_text_dir}/dev.txt,text,text", "--output_dir", out]
    run(cmd, r.lm_dir / "perplexity.log", "LM perplexity")
    return float((out / "ppl").read_text().split()[0])


# ---- stage 8: decoding ------------------------------------------------------------------------------------
def decode_sets(r: ASRRecipe, sysdir: Path, sets: list[str], dec: Decoding) -> None:
    """Decode the sets not decoded yet with one system and one decoding: ``--inference_nj`` jobs, each
    taking its share of every set in one process (ESPnet's asr_inference run per set), beam-searching
    ``--inference_batch_size`` utterances of similar lengths together."""
    todo = [s for s in sets if not done(sysdir / dec.name / s)]
    if not todo:
        return
    lengths = {s: read_table(r.raw(s) / "utt2num_samples") for s in todo}
    keys = {s: sorted(lengths[s]) for s in todo}
    nj = max(1, min(r.inference_nj, max(len(k) for k in keys.values())))
    common = ["--batch_size", str(r.inference_batch_size), "--ngpu", "1" if r.gpu_inference else "0",
              "--asr_train_config", sysdir / "config.yaml", "--asr_model_file", r.asr_model(sysdir)]
    if dec.config:
        common += ["--config", dec.config]
    if dec.lm:
        common += ["--lm_train_config", r.lm_dir / "config.yaml", "--lm_file", model_file(r.lm_dir, "lm")]
    else:
        common += ["--lm_weight", "0.0"]
    jobs = []
    for j in range(nj):
        runs = []
        for s in todo:
            part = sorted(keys[s][j::nj], key=lambda k: -int(lengths[s][k]))  # similar lengths together
            if not part:
                continue
            split = sysdir / dec.name / s / "split"
            atomic_write(split / f"keys.{j + 1}", "".join(f"{k}\n" for k in part))
            speech = job_speech(r, r.raw(s), part, split / f"data.{j + 1}")
            runs.append([*common, "--data_path_and_name_and_type", speech,
                         "--key_file", split / f"keys.{j + 1}", "--output_dir", split / f"out.{j + 1}"])
        spec = sysdir / dec.name / f"jobs.{j + 1}.json"
        atomic_write(spec, json.dumps([[str(a) for a in run] for run in runs], indent=1))
        env = {"CUDA_VISIBLE_DEVICES": str(j % max(1, _gpus()))} if r.gpu_inference else \
            {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nj))}
        jobs.append(([sys.executable, "-m", "s4speech.bin.asr_decode_sets", spec], sysdir / dec.name / f"decode.{j + 1}.log", env))
    run_all(jobs, f"decoding {', '.join(todo)} with {sysdir.name} ({dec.name})")
    for s in todo:
        out = sysdir / dec.name / s
        hyp = {}
        for j in range(nj):
            f = out / "split" / f"out.{j + 1}" / "1best_recog" / "text"
            if f.exists():
                hyp.update(read_table(f))
        atomic_write(out / "text", "".join(f"{k} {hyp.get(k, '')}\n" for k in keys[s]))
        mark_done(out)


def job_speech(r: ASRRecipe, d: Path, keys: list[str], out: Path) -> str:
    """The speech of the utterances ``keys`` of the dumped set ``d`` as a data dir ``out`` listing them in
    that order -> its ``--data_path_and_name_and_type``. ESPnet's streaming loader reads its tables in step
    with the key file, so a key file in another order than the set's tables (here: longest first, so
    that utterances searched together have similar lengths) needs tables of its own."""
    name = "segments" if (d / "segments").exists() else "wav.scp"
    table = read_table(d / name)
    atomic_write(out / name, "".join(f"{k} {table[k]}\n" for k in keys))
    if name == "segments":  # the recordings they are cut from
        atomic_write(out / "wav.scp", (d / "wav.scp").read_text(encoding="utf-8"))
    return r.speech_spec(out)


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


def stage_decode(r: ASRRecipe, sets=None) -> None:
    """Every test set, long-form ones included, with every system and decoding."""
    for cfg in r.asr_configs:
        for dec in r.decodings():
            decode_sets(r, r.system(cfg), sets or r.all_test_sets(), dec)


# ---- stages 9-11: scoring and the report ---------------------------------------------------------------------
def stage_score(r: ASRRecipe, sets=None) -> dict:
    """{(system, decoding, set): score} of every decode dir (decoding what is missing)."""
    from s4speech.metrics.asr import score_dir

    results = {}
    stage_decode(r, sets or r.test_sets)
    for cfg in r.asr_configs:
        for dec in r.decodings():
            for s in sets or r.test_sets:
                out = r.system(cfg) / dec.name / s
                results[(r.system(cfg).name, dec.name, s)] = score_dir(r.raw(s) / "text", out / "text", out)
    return results


def stage_longform(r: ASRRecipe) -> None:
    if not r.long_sets:
        return log.info("long-form: no long-form test sets configured")
    stage_score(r, r.long_sets)


def stage_report(r: ASRRecipe) -> None:
    from s4speech.pipeline.report import write_asr_report

    path = write_asr_report(r, stage_score(r, r.all_test_sets()))
    print(path.read_text())


def stage_pack(r: ASRRecipe) -> None:
    """exp/<system>.zip for each system (with the LM when --use_lm): config, model, statistics, tokens."""
    for cfg in r.asr_configs:
        sysdir = r.system(cfg)
        out = sysdir.with_suffix(".zip")
        files = {"asr_train_config": sysdir / "config.yaml", "asr_model_file": r.asr_model(sysdir)}
        if r.use_lm:
            files.update(lm_train_config=r.lm_dir / "config.yaml", lm_file=model_file(r.lm_dir, "lm"))
        options = [r.stats_dir / "train" / "feats_stats.npz", *([r.bpemodel] if r.bpemodel else [])]
        T.pack("asr", files, options, out, sysdir / "pack.log")
        log.info("pack: %s", out)


STAGES = {1: Stage("data", stage_data), 2: Stage("lm_text", stage_lm_text), 3: Stage("format", stage_format),
          4: Stage("filter", stage_filter), 5: Stage("tokenizer", stage_tokenizer), 6: Stage("stats", stage_stats),
          7: Stage("train", stage_train), 8: Stage("decode", stage_decode), 9: Stage("score", stage_score),
          10: Stage("longform", stage_longform), 11: Stage("report", stage_report), 12: Stage("pack", stage_pack)}
