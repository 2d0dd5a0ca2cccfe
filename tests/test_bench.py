"""s4speech.bench: the analytic FLOP count, the per-case subprocess measurement, the report."""
import json
import subprocess
import sys

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


def test_step_case_profiles_our_step_in_a_subprocess():
    """(a2): timing and the profiler's count of the step's Linear layers (6 blocks x 5 + output = 31)."""
    r = bench.run_case({"what": "step", "d": 64, "T": 20, "L": 4, "reps": 2}, 1, env=bench.MALLOC_KEEP)
    assert "error" not in r, r
    assert r["addmm_calls"] == 31 and 0 < r["addmm_s"] < r["profiled_s"] and r["aten_calls"] > 31


def test_update_replaces_only_the_tables_run_and_keeps_the_rest(tmp_path):
    """--update: an earlier run's JSON keeps its tables and machine figures; the report names both runs."""
    res = {"machine": bench.machine(), "rate": 50.0, "bandwidth": 10.0, "load_start": "1", "load_end": "1",
           "wall": 60, "argv": ["--only", "c"], "rate_start": 50.0, "rate_end": 50.0,
           "c": [{"kind": k, "T": 10, "d": 64, "tokens": 2, "steps": 2, "wall": t, "flops_ssm_step": 1e8}
                 for k, t in (("ssm", 1.0), ("s4", 5.0), ("transformer", 6.0))]}
    js, out = tmp_path / "r.json", tmp_path / "B.md"
    js.write_text(json.dumps(res))
    out.write_text("x\n<!-- analysis -->\nkept words\n<!-- /analysis -->\n")
    # a process of its own, as from the shell: the benchmark sets threads, warnings and logging globally
    p = subprocess.run([sys.executable, "-m", "s4speech.bench", "--only", "a2", "--update", "--json", str(js),
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    new = json.loads(js.read_text())
    assert new["c"] == res["c"] and new["rate"] == 50.0 and len(new["a2"]) == 8
    assert [u["argv"][:2] for u in new["updates"]] == [["--only", "a2"]]
    text = out.read_text()
    assert "kept words" in text and "## (a2)" in text and "then: `python -m s4speech.bench --only a2" in text
