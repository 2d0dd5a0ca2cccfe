"""s4speech: structured state space (S4) models for ESPnet.

``import s4speech`` registers ``encoder: ssm`` and ``decoder: ssm`` (ASR) in
ESPnet's task choices (see ``s4speech.registry``).
"""
from s4speech import registry as _registry

__version__ = "0.1.0"

_registry.install()
