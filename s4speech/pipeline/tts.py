"""The TTS recipe: settings and stages (``python -m s4speech.recipe --task tts``).

  1 data preparation (s4speech.corpora)           6 train every --tts_config
  2 format: referenced in place, or converted      7 synthesize the test sets and long inputs
  3 filter train/dev by length                     8 evaluate: MCD, log-F0 RMSE, ASR CER, failures
  4 token list (characters)                        9 report: RESULTS.md
  5 feature statistics                            10 pack each system into exp/<system>.zip
Stages 1-4 are the data stages every recipe shares (``pipeline.data``).
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from s4speech.io.expdir import MODEL_FILES, load_config
from s4speech.io.files import atomic_write
from s4speech.io.kaldi import KaldiDir, read_table
from s4speech.pipeline import train as T
from s4speech.pipeline.data import DataRecipe, stage_data, stage_filter, stage_format, stage_tokenizer
from s4speech.pipeline.runner import Stage, StageError, done, mark_done

log = logging.getLogger("s4speech.recipe")


@dataclass
class TTSRecipe(DataRecipe):
    tts_configs: list[str] = field(default_factory=list)
    max_sec: float = 20.0
    train_args: list[str] = field(default_factory=list)
    threshold: float = 0.5
    maxlenratio: float = 0.0  # frames per (input token + 1); 0: from the training data (synth_limit)
    griffin_lim_iters: int = 32
    n_long: int = 10  # long inputs (joined test sentences) for the failure rate
    long_chars: int = 400  # ... of at least this many characters
    max_eval_utts: int = 0  # evaluate the first N test utterances (0: all)
    asr_model: Path | None = None  # ESPnet ASR training dir for the CER; none: no CER
    asr_beam_size: int = 4
    asr_ctc_weight: float = 0.3

    task = "tts"

    def configs(self) -> list[str]:
        return self.tts_configs

    def feats_conf(self) -> dict:
        confs = [load_config(c).get("feats_extract_conf") or {} for c in self.tts_configs]
        if any(c != confs[0] for c in confs[1:]):
            raise StageError("the --tts_config files have different feats_extract_conf; "
                             "the systems must share the features (and their statistics)")
        return confs[0] if confs else {}

    @property
    def stats_dir(self) -> Path:
        return self.expdir / "tts_stats_char"

    def system(self, cfg: str) -> Path:
        return self.expdir / f"tts_{Path(cfg).stem}"

    def synth_dir(self, cfg: str, s: str) -> Path:
        return self.system(cfg) / "synth" / s


def data_args(r: TTSRecipe, split: str, s: str) -> list:
    d = r.filtered(s)
    return [f"--{split}_data_path_and_name_and_type", f"{d}/text,text,text",
            f"--{split}_data_path_and_name_and_type", r.speech_spec(d)]


def token_args(r: TTSRecipe) -> list:
    return ["--token_type", "char", "--token_list", r.token_list.resolve(), "--cleaner", "none", "--g2p", "none",
            "--use_preprocessor", "true"]


def stage_tokens(r: TTSRecipe) -> None:
    if r.token_type != "char":
        raise StageError(f"the TTS recipe uses characters, not --token_type {r.token_type}")
    stage_tokenizer(r)


def stage_stats(r: TTSRecipe) -> None:
    if not r.tts_configs:
        raise StageError("no --tts_config")
    if done(r.stats_dir):
        return
    r.feats_conf()  # the systems must share the features
    T.collect_stats("tts", r.tts_configs[0], r.stats_dir,
                    {"train": r.filtered(r.train_set) / "utt2num_samples", "valid": r.filtered(r.valid_set) / "utt2num_samples"},
                    [*data_args(r, "train", r.train_set), *data_args(r, "valid", r.valid_set)],
                    [*token_args(r), "--normalize", "none"], r.token_list, "char")
    mark_done(r.stats_dir)


def stage_train(r: TTSRecipe) -> None:
    T.train_systems(r, "tts", [
        *T.stats_args(r.stats_dir, ("text_shape.char", "speech_shape")),
        *data_args(r, "train", r.train_set), *data_args(r, "valid", r.valid_set), *token_args(r), *r.train_args])


# ---- synthesis and evaluation --------------------------------------------------------------------------
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
        text = read_table(r.raw(s) / "text")
        sets[s] = {k: text[k] for k in sorted(text)[: r.max_eval_utts or None]}
    first = read_table(r.raw(r.test_sets[0]) / "text")
    sets["long"] = long_texts([first[k] for k in sorted(first)], r.n_long, r.long_chars)
    return sets


def stage_synthesize(r: TTSRecipe) -> None:
    from tqdm import tqdm

    from s4speech.io.audio import write_audio
    from s4speech.tts.synthesize import Synthesizer

    for cfg in r.tts_configs:
        sysdir = r.system(cfg)
        syn = None
        for s, texts in eval_sets(r).items():
            out = r.synth_dir(cfg, s)
            if done(out):
                continue
            if syn is None:  # the model as it is: no splitting of long inputs
                syn = Synthesizer(sysdir, threshold=r.threshold, maxlenratio=r.maxlenratio,
                                  max_frames=synth_limit(r), griffin_lim_iters=r.griffin_lim_iters, chunk_chars=10**6, max_chars=10**6)
            records = []
            for utt, text in tqdm(sorted(texts.items()), desc=f"{sysdir.name}/{s}", unit="utt", file=sys.stderr):
                res = syn(text)
                write_audio(out / "wav" / f"{utt}.wav", res.wav, res.fs, "wav")
                records.append(dict(utt=utt, chars=len(text), frames=int(res.feats.shape[0]),
                                    steps=sum(p.steps for p in res.pieces), maxlen=sum(p.maxlen for p in res.pieces),
                                    stopped=res.stopped, seconds=round(res.seconds, 3),
                                    audio_seconds=round(len(res.wav) / res.fs, 3)))
            atomic_write(out / "records.jsonl", "".join(json.dumps(x) + "\n" for x in records))
            atomic_write(out / "text", "".join(f"{u} {t}\n" for u, t in sorted(texts.items())))
            mark_done(out)


MAXLEN_MARGIN = 1.2  # the synthesis limit's frames per character: this much above the training data's


def _train_frames(r: TTSRecipe) -> list[tuple[int, float]]:
    """(characters, feature frames) of each (filtered) training utterance."""
    d = r.filtered(r.train_set)
    n = {k: int(v) for k, v in read_table(d / "utt2num_samples").items()}
    hop = r.feats_conf().get("hop_length")
    if not hop:
        raise StageError("feats_extract_conf.hop_length is not stated in the --tts_config files")
    return [(len(t), n[u] / int(hop)) for u, t in read_table(d / "text").items()]


def frames_per_char(r: TTSRecipe, utts: list[tuple[int, float]] | None = None) -> float:
    """Feature frames per character in the (filtered) training data (``utts``: its ``_train_frames``)."""
    utts = _train_frames(r) if utts is None else utts
    return sum(f for _, f in utts) / max(1, sum(c for c, _ in utts))


def synth_limit(r: TTSRecipe) -> tuple[float, float] | None:
    """The synthesis limit from the training data, (a, b): at most a + b * (tokens + 1) frames.

    b = MAXLEN_MARGIN x the training data's frames per character (all of it, silences included);
    a = the most any training utterance needs beyond b per character (the silence at both ends of a
    short prompt), so that every text spoken like the training data can be completed and a "no stop"
    is the model's, not the limit's. None when ``--maxlenratio`` is given (a + b * n with a = 0)."""
    if r.maxlenratio > 0:
        return None
    utts = _train_frames(r)
    if not utts:
        raise StageError(f"no training utterances in {r.filtered(r.train_set)} to set the synthesis limit from")
    b = MAXLEN_MARGIN * frames_per_char(r, utts)
    return round(max(0.0, max(f - b * (c + 1) for c, f in utts)), 1), round(b, 2)


def limit_text(r: TTSRecipe) -> str:
    lim = synth_limit(r)
    if lim is None:
        return f"maxlenratio {r.maxlenratio} (at most {r.maxlenratio} x (characters + 1) frames)"
    return (f"at most {lim[0]:g} + {lim[1]:g} x (characters + 1) frames, from the training data ({MAXLEN_MARGIN} x "
            f"its frames per character; the constant lets its slowest utterance fit)")


def _records(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "records.jsonl").read_text().splitlines()]


def _rtf(recs: list[dict]) -> float:
    return sum(x["seconds"] for x in recs) / max(1e-9, sum(x["audio_seconds"] for x in recs))


def stage_evaluate(r: TTSRecipe) -> None:
    import soundfile as sf
    from tqdm import tqdm

    from s4speech.io.audio import load_segment
    from s4speech.metrics import tts as ev
    from s4speech.metrics.asr import score

    sets = eval_sets(r)
    fpc = frames_per_char(r)
    asr_ok = r.asr_model is not None and any((Path(r.asr_model) / f).exists() for f in MODEL_FILES["asr"])
    if r.asr_model is not None and not asr_ok:
        log.warning("evaluate: no trained ASR model in %s; no CER", r.asr_model)
    refs: dict[tuple[str, str], tuple] = {}  # (set, utt) -> (reference analysis, rate), shared by the systems

    def ref_analysis(s: str, u: str, d: KaldiDir):
        if (s, u) not in refs:
            x, fs = load_segment(*d.source(u))
            refs[(s, u)] = (ev.analyze(x, fs), fs)
        return refs[(s, u)]

    def asr(wavs: dict) -> dict:
        return ev.transcribe(wavs, r.asr_model, beam_size=r.asr_beam_size, ctc_weight=r.asr_ctc_weight, progress=True)

    natural = {}
    if asr_ok:
        for s in r.test_sets:
            out = r.expdir / "natural" / s
            if not (out / "result.json").exists():
                d = KaldiDir.read(r.raw(s))
                hyp = asr({u: Path(d.source(u)[0]) for u in sets[s]})
                atomic_write(out / "hyp", "".join(f"{u} {hyp[u]}\n" for u in sorted(hyp)))
                atomic_write(out / "result.json", json.dumps(score(sets[s], hyp)) + "\n")
            natural[s] = json.loads((out / "result.json").read_text())
    for cfg in r.tts_configs:
        res_file = r.system(cfg) / "synth" / "eval.json"
        if res_file.exists():
            continue
        result = {"frames_per_char": fpc, "natural_asr": natural}
        for s in r.test_sets:
            d, ref_dir = r.synth_dir(cfg, s), KaldiDir.read(r.raw(s))
            mcds, f0s, vuv = [], [], []
            for u in tqdm(sorted(sets[s]), desc=f"{r.system(cfg).name}/{s} MCD, F0", unit="utt", file=sys.stderr):
                ref, fs = ref_analysis(s, u, ref_dir)
                syn, fs2 = sf.read(d / "wav" / f"{u}.wav", dtype="float32")
                if fs2 != fs:
                    raise StageError(f"{d / 'wav' / u}.wav is at {fs2} Hz, the reference at {fs} Hz")
                m, f = ev.compare(ref, ev.analyze(syn, fs))
                mcds.append(m)
                f0s.append(f.rmse)
                vuv.append(f.vuv_error)
            recs = _records(d)
            entry = dict(n=len(mcds), mcd=vars(ev.mean(mcds)), log_f0_rmse=vars(ev.mean(f0s)),
                         vuv_error=vars(ev.mean(vuv)), failures=vars(ev.failures(recs, fpc)), rtf=_rtf(recs))
            if asr_ok:
                hyp = asr({u: d / "wav" / f"{u}.wav" for u in sets[s]})
                atomic_write(d / "hyp", "".join(f"{u} {hyp[u]}\n" for u in sorted(hyp)))
                entry["asr"] = score(sets[s], hyp)
            result[s] = entry
        recs = _records(r.synth_dir(cfg, "long"))
        f = ev.failures(recs, fpc)
        result["long"] = dict(vars(f), rate=f.rate, chars=ev.mean([x["chars"] for x in recs]).value, rtf=_rtf(recs))
        atomic_write(res_file, json.dumps(result, indent=1) + "\n")


def count_params(sysdir: Path, model: Path) -> int:
    """Parameters of the TTS model in a checkpoint (weights only); an unreadable one is an error naming it."""
    import torch

    try:
        sd = torch.load(model, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - one line naming the file
        raise StageError(f"{model}: cannot read the checkpoint ({type(e).__name__}: {e})") from None
    return int(sum(v.numel() for k, v in sd.items() if k.startswith("tts.") and v.is_floating_point()))


def stage_report(r: TTSRecipe) -> None:
    from s4speech.pipeline.report import write_tts_report

    write_tts_report(r)
    print(r.results.read_text())


def stage_pack(r: TTSRecipe) -> None:
    for cfg in r.tts_configs:
        sysdir = r.system(cfg)
        T.pack("tts", {"train_config": sysdir / "config.yaml", "model_file": r.trained(sysdir)},
               [r.stats_dir / "train" / "feats_stats.npz"], sysdir.with_suffix(".zip"), sysdir / "pack.log")


STAGES = {1: Stage("data", stage_data), 2: Stage("format", stage_format), 3: Stage("filter", stage_filter),
          4: Stage("tokens", stage_tokens), 5: Stage("stats", stage_stats), 6: Stage("train", stage_train),
          7: Stage("synthesize", stage_synthesize), 8: Stage("evaluate", stage_evaluate),
          9: Stage("report", stage_report), 10: Stage("pack", stage_pack)}
