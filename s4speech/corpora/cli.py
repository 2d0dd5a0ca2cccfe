"""The command line every corpus module shares (``python -m s4speech.corpora.<corpus> --help``):
``--corpus_dir``, ``--data_dir``, ``--sets``, and ``--long_form DATA_DIR_IN --durations ...`` where the
corpus makes long-form sets; each module adds its own options. Prints ``<set><TAB><utterances>`` lines;
a corpus that cannot be prepared is one error line and exit status 1."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger("s4speech.corpora")


def corpus_main(argv: Sequence[str] | None, doc: str, prepare: Callable, *, sets: Sequence[str] | None = None,
                default_sets: Sequence[str] | None = None, long_form: Callable | None = None,
                options: Sequence[tuple[tuple, dict]] = (), kwargs: Callable = lambda args: {}) -> int:
    """``options``: extra (args, kwargs) of ``add_argument``; ``kwargs(args)``: what they give ``prepare``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus_dir", type=Path, help="where the corpus is (or is fetched to)")
    p.add_argument("--data_dir", type=Path, required=True, help="output: Kaldi data dirs go below it")
    if sets:
        p.add_argument("--sets", nargs="+", default=list(default_sets or sets), choices=sorted(sets))
    if long_form:
        p.add_argument("--long_form", type=Path, metavar="DATA_DIR_IN",
                       help="instead: make long-form sets from this Kaldi dir into DATA_DIR_<d>s")
        p.add_argument("--durations", nargs="+", type=float, default=[30, 60, 120, 300])
    for a, kw in options:
        p.add_argument(*a, **kw)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if long_form and args.long_form is not None:
            counts = long_form(args.long_form, args.data_dir, args.durations)
        else:
            if args.corpus_dir is None:
                p.error("--corpus_dir is required")
            counts = prepare(args.corpus_dir, args.data_dir, **({"sets": args.sets} if sets else {}), **kwargs(args))
    except (RuntimeError, ValueError, OSError) as e:
        log.error("%s", e)
        return 1
    for name, n in counts.items():
        print(f"{name}\t{n}")
    return 0
