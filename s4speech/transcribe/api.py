"""``transcribe(model, paths, ...)``: recordings in, Transcripts (and output files) out.

Each recording goes through two passes over the file (``segmentation``): pass 1 checks it and finds its
segments, pass 2 cuts them out of the stream; they are encoded and beam-searched in batches (the
hypotheses of a batch's segments scored together, ``s4speech.asr.search``), word times come from a CTC
alignment (``alignment``), and the outputs are written atomically once the recording is done
(``writers``). Only one batch of audio and encoder output is held.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from s4speech.io.audio import AudioError, AudioReader, probe
from s4speech.transcribe.alignment import ctc_align, words_from_tokens
from s4speech.transcribe.model import Model
from s4speech.transcribe.results import Segment, Transcript
from s4speech.transcribe.segmentation import _cut, find_segments
from s4speech.transcribe.writers import output_paths, parse_formats, write_outputs

log = logging.getLogger("s4speech.transcribe")

VADS = ("energy", "ctc")


@dataclass
class TranscribeOptions:
    """The options of ``transcribe`` (its keywords, with the same defaults), checked on construction:
    ``formats`` becomes a list of format names; bad values raise ValueError."""

    out_dir: str | os.PathLike | None = None
    formats: str | Sequence[str] = ("txt",)
    device: str = "cpu"
    batch_size: int = 8
    beam_size: int = 4
    ctc_weight: float = 0.3
    max_segment: float = 20.0
    segment: bool = True
    vad: str = "energy"
    min_silence: float = 0.3
    word_times: bool = True
    resume: bool = False
    progress: bool | None = None
    threads: int | None = None
    quantize: bool = False  # int8 dynamic quantization of the Linear layers (CPU)
    compile_step: bool = False  # the S4 decoder's step through torch.compile

    def __post_init__(self):
        self.formats = parse_formats(self.formats)
        if self.vad not in VADS:
            raise ValueError(f"vad must be 'energy' or 'ctc', not {self.vad!r}")
        if self.batch_size < 1 or self.max_segment <= 1.0 or self.min_silence <= 0:
            raise ValueError("batch_size must be >= 1, max_segment > 1 s and min_silence > 0")

    @property
    def segmentation(self) -> str:
        """What the json output records: the VAD, or "none" with ``segment=False``."""
        return self.vad if self.segment else "none"


def transcribe(model, paths: str | os.PathLike | Sequence[str | os.PathLike], *, out_dir: str | os.PathLike | None = None,
               formats: str | Sequence[str] = ("txt",), device: str = "cpu", batch_size: int = 8,
               beam_size: int = 4, ctc_weight: float = 0.3, max_segment: float = 20.0, segment: bool = True,
               vad: str = "energy", min_silence: float = 0.3, word_times: bool = True, resume: bool = False,
               progress: bool | None = None, threads: int | None = None, quantize: bool = False,
               compile_step: bool = False) -> list[Transcript]:
    """Transcribe recordings; returns one Transcript per distinct file, in order (a file given twice, under
    any spelling, is transcribed and reported once).

    model: an ESPnet experiment dir (config.yaml + valid.acc.ave.pth / valid.acc.best.pth / ... / latest.pth),
        a packed model .zip, a ``Model`` or a ``Speech2Text`` (then device/beam_size/ctc_weight are its own).
    out_dir: where ``<stem>.<format>`` files are written (atomically); None writes nothing.
    formats: any of txt, srt, vtt, json ("all", or a comma-separated string, also accepted).
    segment=False: each recording is one utterance. vad: "energy" (default) or "ctc".
    resume: skip recordings whose outputs all exist already.
    threads: torch CPU threads for this call (None: as set). On a busy machine 1 is often much faster.
    quantize: int8 dynamic quantization of the Linear layers (CPU; as ESPnet's quantize_asr_model).
    compile_step: the S4 decoder's beam-search step through torch.compile (compiled on first use).
    A recording that fails has ``error`` set (one line naming the file and the cause); the others go on.
    Raises ModelError if the model cannot be loaded and ValueError for bad options."""
    opts = TranscribeOptions(out_dir=out_dir, formats=formats, device=device, batch_size=batch_size,
                             beam_size=beam_size, ctc_weight=ctc_weight, max_segment=max_segment, segment=segment,
                             vad=vad, min_silence=min_silence, word_times=word_times, resume=resume,
                             progress=progress, threads=threads, quantize=quantize, compile_step=compile_step)
    return run(model, [paths] if isinstance(paths, (str, os.PathLike)) else paths, opts)


def run(model, paths: Sequence[str | os.PathLike], opts: TranscribeOptions) -> list[Transcript]:
    """``transcribe`` with its options as one TranscribeOptions."""
    import torch

    old_threads = torch.get_num_threads()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    try:
        return _transcribe_all(model, paths, opts)
    finally:
        torch.set_num_threads(old_threads)


def plan(paths: Sequence[str | os.PathLike],
         opts: TranscribeOptions) -> tuple[list[Transcript], list[tuple[Transcript, list[Path]]]]:
    """(a Transcript per distinct file, in order; the (Transcript, output paths) still to transcribe).

    A file given again (the same real path, whatever the spelling) is left out; with ``out_dir`` a different
    file whose outputs would overwrite an earlier one's fails, and ``resume`` skips files whose outputs exist."""
    results: list[Transcript] = []
    todo: list[tuple[Transcript, list[Path]]] = []
    seen: set[str] = set()  # real paths of the files so far
    stems: dict[str, str] = {}  # output stem -> real path of the file that has it (with out_dir)
    for p in map(str, paths):
        key = os.path.realpath(p)
        if key in seen:
            continue  # the same file again
        seen.add(key)
        tr = Transcript(path=p)
        outs = output_paths(p, opts.out_dir, opts.formats) if opts.out_dir is not None else []
        stem = Path(p).stem
        if opts.out_dir is not None and stem in stems:
            tr.error = f"{p}: output name {stem}.* clashes with {stems[stem]}; transcribe it in a separate run"
        elif opts.out_dir is not None:
            stems[stem] = key
        if tr.error is None and opts.resume and outs and all(o.exists() for o in outs):
            tr.skipped, tr.outputs = True, [str(o) for o in outs]
            log.info("%s: skipped, its output exists (%s)", p, ", ".join(map(str, outs)))
        results.append(tr)
        if tr.error is None and not tr.skipped:
            todo.append((tr, outs))
    return results, todo


def _transcribe_all(model, paths: Sequence[str | os.PathLike], opts: TranscribeOptions) -> list[Transcript]:
    m = Model.load(model, device=opts.device, beam_size=opts.beam_size, ctc_weight=opts.ctc_weight,
                   quantize=opts.quantize, compile_step=opts.compile_step)
    results, todo = plan(paths, opts)
    durations = []
    for tr, _ in todo:
        try:
            durations.append(probe(tr.path).duration)
        except AudioError:
            durations.append(0.0)
    from tqdm import tqdm

    bar = tqdm(total=sum(durations), unit="s", desc="audio",
               disable=None if opts.progress is None else not opts.progress,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}, {rate_fmt}]")
    try:
        for (tr, outs), dur in zip(todo, durations):
            start_n = bar.n
            t0 = time.perf_counter()
            try:
                done = transcribe_one(m, tr.path, opts, bar=bar)
                done.outputs = write_outputs(done, outs, m.name, opts.segmentation)
                tr.__dict__.update(done.__dict__)
                log.info("%s: %.1f s of audio in %.1f s", tr.path, tr.duration, time.perf_counter() - t0)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # noqa: BLE001 - one bad recording never stops the others
                log.debug("%s failed", tr.path, exc_info=True)
                tr.error = _one_line(e, tr.path)
            left = dur - (bar.n - start_n)
            if left > 0:
                bar.update(left)
    finally:
        bar.close()
    return results


def _one_line(e: BaseException, path: str) -> str:
    if isinstance(e, AudioError):
        return str(e)
    msg = " ".join(str(e).split()) or type(e).__name__
    return f"{path}: {type(e).__name__}: {msg[:400]}"


def transcribe_one(model: Model, path: str, opts: TranscribeOptions, bar=None) -> Transcript:
    """One recording: pass 1 finds its segments, pass 2 cuts them out and decodes them in batches
    (``bar``: a tqdm advanced by the seconds of audio done). Raises AudioError for a bad recording."""
    import torch

    reader = AudioReader(path, model.sample_rate)
    tr = Transcript(path=str(path), duration=reader.duration, sample_rate=reader.info.sample_rate)
    if reader.resampling:
        log.info("%s: resampling %d Hz -> %d Hz (the model's rate)", path, reader.info.sample_rate, model.sample_rate)
    if reader.info.channels > 1:
        log.info("%s: %d channels mixed down to mono", path, reader.info.channels)
    segs, warnings = find_segments(reader, model if opts.vad == "ctc" else None, segment_audio=opts.segment,
                                   max_segment=opts.max_segment, min_silence=opts.min_silence)
    tr.warnings += warnings
    total = reader.samples_out
    tr.duration = total / model.sample_rate
    tr.segments = [Segment(s, e) for s, e in segs]
    spans = [(int(round(s * model.sample_rate)), min(total, int(round(e * model.sample_rate)))) for s, e in segs]
    # pass 2: cut the segments out of the stream, decode in batches
    done_until = 0.0
    batch: list[tuple[int, np.ndarray]] = []

    def flush():
        nonlocal done_until
        order = sorted(batch, key=lambda b: -len(b[1]))  # similar lengths together: less padding
        waves = [model.padded(w) for _, w in order]
        with torch.no_grad():
            enc, olens = model.encode(waves)
            encs = [enc[j, : int(olens[j])] for j in range(len(order))]
            for j, ((i, _), (text, ids)) in enumerate(zip(order, model.beam_search_many(encs))):
                seg = tr.segments[i]
                seg.text = text
                if opts.word_times and ids:
                    seg.words = _word_times(model, encs[j], ids, len(waves[j]), seg)
        end = max(tr.segments[i].end for i, _ in batch)
        if bar is not None and end > done_until:
            bar.update(end - done_until)
        done_until = max(done_until, end)
        batch.clear()
        del enc, olens, waves, order
        _release_memory()

    for i, w in _cut(reader.blocks(), spans):
        batch.append((i, w))
        if len(batch) >= opts.batch_size:
            flush()
    if batch:
        flush()
    if bar is not None and tr.duration > done_until:
        bar.update(tr.duration - done_until)
    tr.text = " ".join(s.text for s in tr.segments if s.text)
    return tr


def _word_times(model: Model, enc, ids: list[int], n_samples: int, seg: Segment) -> list:
    """The words of a segment's hypothesis timed by a CTC alignment to its encoder output ([] without CTC
    or when the tokens do not fit), none ending after the segment."""
    logp = model.ctc_logp(enc)
    spans = ctc_align(logp, ids, model.blank_id) if logp is not None else None
    if spans is None:
        return []
    shift = n_samples / model.sample_rate / len(logp)  # seconds per encoder frame
    words = words_from_tokens(model.tokens(ids), spans, model.token_type, seg.start, shift)
    for w in words:
        w.end = min(w.end, seg.end)
    return words


_MALLOC_TRIM = None


def _release_memory() -> None:
    """Give freed heap back to the OS (glibc's malloc_trim). Without it the resident size of a long run
    settles ~400 MB higher on the demo model: freed tensors of the largest batches stay mapped."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)
