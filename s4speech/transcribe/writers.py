"""Output formats: a Transcript rendered as txt, srt, vtt or json, written atomically to
``<out_dir>/<stem>.<format>``."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from s4speech.io.files import atomic_write
from s4speech.transcribe.results import Transcript

FORMATS = ("txt", "srt", "vtt", "json")


def _stamp(t: float, sep: str) -> str:
    ms = int(round(max(t, 0.0) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def render(tr: Transcript, fmt: str, model_name: str = "", vad: str = "") -> str:
    """One output file's text; ``vad`` is the segmentation the json records (energy, ctc or none)."""
    cues = [s for s in tr.segments if s.text]
    if fmt == "txt":
        return "".join(s.text + "\n" for s in cues)
    if fmt == "srt":
        return "\n".join(f"{i}\n{_stamp(s.start, ',')} --> {_stamp(s.end, ',')}\n{s.text}\n"
                         for i, s in enumerate(cues, 1))
    if fmt == "vtt":
        return "WEBVTT\n\n" + "\n".join(f"{_stamp(s.start, '.')} --> {_stamp(s.end, '.')}\n{s.text}\n" for s in cues)
    if fmt == "json":
        doc = {"audio": tr.path, "duration": round(tr.duration, 3), "sample_rate": tr.sample_rate,
               "model": model_name, "segmentation": vad, "text": tr.text,
               "segments": [{"id": i, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text,
                             "words": [asdict(w) for w in s.words]} for i, s in enumerate(tr.segments)]}
        return json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
    raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")


def parse_formats(spec: str | Sequence[str]) -> list[str]:
    """"srt,json", ["txt", "vtt"] or "all" -> the formats, each once, in the order given."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for f in (x.strip().lower() for x in items):
        for g in (FORMATS if f == "all" else [f]):
            if g not in FORMATS:
                raise ValueError(f"unknown format {g!r} (txt, srt, vtt, json or all)")
            if g not in out:
                out.append(g)
    return out


def output_paths(path: str | os.PathLike, out_dir: str | os.PathLike, formats: Sequence[str]) -> list[Path]:
    return [Path(out_dir) / f"{Path(path).stem}.{f}" for f in formats]


def write_outputs(tr: Transcript, outputs: Sequence[Path], model_name: str = "", vad: str = "") -> list[str]:
    """Each output (its format from its suffix) written atomically; returns their paths."""
    for o in outputs:
        atomic_write(o, render(tr, o.suffix[1:], model_name, vad))
    return [str(o) for o in outputs]
