"""WER / CER scoring with jiwer, ESPnet-style result tables, the long-form plot and RESULTS.md.

Table columns as ESPnet's (sclite's): Snt, Wrd (reference tokens), Corr, Sub, Del, Ins, Err
(percent of Wrd) and S.Err (percent of sentences with any error). CER is computed on
characters with spaces removed, so it means the same for English and Japanese.
"""
from __future__ import annotations

import json
from pathlib import Path

import jiwer

from s4speech.io.files import atomic_write
from s4speech.io.kaldi import read_table

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

    ref, hyp = read_table(Path(dump_set) / "text"), read_table(Path(decode_dir) / "text")
    wav = read_table(Path(dump_set) / "wav.scp")
    return sorted((sf.info(wav[u]).duration, score({u: ref[u]}, hyp)["wer"]["Err"]) for u in ref)


def plot_wer_vs_length(runs: dict[str, list[tuple[Path, Path]]], png: Path) -> Path:
    """Long-form: WER of each recording against its length, one line per system.

    runs: {system: [(dumped test set, its decode dir), ...]}.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, sets in sorted(runs.items()):
        pts = sorted(p for dump_set, dec in sets for p in wer_vs_length(dump_set, dec))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xlabel("recording length (s)")
    ax.set_ylabel("WER (%)")
    ax.set_title("Long-form decoding (each recording decoded whole)")
    ax.grid(alpha=0.3)
    ax.legend()
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(png)
    return png


def cpu_model() -> str:
    import platform

    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_report(r, results: dict, path: Path) -> Path:
    """RESULTS.md: one WER and one CER table with a row per (system, test set)."""
    import torch

    rows = {f"{sysname} / {s}": res for (sysname, s), res in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0]))}
    dev = "GPU: " + torch.cuda.get_device_name(0) if r.ngpu and torch.cuda.is_available() else f"CPU: {cpu_model()}, {torch.get_num_threads()} threads"
    parts = [f"# Results: {r.corpus}\n",
             f"Produced by `python -m s4speech.recipe --corpus {r.corpus} ...` (stage 11) on {dev}.\n",
             "Systems: " + ", ".join(f"`{c}`" for c in r.asr_configs) + (f"; decoding: `{r.inference_config}`" if r.inference_config else "") + "\n",
             "## WER\n", table(rows, "wer"), "## CER\n", table(rows, "cer")]
    png = Path("longform_wer.png")
    if png.exists():
        parts += ["## Long-form\n", f"![WER vs recording length]({png})\n"]
    atomic_write(path, "\n".join(parts))
    return path
