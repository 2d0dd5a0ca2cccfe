"""The benchmark targets, as data: which table, which measured quantity, the threshold, the comparison.

``report`` evaluates every record of TARGETS on the results and writes one line for it under its
table ("- <claim>: <measured> → **met**" or "**missed**"); no threshold is written anywhere else. A
table's targets are listed only when all of their quantities can be computed from the results.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from s4speech.bench.models import BEAM, BLOCKS


@dataclass(frozen=True)
class Target:
    name: str
    table: str  # results key of the table it is about: "a", "b", "e"
    quantity: str  # key of QUANTITIES: a number computed from the results
    cmp: str  # "<=" or ">=": met when  quantity  cmp  threshold
    threshold: float
    claim: str  # prose; {op}: ≤ / ≥, {thr}: the threshold as "1/10" or "1.2×", other {...}: from `at`
    shown: str  # the measured value; {v}: the value, other {...}: from `at` and the quantity's extras
    at: dict = field(default_factory=dict)  # where it is measured (passed to the quantity)

    def met(self, v: float) -> bool:
        return v <= self.threshold if self.cmp == "<=" else v >= self.threshold  # NaN: missed

    def line(self, v: float, extra: dict) -> str:
        thr = f"1/{1 / self.threshold:.0f}" if self.threshold < 1 else f"{self.threshold:g}×"
        op = {"<=": "≤", ">=": "≥"}[self.cmp]
        claim = self.claim.format(op=op, thr=thr, **self.at)
        shown = self.shown.format(v=v, **self.at, **extra)
        return f"- {claim}: {shown} → {'**met**' if self.met(v) else '**missed**'}"


# the cases a table's targets are about, and how the report names them ("Targets (...):")
SCOPES = {
    "a": ({"d": 256, "T": 200}, "d {d}, {blocks} blocks, enc T {T}, beam {beam}"),
    "b": ({"U": 1024}, "U = {U}"),
    "e": ({}, ""),
}

TARGETS = [
    Target("step_vs_s4", "a", "worst_step_vs_s4", "<=", 0.1, "our step {op} {thr} of ESPnet's s4 step",
           "worst ours/s4 = {v:.3f} (1/{inv:.0f})"),
    Target("step_flat", "a", "step_growth", "<=", 1.2, "flat in prefix length (L {long} within {thr} of L {short})",
           "{v:.2f}×", at={"short": 16, "long": 2048}),
    Target("step_floor", "a", "worst_step_over_floor", "<=", 3, "within {thr} of the floor", "worst {v:.1f}×"),
    Target("train_speed", "b", "train_s4_over_ours", ">=", 2, "{op} {thr} faster than ESPnet's s4", "{v:.2f}×"),
    Target("train_memory", "b", "train_peak_ours_over_s4", "<=", 0.25, "{op} {thr} of its peak memory", "{v:.2f}"),
    Target("tts_flat", "e", "tts_marginal_growth", "<=", 1.2, "time per frame flat",
           "our marginal ms/frame at {big} frames / at {ref} frames = {v:.2f}", at={"ref": 500}),
    Target("tts_speed", "e", "tts_transformer_over_ours", ">=", 5,
           "{op} {thr} faster than Transformer-TTS at {frames} frames", "{v:.1f}×", at={"frames": 1000}),
]


# ------------------------------------------------------------------------------ the quantities
# each: (results, **scope, **at) -> (value, extras for `shown`) or None when the results lack the cases
def _step_rows(res, d, T):
    return [r for r in res.get("a", []) if r["d"] == d and r["T"] == T]


def worst_step_vs_s4(res, d, T):
    rows = _step_rows(res, d, T)
    if not rows:
        return None
    v = max(r["ssm"]["best"] / r["s4"]["best"] for r in rows)
    return v, {"inv": 1 / v}


def step_growth(res, d, T, short, long):
    rows = _step_rows(res, d, T)
    if not rows:
        return None
    by = {r["L"]: r for r in rows}
    return (by[long]["ssm"]["best"] / by[short]["ssm"]["best"] if long in by and short in by else math.nan), {}


def worst_step_over_floor(res, d, T):
    rows = _step_rows(res, d, T)
    if not rows:
        return None
    return max(r["ssm"]["best"] / (r["flops_ssm"] / (res["rate"] * 1e9)) for r in rows), {}


def _train_row(res, U):
    r = next((r for r in res.get("b", []) if r["U"] == U), None)
    return r if r and "best" in r["s4"] and "best" in r["ssm"] else None


def train_s4_over_ours(res, U):
    r = _train_row(res, U)
    return (r["s4"]["best"] / r["ssm"]["best"], {}) if r else None


def train_peak_ours_over_s4(res, U):
    r = _train_row(res, U)
    return (r["ssm"]["peak_delta"] / r["s4"]["peak_delta"], {}) if r else None


def _tts(res, kind):
    return {r["frames"]: r for r in res.get("e", []) if r["kind"] == kind}


def tts_marginal_growth(res, ref):
    ours = _tts(res, "ssm")
    big = max(ours, default=None)
    if ref not in ours or "marginal" not in ours[ref] or big == ref:
        return None
    return ours[big]["marginal"] / ours[ref]["marginal"], {"big": big}


def tts_transformer_over_ours(res, frames):
    ours, theirs = _tts(res, "ssm"), _tts(res, "transformer")
    return (theirs[frames]["best"] / ours[frames]["best"], {}) if frames in ours and frames in theirs else None


QUANTITIES = {f.__name__: f for f in (worst_step_vs_s4, step_growth, worst_step_over_floor, train_s4_over_ours,
                                      train_peak_ours_over_s4, tts_marginal_growth, tts_transformer_over_ours)}


def target_lines(res: dict, table: str, targets=None) -> list[str]:
    """The report's "Targets" paragraph of ``table`` (empty when a target's cases are missing)."""
    where, title = SCOPES[table]
    lines = []
    for t in [t for t in (TARGETS if targets is None else targets) if t.table == table]:
        got = QUANTITIES[t.quantity](res, **where, **t.at)
        if got is None:
            return []
        lines.append(t.line(*got))
    if not lines:
        return []
    title = title.format(blocks=BLOCKS, beam=BEAM, **where)
    return ["", f"Targets ({title}):" if title else "Targets:", ""] + lines


# ------------------------------------------------------------------------------ (f) data stages
# (s4speech.bench.data: its results hold the measured ratio and the extrapolated wall time per corpus)
class PlainTarget(Target):
    """A target whose threshold reads as the number itself ({thr}: "0.25", "1"), not as "1/4" or "1×"."""

    def line(self, v: float, extra: dict) -> str:
        op = {"<=": "≤", ">=": "≥"}[self.cmp]
        claim = self.claim.format(op=op, thr=f"{self.threshold:g}", **self.at)
        shown = self.shown.format(v=v, **self.at, **extra)
        return f"- {claim}: {shown} → {'**met**' if self.met(v) else '**missed**'}"


SCOPES["f"] = ({}, "")

TARGETS += [
    PlainTarget("data_bytes_librispeech", "f", "data_train_bytes_ratio", "<=", 0.25,
                "LibriSpeech layout: bytes the data stages write for the training set {op} {thr}× its audio "
                "(before the redesign: 9.0×)", "{v:.4f}× ({written} for {audio})", at={"corpus": "librispeech"}),
    PlainTarget("data_bytes_csj", "f", "data_train_bytes_ratio", "<=", 0.25,
                "CSJ layout: bytes the data stages write for the training set {op} {thr}× its audio",
                "{v:.4f}× ({written} for {audio})", at={"corpus": "csj"}),
    PlainTarget("data_hours_librispeech", "f", "data_stage_hours", "<=", 1.0,
                "LibriSpeech 960 h: the data stages {op} {thr} h of wall time on {cores} cores",
                "{v:.2f} h ({minutes:.0f} min with the one-process stages on one core, imports included; "
                "{linear:.0f} min with every stage on {cores} cores)", at={"corpus": "librispeech", "cores": 32}),
]


def _data_corpus(res, corpus):
    return res.get("f", {}).get("corpora", {}).get(corpus)


def _bytes(b: float) -> str:
    return f"{b / 1e9:.1f} GB" if b >= 1e9 else f"{b / 1e6:.1f} MB" if b >= 1e6 else f"{b / 1e3:.1f} kB"


def data_train_bytes_ratio(res, corpus):
    c = _data_corpus(res, corpus)
    if not c:
        return None
    return c["train_ratio"], {"written": _bytes(c["train_bytes_written"]), "audio": _bytes(c["train_audio_bytes"])}


def data_stage_hours(res, corpus, cores):
    """The extrapolated wall time (h) of the data stages on the full corpus, the one-process stages on one core."""
    c = _data_corpus(res, corpus)
    if not c:
        return None
    x = c["extrapolation"]
    if x["cores"] != cores:
        return math.nan, {"minutes": math.nan, "linear": math.nan}
    h = x["serial_hours"] + x["fixed_s"] / 3600
    return h, {"minutes": h * 60, "linear": x["linear_hours"] * 60 + x["fixed_s"] / 60}


QUANTITIES.update({f.__name__: f for f in (data_train_bytes_ratio, data_stage_hours)})
