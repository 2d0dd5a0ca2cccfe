"""Benchmark ``s4speech transcribe``: real-time factor, peak memory and WER on long recordings.

    python -m s4speech.bench.transcribe --model recipes/demo/asr1/exp/asr_asr_ssm \\
        --model recipes/demo/asr1/exp/asr_asr_transformer --minutes 1 10 60 [--out README.md]

Recordings of the requested lengths are made by concatenating real speech with 0.3-0.8 s pauses:
the test split of the Asterisk demo prompts (``s4speech.corpora.asterisk``: ``--corpus_dir``, default
``downloads/asterisk``, fetched there if needed) or the WAV/FLAC files given with ``--wavs``
(with ``--texts`` for a WER). The prompts are cycled to fill the length. Each (model, length)
runs in a fresh process: the model is loaded and warmed up on 10 s of the recording, the peak RSS
counter is reset (``/proc/self/clear_refs``), then the whole recording is transcribed with the
default options; the table gives the wall time, the real-time factor (wall / audio), the RSS
after loading, the peak RSS while transcribing, and the WER against the concatenated prompt texts.
The table replaces the part of ``--out`` (default BENCHMARKS_transcribe.md) between
``<!-- transcribe-bench -->`` and ``<!-- /transcribe-bench -->``; to a file without these markers
(or none) the marked section is appended, the rest of the file kept (``--out README.md`` updates
the README's section).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from s4speech.bench.sections import write_between
from s4speech.io.machine import cpu_model, peak_bytes, reset_peak, rss_bytes

MARKERS = BEGIN, END = "<!-- transcribe-bench -->", "<!-- /transcribe-bench -->"
DEFAULT_OUT = "BENCHMARKS_transcribe.md"


def speech_sources(args) -> list[tuple[Path, str]]:
    """(speech file, its transcript) pairs to concatenate: --wavs / --texts, else the Asterisk test prompts."""
    if args.wavs:
        texts = [""] * len(args.wavs)
        if args.texts:
            texts = Path(args.texts).read_text(encoding="utf-8").splitlines()
            if len(texts) != len(args.wavs):
                raise SystemExit("--texts needs one line per --wavs file")
        return list(zip(map(Path, args.wavs), texts))
    from s4speech.corpora.asterisk import fetch, read_prompts, split_prompts

    prompts = read_prompts(fetch(args.corpus_dir))
    test = split_prompts(prompts)["test"]
    return [(p.wav_path, p.text) for p in test]


def make_recording(sources, seconds: float, path: Path, rate: int, seed: int = 0) -> str:
    """Write ``path`` (16-bit WAV at ``rate``): sources cycled with 0.3-0.8 s pauses; returns the reference text."""
    import soundfile as sf

    from s4speech.io.audio import read

    rng = np.random.default_rng(seed)
    cache: dict[Path, np.ndarray] = {}
    words, n, target = [], 0, int(seconds * rate)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.wav")
    with sf.SoundFile(tmp, "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        i = 0
        while n < target:
            wav, text = sources[i % len(sources)]
            i += 1
            if wav not in cache:
                cache[wav] = read(wav, rate)[0]
            x = cache[wav]  # (samples,) float32
            pause = (rng.standard_normal(int(rng.uniform(0.3, 0.8) * rate)) * 10 ** (-70 / 20)).astype(np.float32)
            if n + len(x) > target:
                if words:  # only whole prompts
                    f.write(np.zeros(target - n, np.float32))
                    n = target
                    break
            f.write(np.clip(x, -1, 1))
            f.write(pause)
            n += len(x) + len(pause)
            words.append(text)
    os.replace(tmp, path)
    return " ".join(words)


def child(model: str, wav: str, threads: int | None) -> dict:
    """Run in a fresh process: load, warm up, transcribe ``wav``; memory (MiB) and time (s) as a dict."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    import soundfile as sf

    import s4speech.transcribe as T

    m = T.Model.load(model)
    warm = Path(wav).with_suffix(".warm.wav")
    x, rate = sf.read(wav, frames=10 * sf.info(wav).samplerate, dtype="float32")
    sf.write(warm, x, rate)
    del x
    T.transcribe(m, [str(warm)], progress=False)
    warm.unlink()
    rss_load = rss_bytes() / 2**20
    reset = reset_peak()
    t0 = time.perf_counter()
    (res,) = T.transcribe(m, [wav], progress=False)
    wall = time.perf_counter() - t0
    if res.error:
        raise SystemExit(res.error)
    return {"wall": wall, "duration": res.duration, "segments": len(res.segments), "text": res.text,
            "rss_load": rss_load, "rss_peak": peak_bytes() / 2**20 if reset else float("nan"),
            "threads": torch.get_num_threads(), "decoder": type(m.asr.decoder).__name__}


def run_child(model: str, wav: Path, threads: int | None) -> dict:
    """``child`` in a fresh ``python -m s4speech.bench.transcribe --_child`` process."""
    cmd = [sys.executable, "-m", "s4speech.bench.transcribe", "--model", model, "--_child", model, str(wav)]
    if threads:
        cmd += ["--threads", str(threads)]
    from s4speech.bench.cases import child_json

    return child_json(cmd)


def _load5() -> float:
    return os.getloadavg()[1] if hasattr(os, "getloadavg") else float("nan")


def table(rows, argv, threads: int, load_before: float) -> str:
    """The section's text: machine, command, what is measured, one row per (model, length)."""
    import torch

    lines = [
        f"Machine: {cpu_model()}, {os.cpu_count()} CPU cores, torch {torch.__version__} on CPU with "
        f"{threads} thread(s); {time.strftime('%Y-%m-%d')}. Load average (5 min) before / after the runs: "
        f"{load_before:.1f} / {_load5():.1f} (other jobs share the machine when it is above 0).", "",
        "Command: `python -m s4speech.bench.transcribe " + " ".join(argv) + "`", "",
        "Defaults of `s4speech transcribe`: energy segmentation, max segment 20 s, batch 8, beam 4, CTC weight 0.3, "
        "word times on. RTF = wall time / audio time (lower is faster). RSS after load: after loading and a 10 s "
        "warm-up; peak RSS: the highest resident memory while transcribing the recording.", "",
        "| model | decoder | audio | segments | wall (s) | RTF | RSS after load (MiB) | peak RSS (MiB) | WER |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, minutes, r, wer in rows:
        lines.append(f"| `{model}` | {r['decoder']} | {minutes:g} min ({r['duration']:.0f} s) | {r['segments']} | "
                     f"{r['wall']:.1f} | {r['wall'] / r['duration']:.3f} | {r['rss_load']:.0f} | {r['rss_peak']:.0f} | "
                     f"{'n/a' if wer != wer else f'{wer:.1%}'} |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="experiment dir or packed zip (repeat)")
    p.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    p.add_argument("--corpus_dir", default="downloads/asterisk")
    p.add_argument("--wavs", nargs="*", default=None, help="speech files to concatenate instead of the prompts")
    p.add_argument("--texts", default=None, help="their transcripts, one line per file (for the WER)")
    p.add_argument("--work_dir", default="exp/bench_transcribe", help="where the recordings are written")
    p.add_argument("--threads", type=int, default=None, help="torch threads in the runs (default: torch's)")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help=f"file whose transcribe-bench section is replaced, or appended (default {DEFAULT_OUT})")
    p.add_argument("--_child", nargs=2, metavar=("MODEL", "WAV"), help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args._child:
        print("BENCH " + json.dumps(child(*args._child, args.threads)))
        return 0

    import jiwer
    import torch

    work = Path(args.work_dir)
    from s4speech.io.expdir import ESPNET_DEFAULT_FS, config_rate, load_config, model_files

    model_rates = {m: config_rate(load_config(model_files(m)[0])) or ESPNET_DEFAULT_FS for m in args.model}
    sources = speech_sources(args)
    load_before = _load5()
    rows = []
    for minutes in args.minutes:
        for model in args.model:
            rate = model_rates[model]
            wav = work / f"speech_{minutes:g}min_{rate}.wav"
            ref_file = wav.with_suffix(".txt")
            if not wav.exists() or not ref_file.exists():
                ref_file.parent.mkdir(parents=True, exist_ok=True)
                ref_file.write_text(make_recording(sources, minutes * 60, wav, rate) + "\n")
            ref = ref_file.read_text().strip()
            print(f"bench: {model} on {minutes:g} min ...", file=sys.stderr, flush=True)
            r = run_child(model, wav, args.threads)
            wer = jiwer.wer(ref, r["text"]) if ref and r["text"] else float("nan")
            rows.append((model, minutes, r, wer))
            print(f"  RTF {r['wall'] / r['duration']:.3f}, peak {r['rss_peak']:.0f} MiB, WER {wer:.1%}",
                  file=sys.stderr, flush=True)
    threads = rows[0][2]["threads"] if rows else torch.get_num_threads()
    text = table(rows, argv, threads, load_before)
    write_between(args.out, BEGIN, END, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
