"""Register s4speech's classes in ESPnet's task choices under the key ``ssm``, and its loader of
segmented data dirs in ESPnet's data types as ``kaldi_segments``.

ESPnet's task modules take ~10 s to import, so ``import s4speech`` does not
import them: it registers at once into task modules already imported, and
installs an import hook that registers right after a task module is first
imported. Registration is idempotent and never replaces one of ESPnet's keys.
"""
from __future__ import annotations

import importlib
import importlib.abc
import sys

KEY = "ssm"

# task module -> {choices attribute: "module:Class"}
COMPONENTS = {
    "espnet2.tasks.asr": {
        "encoder_choices": "s4speech.asr.encoder:SSMEncoder",
        "decoder_choices": "s4speech.asr.decoder:SSMDecoder",
    },
    "espnet2.tasks.tts": {"tts_choices": "s4speech.tts.model:SSMTTS"},
}
DATASET = "espnet2.train.dataset"  # its DATA_TYPES gets our loader of segmented data dirs
SEGMENTS_TYPE = "kaldi_segments"  # matches no prefix of ESPnet's own type names (it looks them up by re.match)


def kaldi_segments_loader(path, float_dtype=None, allow_multi_rates=False):
    """``<dir>/segments,speech,kaldi_segments``: segments read from the recordings of ``<dir>/wav.scp``."""
    from espnet2.train.dataset import AdapterForSoundScpReader

    from s4speech.io.audio import SegmentReader

    return AdapterForSoundScpReader(SegmentReader(path, dtype=float_dtype or "float32"),
                                    allow_multi_rates=allow_multi_rates)


def _load(path: str):
    mod, cls = path.split(":")
    return getattr(importlib.import_module(mod), cls)


def register_task(module) -> None:
    if module.__name__ == DATASET:
        current = module.DATA_TYPES.get(SEGMENTS_TYPE)
        if current is not None and current["func"].__qualname__ != kaldi_segments_loader.__qualname__:
            raise RuntimeError(f"{DATASET}.DATA_TYPES already has a different '{SEGMENTS_TYPE}'")
        module.DATA_TYPES[SEGMENTS_TYPE] = dict(
            func=kaldi_segments_loader, kwargs=["float_dtype", "allow_multi_rates"],
            help="A Kaldi segments file (utt recording start end) with wav.scp (recording path) beside it")
        return
    for attr, path in COMPONENTS[module.__name__].items():
        choices = getattr(module, attr)
        current = choices.classes.get(KEY)
        cls = _load(path)
        if current is None:
            choices.classes[KEY] = cls
        elif current is not cls and current.__qualname__ != cls.__qualname__:
            raise RuntimeError(f"{module.__name__}.{attr} already has a different '{KEY}': {current}")


class _RegisterAfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Wraps the loader of ESPnet's task modules to register right after they execute."""

    def find_spec(self, name, path, target=None):
        if name not in COMPONENTS and name != DATASET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                self._inner = spec.loader
                spec.loader = self
                return spec
        return None

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        register_task(module)


def install() -> None:
    for name in [*COMPONENTS, DATASET]:
        if name in sys.modules:
            register_task(sys.modules[name])
    if not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
