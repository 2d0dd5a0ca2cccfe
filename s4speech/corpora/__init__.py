"""Corpus preparation: one module per corpus behind one small interface, found by name.

Every corpus module provides

    prepare(corpus_dir, data_dir, sets=...) -> {set: utterances}
        writes Kaldi data dirs ``data_dir/<set>`` (downloading what it may; CSJ is licensed and never
        downloaded), audio referenced where it lies (``wav.scp`` paths, or ``segments`` into recordings);
    long_form(data_dir/<set>, data_dir/<set>_long, durations) -> {duration: recordings}   (optional)
        long-form test sets ``<set>_long_<N>s`` (see ``longform.concat_long_form``).

``get("none")`` is the corpus of a recipe whose data dirs are already there.
"""
from __future__ import annotations

import importlib
import inspect
from types import ModuleType

CORPORA = {
    "asterisk": "s4speech.corpora.asterisk",  # demo: Debian's asterisk prompts (ASR and TTS)
    "librispeech": "s4speech.corpora.librispeech",
    "csj": "s4speech.corpora.csj",
    "ljspeech": "s4speech.corpora.ljspeech",
}


def get(name: str) -> ModuleType | None:
    """The corpus module called ``name``; None for ``none`` (data dirs prepared by hand)."""
    if name == "none":
        return None
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r} (one of: {', '.join(CORPORA)}, none)")
    return importlib.import_module(CORPORA[name])


def prepare(name: str, corpus_dir, data_dir, sets) -> dict:
    """``prepare`` of corpus ``name``, given ``sets`` where it takes them (the demo makes its fixed sets)."""
    mod = get(name)
    if mod is None:
        return {}
    if "sets" in inspect.signature(mod.prepare).parameters:
        return mod.prepare(corpus_dir, data_dir, sets=sets)
    return mod.prepare(corpus_dir, data_dir)
