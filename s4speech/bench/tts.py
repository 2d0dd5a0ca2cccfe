"""(e) TTS: time per generated frame at 100 ... 2000 frames, ``tts: ssm`` against ESPnet's Transformer-TTS."""
from __future__ import annotations

from s4speech.bench.env import timeit
from s4speech.bench.models import build_tts

FRAMES = [100, 500, 1000, 2000]  # --quick: the first two
TEXT_LEN = 100  # input tokens


def bench_tts(frames, text_len: int = TEXT_LEN, reps: int = 2) -> list[dict]:
    """Generate exactly n frames (threshold above 1: no stop; maxlenratio = n / (text + 1)) and time it (s).

    Per frame = total / n (the encoder and postnet included, so short outputs carry their cost too);
    marginal = (t(n) - t(n_prev)) / (n - n_prev): the cost of the frames added, which shows whether
    a frame's cost grows with its position."""
    import torch

    torch.manual_seed(0)
    rows = []
    text = torch.randint(1, 59, (text_len,))
    for kind in ("ssm", "transformer"):
        model = build_tts(kind).eval()
        prev = None
        for n in frames:
            ratio = n / (text_len + 1)

            def gen():
                out = model.inference(text, threshold=2.0, minlenratio=0.0, maxlenratio=ratio)
                return out["feat_gen"].shape[0]  # (frames, 80)

            with torch.no_grad():
                got = gen()
                best, med = timeit(gen, reps, 0)
            row = {"kind": kind, "frames": got, "best": best, "median": med}
            if prev is not None:
                row["marginal"] = (best - prev["best"]) / (got - prev["frames"])
            rows.append(row)
            prev = row
            print(f"  (e) {kind} {got} frames: {best:.2f} s, {best / got * 1e3:.2f} ms/frame", flush=True)
    return rows


def measure(res: dict, opts, save) -> None:
    """``res["e"]``: both models at every frame count of FRAMES (the first two with --quick)."""
    res["e"] = bench_tts(FRAMES[:2] if opts.quick else FRAMES, reps=1 if opts.quick else 2)
    save(res)
