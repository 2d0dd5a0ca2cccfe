"""``s4speech transcribe`` / ``python -m s4speech.transcribe``: the command line of ``transcribe``.

Exit status: 0 when every recording was transcribed (or skipped by --resume), 1 when one failed or the model
or an option is bad, 2 for a bad --format or bad usage (argparse)."""
from __future__ import annotations

import argparse
import logging
import sys

from s4speech.io.expdir import ModelError
from s4speech.transcribe.api import transcribe
from s4speech.transcribe.writers import parse_formats


def get_parser() -> argparse.ArgumentParser:
    import s4speech.transcribe as package  # its docstring is the --help text

    p = argparse.ArgumentParser(prog="s4speech transcribe", description=package.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("audio", nargs="+", help="recordings (WAV, FLAC, OGG, SPHERE, MP3 ...)")
    p.add_argument("--model", required=True, help="ESPnet experiment dir or packed model .zip")
    p.add_argument("--out_dir", default=".", help="where <stem>.<format> is written (default: .)")
    p.add_argument("--format", default="txt", help="txt, srt, vtt, json, all, or a comma-separated list")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch_size", type=int, default=8, help="segments encoded together")
    p.add_argument("--beam_size", type=int, default=4)
    p.add_argument("--ctc_weight", type=float, default=0.3)
    p.add_argument("--max_segment", type=float, default=20.0, help="longest segment, seconds")
    p.add_argument("--min_silence", type=float, default=0.3, help="shortest pause that splits, seconds")
    p.add_argument("--vad", default="energy", choices=["energy", "ctc"],
                   help="find pauses by an adaptive energy threshold or by the model's CTC blanks")
    p.add_argument("--no_segment", action="store_true", help="decode each recording as one utterance")
    p.add_argument("--no_word_times", action="store_true", help="skip the CTC alignment for word times")
    p.add_argument("--resume", action="store_true", help="skip recordings whose outputs exist")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quantize", action="store_true", help="int8 dynamic quantization of the Linear layers (CPU)")
    p.add_argument("--compile", action="store_true", help="the S4 decoder's step through torch.compile")
    p.add_argument("--quiet", action="store_true", help="no progress bar or info messages")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    # our own messages go to stderr as "info: ..." / "warning: ...", whatever the root logger does
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname_lower)s: %(message)s"))
    handler.addFilter(_lower_level)
    pkg = logging.getLogger("s4speech")
    saved = pkg.level, pkg.propagate
    pkg.addHandler(handler)
    pkg.setLevel(logging.WARNING if args.quiet else logging.INFO)
    pkg.propagate = False
    try:
        return _main(args)
    finally:
        pkg.removeHandler(handler)
        pkg.setLevel(saved[0])
        pkg.propagate = saved[1]


def _lower_level(record) -> bool:
    record.levelname_lower = record.levelname.lower()
    return True


def _main(args) -> int:
    try:
        formats = parse_formats(args.format)
    except ValueError as e:
        print(f"error: --format: {e}", file=sys.stderr)
        return 2
    try:
        results = transcribe(args.model, args.audio, out_dir=args.out_dir, formats=formats, device=args.device,
                             batch_size=args.batch_size, beam_size=args.beam_size, ctc_weight=args.ctc_weight,
                             max_segment=args.max_segment, segment=not args.no_segment, vad=args.vad,
                             min_silence=args.min_silence, word_times=not args.no_word_times,
                             resume=args.resume, progress=False if args.quiet else None, threads=args.threads,
                             quantize=args.quantize, compile_step=args.compile)
    except (ModelError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"error: {r.error}", file=sys.stderr)
    n_ok = sum(1 for r in results if r.ok and not r.skipped)
    n_skip = sum(1 for r in results if r.skipped)
    if not args.quiet:
        print(f"transcribed {n_ok}, skipped {n_skip}, failed {len(failed)} -> {args.out_dir}", file=sys.stderr)
    return 1 if failed else 0
