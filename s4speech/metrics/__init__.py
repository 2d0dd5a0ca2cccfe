"""Measures: ASR scoring (``asr``: WER/CER tables), TTS measures (``tts``: MCD, F0, failures, ASR of
synthesized speech), plots for the reports (``plots``)."""
