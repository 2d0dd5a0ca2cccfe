"""WER / CER scoring with jiwer and ESPnet-style result tables.

Table columns as ESPnet's (sclite's): Snt, Wrd (reference tokens), Corr, Sub, Del, Ins, Err
(percent of Wrd) and S.Err (percent of sentences with any error). CER is computed on
characters with spaces removed, so it means the same for English and Japanese.
"""
from __future__ import annotations

import json
from pathlib import Path

import jiwer

from s4speech.io.files import atomic_write
from s4speech.io.kaldi import KaldiDir, read_table

COLUMNS = ["Snt", "Wrd", "Corr", "Sub", "Del", "Ins", "Err", "S.Err"]


def _stats(refs: list[list[str]], hyps: list[list[str]]) -> dict:
    out = jiwer.process_words([" ".join(r) for r in refs], [" ".join(h) for h in hyps]) if refs else None
    n = sum(len(r) for r in refs)
    sub, dele, ins = out.substitutions, out.deletions, out.insertions
    corr = n - sub - dele
    serr = sum(1 for r, h in zip(refs, hyps) if r != h)
    pct = lambda v: round(100.0 * v / max(n, 1), 2)
    return {"Snt": len(refs), "Wrd": n, "Corr": pct(corr), "Sub": pct(sub), "Del": pct(dele),
            "Ins": pct(ins), "Err": pct(sub + dele + ins), "S.Err": round(100.0 * serr / max(len(refs), 1), 2)}


def score(ref: dict[str, str], hyp: dict[str, str]) -> dict:
    """{utt: text} reference and hypothesis -> {"wer": stats, "cer": stats}. A missing hypothesis counts as empty."""
    if not ref:
        raise ValueError("no reference transcripts to score")
    keys = sorted(ref)
    words_r = [ref[k].split() for k in keys]
    words_h = [hyp.get(k, "").split() for k in keys]
    # an empty reference has no words to err on; jiwer refuses it, so give it a placeholder token
    words_r = [w or ["<empty>"] for w in words_r]
    chars_r = [list("".join(w)) for w in words_r]
    chars_h = [list("".join(w)) for w in words_h]
    return {"wer": _stats(words_r, words_h), "cer": _stats(chars_r, chars_h)}


def score_dir(ref_file: Path, hyp_file: Path, out_dir: Path) -> dict:
    """Score a decode dir; writes result.json and result.txt (the table) beside the hypotheses."""
    res = score(read_table(ref_file), read_table(hyp_file))
    atomic_write(Path(out_dir) / "result.json", json.dumps(res, indent=1) + "\n")
    atomic_write(Path(out_dir) / "result.txt", table({str(out_dir): res}, "wer") + "\n" + table({str(out_dir): res}, "cer"))
    return res


def table(results: dict, metric: str) -> str:
    """Markdown table of {name: score(...)} for metric 'wer' or 'cer'."""
    lines = [f"|{metric.upper()}|" + "|".join(COLUMNS) + "|", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, res in results.items():
        s = res[metric]
        lines.append(f"|{name}|" + "|".join(str(s[c]) for c in COLUMNS) + "|")
    return "\n".join(lines) + "\n"


def wer_vs_length(dump_set: Path, decode_dir: Path) -> list[tuple[float, float]]:
    """(recording seconds, WER %) for each recording of a decoded long-form set."""
    import soundfile as sf

    d = KaldiDir.read(dump_set)
    hyp = read_table(Path(decode_dir) / "text")

    def seconds(u: str) -> float:
        path, start, end = d.source(u)
        return end - start if start is not None else sf.info(path).duration

    return sorted((seconds(u), score({u: d.text[u]}, hyp)["wer"]["Err"]) for u in d.text)
