"""Plots for the reports: WER against recording length (long-form)."""
from __future__ import annotations

from pathlib import Path

from s4speech.io.files import atomic_output
from s4speech.metrics.asr import wer_vs_length


def plot_wer_vs_length(runs: dict[str, list[tuple[Path, Path]]], png: Path) -> Path:
    """Long-form: WER of each recording against its length, one line per system.

    runs: {system: [(dumped test set, its decode dir), ...]}.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, sets in sorted(runs.items()):
        pts = sorted(p for dump_set, dec in sets for p in wer_vs_length(dump_set, dec))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xlabel("recording length (s)")
    ax.set_ylabel("WER (%)")
    ax.set_title("Long-form decoding (each recording decoded whole)")
    ax.grid(alpha=0.3)
    ax.legend()
    atomic_output(png, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)
    return png
