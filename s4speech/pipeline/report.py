"""RESULTS.md of a recipe: what was run, on which machine, with which settings, and the figures.

Every setting printed comes from the recipe's settings or the files the run used (inference configs,
checkpoints), never a literal; the long-form plot is drawn from this run's decode dirs.
"""
from __future__ import annotations

import json
from pathlib import Path

from s4speech.io.expdir import load_config
from s4speech.io.files import atomic_write
from s4speech.io.machine import device_name
from s4speech.metrics.asr import table

DECODE_KEYS = ("beam_size", "ctc_weight", "lm_weight", "penalty", "maxlenratio")


def _decoding_settings(dec, use_lm_weight: bool) -> str:
    conf = load_config(dec.config) if dec.config else {}
    shown = {k: conf[k] for k in DECODE_KEYS if k in conf}
    if not use_lm_weight:
        shown["lm_weight"] = 0.0
    return ", ".join(f"{k} {v}" for k, v in shown.items()) or "ESPnet's defaults"


def learning_curves(systems: dict[str, Path], key: str, best: str, results: Path) -> list[str]:
    """RESULTS.md section: the per-epoch ``key`` of every system's ``train.log`` (ESPnet's epoch results),
    as a plot beside ``results`` and a table of the best validation epoch. ``best``: "max" or "min"."""
    from s4speech.io.expdir import epoch_results
    from s4speech.metrics.plots import plot_learning_curves

    curves, rows = {}, []
    for name, sysdir in systems.items():
        log = sysdir / "train.log"
        ep = epoch_results(log) if log.exists() else {}
        splits = {sp: [(e, ep[e][sp][key]) for e in sorted(ep) if key in ep[e].get(sp, {})] for sp in ("train", "valid")}
        if not splits["valid"]:
            rows.append(f"|{name}|{len(ep)}|no validation {key} in {log}||||")
            continue
        curves[name] = splits
        pick = max if best == "max" else min
        e_best, v_best = pick(splits["valid"], key=lambda p: p[1])
        tr = dict(splits["train"])
        rows.append(f"|{name}|{len(ep)}|{v_best:.3f} (epoch {e_best})|{splits['valid'][-1][1]:.3f}|"
                    f"{tr.get(splits['valid'][-1][0], float('nan')):.3f}|")
    parts = ["## Learning curves\n",
             f"Validation {key} per epoch (solid; training dashed), from ESPnet's epoch results in each system's "
             "`train.log`.\n"]
    if curves:
        png = plot_learning_curves(curves, key, results.with_name("learning_curves.png"))
        parts.append(f"![learning curves]({png.name})\n")
    parts += [f"|system|epochs|best valid {key}|last valid {key}|last train {key}|", "|---|---|---|---|---|", *rows, ""]
    return parts


def write_asr_report(r, results: dict) -> Path:
    """RESULTS.md: one WER and one CER table, a row per (system, decoding, test set); LM perplexity;
    the WER-vs-length plot of the long-form sets (drawn now, from these results)."""
    from s4speech.metrics.plots import plot_wer_vs_length

    rows = {f"{sysname} / {dec} / {s}": res for (sysname, dec, s), res in
            sorted(results.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0]))}
    parts = [f"# Results: {r.corpus}\n",
             f"Produced by `python -m s4speech.recipe --corpus {r.corpus} ...` (stage 11) on {device_name(r.launch.ngpu)}.\n",
             "Systems: " + ", ".join(f"`{c}`" for c in r.asr_configs) + "\n",
             "Decodings:\n", *[f"- `{d.name}`: `{d.config or 'default'}` ({_decoding_settings(d, d.lm)})"
                               + (f", with the LM `{r.lm_config}`" if d.lm else "") for d in r.decodings()], ""]
    if r.use_lm and (r.lm_dir / "perplexity" / "ppl").exists():
        ppl = float((r.lm_dir / "perplexity" / "ppl").read_text().split()[0])
        parts.append(f"LM `{r.lm_dir.name}`: perplexity {ppl:.2f} on `{r.valid_set}` ({r.token_type} tokens).\n")
    parts += ["## WER\n", table(rows, "wer"), "## CER\n", table(rows, "cer")]
    parts += learning_curves({r.system(c).name: r.system(c) for c in r.asr_configs}, "acc", "max", r.results)
    if r.long_sets:
        runs = {f"{r.system(c).name} / {d.name}": [(r.raw(s), r.system(c) / d.name / s) for s in r.long_sets]
                for c in r.asr_configs for d in r.decodings()}
        png = plot_wer_vs_length(runs, r.longform_plot)
        rel = png.relative_to(r.results.parent) if png.is_relative_to(r.results.parent) else png
        parts += ["## Long-form\n", f"Sets: {', '.join(r.long_sets)} (each recording decoded whole).\n",
                  f"![WER vs recording length]({rel})\n"]
    atomic_write(r.results, "\n".join(parts))
    return r.results


def _measure(m: dict, fmt: str, scale: float = 1.0) -> str:
    """A mean with how many utterances it is over when some were undefined."""
    v = format(m["value"] * scale, fmt)
    return v if m["n"] == m["of"] else f"{v} ({m['n']} of {m['of']})"


def write_tts_report(r) -> Path:
    from s4speech.pipeline.tts import count_params, limit_text

    rows, long_rows, cer, natural, fpc = [], [], [], {}, None
    for cfg in r.tts_configs:
        sysdir = r.system(cfg)
        res = json.loads((sysdir / "synth" / "eval.json").read_text())
        fpc, natural = res["frames_per_char"], res.get("natural_asr") or natural
        secs = (sysdir / "train_seconds").read_text().strip() if (sysdir / "train_seconds").exists() else "not recorded"
        n = count_params(sysdir, r.trained(sysdir))
        epochs = load_config(sysdir / "config.yaml").get("max_epoch")
        for s in r.test_sets:
            e = res[s]
            fl = e["failures"]
            rows.append(f"|{sysdir.name}|{s}|{e['n']}|{_measure(e['mcd'], '.2f')}|{_measure(e['log_f0_rmse'], '.3f')}|"
                        f"{_measure(e['vuv_error'], '.1f', 100)}|{fl['no_stop']}|{fl['early_stop']}|{e['rtf']:.3f}|"
                        f"{n / 1e6:.2f}|{epochs}|{secs}|")
            if "asr" in e:
                c = e["asr"]["cer"]
                cer.append(f"|{sysdir.name}|{s}|{c['Snt']}|{c['Wrd']}|{c['Err']}|{e['asr']['wer']['Err']}|")
        lg = res["long"]
        long_rows.append(f"|{sysdir.name}|{lg['n']}|{lg['chars']:.0f}|{lg['no_stop']}|{lg['early_stop']}|"
                         f"{lg['rate'] * 100:.0f}|{lg['rtf']:.3f}|")
    for s, sc in natural.items():
        cer.append(f"|natural recordings|{s}|{sc['cer']['Snt']}|{sc['cer']['Wrd']}|{sc['cer']['Err']}|{sc['wer']['Err']}|")
    parts = [f"# TTS results: {r.corpus}\n",
             f"Produced by `python -m s4speech.recipe --task tts --corpus {r.corpus} ...` (stage 9) on "
             f"{device_name(r.launch.ngpu)}. Waveforms by Griffin-Lim ({r.griffin_lim_iters} iterations); synthesis with "
             f"threshold {r.threshold}, {limit_text(r)}, long inputs not split.\n",
             "Systems: " + ", ".join(f"`{c}`" for c in r.tts_configs) + "\n",
             "## Objective measures against the natural recordings\n",
             "MCD: mel cepstral distortion (dB, c1-c24 of the WORLD envelope warped to the mel scale, DTW); "
             "log-F0 RMSE: ln F0 from pYIN over frames voiced in both (DTW on MFCCs; \"(n of m)\": only n "
             "utterances had frames voiced in both); V/UV: voicing disagreement; "
             "no stop / early stop: as for the long inputs below; "
             "RTF: synthesis time (model + Griffin-Lim) / audio time.\n",
             "|system|set|utts|MCD (dB)|log-F0 RMSE|V/UV err (%)|no stop|early stop|RTF|params (M)|epochs|train time (s)|",
             "|---|---|---|---|---|---|---|---|---|---|---|---|", *rows, ""]
    if cer:
        parts += ["## Intelligibility: ASR on the synthesized speech\n",
                  f"ASR model: `{r.asr_model}` (beam {r.asr_beam_size}, CTC weight {r.asr_ctc_weight}); the natural "
                  "recordings give its own error.\n",
                  "|system|set|utts|chars|CER (%)|WER (%)|", "|---|---|---|---|---|---|", *cer, ""]
    parts += ["## Long inputs\n",
              f"{r.n_long} inputs of >= {r.long_chars} characters (consecutive test sentences joined). No stop: no "
              "stop token within the limit; early stop: fewer than half the frames the text needs at the training "
              f"data's rate ({fpc:.2f} frames per character).\n",
              "|system|inputs|mean chars|no stop|early stop|failed (%)|RTF|", "|---|---|---|---|---|---|---|",
              *long_rows, ""]
    parts += learning_curves({r.system(c).name: r.system(c) for c in r.tts_configs}, "loss", "min", r.results)
    atomic_write(r.results, "\n".join(parts))
    return r.results
