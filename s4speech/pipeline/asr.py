"""One stage runner for every ASR recipe (``recipes/<corpus>/asr1/run.sh`` calls it).

    python -m s4speech.recipe --corpus asterisk --stage 1 --stop_stage 11 \
        --asr_config conf/demo/asr_ssm.yaml --asr_config conf/demo/asr_transformer.yaml ...

Stages (ESPnet's asr.sh order, Kaldi-style dirs under data/, dumps under dump/, models under exp/):
  1 data preparation (local/<corpus>.py)        7 train (s4speech.bin.asr_train)
  2 speed perturbation (optional)                8 decode each test set
  3 format: mono, resample, dump wav files       9 score: WER/CER tables (jiwer)
  4 filter train/dev by length                  10 long-form: decode whole recordings, WER vs length plot
  5 tokenizer + token list                      11 report: RESULTS.md
  6 collect stats
A stage whose outputs are complete is skipped on re-run (a `.done` marker is written last);
training resumes from its last checkpoint; a failing stage stops the run naming the stage and the cause.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from s4speech.io.files import atomic_write
from s4speech.io.kaldi import Utterance, read_table, write_kaldi_dir

log = logging.getLogger("s4speech.recipe")
REPO = Path(__file__).resolve().parents[1]
STAGES = {1: "data", 2: "speed_perturb", 3: "format", 4: "filter", 5: "tokenizer", 6: "stats",
          7: "train", 8: "decode", 9: "score", 10: "longform", 11: "report"}


class StageError(RuntimeError):
    pass


@dataclass
class Recipe:
    corpus: str
    train_set: str = "train"
    valid_set: str = "dev"
    test_sets: list[str] = field(default_factory=lambda: ["test"])
    long_sets: list[str] = field(default_factory=list)
    asr_configs: list[str] = field(default_factory=list)
    inference_config: str | None = None
    corpus_dir: Path = Path("downloads")
    datadir: Path = Path("data")
    dumpdir: Path = Path("dump")
    expdir: Path = Path("exp")
    token_type: str = "char"  # char | bpe | unigram
    nbpe: int = 5000
    fs: int | None = None  # default: the first config's frontend_conf.fs, else 16000
    min_sec: float = 0.2
    max_sec: float = 30.0
    speed_perturb_factors: list[float] = field(default_factory=list)
    ngpu: int = 0
    nj: int = 2
    train_args: list[str] = field(default_factory=list)

    # ---- helpers ----------------------------------------------------------------------
    @property
    def token_dir(self) -> Path:
        return self.datadir / "token_list" / (self.token_type if self.token_type == "char" else f"{self.token_type}{self.nbpe}")

    @property
    def token_list(self) -> Path:
        return self.token_dir / "tokens.txt"

    @property
    def bpemodel(self) -> Path | None:
        return None if self.token_type == "char" else self.token_dir / "bpe.model"

    @property
    def stats_dir(self) -> Path:
        return self.expdir / f"asr_stats_{self.token_type}"

    def sample_rate(self) -> int:
        if self.fs:
            return self.fs
        for cfg in self.asr_configs:
            fs = (yaml.safe_load(open(cfg)) or {}).get("frontend_conf", {}).get("fs")
            if fs:
                return int(str(fs).lower().replace("k", "000"))
        return 16000

    def system(self, cfg: str) -> Path:
        return self.expdir / f"asr_{Path(cfg).stem}"

    def train_sets(self) -> list[str]:
        sp = [f"{self.train_set}_sp" ] if self.speed_perturb_factors else []
        return sp or [self.train_set]

    def all_test_sets(self) -> list[str]:
        return self.test_sets + self.long_sets


def run(cmd: list[str], log_file: Path, what: str) -> None:
    """Run a command with its output in log_file; a failure is a StageError quoting the log's tail."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log.info("%s: %s (log: %s)", what, " ".join(map(str, cmd)), log_file)
    with open(log_file, "a", encoding="utf-8") as f:
        f.write(f"# {' '.join(map(str, cmd))}\n# started {time.ctime()}\n")
        f.flush()
        rc = subprocess.call([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if rc != 0:
        tail = Path(log_file).read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        raise StageError(f"{what} failed (exit {rc}); see {log_file}:\n  " + "\n  ".join(tail))


def done(path: Path) -> bool:
    return (path / ".done").exists()


def mark_done(path: Path) -> None:
    atomic_write(path / ".done", time.ctime() + "\n")


# ---- stages --------------------------------------------------------------------------------
def stage_data(r: Recipe) -> None:
    """local/<corpus>.py provides prepare(corpus_dir, data_dir[, sets]) (downloading what it may) and,
    for long-form sets named ``<set>_long_<N>s``, long_form(data/<set>, data/<set>_long, durations)."""
    sets = [r.train_set, r.valid_set] + r.all_test_sets()
    if all(done(r.datadir / s) for s in sets):
        return log.info("data: already prepared")
    sys.path.insert(0, str(REPO))
    mod = importlib.import_module(f"local.{r.corpus}")
    long_from: dict[str, list[float]] = {}
    for s in r.long_sets:
        m = re.fullmatch(r"(.+)_long_(\d+(?:\.\d+)?)s", s)
        if m:
            long_from.setdefault(m.group(1), []).append(float(m.group(2)))
    base = [s for s in sets if s not in r.long_sets] + [s for s in long_from if s not in sets]
    if "sets" in inspect.signature(mod.prepare).parameters:
        counts = mod.prepare(r.corpus_dir, r.datadir, sets=base)
    else:
        counts = mod.prepare(r.corpus_dir, r.datadir)
    log.info("data: %s", counts)
    for src, durations in long_from.items():
        mod.long_form(r.datadir / src, r.datadir / f"{src}_long", durations)
    for s in sets:
        if not (r.datadir / s / "wav.scp").exists():
            raise StageError(f"data preparation of {r.corpus} did not create {r.datadir / s}")
        mark_done(r.datadir / s)


def load_audio(spec: str, start: float | None = None, end: float | None = None) -> tuple[np.ndarray, int]:
    """A wav.scp entry (a path; Kaldi pipes are not supported) -> mono float32 samples, rate."""
    if spec.endswith("|"):
        raise ValueError(f"pipe entries are not supported in wav.scp: {spec!r}")
    info = sf.info(spec)
    a = int(start * info.samplerate) if start is not None else 0
    b = int(end * info.samplerate) if end is not None else -1
    x, rate = sf.read(spec, start=a, stop=None if b < 0 else b, dtype="float32", always_2d=True)
    return x.mean(axis=1), rate


def format_set(src: Path, dst: Path, fs: int) -> None:
    """Mono, resampled to fs, one WAV per utterance (segments cut out)."""
    import librosa

    wav = read_table(src / "wav.scp")
    segs = {}
    if (src / "segments").exists():
        for utt, v in read_table(src / "segments").items():
            rec, s, e = v.split()
            segs[utt] = (rec, float(s), float(e))
    text = read_table(src / "text")
    utt2spk = read_table(src / "utt2spk")
    utts, nsamples, bad = [], [], 0
    (dst / "wav").mkdir(parents=True, exist_ok=True)
    for utt in sorted(text):
        rec, s, e = segs.get(utt, (utt, None, None))
        if rec not in wav:
            log.warning("%s: no audio for %s in wav.scp; skipped", src, utt)
            bad += 1
            continue
        out = dst / "wav" / f"{utt}.wav"
        try:
            if not out.exists():
                x, rate = load_audio(wav[rec], s, e)
                if not np.isfinite(x).all():
                    raise ValueError("NaN or inf samples")
                if rate != fs:
                    x = librosa.resample(x, orig_sr=rate, target_sr=fs)
                tmp = out.with_suffix(".tmp.wav")
                sf.write(tmp, np.clip(x, -1, 1), fs, subtype="PCM_16")
                os.replace(tmp, out)
            n = sf.info(out).frames
        except Exception as ex:  # one bad file never stops the set
            log.warning("%s: %s: %s; skipped", wav[rec], utt, ex)
            bad += 1
            continue
        utts.append(Utterance(utt, utt2spk[utt], str(out.resolve()), text[utt]))
        nsamples.append(f"{utt} {n}\n")
    write_kaldi_dir(dst, utts)
    atomic_write(dst / "utt2num_samples", "".join(nsamples))
    log.info("format: %s -> %s (%d utterances, %d skipped)", src, dst, len(utts), bad)


def stage_speed_perturb(r: Recipe) -> None:
    if not r.speed_perturb_factors:
        return log.info("speed perturbation: not configured")
    import librosa

    dst = r.datadir / f"{r.train_set}_sp"
    if done(dst):
        return
    src = r.datadir / r.train_set
    wav, text, utt2spk = read_table(src / "wav.scp"), read_table(src / "text"), read_table(src / "utt2spk")
    utts = []
    for f in r.speed_perturb_factors:
        for utt in sorted(text):
            if f == 1.0:
                utts.append(Utterance(utt, utt2spk[utt], wav[utt], text[utt]))
                continue
            sp_id, spk = f"sp{f}-{utt}", f"sp{f}-{utt2spk[utt]}"
            out = dst / "wav" / f"{sp_id}.wav"
            if not out.exists():
                x, rate = load_audio(wav[utt])
                # speed change = resample and play at the old rate (tempo and pitch change together)
                y = librosa.resample(x, orig_sr=rate * f, target_sr=rate)
                out.parent.mkdir(parents=True, exist_ok=True)
                sf.write(out.with_suffix(".tmp.wav"), y, rate)
                os.replace(out.with_suffix(".tmp.wav"), out)
            utts.append(Utterance(sp_id, spk, str(out.resolve()), text[utt]))
    write_kaldi_dir(dst, utts)
    mark_done(dst)


def stage_format(r: Recipe) -> None:
    fs = r.sample_rate()
    for s in r.train_sets() + [r.valid_set] + r.all_test_sets():
        dst = r.dumpdir / "raw" / s
        if done(dst):
            continue
        format_set(r.datadir / s, dst, fs)
        mark_done(dst)


def stage_filter(r: Recipe) -> None:
    fs = r.sample_rate()
    for s in r.train_sets() + [r.valid_set]:
        src, dst = r.dumpdir / "raw" / s, r.dumpdir / "raw" / f"{s}_filtered"
        if done(dst):
            continue
        n = {k: int(v) for k, v in read_table(src / "utt2num_samples").items()}
        wav, text, utt2spk = read_table(src / "wav.scp"), read_table(src / "text"), read_table(src / "utt2spk")
        keep = [u for u in sorted(wav) if r.min_sec * fs <= n[u] <= r.max_sec * fs]
        log.info("filter: %s keeps %d of %d utterances (%.1f-%.1f s)", s, len(keep), len(wav), r.min_sec, r.max_sec)
        write_kaldi_dir(dst, [Utterance(u, utt2spk[u], wav[u], text[u]) for u in keep])
        atomic_write(dst / "utt2num_samples", "".join(f"{u} {n[u]}\n" for u in keep))
        mark_done(dst)


def build_tokenizer(r: Recipe):
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


def stage_tokenizer(r: Recipe) -> None:
    if done(r.token_dir):
        return
    texts = list(read_table(r.dumpdir / "raw" / f"{r.train_sets()[0]}_filtered" / "text").values())
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


def data_args(r: Recipe, split: str, s: str) -> list[str]:
    d = r.dumpdir / "raw" / f"{s}_filtered"
    return [f"--{split}_data_path_and_name_and_type", f"{d}/wav.scp,speech,sound",
            f"--{split}_data_path_and_name_and_type", f"{d}/text,text,text"]


def token_args(r: Recipe) -> list[str]:
    return ["--token_type", "char" if r.token_type == "char" else "bpe", "--token_list", str(r.token_list),
            "--bpemodel", str(r.bpemodel or "none"), "--use_preprocessor", "true"]


def stage_stats(r: Recipe) -> None:
    out = r.stats_dir
    if done(out):
        return
    tr, va = r.train_sets()[0], r.valid_set
    cmd = [sys.executable, "-m", "s4speech.bin.asr_train", "--collect_stats", "true", "--ngpu", "0",
           "--config", r.asr_configs[0], "--output_dir", out, "--num_workers", "0",
           "--train_shape_file", r.dumpdir / "raw" / f"{tr}_filtered" / "wav.scp",
           "--valid_shape_file", r.dumpdir / "raw" / f"{va}_filtered" / "wav.scp",
           *data_args(r, "train", tr), *data_args(r, "valid", va), *token_args(r)]
    run(cmd, out / "stats.log", "collect stats")
    ntok = len(r.token_list.read_text().splitlines())
    for split in ("train", "valid"):  # ESPnet's text_shape.<token_type>: "utt length,vocab"
        shape = read_table(out / split / "text_shape")
        atomic_write(out / split / f"text_shape.{r.token_type}",
                     "".join(f"{u} {v},{ntok}\n" for u, v in shape.items()))
    mark_done(out)


def stage_train(r: Recipe) -> None:
    st = r.stats_dir
    for cfg in r.asr_configs:
        out = r.system(cfg)
        if done(out):
            log.info("train: %s already trained", out)
            continue
        cmd = [sys.executable, "-m", "s4speech.bin.asr_train", "--config", cfg, "--output_dir", out,
               "--ngpu", str(r.ngpu), "--resume", "true", "--num_workers", "0",
               "--normalize", "global_mvn", "--normalize_conf", f"stats_file={st}/train/feats_stats.npz",
               "--train_shape_file", st / "train" / "speech_shape",
               "--train_shape_file", st / "train" / f"text_shape.{r.token_type}",
               "--valid_shape_file", st / "valid" / "speech_shape",
               "--valid_shape_file", st / "valid" / f"text_shape.{r.token_type}",
               *data_args(r, "train", r.train_sets()[0]), *data_args(r, "valid", r.valid_set),
               *token_args(r), *r.train_args]
        run(cmd, out / "train.log", f"training {out.name}")
        if not (out / "valid.acc.ave.pth").exists():
            raise StageError(f"training {out.name} ended without {out / 'valid.acc.ave.pth'}")
        mark_done(out)


def model_file(sysdir: Path) -> Path:
    for name in ("valid.acc.ave.pth", "valid.acc.best.pth", "latest.pth"):
        if (sysdir / name).exists():
            return sysdir / name
    raise StageError(f"no trained model in {sysdir}")


def decode_dir(r: Recipe, sysdir: Path, s: str) -> Path:
    return sysdir / f"decode_{Path(r.inference_config).stem if r.inference_config else 'default'}" / s


def decode_set(r: Recipe, sysdir: Path, s: str) -> Path:
    out = decode_dir(r, sysdir, s)
    if done(out):
        return out
    d = r.dumpdir / "raw" / s
    keys = sorted(read_table(d / "wav.scp"))
    nj = max(1, min(r.nj, len(keys)))
    procs = []
    for j in range(nj):
        part = out / "split" / f"keys.{j + 1}"
        atomic_write(part, "".join(f"{k}\n" for k in keys[j::nj]))
        cmd = [sys.executable, "-m", "s4speech.bin.asr_inference", "--batch_size", "1", "--ngpu", str(min(r.ngpu, 1)),
               "--data_path_and_name_and_type", f"{d}/wav.scp,speech,sound", "--key_file", part,
               "--asr_train_config", sysdir / "config.yaml", "--asr_model_file", model_file(sysdir),
               "--output_dir", out / "split" / f"out.{j + 1}"]
        if r.inference_config:
            cmd += ["--config", r.inference_config]
        logf = out / "split" / f"decode.{j + 1}.log"
        logf.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nj))}
        procs.append((subprocess.Popen([str(c) for c in cmd], stdout=open(logf, "w"), stderr=subprocess.STDOUT, env=env), logf))
    failed = [str(lf) for p, lf in procs if p.wait() != 0]
    if failed:
        raise StageError(f"decoding {s} with {sysdir.name} failed; see {', '.join(failed)}")
    hyp = {}
    for j in range(nj):
        hyp.update(read_table(out / "split" / f"out.{j + 1}" / "1best_recog" / "text"))
    atomic_write(out / "text", "".join(f"{k} {hyp.get(k, '')}\n" for k in keys))
    mark_done(out)
    return out


def stage_decode(r: Recipe, sets=None) -> None:
    for cfg in r.asr_configs:
        for s in sets or r.test_sets:
            decode_set(r, r.system(cfg), s)


def stage_score(r: Recipe, sets=None) -> dict:
    from s4speech.metrics.asr import score_dir

    results = {}
    for cfg in r.asr_configs:
        for s in sets or r.test_sets:
            out = decode_set(r, r.system(cfg), s)
            results[(r.system(cfg).name, s)] = score_dir(r.dumpdir / "raw" / s / "text", out / "text", out)
    return results


def stage_longform(r: Recipe) -> None:
    if not r.long_sets:
        return log.info("long-form: no long-form test sets configured")
    from s4speech.metrics.asr import plot_wer_vs_length

    stage_score(r, r.long_sets)
    runs = {r.system(c).name: [(r.dumpdir / "raw" / s, decode_dir(r, r.system(c), s)) for s in r.long_sets]
            for c in r.asr_configs}
    plot_wer_vs_length(runs, Path("longform_wer.png"))  # beside RESULTS.md


def stage_report(r: Recipe) -> None:
    from s4speech.metrics.asr import write_report

    res = stage_score(r, r.test_sets + r.long_sets)
    path = write_report(r, res, Path("RESULTS.md"))
    print(path.read_text())


RUNNERS = {1: stage_data, 2: stage_speed_perturb, 3: stage_format, 4: stage_filter, 5: stage_tokenizer,
           6: stage_stats, 7: stage_train, 8: stage_decode, 9: stage_score, 10: stage_longform, 11: stage_report}


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="module in local/ preparing the data")
    p.add_argument("--stage", type=int, default=1)
    p.add_argument("--stop_stage", type=int, default=11)
    p.add_argument("--ngpu", type=int, default=0)
    p.add_argument("--nj", type=int, default=2, help="parallel decoding jobs")
    p.add_argument("--corpus_dir", type=Path, default=Path("downloads"))
    p.add_argument("--datadir", type=Path, default=Path("data"))
    p.add_argument("--dumpdir", type=Path, default=Path("dump"))
    p.add_argument("--expdir", type=Path, default=Path("exp"))
    p.add_argument("--asr_config", action="append", default=[], help="repeat to train and compare several systems")
    p.add_argument("--inference_config", default=None)
    p.add_argument("--train_set", default="train")
    p.add_argument("--valid_set", default="dev")
    p.add_argument("--test_sets", nargs="+", default=["test"])
    p.add_argument("--long_sets", nargs="*", default=[])
    p.add_argument("--token_type", default="char", choices=["char", "bpe", "unigram"])
    p.add_argument("--nbpe", type=int, default=5000)
    p.add_argument("--fs", type=int, default=None)
    p.add_argument("--min_sec", type=float, default=0.2)
    p.add_argument("--max_sec", type=float, default=30.0)
    p.add_argument("--speed_perturb_factors", type=float, nargs="*", default=[])
    p.add_argument("--train_args", default="", help="extra options for asr_train, e.g. '--max_epoch 3'")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    kw = vars(args).copy()
    stage, stop = kw.pop("stage"), kw.pop("stop_stage")
    kw["asr_configs"] = kw.pop("asr_config")
    kw["train_args"] = kw["train_args"].split()
    r = Recipe(**kw)
    if stage <= 7 <= stop and not r.asr_configs:
        print("error: at least one --asr_config is needed", file=sys.stderr)
        return 2
    for n in range(stage, stop + 1):
        log.info("stage %d: %s", n, STAGES[n])
        try:
            RUNNERS[n](r)
        except StageError as e:
            print(f"error: stage {n} ({STAGES[n]}): {e}", file=sys.stderr)
            return 1
        except Exception as e:  # noqa: BLE001 - name the stage, keep the traceback in the log
            log.exception("stage %d failed", n)
            print(f"error: stage {n} ({STAGES[n]}): {type(e).__name__}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
