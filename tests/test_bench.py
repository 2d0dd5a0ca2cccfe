"""s4speech.bench: the analytic FLOP count, the per-case subprocess measurement, the report."""
import json

import torch

from s4speech import bench


def test_linear_flops_match_torch_flop_counter():
    """The analytic count of our step's Linear layers and attention products equals what torch counts
    for one batch_score."""
    from torch.utils.flop_counter import FlopCounterMode

    from s4speech.asr.decoder import SSMDecoder

    d, T, n, V, blocks = 64, 30, 4, 50, 2
    dec = SSMDecoder(V, d, attention_heads=bench.heads(d), linear_units=4 * d, num_blocks=blocks,
                     dropout_rate=0.0, d_state=16).eval()
    x = torch.randn(T, d)
    with torch.no_grad():
        states = [dec.init_state(x)] * n
        with FlopCounterMode(display=False) as fc:
            dec.batch_score(torch.randint(0, V, (n, 1)), states, x.expand(n, T, d))
    parts = bench.flops_ssm_step(n, d, T, N=16, blocks=blocks, vocab=V, parts=True)
    assert parts["linear"] + parts["attention"] == fc.get_total_flops()


def test_train_case_in_a_subprocess_measures_time_and_peak_memory():
    r = bench.run_case({"what": "train", "kind": "ssm-layer", "d": 32, "U": 64, "B": 2, "T": 0, "reps": 1}, 1)
    assert "error" not in r, r
    assert r["best"] > 0 and r["peak_valid"] and r["peak_delta"] >= 0


def test_report_states_targets():
    step = {"best": 0.01, "median": 0.011}
    res = {"machine": bench.machine(), "rate": 50.0, "bandwidth": 10.0, "load_start": "1", "load_end": "1", "wall": 60,
           "a": [{"d": 256, "T": 200, "L": L, "ssm": step, "s4": {"best": 0.2, "median": 0.2},
                  "transformer": {"best": 0.1, "median": 0.1}, "flops_ssm": 1e8, "flops_s4": 3e9,
                  "flops_transformer": 1e9, "bytes_ssm": 3e7} for L in (16, 2048)]}
    text = bench.report(json.loads(json.dumps(res)), ["--quick"], "")
    assert "our step ≤ 1/10 of ESPnet's s4 step" in text and "**met**" in text
    assert "within 3× of the floor: worst 5.0× → **missed**" in text
