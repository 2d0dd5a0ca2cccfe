"""One stage runner for every recipe: ``runner`` (stage table, skipping, the main loop), ``data`` (the
data stages and settings every recipe shares), ``train`` (ESPnet training, launching, packing),
``asr`` and ``tts`` (their settings and stages), ``report`` (RESULTS.md), ``cli`` (the options)."""
