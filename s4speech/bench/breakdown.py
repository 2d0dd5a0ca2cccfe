"""Where a transcription's time goes: load / encoder / decoder / CTC / alignment / rest, for one real
recording, ``s4speech transcribe`` against ESPnet's own ``Speech2Text`` on the same models.

    python -m s4speech.bench.breakdown --model recipes/demo/asr1/exp/asr_asr_ssm \\
        --model recipes/demo/asr1/exp/asr_asr_transformer --seconds 120 [--threads 2] [--out BENCHMARKS.md]

The recording is made as ``s4speech.bench.transcribe`` makes its recordings (the Asterisk test prompts
cycled with 0.3-0.8 s pauses, or ``--wavs``). Each (model, way) runs in a fresh process:

- ``s4speech``: ``Model.load`` (the model built from the classes its config names; the fast CTC
  prefix scorer), then ``transcribe`` with its defaults (energy segmentation, batched encoder,
  beam search per segment, CTC word alignment);
- ``espnet``: ``espnet2.bin.asr_inference.Speech2Text`` (ESPnet's loader, its CTC prefix scorer),
  the whole recording decoded as one utterance, as ``asr_inference`` does;
- ``espnet+fast CTC``: the same with s4speech's CTC prefix scorer swapped in (``use_fast_ctc``, as
  ``s4speech.bin.asr_inference`` and the recipes decode): the same search, only the CTC differs.

Same beam (4) and CTC weight (0.3) for both. Time is wall-clock: ``import torch``; load (everything
else up to a model ready to decode); then, inside the decode, the encoder (``encode``), the decoder
(its ``score`` / ``batch_score``), the CTC prefix scorer (all its scoring and state selection), the
word alignment (``ctc_align``), and the rest (search bookkeeping, segmentation, I/O). The table
replaces the part of ``--out`` between ``<!-- breakdown-bench -->`` markers (appended when absent).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

from s4speech.bench.sections import write_between

MARKERS = "<!-- breakdown-bench -->", "<!-- /breakdown-bench -->"
WAYS = ("s4speech", "espnet", "espnet+fast CTC")
PARTS = ("encoder", "decoder", "ctc", "alignment")
BEAM, CTC_WEIGHT = 4, 0.3


class Clock:
    """Seconds spent in wrapped calls, by part (nested calls of the same part are counted once)."""

    def __init__(self):
        self.s = dict.fromkeys(PARTS, 0.0)
        self._depth = dict.fromkeys(PARTS, 0)

    def wrap(self, part: str, fn):
        @functools.wraps(fn)
        def timed(*a, **k):
            self._depth[part] += 1
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self._depth[part] -= 1
                if self._depth[part] == 0:
                    self.s[part] += time.perf_counter() - t
        return timed

    def patch(self, obj, part: str, names) -> None:
        for n in names:
            if callable(getattr(obj, n, None)):
                setattr(obj, n, self.wrap(part, getattr(obj, n)))


def instrument(clock: Clock, s2t) -> None:
    """Wrap the encoder, the decoder's scoring and the CTC scorer of a Speech2Text (ours or ESPnet's)."""
    clock.patch(s2t.asr_model, "encoder", ["encode"])
    bs = s2t.beam_search
    scorers = {**bs.full_scorers, **bs.part_scorers}
    clock.patch(scorers["decoder"], "decoder", ["score", "batch_score"])
    if "ctc" in scorers:
        clock.patch(scorers["ctc"], "ctc", ["init_state", "batch_init_state", "score_partial", "batch_score_partial",
                                            "select_state", "score", "batch_score", "final_score"])


def child(way: str, model: str, wav: str, threads: int) -> dict:
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(threads)
    t_torch = time.perf_counter() - t0
    import soundfile as sf

    from s4speech.io.expdir import loadable_config, model_files

    clock = Clock()
    if way == "s4speech":
        import s4speech.transcribe as T
        from s4speech.transcribe import api

        m = T.Model.load(model, beam_size=BEAM, ctc_weight=CTC_WEIGHT)
        t_load = time.perf_counter() - t0 - t_torch
        instrument(clock, m.s2t)
        api.ctc_align = clock.wrap("alignment", api.ctc_align)
        t1 = time.perf_counter()
        (res,) = T.transcribe(m, [wav], progress=False)
        if res.error:
            raise SystemExit(res.error)
        text, segments, decoder = res.text, len(res.segments), type(m.asr.decoder).__name__
        n_tokens = len(m.s2t.tokenizer.text2tokens(text)) if text else 0
    else:
        from s4speech.transcribe.model import _speech2text_class

        cfg, pth = model_files(model, "asr")
        s2t = _speech2text_class()(asr_train_config=str(loadable_config(cfg)), asr_model_file=str(pth), device="cpu",
                                   beam_size=BEAM, ctc_weight=CTC_WEIGHT, lm_weight=0.0, nbest=1, maxlenratio=0.0,
                                   minlenratio=0.0)
        if way == "espnet+fast CTC":
            from s4speech.asr.ctc import use_fast_ctc

            use_fast_ctc(s2t)
        t_load = time.perf_counter() - t0 - t_torch
        instrument(clock, s2t)
        t1 = time.perf_counter()
        x, _ = sf.read(wav, dtype="float32")
        with torch.no_grad():
            text, _, token_int, _ = s2t(x)[0]
        segments, decoder, n_tokens = 1, type(s2t.asr_model.decoder).__name__, len(token_int)
    decode = time.perf_counter() - t1
    return {"way": way, "model": model, "decoder_class": decoder, "torch": t_torch, "load": t_load, "decode": decode,
            **clock.s, "rest": decode - sum(clock.s.values()), "segments": segments, "text": text, "tokens": n_tokens,
            "duration": sf.info(wav).duration, "threads": torch.get_num_threads()}


def run_child(way: str, model: str, wav: Path, threads: int) -> dict:
    from s4speech.bench.cases import child_json

    return child_json([sys.executable, "-m", "s4speech.bench.breakdown", "--_child", way, model, wav,
                       "--threads", threads])


def table(rows: list[dict], ref: str, argv: list[str], machine: str, load: tuple[float, float]) -> str:
    from s4speech.metrics.asr import score

    lines = [f"Command: `python -m s4speech.bench.breakdown {' '.join(argv)}`; {machine}, {rows[0]['threads']} threads, "
             f"one process per row; load average {load[0]:.2f} before, {load[1]:.2f} after. Recording: "
             f"{rows[0]['duration']:.1f} s of real speech (Asterisk test prompts joined). Beam {BEAM}, CTC weight "
             f"{CTC_WEIGHT}, no LM. Seconds of wall time; encoder / decoder / CTC / alignment are the time inside "
             "those calls during the decode, rest = decode - their sum (search bookkeeping, segmentation, audio); "
             "search/token = (decode - encoder - alignment) / output tokens, in ms.\n",
             "|model|decoder|way|import torch|load|encoder|decoder|CTC|alignment|rest|decode|total|RTF (decode)|"
             "tokens|search/token (ms)|WER (%)|",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        wer = score({"r": ref}, {"r": r["text"]})["wer"]["Err"]
        total = r["torch"] + r["load"] + r["decode"]
        lines.append(f"|`{Path(r['model']).name}`|{r['decoder_class']}|{r['way']}"
                     + "".join(f"|{r[k]:.2f}" for k in ("torch", "load", *PARTS, "rest", "decode"))
                     + f"|{total:.2f}|{r['decode'] / r['duration']:.3f}|{r['tokens']}|"
                     f"{(r['decode'] - r['encoder'] - r['alignment']) / max(1, r['tokens']) * 1e3:.2f}|{wer:.1f}|")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import os
    import tempfile

    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m s4speech.bench.breakdown", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[], help="ASR experiment dir or packed .zip (repeat)")
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--corpus_dir", type=Path, default=Path("downloads/asterisk"))
    p.add_argument("--wavs", nargs="*", default=[])
    p.add_argument("--texts", default=None)
    p.add_argument("--out", type=Path, default=None, help="write the table between the markers of this file")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--_child", nargs=3, metavar=("WAY", "MODEL", "WAV"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._child:
        print("BENCH " + json.dumps(child(*a._child, a.threads)))
        return 0
    if not a.model:
        p.error("at least one --model is needed")
    from s4speech.bench.transcribe import make_recording, speech_sources
    from s4speech.io.expdir import config_rate, load_config, model_files
    from s4speech.io.machine import cpu_model

    rate = config_rate(load_config(model_files(a.model[0], "asr")[0])) or 16000
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "recording.wav"
        ref = make_recording(speech_sources(a), a.seconds, wav, rate)
        load0 = os.getloadavg()[1]
        rows = [run_child(way, m, wav, a.threads) for m in a.model for way in WAYS]
        load1 = os.getloadavg()[1]
    text = table(rows, ref, argv, f"CPU: {cpu_model()}", (load0, load1))
    print(text)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    if a.out:
        write_between(a.out, *MARKERS, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
