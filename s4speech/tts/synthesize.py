"""``s4speech synthesize``: text to speech with a trained ESPnet TTS model (``tts: ssm`` or ESPnet's own).

    s4speech synthesize --model exp/tts_tts_ssm --text "hello world" --out hello.wav [--plot]
    s4speech synthesize --model exp/tts_tts_ssm --text_file sentences.txt --out_dir wavs/

``--model`` is a training directory (its ``config.yaml`` and best model file) or a
``.pth`` file with ``config.yaml`` beside it. ``--text_file`` takes one text per
line, optionally ``ID<TAB>text`` (written as ``ID.wav``; else ``0001.wav`` ...).

Text is normalized to the model's characters (lowercased when the token list has no
capitals; characters the model does not know are dropped with a warning). Long texts
are split at sentence, then clause, then word boundaries into pieces of at most
``--chunk_chars`` characters, synthesized one after the other and joined with short
pauses, so every piece stays within the lengths the model was trained on and the
output length is bounded (``--maxlenratio``); a text over ``--max_chars`` characters,
an empty one and one with no character the model knows are one-line errors.

Inference safeguards of ``tts: ssm`` (``SSMTTS.inference``): ``--stop_on_attention``
(on by default: the stop token ends a piece only once the attention has reached the
end of its text, within ``--end_window`` tokens) and ``--use_att_constraint`` (off by
default: the attention may only move within ``--backward_window`` / ``--forward_window``
tokens of where it was; ESPnet's Tacotron 2 takes these three too).

Waveforms come from Griffin-Lim on the generated mel spectrogram (ESPnet's, from the
model's feature extractor; librosa's mel inversion when the model has none) or from a
ParallelWaveGAN / HiFi-GAN checkpoint (``--vocoder_file``, ``--vocoder_config``,
passed to ESPnet's ``Text2Speech``). Every file is written atomically.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from s4speech.io.audio import write_audio
from s4speech.io.expdir import ModelError, loadable_config, model_files, parse_rate
from s4speech.io.files import atomic_output

log = logging.getLogger("s4speech.synthesize")

_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u2014": "-", "\u2013": "-"})


class TextError(ValueError):
    """A text that cannot be synthesized (one line, says why)."""


def split_text(text: str, max_chars: int) -> list[str]:
    """Split at sentence ends, then clause marks, then spaces (then anywhere) into pieces <= max_chars."""
    if len(text) <= max_chars:
        return [text] if text else []

    def pieces(s: str, seps: Sequence[str]) -> list[str]:
        if len(s) <= max_chars:
            return [s]
        if not seps:
            return [s[i : i + max_chars] for i in range(0, len(s), max_chars)]
        parts = [p for p in re.split(seps[0], s) if p.strip()]
        out: list[str] = []
        for p in parts:
            for q in pieces(p.strip(), seps[1:]):
                if out and len(out[-1]) + 1 + len(q) <= max_chars:
                    out[-1] = f"{out[-1]} {q}"
                else:
                    out.append(q)
        return out

    return pieces(text, [r"(?<=[.!?;:])\s+", r"(?<=[,\"-])\s+", r"\s+"])


@dataclass
class Piece:
    text: str
    n_tokens: int
    steps: int = 0  # decoder steps
    maxlen: int = 0  # the most steps maxlenratio allows
    stopped: bool = False  # the stop token fired (else it ran to maxlen)
    seconds: float = 0.0


@dataclass
class Synthesis:
    wav: np.ndarray  # float32 mono
    fs: int
    feats: np.ndarray  # (frames, n_mels) generated mel spectrogram (de-normalized when the model normalizes)
    att_ws: list[np.ndarray]  # per piece: (layers, heads, steps, tokens)
    probs: np.ndarray  # stop probabilities per frame, all pieces
    pieces: list[Piece] = field(default_factory=list)
    seconds: float = 0.0  # synthesis time (model + vocoder)

    @property
    def stopped(self) -> bool:
        return all(p.stopped for p in self.pieces)


class Synthesizer:
    """A trained TTS model behind ESPnet's ``Text2Speech`` (after ``import s4speech``)."""

    def __init__(self, model: str | os.PathLike, vocoder_config: str | None = None, vocoder_file: str | None = None,
                 device: str = "cpu", threshold: float = 0.5, minlenratio: float = 0.0, maxlenratio: float = 10.0,
                 griffin_lim_iters: int = 32, chunk_chars: int = 200, max_chars: int = 5000, pause: float = 0.15,
                 seed: int = 0, use_att_constraint: bool = False, backward_window: int = 1, forward_window: int = 3,
                 stop_on_attention: bool = True, end_window: int = 3,
                 max_frames: tuple[float, float] | None = None):
        """``max_frames`` = (a, b): the synthesis limit per piece is a + b * (tokens + 1) frames instead of
        maxlenratio * (tokens + 1) (a text's silence at both ends does not grow with its length)."""
        from s4speech.tts.inference import Text2Speech  # registers tts: ssm
        from s4speech.tts.model import SSMTTS

        if chunk_chars < 1 or max_chars < 1:
            raise ValueError("chunk_chars and max_chars must be positive")
        cfg, pth = model_files(model, "tts")
        cfg = loadable_config(cfg)  # statistics written relative to the recipe dir
        self.chunk_chars, self.max_chars, self.pause = chunk_chars, max_chars, pause
        self.threshold, self.maxlenratio, self.max_frames = threshold, maxlenratio, max_frames
        try:
            self.t2s = Text2Speech(train_config=str(cfg), model_file=str(pth), device=device, threshold=threshold,
                                   minlenratio=minlenratio, maxlenratio=maxlenratio, vocoder_config=vocoder_config,
                                   vocoder_file=vocoder_file, seed=seed, always_fix_seed=True,
                                   use_att_constraint=use_att_constraint, backward_window=backward_window,
                                   forward_window=forward_window, stop_on_attention=stop_on_attention,
                                   end_window=end_window)
        except ImportError as e:
            raise ModelError(f"cannot load the vocoder {vocoder_file}: {e} (pip install parallel_wavegan)") from e
        except (ValueError, RuntimeError, FileNotFoundError, KeyError) as e:
            raise ModelError(f"cannot load {pth}: {' '.join(str(e).split())[:300]}") from e
        args = self.t2s.train_args
        self.feats_conf = dict(getattr(args, "feats_extract_conf", None) or {})
        rate = self.t2s.fs or self.feats_conf.get("fs")
        if not rate:
            raise ModelError(f"{cfg}: the model states no sample rate (feats_extract_conf.fs)")
        self.fs = parse_rate(rate)
        from espnet2.utils.griffin_lim import Spectrogram2Waveform

        fe = self.t2s.feats_extract
        if vocoder_file is None and isinstance(self.t2s.vocoder, Spectrogram2Waveform) and fe is not None:
            params = fe.get_parameters()
            if vocoder_config is None:  # ESPnet's default of 8 Griffin-Lim iterations is too few
                self.t2s.vocoder = Spectrogram2Waveform(**params, griffin_lim_iters=griffin_lim_iters)
        self.griffin_lim_iters = griffin_lim_iters
        if self.t2s.vocoder is None and not {"fs", "n_fft", "hop_length"} <= set(self.feats_conf):
            raise ModelError(f"{cfg}: no feature extractor settings to invert the mel spectrogram; give --vocoder_file")
        tokens = list(args.token_list)
        self.chars = {t for t in tokens if len(t) == 1}
        if "<space>" in tokens:
            self.chars.add(" ")
        self.lowercase = not any(c.isupper() for c in self.chars)
        self.reduction_factor = int(getattr(self.t2s.tts, "reduction_factor", 1))
        self.ssm = isinstance(self.t2s.tts, SSMTTS)  # warns itself when it hits maxlenratio
        self.stop_on_attention = self.ssm and bool(self.t2s.decode_conf.get("stop_on_attention"))
        self.token_type = getattr(args, "token_type", "char")

    # ---- text ------------------------------------------------------------------------------
    def prepare(self, text: str) -> list[str]:
        """Normalize and split a text into pieces; TextError when nothing can be synthesized."""
        if not isinstance(text, str):
            raise TextError(f"text must be a string, got {type(text).__name__}")
        if len(text) > self.max_chars:
            raise TextError(f"text has {len(text)} characters, more than --max_chars {self.max_chars}; split it "
                            "into several texts (--text_file, one per line) or raise --max_chars")
        t = unicodedata.normalize("NFKC", text).translate(_QUOTES)
        t = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in t)  # controls, odd spaces
        if self.lowercase:
            t = t.lower()
        t = " ".join(t.split())
        if not t:
            raise TextError("empty text")
        if self.token_type == "char":
            unknown = sorted({c for c in t if c not in self.chars})
            if unknown:
                kept = " ".join("".join(c if c in self.chars else " " for c in t).split())
                if not any(c != " " for c in kept):
                    raise TextError("no character of the text is in the model's vocabulary "
                                    f"(e.g. {', '.join(repr(c) for c in unknown[:5])})")
                log.warning("dropped characters the model does not know: %s", " ".join(repr(c) for c in unknown[:10]))
                t = kept
        return split_text(t, self.chunk_chars)

    # ---- synthesis -------------------------------------------------------------------------
    def synthesize_piece(self, text: str) -> tuple[Piece, dict]:
        t0 = time.perf_counter()
        n_tok = len(self.t2s.preprocess_fn("<dummy>", dict(text=text))["text"])
        ratio = self.maxlenratio
        if self.max_frames is not None:
            a, b = self.max_frames
            ratio = (a + b * (n_tok + 1)) / (n_tok + 1)
        out = self.t2s(text, decode_conf={"maxlenratio": ratio})
        r = self.reduction_factor
        prob = out.get("prob")
        att = out.get("att_w")
        steps = int(att.shape[-2]) if att is not None and att.dim() == 4 else int(out["feat_gen"].shape[0]) // r
        maxlen = max(1, int((n_tok + 1) * ratio / r))
        stopped = bool(prob is not None and (prob[-r:] >= self.threshold).any())
        if self.stop_on_attention:  # a stop probability >= threshold may have been overruled: tts: ssm ends
            stopped = steps < maxlen  # before maxlen only on a stop (one exactly at maxlen counts as none)
        piece = Piece(text, n_tok, steps=steps, maxlen=maxlen, stopped=stopped)
        if "wav" not in out or out["wav"] is None:
            out["wav"] = self._mel_inversion(out.get("feat_gen_denorm", out["feat_gen"]))
        piece.seconds = time.perf_counter() - t0
        return piece, out

    def _mel_inversion(self, feats):
        """librosa's mel inversion (Griffin-Lim) when ESPnet built no vocoder."""
        import librosa
        import torch

        c = self.feats_conf
        base = c.get("log_base", 10.0)
        mel = np.power(base, feats.cpu().numpy().T) if base else np.exp(feats.cpu().numpy().T)
        y = librosa.feature.inverse.mel_to_audio(
            mel, sr=int(c["fs"]), n_fft=int(c["n_fft"]), hop_length=int(c["hop_length"]),
            win_length=c.get("win_length"), window=c.get("window", "hann"), power=1.0, n_iter=self.griffin_lim_iters,
            fmin=c.get("fmin") or 0.0, fmax=c.get("fmax"))
        return torch.from_numpy(y)

    def __call__(self, text: str, progress=None) -> Synthesis:
        pieces = self.prepare(text)
        return self.synthesize_pieces(pieces, progress)

    def synthesize_pieces(self, pieces: Sequence[str], progress=None) -> Synthesis:
        t0 = time.perf_counter()
        wavs, feats, atts, probs, info = [], [], [], [], []
        gap = np.zeros(int(round(self.pause * (self.fs))), dtype=np.float32)
        for i, p in enumerate(pieces):
            piece, out = self.synthesize_piece(p)
            if i:
                wavs.append(gap)
            wavs.append(out["wav"].float().cpu().numpy().reshape(-1))
            feats.append(out.get("feat_gen_denorm", out["feat_gen"]).float().cpu().numpy())
            if out.get("att_w") is not None:
                atts.append(out["att_w"].float().cpu().numpy())
            if out.get("prob") is not None:
                probs.append(out["prob"].float().cpu().numpy())
            info.append(piece)
            if not piece.stopped and not self.ssm:  # tts: ssm logs it itself, with the text length and the limit
                log.warning("no stop token within %d steps for %r", piece.maxlen, p[:60])
            if progress is not None:
                progress.update(1)
        wav = np.concatenate(wavs) if wavs else np.zeros(0, np.float32)
        return Synthesis(wav=wav.astype(np.float32), fs=int(self.fs),
                         feats=np.concatenate(feats) if feats else np.zeros((0, 0), np.float32),
                         att_ws=atts, probs=np.concatenate(probs) if probs else np.zeros(0, np.float32),
                         pieces=info, seconds=time.perf_counter() - t0)


# ---- output ------------------------------------------------------------------------------------
def plot(syn: Synthesis, mel_png: str | os.PathLike, att_png: str | os.PathLike, title: str = "") -> None:
    """The generated mel spectrogram (with the stop probability) and the cross-attention (head average per layer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if syn.feats.size:
        ax.imshow(syn.feats.T, origin="lower", aspect="auto", interpolation="none")
    ax.set_ylabel("mel bin")
    ax.set_title(f"{title} mel spectrogram".strip())
    ax2.plot(syn.probs)
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("stop prob")
    ax2.set_xlabel("frame")
    fig.tight_layout()
    atomic_output(Path(mel_png), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)

    shown = syn.att_ws[:4]
    layers = shown[0].shape[0] if shown else 1
    fig, axes = plt.subplots(layers, max(1, len(shown)), figsize=(3.2 * max(1, len(shown)), 2.6 * layers), squeeze=False)
    for j, a in enumerate(shown):
        for i in range(layers):
            axes[i][j].imshow(a[i].mean(0), origin="lower", aspect="auto", interpolation="none")
            axes[i][j].set_title(f"layer {i + 1}" + (f", piece {j + 1}" if len(syn.att_ws) > 1 else ""), fontsize=8)
            axes[i][j].set_xlabel("input token", fontsize=8)
            axes[i][j].set_ylabel("decoder step", fontsize=8)
    fig.suptitle(f"{title} cross-attention (head average)".strip() +
                 (f", first {len(shown)} of {len(syn.att_ws)} pieces" if len(syn.att_ws) > len(shown) else ""), fontsize=9)
    fig.tight_layout()
    atomic_output(Path(att_png), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def read_text_file(path: str | os.PathLike) -> list[tuple[str, str]]:
    """One text per line, optionally ``ID<TAB>text``; blank lines skipped -> [(id, text)]."""
    items, seen = [], set()
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            key, tab, rest = line.partition("\t")
            if tab and re.fullmatch(r"[A-Za-z0-9_.-]+", key.strip()) and key.strip() not in seen:
                key, text = key.strip(), rest
            else:
                key, text = f"{n:04d}", line
            seen.add(key)
            items.append((key, text))
    return items


def _bool(v: str) -> bool:
    t = v.strip().lower()
    if t in ("true", "yes", "1", "on"):
        return True
    if t in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s4speech synthesize", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="training dir (config.yaml + model) or a .pth file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to say (with --out)")
    src.add_argument("--text_file", help="one text per line, optionally ID<TAB>text (with --out_dir)")
    p.add_argument("--out", help="output WAV for --text")
    p.add_argument("--out_dir", help="output folder for --text_file")
    p.add_argument("--plot", action="store_true", help="also write <name>.mel.png and <name>.att.png")
    p.add_argument("--vocoder_config", default=None, help="vocoder config (ParallelWaveGAN/HiFi-GAN config.yml)")
    p.add_argument("--vocoder_file", default=None, help="vocoder checkpoint (.pkl); default: Griffin-Lim")
    p.add_argument("--griffin_lim_iters", type=int, default=32)
    p.add_argument("--threshold", type=float, default=0.5, help="stop when a stop probability reaches it")
    p.add_argument("--minlenratio", type=float, default=0.0)
    p.add_argument("--maxlenratio", type=float, default=10.0, help="at most this many frames per input token")
    g = p.add_argument_group("attention safeguards (tts: ssm; the first three also ESPnet's Tacotron 2)")
    g.add_argument("--use_att_constraint", type=_bool, nargs="?", const=True, default=False, metavar="BOOL",
                   help="the guided attention heads may only attend within a window around where they attended "
                        "at the previous step")
    g.add_argument("--backward_window", type=int, default=1, help="window: tokens behind the last attended one")
    g.add_argument("--forward_window", type=int, default=3, help="window: tokens ahead of the last attended one")
    g.add_argument("--stop_on_attention", type=_bool, nargs="?", const=True, default=True, metavar="BOOL",
                   help="tts: ssm: the stop token ends the output only once the attention has reached the end of "
                        "the text (else at --maxlenratio); 'false' to stop on the stop token alone")
    g.add_argument("--end_window", type=int, default=3,
                   help="tts: ssm: the attention has reached the end within this many tokens of <eos>")
    p.add_argument("--chunk_chars", type=int, default=200, help="longer texts are split into pieces of this size")
    p.add_argument("--max_chars", type=int, default=5000, help="longer texts are refused")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.text is not None and not args.out:
        print("error: --text needs --out", file=sys.stderr)
        return 2
    if args.text_file is not None and not args.out_dir:
        print("error: --text_file needs --out_dir", file=sys.stderr)
        return 2
    if args.text is not None:
        items = [(Path(args.out).stem, args.text)]
        outs = {items[0][0]: Path(args.out)}
        if len(args.text) > args.max_chars or not args.text.strip():  # refuse before loading the model
            msg = "empty text" if not args.text.strip() else \
                f"text has {len(args.text)} characters, more than --max_chars {args.max_chars}; split it " \
                "into several texts (--text_file, one per line) or raise --max_chars"
            print(f"error: {msg}", file=sys.stderr)
            return 1
    else:
        try:
            items = read_text_file(args.text_file)
        except OSError as e:
            print(f"error: --text_file: {e}", file=sys.stderr)
            return 1
        if not items:
            print(f"error: {args.text_file}: no text in it", file=sys.stderr)
            return 1
        outs = {k: Path(args.out_dir) / f"{k}.wav" for k, _ in items}
    try:
        syn = Synthesizer(args.model, vocoder_config=args.vocoder_config, vocoder_file=args.vocoder_file,
                          device=args.device, threshold=args.threshold, minlenratio=args.minlenratio,
                          maxlenratio=args.maxlenratio, griffin_lim_iters=args.griffin_lim_iters,
                          chunk_chars=args.chunk_chars, max_chars=args.max_chars, seed=args.seed,
                          use_att_constraint=args.use_att_constraint, backward_window=args.backward_window,
                          forward_window=args.forward_window, stop_on_attention=args.stop_on_attention,
                          end_window=args.end_window)
    except (ModelError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    jobs, failed = [], 0
    for key, text in items:
        try:
            jobs.append((key, syn.prepare(text)))
        except TextError as e:
            print(f"error: {key}: {e}" if args.text_file else f"error: {e}", file=sys.stderr)
            failed += 1
    from tqdm import tqdm

    with tqdm(total=sum(len(p) for _, p in jobs), unit="piece", disable=args.quiet or None,
              desc="synthesize", file=sys.stderr) as bar:
        for key, pieces in jobs:
            res = syn.synthesize_pieces(pieces, progress=bar)
            out = outs[key]
            write_audio(out, res.wav, res.fs, "wav")
            if args.plot:
                plot(res, out.with_suffix(".mel.png"), out.with_suffix(".att.png"), title=key)
            if not res.stopped:
                print(f"warning: {key}: no stop token in {sum(not p.stopped for p in res.pieces)} piece(s); "
                      f"cut at --maxlenratio {args.maxlenratio}", file=sys.stderr)
            log.info("%s: %.2f s of audio in %.2f s", out, len(res.wav) / res.fs, res.seconds)
    done = len(jobs)
    if not args.quiet:
        where = args.out if args.text is not None else args.out_dir
        print(f"synthesized {done}, failed {failed} -> {where}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
