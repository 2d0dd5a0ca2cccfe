"""``python -m s4speech.recipe``: the stage runner of every recipe, ASR and TTS (``s4speech.pipeline``)."""
import sys

from s4speech.pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
