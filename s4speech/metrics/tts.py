"""Objective measures of synthesized speech against natural recordings of the same texts.

* **MCD** (mel cepstral distortion, dB) between DTW-aligned mel-cepstra. The mel-cepstra come
  from WORLD's spectral envelope (``pyworld``: DIO + StoneMask F0, CheapTrick envelope, 5 ms
  frames): the log amplitude envelope is resampled on the all-pass-warped frequency axis
  (alpha 0.31 at 8 kHz ... 0.455 at 22.05 kHz, the usual SPTK values) and its cosine transform
  taken, i.e. the mel-cepstrum by frequency warping rather than SPTK's iterative ``mcep`` (pysptk
  is not installed; both describe the same envelope, the warped transform without the UELS
  refinement). Coefficients 1..24 (c0, the energy, excluded), DTW on the same coefficients, and
  ``MCD = 10 / ln 10 * sqrt(2 * sum_m (c_m - c'_m)^2)`` averaged over the aligned frame pairs --
  the definition of Kubichek (1993) as used by ESPnet's ``evaluate_mcd``. Leading and trailing
  silence (40 dB under the peak) is trimmed first so that a long silent tail does not dominate.
  MFCCs would need no WORLD analysis but depend on the filterbank and liftering chosen; the
  mel-cepstrum makes the numbers comparable with published MCDs.
* **log-F0 RMSE**: F0 from ``librosa.pyin`` (probabilistic YIN, 10 ms hop), frames aligned by DTW
  on MFCCs, RMSE of ln F0 over the frames voiced in both (reported in cents too: x 1200 / ln 2),
  and the voicing disagreement rate over all aligned frames.
* **CER** of the synthesized speech transcribed by an ASR model (ESPnet ``Speech2Text`` after
  ``import s4speech``, so ``decoder: ssm`` models load), scored as ``s4speech.scoring``.
* **failure rate** on long inputs: no stop token before ``maxlenratio`` (no stop) or a stop with
  fewer than half the frames the text needs at the training data's frames-per-character rate
  (early stop).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

MCD_ORDER = 24
FRAME_PERIOD_MS = 5.0
_ALPHAS = {8000: 0.31, 11025: 0.357, 16000: 0.42, 22050: 0.455, 24000: 0.466, 32000: 0.504, 44100: 0.544, 48000: 0.554}
_MCD_CONST = 10.0 / math.log(10.0) * math.sqrt(2.0)


def all_pass_alpha(fs: int) -> float:
    """The usual frequency-warping constant for a sampling rate (nearest tabulated rate)."""
    return _ALPHAS[min(_ALPHAS, key=lambda r: abs(r - fs))]


def _trim(x: np.ndarray, top_db: float = 40.0) -> np.ndarray:
    import librosa

    if x.size == 0 or not np.any(x):
        return x
    y, _ = librosa.effects.trim(x, top_db=top_db, frame_length=512, hop_length=128)
    return y if y.size else x


def _as_mono(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all():
        raise ValueError("audio must be a non-empty finite 1-d signal")
    return x


def mel_cepstrum(x: np.ndarray, fs: int, order: int = MCD_ORDER, alpha: float | None = None,
                 frame_period: float = FRAME_PERIOD_MS) -> np.ndarray:
    """(frames, order + 1) mel-cepstra c0..c_order from WORLD's spectral envelope."""
    import pyworld

    x = np.ascontiguousarray(_as_mono(x))
    alpha = all_pass_alpha(fs) if alpha is None else alpha
    f0, t = pyworld.dio(x, fs, frame_period=frame_period)
    f0 = pyworld.stonemask(x, f0, t, fs)
    sp = pyworld.cheaptrick(x, f0, t, fs)  # (frames, fft/2 + 1) power envelope
    n_bins = sp.shape[1]
    fft = 2 * (n_bins - 1)
    beta = np.linspace(0.0, np.pi, n_bins)  # uniform on the warped axis
    omega = beta + 2.0 * np.arctan(-alpha * np.sin(beta) / (1.0 + alpha * np.cos(beta)))  # its linear frequency
    log_amp = 0.5 * np.log(np.maximum(sp, 1e-16))
    grid = np.linspace(0.0, np.pi, n_bins)
    warped = np.stack([np.interp(omega, grid, row) for row in log_amp])
    c = np.fft.irfft(warped, n=fft, axis=1)[:, : order + 1]
    c[:, 1:] *= 2.0  # log|H| = c0 + sum_m c_m cos(m beta), SPTK's convention
    return c


def _dtw_path(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DTW (Euclidean) between frame sequences a (n, d) and b (m, d) -> index arrays (i, j)."""
    import librosa

    _, wp = librosa.sequence.dtw(X=a.T, Y=b.T, metric="euclidean")
    wp = wp[::-1]
    return wp[:, 0], wp[:, 1]


def mcd(ref: np.ndarray, syn: np.ndarray, fs: int, order: int = MCD_ORDER, trim: bool = True) -> float:
    """Mel cepstral distortion in dB between two signals at the same rate, DTW-aligned (c1..c_order)."""
    ref, syn = _as_mono(ref), _as_mono(syn)
    if trim:
        ref, syn = _trim(ref), _trim(syn)
    a = mel_cepstrum(ref, fs, order)[:, 1:]
    b = mel_cepstrum(syn, fs, order)[:, 1:]
    i, j = _dtw_path(a, b)
    d = np.sqrt(((a[i] - b[j]) ** 2).sum(axis=1))
    return float(_MCD_CONST * d.mean())


@dataclass
class F0Error:
    rmse: float  # of ln F0 over the frames voiced in both (nan when there are none)
    cents: float  # the same in cents
    vuv_error: float  # fraction of aligned frames voiced in one signal only
    voiced_pairs: int


def _f0(x: np.ndarray, fs: int, hop: int, fmin: float, fmax: float):
    import librosa

    frame = 1 << int(math.ceil(math.log2(max(4 * fs / fmin, 256))))  # >= ~4 periods of the lowest F0
    f0, voiced, _ = librosa.pyin(x.astype(np.float32), fmin=fmin, fmax=fmax, sr=fs, frame_length=frame,
                                 hop_length=hop, center=True)
    mf = librosa.feature.mfcc(y=x.astype(np.float32), sr=fs, n_mfcc=13, n_fft=frame, hop_length=hop,
                              n_mels=min(40, frame // 8), center=True)[1:].T
    n = min(len(f0), len(mf))
    return f0[:n], voiced[:n], mf[:n]


def log_f0_rmse(ref: np.ndarray, syn: np.ndarray, fs: int, fmin: float = 60.0, fmax: float = 500.0,
                trim: bool = True) -> F0Error:
    """RMSE of ln F0 (pYIN) over DTW-aligned frames voiced in both, and the voicing disagreement."""
    ref, syn = _as_mono(ref), _as_mono(syn)
    if trim:
        ref, syn = _trim(ref), _trim(syn)
    hop = max(1, int(round(0.01 * fs)))
    f0a, va, ma = _f0(ref, fs, hop, fmin, fmax)
    f0b, vb, mb = _f0(syn, fs, hop, fmin, fmax)
    i, j = _dtw_path(ma, mb)
    both = va[i] & vb[j] & np.isfinite(f0a[i]) & np.isfinite(f0b[j])
    vuv = float(np.mean(va[i] != vb[j]))
    if not both.any():
        return F0Error(float("nan"), float("nan"), vuv, 0)
    e = np.log(f0a[i][both]) - np.log(f0b[j][both])
    rmse = float(np.sqrt(np.mean(e**2)))
    return F0Error(rmse, rmse * 1200.0 / math.log(2.0), vuv, int(both.sum()))


@dataclass
class Analysis:
    """What the measures need of one signal (so that a reference is analysed once for several systems)."""
    mcep: np.ndarray  # (frames, order) c1..c_order
    f0: np.ndarray
    voiced: np.ndarray
    mfcc: np.ndarray


def analyze(x: np.ndarray, fs: int, order: int = MCD_ORDER, fmin: float = 60.0, fmax: float = 500.0,
            trim: bool = True) -> Analysis:
    x = _as_mono(x)
    if trim:
        x = _trim(x)
    f0, voiced, mf = _f0(x, fs, max(1, int(round(0.01 * fs))), fmin, fmax)
    return Analysis(mel_cepstrum(x, fs, order)[:, 1:], f0, voiced, mf)


def compare(ref: Analysis, syn: Analysis) -> tuple[float, F0Error]:
    """(MCD in dB, log-F0 error) of two analyses, as ``mcd`` and ``log_f0_rmse``."""
    i, j = _dtw_path(ref.mcep, syn.mcep)
    m = float(_MCD_CONST * np.sqrt(((ref.mcep[i] - syn.mcep[j]) ** 2).sum(axis=1)).mean())
    i, j = _dtw_path(ref.mfcc, syn.mfcc)
    va, vb = ref.voiced[i], syn.voiced[j]
    both = va & vb & np.isfinite(ref.f0[i]) & np.isfinite(syn.f0[j])
    vuv = float(np.mean(va != vb))
    if not both.any():
        return m, F0Error(float("nan"), float("nan"), vuv, 0)
    e = np.log(ref.f0[i][both]) - np.log(syn.f0[j][both])
    rmse = float(np.sqrt(np.mean(e**2)))
    return m, F0Error(rmse, rmse * 1200.0 / math.log(2.0), vuv, int(both.sum()))


# ---- ASR -----------------------------------------------------------------------------------------
def transcribe(wavs: dict[str, Path], asr_dir: str | Path, beam_size: int = 4, ctc_weight: float = 0.3,
               progress: bool = False) -> dict[str, str]:
    """{utt: wav} -> {utt: text} with an ESPnet ASR model (resampled to its rate)."""
    import librosa
    import soundfile as sf

    from s4speech.transcribe import Model

    # Model.load resolves the config's paths (stats file, BPE model) relative to the ASR recipe dir,
    # so the ASR model of another recipe (e.g. ../asr1/exp/...) loads from the TTS recipe dir
    model = Model.load(asr_dir, beam_size=beam_size, ctc_weight=ctc_weight)
    s2t, fs = model.s2t, model.sample_rate
    out = {}
    items = sorted(wavs.items())
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="asr", unit="utt")
    for utt, path in items:
        x, rate = sf.read(str(path), dtype="float32", always_2d=True)
        x = x.mean(axis=1)
        if rate != fs:
            x = librosa.resample(x, orig_sr=rate, target_sr=fs)
        if len(x) < fs // 10:  # too short to decode
            out[utt] = ""
            continue
        res = s2t(x)
        out[utt] = res[0][0] if res else ""
    return out


# ---- failures ------------------------------------------------------------------------------------
@dataclass
class Failures:
    n: int
    no_stop: int
    early_stop: int

    @property
    def rate(self) -> float:
        return (self.no_stop + self.early_stop) / self.n if self.n else float("nan")


def failures(records: Iterable[dict], frames_per_char: float, early: float = 0.5) -> Failures:
    """records: per synthesized text {"chars": int, "frames": int, "stopped": bool} (all pieces stopped)."""
    n = no_stop = early_stop = 0
    for r in records:
        n += 1
        if not r["stopped"]:
            no_stop += 1
        elif r["frames"] < early * frames_per_char * r["chars"]:
            early_stop += 1
    return Failures(n, no_stop, early_stop)


@dataclass
class Mean:
    """A mean over the values that are defined (e.g. log-F0 RMSE: only utterances with frames voiced in
    both), with how many of how many it is over."""

    value: float
    n: int
    of: int


def mean(values: Sequence[float]) -> Mean:
    v = [x for x in values if x == x]  # nan: undefined for that utterance
    return Mean(float(np.mean(v)) if v else float("nan"), len(v), len(values))
