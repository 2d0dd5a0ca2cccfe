"""s4speech.bench: the analytic FLOP count, the per-case subprocess measurement, the report and its
targets, the README summary, and the transcription benchmark's output file."""
import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from s4speech.bench import run, targets, transcribe
from s4speech.bench.cases import run_case
from s4speech.bench.env import machine
from s4speech.bench.flops import flops_ssm_step
from s4speech.bench.models import heads
from s4speech.bench.report import report
from s4speech.bench.sections import replace_between, write_between
from s4speech.bench.step_profile import MALLOC_KEEP
from s4speech.bench.summary import SUMMARY_MARKERS, summary

MiB = 2**20


def test_linear_flops_match_torch_flop_counter():
    """The analytic count of our step's Linear layers and attention products equals what torch counts
    for one batch_score."""
    from torch.utils.flop_counter import FlopCounterMode

    from s4speech.asr.decoder import SSMDecoder

    d, T, n, V, blocks = 64, 30, 4, 50, 2
    dec = SSMDecoder(V, d, attention_heads=heads(d), linear_units=4 * d, num_blocks=blocks,
                     dropout_rate=0.0, d_state=16).eval()
    x = torch.randn(T, d)
    with torch.no_grad():
        states = [dec.init_state(x)] * n
        with FlopCounterMode(display=False) as fc:
            dec.batch_score(torch.randint(0, V, (n, 1)), states, x.expand(n, T, d))
    parts = flops_ssm_step(n, d, T, N=16, blocks=blocks, vocab=V, parts=True)
    assert parts["linear"] + parts["attention"] == fc.get_total_flops()


def test_train_case_in_a_subprocess_measures_time_and_peak_memory():
    r = run_case({"what": "train", "kind": "ssm-layer", "d": 32, "U": 64, "B": 2, "T": 0, "reps": 1}, 1)
    assert "error" not in r, r
    assert r["best"] > 0 and r["peak_valid"] and r["peak_delta"] >= 0


def step_results(ssm_best=0.01):
    step = {"best": ssm_best, "median": 0.011}
    return {"machine": machine(), "rate": 50.0, "bandwidth": 10.0, "load_start": "1", "load_end": "1", "wall": 60,
            "a": [{"d": 256, "T": 200, "L": L, "ssm": step, "s4": {"best": 0.2, "median": 0.2},
                   "transformer": {"best": 0.1, "median": 0.1}, "flops_ssm": 1e8, "flops_s4": 3e9,
                   "flops_transformer": 1e9, "bytes_ssm": 3e7} for L in (16, 2048)]}


def test_report_states_targets():
    text = report(json.loads(json.dumps(step_results())), ["--quick"], "")
    assert "Targets (d 256, 6 blocks, enc T 200, beam 8):" in text
    assert "- our step ≤ 1/10 of ESPnet's s4 step: worst ours/s4 = 0.050 (1/20) → **met**" in text
    assert "- flat in prefix length (L 2048 within 1.2× of L 16): 1.00× → **met**" in text
    assert "- within 3× of the floor: worst 5.0× → **missed**" in text


def test_report_evaluates_the_target_records(monkeypatch):
    """The thresholds live in targets.TARGETS only: another threshold there changes the line and the verdict."""
    looser = [dataclasses.replace(t, threshold=10) if t.name == "step_floor" else t for t in targets.TARGETS]
    monkeypatch.setattr(targets, "TARGETS", looser)
    text = report(step_results(), [], "")
    assert "- within 10× of the floor: worst 5.0× → **met**" in text
    assert "within 3×" not in text
    # a table whose target cases were not measured gets no targets paragraph
    res = step_results()
    res["a"] = [dict(r, d=512) for r in res["a"]]
    assert "Targets" not in report(res, [], "")


def test_step_case_profiles_our_step_in_a_subprocess():
    """(a2): timing and the profiler's count of the step's Linear layers (6 blocks x 5 + output = 31)."""
    r = run_case({"what": "step", "d": 64, "T": 20, "L": 4, "reps": 2}, 1, env=MALLOC_KEEP)
    assert "error" not in r, r
    assert r["addmm_calls"] == 31 and 0 < r["addmm_s"] < r["profiled_s"] and r["aten_calls"] > 31


def test_update_replaces_only_the_tables_run_and_keeps_the_rest(tmp_path):
    """--update: an earlier run's JSON keeps its tables and machine figures; the report names both runs."""
    res = {"machine": machine(), "rate": 50.0, "bandwidth": 10.0, "load_start": "1", "load_end": "1",
           "wall": 60, "argv": ["--only", "c"], "rate_start": 50.0, "rate_end": 50.0,
           "c": [{"kind": k, "T": 10, "d": 64, "tokens": 2, "steps": 2, "wall": t, "flops_ssm_step": 1e8}
                 for k, t in (("ssm", 1.0), ("s4", 5.0), ("transformer", 6.0))]}
    js, out = tmp_path / "r.json", tmp_path / "B.md"
    js.write_text(json.dumps(res))
    out.write_text("x\n<!-- analysis -->\nkept words\n<!-- /analysis -->\n"
                   "<!-- decoding-bench -->\n## (g) words around\n<!-- step-compare -->\nstep table\n"
                   "<!-- /step-compare -->\n<!-- breakdown-bench -->\nbreakdown table\n<!-- /breakdown-bench -->\n"
                   "<!-- /decoding-bench -->\n")
    # a process of its own, as from the shell: the benchmark sets threads, warnings and logging globally
    p = subprocess.run([sys.executable, "-m", "s4speech.bench", "--only", "a2", "--update", "--json", str(js),
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    new = json.loads(js.read_text())
    assert new["c"] == res["c"] and new["rate"] == 50.0 and len(new["a2"]) == 8
    assert [u["argv"][:2] for u in new["updates"]] == [["--only", "a2"]]
    text = out.read_text()
    assert "kept words" in text and "## (a2)" in text and "then: `python -m s4speech.bench --only a2" in text
    assert "step table" in text and "breakdown table" in text  # the separate benchmarks' sections are kept
    assert text.count("## (g) words around") == 1 and text.count("<!-- step-compare -->") == 1  # with their prose


def test_breakdown_clock_counts_nested_calls_of_a_part_once():
    import time

    from s4speech.bench.breakdown import Clock

    clock = Clock()

    class Scorer:
        def batch_score(self, depth):
            time.sleep(0.02)
            return self.batch_score(depth - 1) if depth else "done"

    sc = Scorer()
    clock.patch(sc, "decoder", ["batch_score", "missing_method"])
    assert sc.batch_score(2) == "done"
    assert 0.06 <= clock.s["decoder"] < 0.5  # three nested calls: the outer one's time, not 0.02 + 0.04 + 0.06
    assert clock.s["ctc"] == 0.0


# ------------------------------------------------------------------------- the README's summary
def summary_results():
    """The cases the README's table shows, with the numbers of the last full run (BENCHMARKS.md)."""
    def t(best, peak_mib=None):
        return {"best": best, "median": best, **({"peak_delta": peak_mib * MiB} if peak_mib else {})}

    steps = {(200, 16): (0.01637, 0.06027, 0.04084), (200, 2048): (0.01808, 0.06222, 0.48334),
             (1000, 16): (0.02077, 0.15819, 0.23373), (1000, 2048): (0.01837, 0.22442, 0.53174)}
    kinds = ("ssm", "s4", "transformer")
    return {
        "a": [{"d": 256, "T": T, "L": L, **{k: t(v) for k, v in zip(kinds, vs)}} for (T, L), vs in steps.items()]
        + [{"d": 512, "T": 200, "L": 16, **{k: t(9.0) for k in kinds}}],  # not shown: d 512
        "c": [{"kind": k, "T": 3000, "d": 256, "steps": 100, "wall": w} for k, w in zip(kinds, (2.94, 61.88, 72.10))],
        "b": [{"U": 256, "B": 16, **{k: t(1.0, 100) for k in kinds}},
              {"U": 1024, "B": 4, "ssm": t(4.28, 2035), "s4": t(8.54, 2519), "transformer": t(8.57, 3119)}],
        "d": [{"L": L, "H": 256, "ours-s4": t(best, 323), "espnet-nplr": t(esp, 10253)}
              for L, best, esp in ((1024, 0.043, 0.133), (65536, 0.48826, 11.494))],
    }


README_TABLE = """\
| d 256, beam 8, CPU | ours | ESPnet `s4` | ESPnet Transformer |
|---|---|---|---|
| search step, enc. 200 frames, prefix 16 / 2048 | 16.4 / 18.1 ms | 60.3 / 62.2 ms | 40.8 / 483 ms |
| search step, enc. 1000 frames, prefix 16 / 2048 | 20.8 / 18.4 ms | 158 / 224 ms | 234 / 532 ms |
| whole-utterance search, 3000 frames, 100 steps | 2.9 s | 61.9 s | 72.1 s |
| training step, 4 × 1024 tokens: time / peak memory | 4.3 s / 2.0 GiB | 8.5 s / 2.5 GiB | 8.6 s / 3.0 GiB |
| S4 kernel, L = 65,536, H 256, N 64 | 0.49 s / 323 MiB | 11.5 s / 10.0 GiB | |"""


def test_summary_table_is_generated_from_the_results():
    assert summary(summary_results()) == README_TABLE
    res = summary_results()
    res["d"][1]["espnet-nplr"] = {"error": "not run: needs ~40 GiB, 20 GiB free"}
    del res["c"]
    text = summary(res)
    assert "| S4 kernel, L = 65,536, H 256, N 64 | 0.49 s / 323 MiB | n/a | |" in text
    assert "whole-utterance" not in text and text.count("\n") == README_TABLE.count("\n") - 1


def test_readme_option_writes_the_summary_between_its_markers_only(tmp_path):
    begin, end = SUMMARY_MARKERS
    js, out, readme = tmp_path / "r.json", tmp_path / "B.md", tmp_path / "README.md"
    js.write_text(json.dumps(dict(step_results(), argv=["--quick"])))
    readme.write_text(f"# Title\n\nbefore\n\n{begin}\n| old | table |\n{end}\n\nafter\n")
    assert run.main(["--report_from", str(js), "--out", str(out), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(f"# Title\n\nbefore\n\n{begin}\n| d 256, beam 8, CPU |") and text.endswith(f"\n{end}\n\nafter\n")
    assert "| search step, enc. 200 frames, prefix 16 / 2048 | 10.0 / 10.0 ms |" in text and "| old |" not in text
    assert "## (a) Beam-search step" in out.read_text()


def test_readme_without_markers_is_refused_and_left_alone(tmp_path):
    js, out, readme = tmp_path / "r.json", tmp_path / "B.md", tmp_path / "README.md"
    js.write_text(json.dumps(step_results()))
    readme.write_text("# Title\n\nhand-written\n")
    with pytest.raises(SystemExit) as e:
        run.main(["--report_from", str(js), "--out", str(out), "--readme", str(readme)])
    assert e.value.code == 2
    assert readme.read_text() == "# Title\n\nhand-written\n" and not out.exists()


# -------------------------------------------------------------------- the transcription benchmark
def test_transcribe_benchmark_does_not_write_the_readme_by_default():
    args = transcribe.parser().parse_args(["--model", "exp/asr"])
    assert args.out == "BENCHMARKS_transcribe.md"


def test_transcribe_table_replaces_only_its_section_and_appends_where_there_is_none(tmp_path):
    B, E = transcribe.BEGIN, transcribe.END
    readme = f"# Title\n\nintro\n\n{B}\n| old | table |\n{E}\n\n## Next\ntext\n"
    new = replace_between(readme, B, E, "| new | table |")
    assert new == f"# Title\n\nintro\n\n{B}\n| new | table |\n{E}\n\n## Next\ntext\n"
    assert replace_between(new, B, E, "| new | table |") == new  # re-running is idempotent
    # a file without the markers keeps all of its text; the marked section comes after it
    f = tmp_path / "README.md"
    f.write_text("# Title\n\nhand-written\n")
    write_between(f, B, E, "| t |")
    assert f.read_text() == f"# Title\n\nhand-written\n\n{B}\n| t |\n{E}\n"
    write_between(f, B, E, "| u |")  # and the next run replaces that section
    assert f.read_text() == f"# Title\n\nhand-written\n\n{B}\n| u |\n{E}\n"
    g = tmp_path / "new.md"
    write_between(g, B, E, "| t |")
    assert g.read_text() == f"{B}\n| t |\n{E}\n"
    with pytest.raises(ValueError):
        replace_between("no markers\n", B, E, "| t |", missing="error")


def test_search_bench_searches_both_ways_to_the_same_nbest():
    """``compare_search`` (BENCHMARKS.md (g)): several utterances one at a time and together; it raises if
    the n-best differ."""
    from s4speech.bench.step import compare_search

    r = compare_search(d=32, T=24, vocab=23, utts=3, tokens=4)
    assert set(r) == {"one at a time", "together"} and all(v > 0 for v in r.values())


def test_step_linears_are_the_ones_the_step_runs():
    """``step_linears`` (the Linear-layer line of BENCHMARKS.md (g)): 5 per block and the output layer --
    every Linear layer of the decoder but the memory's key/value projections, which run once per
    utterance (``init_state``), not per step."""
    import torch

    from s4speech.bench.step import _build, compare_linears, step_linears

    dec = _build("ssm", 32, 23)
    lins = step_linears(dec)
    assert len(lins) == 5 * len(dec.decoders) + 1 == compare_linears(32, 23, reps=2)["count"]
    every = [m for m in dec.modules() if isinstance(m, torch.nn.Linear)]
    kv = [blk.src_attn.kv for blk in dec.decoders]  # the memory's keys/values: once per utterance, not per step
    assert {id(m) for m in every} == {id(m) for m in lins} | {id(m) for m in kv}
