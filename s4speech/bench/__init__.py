"""Benchmarks of our SSM decoder, layers, kernels and TTS against ESPnet's (``python -m s4speech.bench``).

Modules: ``env`` (threads, timing, machine figures), ``flops`` (analytic FLOP / byte models),
``models`` (what is compared), ``cases`` (one case in a fresh process), one module per table
(``step`` a, ``step_profile`` a2, ``train`` b, ``search`` c, ``kernel`` d, ``tts`` e), ``targets``
(the targets as data), ``report`` (BENCHMARKS.md), ``summary`` (the README's table), ``sections``
(marked parts of a file), ``run`` (the command); ``transcribe``: ``s4speech transcribe`` on long
recordings (``python -m s4speech.bench.transcribe``).

Nothing here imports torch at import time: ``env.setup`` sets the OpenMP environment before it.
"""


def main(argv=None) -> int:
    """``s4speech bench ...`` (see ``s4speech.bench.run``)."""
    from s4speech.bench.run import main as run_main

    return run_main(argv)
