"""s4speech: structured state space (S4) models for ESPnet.

``import s4speech`` registers ``encoder: ssm`` and ``decoder: ssm`` (ASR) in
ESPnet's task choices (see ``s4speech.registry``).

``s4speech.transcribe(model, paths, ...)`` transcribes long recordings (see
``s4speech.transcribe``; loaded on first use, so ``import s4speech`` stays cheap).
"""
from s4speech import registry as _registry

__version__ = "0.1.0"

_registry.install()


def __getattr__(name):
    if name == "transcribe":  # the module is callable: s4speech.transcribe(model, paths, ...)
        import importlib

        return importlib.import_module("s4speech.transcribe")
    raise AttributeError(f"module 's4speech' has no attribute {name!r}")
