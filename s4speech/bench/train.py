"""(b) Teacher-forced forward + backward (a training step): time and peak memory, one fresh process a case.

B sequences of U output tokens (B * U = 4096), encoder T = 200, d = 256, dropout 0.1; then the part
that differs alone: one causal S4 layer, ours against ESPnet's, on the same B x U."""
from __future__ import annotations

from s4speech.bench.cases import first_call, run_case, too_big
from s4speech.bench.env import timeit
from s4speech.bench.flops import flops_ssm_train, predict_train_bytes
from s4speech.bench.models import V, build, build_layer

TOKENS = 4096  # B * U per batch
LENGTHS = [256, 1024, 4096]  # U; --quick: 256, 1024 (decoders) and 1024 (layers)
D, T = 256, 200


def training_step(kind: str, d: int, U: int, B: int, T: int):
    """A no-argument callable: forward + backward of one batch (gradients dropped after it)."""
    import torch

    if kind.endswith("-layer"):
        layer = build_layer(kind, d).train()
        u = torch.randn(B, U, d, requires_grad=True)

        def step():
            y = layer(u)
            (y[0] if isinstance(y, tuple) else y).square().mean().backward()
            layer.zero_grad(set_to_none=True)
            u.grad = None
        return step

    dec = build(kind, d, dropout=0.1).train()
    hs = torch.randn(B, T, d)  # encoder output (B, T, d)
    hl = torch.full((B,), T)
    ys = torch.randint(0, V - 1, (B, U))
    yl = torch.full((B,), U)
    tgt = torch.randint(0, V - 1, (B, U))

    def step():
        logits, _ = dec(hs, hl, ys, yl)  # (B, U, V)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1))
        loss.backward()
        dec.zero_grad(set_to_none=True)
    return step


def case_train(kind: str, d: int, U: int, B: int, T: int, reps: int) -> dict:
    """Seconds (best, median, first) and peak memory (bytes) of one training step; run in a fresh process."""
    import torch

    torch.manual_seed(0)
    step = training_step(kind, d, U, B, T)
    m = first_call(step)  # the first call also measures the peak
    best, med = timeit(step, reps, 0) if reps else (m["first"], m["first"])
    return {"best": min(best, m["first"]), "median": med, **m}


def measure(res: dict, opts, save) -> None:
    """``res["b"]``: the three decoders at each U; ``res["b_layer"]``: the two S4 layers."""
    res["b"] = []
    for U in LENGTHS[:2] if opts.quick else LENGTHS:
        B = TOKENS // U
        row = {"U": U, "B": B, "flops": flops_ssm_train(B, U, D, T)}
        for kind in ("ssm", "s4", "transformer"):
            row[kind] = too_big(predict_train_bytes(kind, D, U, B, T), 0.7) or run_case(
                {"what": "train", "kind": kind, "d": D, "U": U, "B": B, "T": T,
                 "reps": 1 if (opts.quick or U >= 4096) else 2}, opts.threads)
            print(f"  (b) U={U} {kind}: {row[kind]}", flush=True)
        res["b"].append(row)
    res["b_layer"] = []
    for U in [1024] if opts.quick else LENGTHS:
        B = TOKENS // U
        row = {"U": U, "B": B}
        for kind in ("ssm-layer", "s4-layer"):
            row[kind] = run_case({"what": "train", "kind": kind, "d": D, "U": U, "B": B, "T": 0, "reps": 2},
                                 opts.threads)
            print(f"  (b) layer U={U} {kind}: {row[kind]}", flush=True)
        res["b_layer"].append(row)
        save(res)
