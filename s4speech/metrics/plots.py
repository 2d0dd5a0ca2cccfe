"""Plots for the reports: WER against recording length (long-form), learning curves."""
from __future__ import annotations

from pathlib import Path

from s4speech.io.files import atomic_output
from s4speech.metrics.asr import wer_vs_length


def plot_wer_vs_length(runs: dict[str, list[tuple[Path, Path]]], png: Path) -> Path:
    """Long-form: WER of each recording against its length (dots), one line per system through each
    set's mean length and mean WER (a set per target length, e.g. 10 recordings of >= 30 s).

    runs: {system: [(dumped test set, its decode dir), ...]}.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, sets) in enumerate(sorted(runs.items())):
        per_set = [wer_vs_length(dump_set, dec) for dump_set, dec in sets]
        pts = sorted(p for s in per_set for p in s)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=10, alpha=0.35, color=f"C{i}")
        means = sorted((sum(x for x, _ in s) / len(s), sum(w for _, w in s) / len(s)) for s in per_set if s)
        ax.plot([m[0] for m in means], [m[1] for m in means], marker="o", color=f"C{i}", label=name)
    ax.set_xlabel("recording length (s)")
    ax.set_ylabel("WER (%)")
    ax.set_title("Long-form decoding (each recording decoded whole)")
    ax.grid(alpha=0.3)
    ax.legend()
    atomic_output(png, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)
    return png


def plot_learning_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], ylabel: str, png: Path) -> Path:
    """One line per system and split: ``curves = {system: {"train": [(epoch, value)], "valid": [...]}}``;
    validation solid, training dashed in the same colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, splits) in enumerate(sorted(curves.items())):
        for split, style in (("valid", "-"), ("train", "--")):
            pts = splits.get(split) or []
            if pts:
                ax.plot([e for e, _ in pts], [v for _, v in pts], style, color=f"C{i}", marker="." if split == "valid" else None,
                        label=f"{name} ({split})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    atomic_output(png, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)
    return png
