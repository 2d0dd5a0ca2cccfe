"""s4speech.bench.data (``s4speech bench data``): the data stages on generated LibriSpeech- and CSJ-layout
corpora, timed, their written bytes measured, the report section written between its markers."""
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import soundfile as sf

from s4speech.bench import data as bench
from s4speech.bench.sections import write_between
from s4speech.io.kaldi import Utterance, write_kaldi_dir


def test_bench_data_measures_the_stages_and_writes_its_section(tmp_path):
    out, js = tmp_path / "BENCH.md", tmp_path / "r.json"
    out.write_text("# Other benchmarks\n\nhand-written words\n")
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "s4speech.bench", "data", "--hours", "0.01", "--nj", "1",
                        "--json", str(js), "--out", str(out), "--work", str(tmp_path / "work")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert time.time() - t0 < 120
    res = json.loads(js.read_text())
    assert set(res["f"]["corpora"]) == {"librispeech", "csj"}
    for kind, c in res["f"]["corpora"].items():
        assert list(c["stages"]) == list(bench.STAGES), kind
        for name, st in c["stages"].items():
            assert st["wall"] > 0 and st["hours"] > 0 and st["per_core"] > 0, (kind, name, st)
        # measured: the bytes the stages wrote for the training set over its audio (copying stages: >= 1)
        assert c["train_audio_bytes"] > 0 and 0 < c["train_ratio"] < 0.25, (kind, c["train_ratio"])
        # nothing of the training audio is copied: the formatted set points at the corpus files
        assert c["stages"]["format"]["bytes_audio"] == 0
        assert c["extrapolation"]["serial_hours"] > 0
    text = out.read_text()
    assert text.startswith("# Other benchmarks\n\nhand-written words\n")
    assert text.count(bench.BEGIN) == 1 and text.count(bench.END) == 1
    body = text.split(bench.BEGIN)[1].split(bench.END)[0]
    assert "## (f) Data stages" in body and "| format |" in body and "| longform |" in body
    assert "Load average" in body and "python -m s4speech.bench.data --hours 0.01" in body
    assert "bytes the data stages write for the training set ≤ 0.25× its audio" in body and "→ **met**" in body
    # a second report replaces the section, the rest stays
    write_between(out, bench.BEGIN, bench.END, "replaced")
    text = out.read_text()
    assert "hand-written words" in text and "replaced" in text and "(f) Data stages" not in text
    assert text.count(bench.BEGIN) == 1


def test_a_stage_that_copies_the_training_audio_is_measured(tmp_path):
    """The byte count the target rests on sees audio written for the training set (as the old stages did)."""
    wav = tmp_path / "corpus" / "a.flac"
    wav.parent.mkdir()
    sf.write(wav, (np.random.default_rng(0).normal(0, 3000, 16000)).astype(np.int16), 16000)
    data, dump = tmp_path / "data", tmp_path / "dump"
    write_kaldi_dir(data / "train", [Utterance("s-a", "s", str(wav), "A")])
    (dump / "raw").mkdir(parents=True)

    def copying_stage():
        (dump / "raw" / "train_sp" / "audio").mkdir(parents=True)
        for f in ("train", "train_filtered"):
            shutil.copytree(data / "train", dump / "raw" / f)
            shutil.copy(wav, dump / "raw" / f / "a.flac")

    st = bench.timed(copying_stage, data, dump, {"train", "train_filtered"})
    size = wav.stat().st_size
    assert st["bytes_audio"] == 2 * size and st["bytes_train"] > 2 * size and st["wall"] > 0
