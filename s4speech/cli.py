"""``s4speech`` command: one entry point, a sub-command per tool.

    s4speech recipe ...      the stage runner of every recipe, ASR and TTS (python -m s4speech.recipe)
    s4speech transcribe ...  transcribe long recordings (python -m s4speech.transcribe)
    s4speech synthesize ...  text to speech with a trained TTS model (python -m s4speech.tts.synthesize)
"""
from __future__ import annotations

import sys

COMMANDS = {
    "recipe": ("s4speech.recipe", "run a recipe's stages (data, train, decode, score, report)"),
    "bench": ("s4speech.bench", "benchmarks against ESPnet's s4 and transformer decoders (BENCHMARKS.md)"),
    "import-espnet-s4": ("s4speech.asr.convert", "convert a model with ESPnet's 'decoder: s4' to 'decoder: ssm'"),
    "transcribe": ("s4speech.transcribe", "transcribe long recordings to txt, SRT, WebVTT or JSON"),
    "synthesize": ("s4speech.tts.synthesize", "text to speech with a trained TTS model (WAV, optional plots)"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: s4speech COMMAND [options]\n\ncommands:")
        for name, (_, help_) in COMMANDS.items():
            print(f"  {name:12s} {help_}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    import importlib

    return importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
