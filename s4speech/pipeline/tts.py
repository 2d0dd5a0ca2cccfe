"""Stage runner for the TTS recipes (``recipes/<corpus>/tts1/run.sh`` calls it).

    python -m s4speech.tts.recipe --corpus asterisk \
        --tts_config conf/demo/tts_ssm.yaml --tts_config conf/demo/tts_transformer.yaml ...

Stages (Kaldi-style dirs under data/, dumps under dump/, models under exp/):
  1 data preparation (local/<corpus>.py)             6 train every --tts_config (s4speech.bin.tts_train)
  2 format: mono, resampled to the configs' fs        7 synthesize the test sets and long inputs
  3 filter train/dev by length                        8 evaluate: MCD, log-F0 RMSE, ASR CER, failures
  4 token list (characters)                           9 report: RESULTS.md
  5 collect feature statistics
Stages 1-4 are the ASR runner's (s4speech.recipe), shared by import. A stage whose outputs are
complete is skipped on re-run (a `.done` marker is written last); training resumes from its last
checkpoint; a failing stage stops the run naming the stage and the log to read.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from s4speech import recipe as asr_recipe
from s4speech.io.files import atomic_write
from s4speech.io.kaldi import read_table
from s4speech.recipe import StageError, done, mark_done, run

log = logging.getLogger("s4speech.tts.recipe")
STAGES = {1: "data", 2: "format", 3: "filter", 4: "tokens", 5: "stats", 6: "train", 7: "synthesize",
          8: "evaluate", 9: "report"}


@dataclass
class TTSRecipe:
    corpus: str
    tts_configs: list[str] = field(default_factory=list)
    train_set: str = "train"
    valid_set: str = "dev"
    test_sets: list[str] = field(default_factory=lambda: ["test"])
    corpus_dir: Path = Path("downloads")
    datadir: Path = Path("data")
    dumpdir: Path = Path("dump")
    expdir: Path = Path("exp")
    fs: int | None = None  # default: the configs' feats_extract_conf.fs
    min_sec: float = 0.2
    max_sec: float = 20.0
    ngpu: int = 0
    train_args: list[str] = field(default_factory=list)
    threshold: float = 0.5
    maxlenratio: float = 10.0
    n_long: int = 10  # long inputs (joined test sentences) for the failure rate
    long_chars: int = 400  # ... of at least this many characters
    max_eval_utts: int = 0  # evaluate the first N test utterances (0: all)
    asr_model: Path | None = None  # ESPnet ASR training dir for the CER; none: no CER

    # ---- helpers ----------------------------------------------------------------------
    def feats_conf(self) -> dict:
        confs = [(yaml.safe_load(open(c)) or {}).get("feats_extract_conf") or {} for c in self.tts_configs]
        if any(c != confs[0] for c in confs[1:]):
            raise StageError("the --tts_config files have different feats_extract_conf; "
                             "the systems must share the features (and their statistics)")
        return confs[0] if confs else {}

    def sample_rate(self) -> int:
        if self.fs:
            return self.fs
        fs = self.feats_conf().get("fs")
        return int(str(fs).lower().replace("k", "000")) if fs else 22050

    def asr(self) -> asr_recipe.Recipe:
        """The ASR runner's view of the same dirs (its stages 1, 3, 4 and 5 are reused)."""
        return asr_recipe.Recipe(corpus=self.corpus, train_set=self.train_set, valid_set=self.valid_set,
                                 test_sets=list(self.test_sets), corpus_dir=self.corpus_dir, datadir=self.datadir,
                                 dumpdir=self.dumpdir, expdir=self.expdir, token_type="char", fs=self.sample_rate(),
                                 min_sec=self.min_sec, max_sec=self.max_sec, ngpu=self.ngpu)

    @property
    def token_list(self) -> Path:
        return self.asr().token_list

    @property
    def stats_dir(self) -> Path:
        return self.expdir / "tts_stats_char"

    def system(self, cfg: str) -> Path:
        return self.expdir / f"tts_{Path(cfg).stem}"

    def synth_dir(self, cfg: str, s: str) -> Path:
        return self.system(cfg) / "synth" / s


def data_args(r: TTSRecipe, split: str, s: str) -> list[str]:
    d = r.dumpdir / "raw" / f"{s}_filtered"
    return [f"--{split}_data_path_and_name_and_type", f"{d}/text,text,text",
            f"--{split}_data_path_and_name_and_type", f"{d}/wav.scp,speech,sound"]


def token_args(r: TTSRecipe) -> list[str]:
    return ["--token_type", "char", "--token_list", str(r.token_list), "--cleaner", "none", "--g2p", "none",
            "--use_preprocessor", "true"]


# ---- stages --------------------------------------------------------------------------------
def stage_data(r: TTSRecipe) -> None:
    asr_recipe.stage_data(r.asr())


def stage_format(r: TTSRecipe) -> None:
    asr_recipe.stage_format(r.asr())


def stage_filter(r: TTSRecipe) -> None:
    asr_recipe.stage_filter(r.asr())


def stage_tokens(r: TTSRecipe) -> None:
    asr_recipe.stage_tokenizer(r.asr())


def stage_stats(r: TTSRecipe) -> None:
    out = r.stats_dir
    if done(out):
        return
    if not r.tts_configs:
        raise StageError("no --tts_config")
    r.feats_conf()  # the systems must share the features
    tr, va = r.train_set, r.valid_set
    cmd = [sys.executable, "-m", "s4speech.bin.tts_train", "--collect_stats", "true", "--ngpu", "0",
           "--config", r.tts_configs[0], "--output_dir", out, "--num_workers", "0", "--normalize", "none",
           "--train_shape_file", r.dumpdir / "raw" / f"{tr}_filtered" / "wav.scp",
           "--valid_shape_file", r.dumpdir / "raw" / f"{va}_filtered" / "wav.scp",
           *data_args(r, "train", tr), *data_args(r, "valid", va), *token_args(r)]
    run(cmd, out / "stats.log", "collect stats")
    ntok = len(r.token_list.read_text(encoding="utf-8").splitlines())
    for split in ("train", "valid"):  # ESPnet's text_shape.<token_type>: "utt length,vocab"
        shape = read_table(out / split / "text_shape")
        atomic_write(out / split / "text_shape.char", "".join(f"{u} {v},{ntok}\n" for u, v in shape.items()))
    mark_done(out)


def model_file(sysdir: Path) -> Path:
    from s4speech.tts.synthesize import MODEL_FILES

    for name in MODEL_FILES:
        if (sysdir / name).exists():
            return sysdir / name
    raise StageError(f"no trained model in {sysdir}")


def stage_train(r: TTSRecipe) -> None:
    st = r.stats_dir
    for cfg in r.tts_configs:
        out = r.system(cfg)
        if done(out):
            log.info("train: %s already trained", out)
            continue
        cmd = [sys.executable, "-m", "s4speech.bin.tts_train", "--config", cfg, "--output_dir", out,
               "--ngpu", str(r.ngpu), "--resume", "true", "--num_workers", "0",
               "--normalize", "global_mvn", "--normalize_conf", f"stats_file={st.resolve()}/train/feats_stats.npz",
               "--train_shape_file", st / "train" / "text_shape.char",
               "--train_shape_file", st / "train" / "speech_shape",
               "--valid_shape_file", st / "valid" / "text_shape.char",
               "--valid_shape_file", st / "valid" / "speech_shape",
               *data_args(r, "train", r.train_set), *data_args(r, "valid", r.valid_set), *token_args(r), *r.train_args]
        t0 = time.time()
        run(cmd, out / "train.log", f"training {out.name}")
        model_file(out)
        prev = float((out / "train_seconds").read_text()) if (out / "train_seconds").exists() else 0.0
        atomic_write(out / "train_seconds", f"{prev + time.time() - t0:.1f}\n")
        mark_done(out)


def long_texts(texts: list[str], n: int, min_chars: int) -> dict[str, str]:
    """n long inputs, each joining consecutive test sentences (wrapping round) up to >= min_chars."""
    out, k = {}, 0
    if not texts:
        return out
    for i in range(n):
        parts = []
        while sum(len(p) + 1 for p in parts) < min_chars:
            parts.append(texts[k % len(texts)])
            k += 1
        out[f"long{i:02d}"] = " ".join(parts)
    return out


def eval_sets(r: TTSRecipe) -> dict[str, dict[str, str]]:
    """{set: {utt: text}}: the test sets (first max_eval_utts) and 'long' (joined test sentences)."""
    sets = {}
    for s in r.test_sets:
        text = read_table(r.dumpdir / "raw" / s / "text")
        keys = sorted(text)[: r.max_eval_utts or None]
        sets[s] = {k: text[k] for k in keys}
    first = read_table(r.dumpdir / "raw" / r.test_sets[0] / "text")
    sets["long"] = long_texts([first[k] for k in sorted(first)], r.n_long, r.long_chars)
    return sets


def stage_synthesize(r: TTSRecipe) -> None:
    from tqdm import tqdm

    from s4speech.tts.synthesize import Synthesizer, write_wav

    for cfg in r.tts_configs:
        sysdir = r.system(cfg)
        syn = None
        for s, texts in eval_sets(r).items():
            out = r.synth_dir(cfg, s)
            if done(out):
                continue
            if syn is None:  # the model as it is: no splitting of long inputs
                syn = Synthesizer(sysdir, threshold=r.threshold, maxlenratio=r.maxlenratio,
                                  chunk_chars=10**6, max_chars=10**6)
            records = []
            for utt, text in tqdm(sorted(texts.items()), desc=f"{sysdir.name}/{s}", unit="utt", file=sys.stderr):
                res = syn(text)
                write_wav(out / "wav" / f"{utt}.wav", res.wav, res.fs)
                records.append(dict(utt=utt, chars=len(text), frames=int(res.feats.shape[0]),
                                    steps=sum(p.steps for p in res.pieces), maxlen=sum(p.maxlen for p in res.pieces),
                                    stopped=res.stopped, seconds=round(res.seconds, 3),
                                    audio_seconds=round(len(res.wav) / res.fs, 3)))
            atomic_write(out / "records.jsonl", "".join(json.dumps(x) + "\n" for x in records))
            atomic_write(out / "text", "".join(f"{u} {t}\n" for u, t in sorted(texts.items())))
            mark_done(out)


def frames_per_char(r: TTSRecipe) -> float:
    """Feature frames per character in the (filtered) training data."""
    d = r.dumpdir / "raw" / f"{r.train_set}_filtered"
    n = {k: int(v) for k, v in read_table(d / "utt2num_samples").items()}
    text = read_table(d / "text")
    hop = int(r.feats_conf().get("hop_length", 256))
    return sum(n[u] / hop for u in text) / max(1, sum(len(t) for t in text.values()))


def stage_evaluate(r: TTSRecipe) -> None:
    import soundfile as sf
    from tqdm import tqdm

    from s4speech.metrics.asr import score
    from s4speech.metrics import tts as ev

    sets = eval_sets(r)
    fpc = frames_per_char(r)
    asr_ok = r.asr_model is not None and any((Path(r.asr_model) / f).exists() for f in
                                              ("valid.acc.ave.pth", "valid.acc.best.pth", "latest.pth"))
    if r.asr_model is not None and not asr_ok:
        log.warning("evaluate: no trained ASR model in %s; no CER", r.asr_model)
    refs: dict[tuple[str, str], object] = {}  # (set, utt) -> reference analysis, shared by the systems

    def ref_analysis(s: str, u: str, wav: str):
        if (s, u) not in refs:
            x, fs = sf.read(wav, dtype="float32")
            refs[(s, u)] = (ev.analyze(x, fs), fs)
        return refs[(s, u)]

    natural_cer = {}
    if asr_ok:
        for s in r.test_sets:
            out = r.expdir / "natural" / s
            if not (out / "result.json").exists():
                wav = read_table(r.dumpdir / "raw" / s / "wav.scp")
                hyp = ev.transcribe({u: Path(wav[u]) for u in sets[s]}, r.asr_model, progress=True)
                atomic_write(out / "hyp", "".join(f"{u} {hyp[u]}\n" for u in sorted(hyp)))
                atomic_write(out / "result.json", json.dumps(score(sets[s], hyp)) + "\n")
            natural_cer[s] = json.loads((out / "result.json").read_text())
    for cfg in r.tts_configs:
        res_file = r.system(cfg) / "synth" / "eval.json"
        if res_file.exists():
            continue
        result = {"frames_per_char": fpc}
        for s in r.test_sets:
            d = r.synth_dir(cfg, s)
            wav = read_table(r.dumpdir / "raw" / s / "wav.scp")
            mcds, f0s, vuv = [], [], []
            for u in tqdm(sorted(sets[s]), desc=f"{r.system(cfg).name}/{s} MCD, F0", unit="utt", file=sys.stderr):
                ref, fs = ref_analysis(s, u, wav[u])
                syn, fs2 = sf.read(d / "wav" / f"{u}.wav", dtype="float32")
                if fs2 != fs:
                    raise StageError(f"{d / 'wav' / u}.wav is at {fs2} Hz, the reference at {fs} Hz")
                m, f = ev.compare(ref, ev.analyze(syn, fs))
                mcds.append(m)
                f0s.append(f.rmse)
                vuv.append(f.vuv_error)
            recs = [json.loads(x) for x in (d / "records.jsonl").read_text().splitlines()]
            entry = dict(n=len(mcds), mcd=ev.mean(mcds), log_f0_rmse=ev.mean(f0s), vuv_error=ev.mean(vuv),
                         failures=vars(ev.failures(recs, fpc)),
                         rtf=sum(x["seconds"] for x in recs) / max(1e-9, sum(x["audio_seconds"] for x in recs)))
            if asr_ok:
                hyp = ev.transcribe({u: d / "wav" / f"{u}.wav" for u in sets[s]}, r.asr_model, progress=True)
                atomic_write(d / "hyp", "".join(f"{u} {hyp[u]}\n" for u in sorted(hyp)))
                entry["asr"] = score(sets[s], hyp)
            result[s] = entry
        recs = [json.loads(x) for x in (r.synth_dir(cfg, "long") / "records.jsonl").read_text().splitlines()]
        f = ev.failures(recs, fpc)
        result["long"] = dict(vars(f), rate=f.rate, chars=ev.mean([x["chars"] for x in recs]),
                              rtf=sum(x["seconds"] for x in recs) / max(1e-9, sum(x["audio_seconds"] for x in recs)))
        result["natural_asr"] = natural_cer
        atomic_write(res_file, json.dumps(result, indent=1) + "\n")


def _count_params(sysdir: Path) -> int | None:
    import torch

    try:
        sd = torch.load(model_file(sysdir), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a report without the count
        return None
    return int(sum(v.numel() for k, v in sd.items() if k.startswith("tts.") and v.is_floating_point()))


def stage_report(r: TTSRecipe, path: Path = Path("RESULTS.md")) -> Path:
    from s4speech.io.machine import cpu_model

    import torch

    rows, long_rows, cer = [], [], []
    for cfg in r.tts_configs:
        sysdir = r.system(cfg)
        res = json.loads((sysdir / "synth" / "eval.json").read_text())
        secs = (sysdir / "train_seconds").read_text().strip() if (sysdir / "train_seconds").exists() else "?"
        conf = yaml.safe_load(open(sysdir / "config.yaml"))
        n = _count_params(sysdir)
        for s in r.test_sets:
            e = res[s]
            rows.append(f"|{sysdir.name}|{s}|{e['n']}|{e['mcd']:.2f}|{e['log_f0_rmse']:.3f}|{e['vuv_error'] * 100:.1f}|"
                        f"{e['rtf']:.3f}|{(n or 0) / 1e6:.2f}|{conf.get('max_epoch')}|{secs}|")
            if "asr" in e:
                c = e["asr"]["cer"]
                cer.append(f"|{sysdir.name}|{s}|{c['Snt']}|{c['Wrd']}|{c['Err']}|{e['asr']['wer']['Err']}|")
        lg = res["long"]
        long_rows.append(f"|{sysdir.name}|{lg['n']}|{lg['chars']:.0f}|{lg['no_stop']}|{lg['early_stop']}|"
                         f"{lg['rate'] * 100:.0f}|{lg['rtf']:.3f}|")
        nat = res.get("natural_asr") or {}
    for s, sc in (nat.items() if r.tts_configs else []):
        cer.append(f"|natural recordings|{s}|{sc['cer']['Snt']}|{sc['cer']['Wrd']}|{sc['cer']['Err']}|{sc['wer']['Err']}|")
    dev = ("GPU: " + torch.cuda.get_device_name(0)) if r.ngpu and torch.cuda.is_available() else \
        f"CPU: {cpu_model()}, {torch.get_num_threads()} threads"
    parts = [f"# TTS results: {r.corpus}\n",
             f"Produced by `python -m s4speech.tts.recipe --corpus {r.corpus} ...` (stage 9) on {dev}. "
             "Waveforms by Griffin-Lim (32 iterations); synthesis with threshold "
             f"{r.threshold}, maxlenratio {r.maxlenratio}, long inputs not split.\n",
             "Systems: " + ", ".join(f"`{c}`" for c in r.tts_configs) + "\n",
             "## Objective measures against the natural recordings\n",
             "MCD: mel cepstral distortion (dB, c1-c24 of the WORLD envelope warped to the mel scale, DTW); "
             "log-F0 RMSE: ln F0 from pYIN over frames voiced in both (DTW on MFCCs); V/UV: voicing disagreement; "
             "RTF: synthesis time (model + Griffin-Lim) / audio time.\n",
             "|system|set|utts|MCD (dB)|log-F0 RMSE|V/UV err (%)|RTF|params (M)|epochs|train time (s)|",
             "|---|---|---|---|---|---|---|---|---|---|", *rows, ""]
    if cer:
        parts += ["## Intelligibility: ASR on the synthesized speech\n",
                  f"ASR model: `{r.asr_model}` (beam 4, CTC weight 0.3); the natural recordings give its own error.\n",
                  "|system|set|utts|chars|CER (%)|WER (%)|", "|---|---|---|---|---|---|", *cer, ""]
    parts += ["## Long inputs\n",
              f"{r.n_long} inputs of >= {r.long_chars} characters (consecutive test sentences joined). No stop: no "
              f"stop token within maxlenratio; early stop: fewer than half the frames the text needs at the training "
              f"data's rate ({json.loads((r.system(r.tts_configs[0]) / 'synth' / 'eval.json').read_text())['frames_per_char']:.2f} "
              "frames per character).\n" if r.tts_configs else "",
              "|system|inputs|mean chars|no stop|early stop|failed (%)|RTF|", "|---|---|---|---|---|---|---|",
              *long_rows, ""]
    atomic_write(path, "\n".join(parts))
    return path


RUNNERS = {1: stage_data, 2: stage_format, 3: stage_filter, 4: stage_tokens, 5: stage_stats, 6: stage_train,
           7: stage_synthesize, 8: stage_evaluate, 9: stage_report}


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="module in local/ preparing the data (asterisk, ljspeech)")
    p.add_argument("--stage", type=int, default=1)
    p.add_argument("--stop_stage", type=int, default=9)
    p.add_argument("--ngpu", type=int, default=0)
    p.add_argument("--corpus_dir", type=Path, default=Path("downloads"))
    p.add_argument("--datadir", type=Path, default=Path("data"))
    p.add_argument("--dumpdir", type=Path, default=Path("dump"))
    p.add_argument("--expdir", type=Path, default=Path("exp"))
    p.add_argument("--tts_config", action="append", default=[], help="repeat to train and compare several systems")
    p.add_argument("--train_set", default="train")
    p.add_argument("--valid_set", default="dev")
    p.add_argument("--test_sets", nargs="+", default=["test"])
    p.add_argument("--fs", type=int, default=None, help="default: feats_extract_conf.fs of the configs")
    p.add_argument("--min_sec", type=float, default=0.2)
    p.add_argument("--max_sec", type=float, default=20.0)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--maxlenratio", type=float, default=10.0)
    p.add_argument("--n_long", type=int, default=10)
    p.add_argument("--long_chars", type=int, default=400)
    p.add_argument("--max_eval_utts", type=int, default=0, help="evaluate the first N test utterances (0: all)")
    p.add_argument("--asr_model", type=Path, default=None, help="ESPnet ASR training dir for the CER")
    p.add_argument("--train_args", default="", help="extra options for tts_train, e.g. '--max_epoch 3'")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    kw = vars(args).copy()
    stage, stop = kw.pop("stage"), kw.pop("stop_stage")
    kw["tts_configs"] = kw.pop("tts_config")
    kw["train_args"] = kw["train_args"].split()
    r = TTSRecipe(**kw)
    if stage <= 9 and stop >= 5 and not r.tts_configs:
        print("error: at least one --tts_config is needed", file=sys.stderr)
        return 2
    for n in range(stage, stop + 1):
        log.info("stage %d: %s", n, STAGES[n])
        t0 = time.time()
        try:
            RUNNERS[n](r)
        except StageError as e:
            print(f"error: stage {n} ({STAGES[n]}): {e}", file=sys.stderr)
            return 1
        except Exception as e:  # noqa: BLE001 - name the stage, keep the traceback in the log
            log.exception("stage %d failed", n)
            print(f"error: stage {n} ({STAGES[n]}): {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        log.info("stage %d (%s) took %.1f s", n, STAGES[n], time.time() - t0)
    if stop >= 9 >= stage:
        print(Path("RESULTS.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
