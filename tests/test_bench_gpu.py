"""s4speech.bench.gpu (``make gpu-check``) without a GPU: the one-line exit, and every check's logic run on
the CPU through its ``device`` argument (CPU against CPU), the batch sizing against ESPnet's sampler, the
time budget and error guard, and the report."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s4speech.bench import gpu

ROOT = Path(__file__).resolve().parents[1]
TINY = gpu.Utterance(1.0, 5.0, 30, "tiny")


def test_without_cuda_it_prints_one_line_and_exits_0(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "s4speech.bench.gpu", "--out", "x.md", "--json", "x.json"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = (p.stdout + p.stderr).splitlines()
    assert len(lines) == 1 and "no CUDA device is available" in lines[0], lines
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.fixture(scope="module")
def kernels():
    return gpu.check_kernels("cpu", H=8, N=16, lengths=(64,), amp=("bf16",))


@pytest.fixture(scope="module")
def layer():
    return gpu.check_layer("cpu", B=2, L=64, H=16, N=16, modes=("fp32", "bf16"), step_len=32)


@pytest.fixture(scope="module")
def decode():
    return gpu.check_decode_step("cpu", d=64, T=20, prefixes=(4,), reps=1, warmup=1)


@pytest.fixture(scope="module")
def train():
    return [gpu.check_train_step(c, "cpu", amp="fp32", utt=TINY, batch=2, reps=0)
            for c in ("conf/demo/asr_ssm.yaml", "conf/demo/tts_ssm.yaml")]


def test_kernel_comparison_of_cpu_against_cpu_has_no_error(kernels):
    assert kernels["status"] == "ok"
    fp32 = [r for r in kernels["rows"] if r["mode"] == "fp32"]
    assert {r["kernel"] for r in fp32} == {"S4Kernel", "S4DKernel"}
    assert all(r["out"] == 0 and r["grad"] == 0 and r["ok"] for r in fp32)
    # float32 against float64 and the direct autocast calls are reported, not judged
    fp64 = next(r for r in kernels["rows"] if r["mode"].startswith("fp32 vs fp64"))
    assert 0 < fp64["out"] < 1e-4 and not fp64["judged"]
    amp = [r for r in kernels["rows"] if "autocast" in r["mode"]]
    assert len(amp) == 2 and not any(r["judged"] for r in amp)
    assert all("error" in r or r["out"] > 0 for r in amp)


def test_layer_check_judges_float32_and_autocast_against_float32(layer):
    assert layer["status"] == "ok"
    rows = {(r["layer"], r["mode"]): r for r in layer["rows"]}
    assert set(rows) == {(name, m) for name in gpu.LAYERS for m in ("fp32", "bf16")} | {
        ("S4 causal", "fp32 step x32 vs conv"), ("S4D causal", "fp32 step x32 vs conv")}
    for (name, mode), r in rows.items():
        if mode == "fp32":
            assert r["out"] == r["grad_in"] == r["grad"] == 0
        elif mode == "bf16":
            assert 0 < max(r["out"], r["grad_in"], r["grad"]) <= gpu.TOL["bf16"]
        else:  # the recurrence against the convolution
            assert r["out"] < 1e-5 and r["ok"]


def test_a_result_over_its_tolerance_fails(monkeypatch):
    monkeypatch.setitem(gpu.TOL, "bf16", 1e-9)
    r = gpu.check_layer("cpu", B=1, L=16, H=8, N=8, modes=("bf16",), step_len=4)
    assert r["status"] == "fail" and not any(x["ok"] for x in r["rows"] if x["mode"] == "bf16")


def test_decode_step_times_the_three_decoders(decode):
    assert decode["status"] == "ok" and not decode["partial"]
    (row,) = decode["rows"]
    assert row["L"] == 4 and set(row) == {"L", "ssm", "s4", "transformer"}
    assert all(row[k]["best"] > 0 and row[k]["reps"] == 1 for k in ("ssm", "s4", "transformer"))


def test_training_step_of_a_tiny_config_reports_memory_and_throughput(train):
    asr, tts = train
    for r in train:
        assert r["status"] == "ok", r
        assert r["batch"] == 2 and r["peak"] >= 0 and r["peak_kind"].startswith("peak resident")
        assert r["step_s"]["best"] > 0 and r["outputs_per_s"] > 0 and r["speech_s_per_s"] > 0
        assert r["params"] > 0 and r["decoder"] == "ssm"
    assert (asr["task"], asr["output_units"], asr["outputs_per_step"]) == ("asr", "tokens", 2 * 5)
    assert (tts["task"], tts["output_units"], tts["outputs_per_step"]) == ("tts", "frames", 2 * (8000 // 80 + 1))


def test_batch_size_is_what_espnets_numel_sampler_makes(tmp_path):
    import yaml
    from espnet2.samplers.num_elements_batch_sampler import NumElementsBatchSampler

    cfg = ROOT / "conf/librispeech/asr_conformer_ssm.yaml"
    conf = yaml.safe_load(cfg.read_text())
    utt = gpu.CORPORA["librispeech"]
    size = gpu.batch_for(conf, utt, 16000, ngpu=4)
    n = 3 * size["batch_full"]
    (tmp_path / "speech_shape").write_text("".join(f"u{i:04d} {size['samples']}\n" for i in range(n)))
    (tmp_path / "text_shape.bpe").write_text("".join(f"u{i:04d} {size['tokens']},{utt.vocab}\n" for i in range(n)))
    sampler = NumElementsBatchSampler(conf["batch_bins"], [str(tmp_path / "speech_shape"), str(tmp_path / "text_shape.bpe")])
    assert {len(b) for b in list(sampler)[:-1]} == {size["batch_full"]}
    assert size["batch"] == -(-size["batch_full"] // 4) and size["ngpu"] == 4
    assert gpu.recipe_ngpu(cfg) == 4 and gpu.recipe_ngpu(ROOT / "conf/librispeech_100/asr_conformer_ssm.yaml") == 1


def test_checks_are_guarded_and_the_budget_skips_the_rest(capsys):
    def boom(dl):
        raise RuntimeError("CUDA out of memory\nmore")

    ok = lambda dl: {"status": "ok", "rows": [{"mode": "fp32", "out": 0.0, "tol": 1e-3, "judged": True, "ok": True}]}
    res = gpu.run_checks([("a", "kernels", boom), ("b", "kernels", ok)], 100, "cpu")
    assert [r["status"] for r in res] == ["error", "ok"]
    assert res[0]["why"] == "RuntimeError: CUDA out of memory" and gpu.exit_status(res) == 1
    res = gpu.run_checks([("b", "kernels", ok), ("c", "train", boom)], 0, "cpu")
    assert [r["status"] for r in res] == ["skipped", "skipped"] and gpu.exit_status(res) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("skipped c: skipped, the time budget (--budget_s 0) was used up")


def test_report_renders_a_results_dict(kernels, layer, decode, train):
    checks = [dict(kernels, name="kernels", kind="kernels", wall_s=1.0), dict(layer, name="layer", kind="layer", wall_s=1.0),
              dict(decode, name="decode d=64 T=20", kind="decode", wall_s=1.0),
              *[dict(t, name=f"train {t['config']}", kind="train", wall_s=1.0) for t in train],
              {"name": "train conf/x.yaml", "kind": "train", "status": "skipped", "why": "the time budget ..."}]
    meta = dict(gpu.environment("cpu"), gpu="NVIDIA H200", gpu_mem_gib=139.8, capability="9.0", cuda="13.0",
                cudnn=91000, bf16_supported=True, tf32_matmul=False, tf32_cudnn=True, float32_matmul_precision="highest")
    res = {"meta": meta, "command": "python -m s4speech.bench.gpu --quick", "budget_s": 270, "wall_s": 12.0, "checks": checks}
    md = gpu.render_markdown(json.loads(json.dumps(res)))
    assert md.startswith("## GPU check: NVIDIA H200\n")
    assert "- GPU: **NVIDIA H200** (139.8 GiB" in md and "command: `python -m s4speech.bench.gpu --quick`" in md
    assert "**all checks passed**" in md
    for heading in ("### SSM kernels", "### S4 layer", "### Decoding step", "### One AMP training step"):
        assert heading in md
    assert "| S4Kernel | 64 | fp32 | 0.0e+00 | 0.0e+00" in md
    assert "| 20 | 4 | " in md  # decode row: enc T, L
    assert "| conf/demo/asr_ssm.yaml | ssm | 1 s, 5 tokens | 2 (2, 1) |" in md
    assert "- train conf/x.yaml: **skipped**: the time budget ..." in md
    bad = dict(res, checks=[dict(checks[0], status="fail")])
    assert "**1 check(s) failed or raised**: kernels" in gpu.render_markdown(bad)


def test_main_writes_the_report_and_json(tmp_path):
    md, js = tmp_path / "g.md", tmp_path / "g.json"
    assert gpu.main(["--device", "cpu", "--threads", "2", "--budget_s", "0", "--out", str(md), "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert [c["status"] for c in res["checks"]] == ["skipped"] * len(res["checks"]) and res["ok"]
    assert len(res["checks"]) == 2 + 2 + len(gpu.PAPER_CONFIGS) + len(gpu.BASELINE_CONFIGS)
    assert md.read_text().startswith("## GPU check (run on cpu")
