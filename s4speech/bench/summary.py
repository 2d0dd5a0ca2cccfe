"""The README's benchmark summary table, from the results JSON (``--readme README.md``).

Written between SUMMARY_MARKERS; each row is taken from the results when its table was measured:
the search step at d 256 (shortest / longest prefix, per encoder length), the whole-utterance
search, the training step at U 1024, and the longest S4 kernel."""
from __future__ import annotations

import math

from s4speech.bench.models import BEAM, N_STATE

SUMMARY_MARKERS = ("<!-- bench-summary:begin -->", "<!-- bench-summary:end -->")
D = 256  # the width the summary shows
TRAIN_U = 1024  # the training case shown (output tokens per sequence)
COLUMNS = {"ssm": "ours", "s4": "ESPnet `s4`", "transformer": "ESPnet Transformer"}


def milli(s: float) -> str:
    """Seconds as ms to 3 significant digits (16.4, 158, 1831)."""
    x = s * 1e3
    return f"{x:.{max(0, 2 - math.floor(math.log10(x)))}f}"


def sec(s: float) -> str:
    """Seconds, 2 decimals below 1 s, else 1."""
    return f"{s:.2f}" if s < 1 else f"{s:.1f}"


def size(b: float) -> str:
    """Bytes as whole MiB below 1 GiB, else GiB with 1 decimal."""
    return f"{b / 2**20:.0f} MiB" if b < 2**30 else f"{b / 2**30:.1f} GiB"


def _row(what: str, cells: dict) -> str:
    """A table row: ``what``, then the cell of each of COLUMNS (empty where ``cells`` has none)."""
    return "|" + "".join(f" {c} |" if c else " |" for c in [what] + [cells.get(k, "") for k in COLUMNS])


def _steps(res: dict) -> list[str]:
    out = []
    for T in sorted({r["T"] for r in res.get("a", []) if r["d"] == D}):
        by = {r["L"]: r for r in res["a"] if r["d"] == D and r["T"] == T}
        short, long = by[min(by)], by[max(by)]
        cells = {k: f"{milli(short[k]['best'])} / {milli(long[k]['best'])} ms" for k in COLUMNS}
        out.append(_row(f"search step, enc. {T} frames, prefix {min(by)} / {max(by)}", cells))
    return out


def _search(res: dict) -> list[str]:
    rows = {r["kind"]: r for r in res.get("c", [])}
    if "ssm" not in rows:
        return []
    what = f"whole-utterance search, {rows['ssm']['T']} frames, {rows['ssm']['steps']} steps"
    return [_row(what, {k: f"{sec(r['wall'])} s" for k, r in rows.items()})]


def _time_memory(c: dict) -> str:
    return f"{sec(c['best'])} s / {size(c['peak_delta'])}" if "best" in c else "n/a"


def _train(res: dict) -> list[str]:
    r = next((r for r in res.get("b", []) if r["U"] == TRAIN_U), None)
    if r is None:
        return []
    what = f"training step, {r['B']} × {r['U']} tokens: time / peak memory"
    return [_row(what, {k: _time_memory(r[k]) for k in COLUMNS})]


def _kernel(res: dict) -> list[str]:
    rows = [r for r in res.get("d", []) if "best" in r["ours-s4"]]
    if not rows:
        return []
    r = max(rows, key=lambda r: r["L"])
    what = f"S4 kernel, L = {r['L']:,}, H {r['H']}, N {N_STATE}"
    return [_row(what, {"ssm": _time_memory(r["ours-s4"]), "s4": _time_memory(r["espnet-nplr"])})]


def summary(res: dict) -> str:
    """The Markdown table (no trailing newline)."""
    head = [_row(f"d {D}, beam {BEAM}, CPU", COLUMNS), "|" + "---|" * (len(COLUMNS) + 1)]
    return "\n".join(head + _steps(res) + _search(res) + _train(res) + _kernel(res))
