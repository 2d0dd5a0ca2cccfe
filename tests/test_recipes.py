"""Every recipe end to end through its own run.sh, on a small tree in its corpus' own layout (real speech),
with tiny configs given on the command line (they replace run.sh's lists): data, format, tokens, statistics,
LM, training, decoding (with and without the LM), scoring, long-form, report, packing."""
import json
import subprocess
import sys
import time
import zipfile

import pytest
import yaml

from s4speech.io.kaldi import read_table

from helpers import (SHARED, make_csj, make_librispeech, run_recipe, tiny_asr_config, tiny_decode_config,
                     tiny_lm_config, tiny_tts_config)

pytestmark = pytest.mark.recipe

# every LibriSpeech part, so that train_960 and test_other exist (mini_an4 utterances, by index)
LIBRISPEECH = {
    "train-clean-100": {"19": {"198": [0, 1, 2, 3]}},
    "train-clean-360": {"20": {"200": [4, 5, 6]}},
    "train-other-500": {"21": {"210": [6, 5, 4, 3]}},
    "dev-clean": {"1272": {"128104": [0, 1]}},
    "dev-other": {"116": {"288045": [2]}},
    "test-clean": {"1089": {"134686": [0, 1, 2, 3, 4]}},
    "test-other": {"121": {"121726": [5, 6]}},
}


def rows(report: str, metric: str) -> list[str]:
    """The row names of one table ('WER' or 'CER') of a RESULTS.md."""
    part = report.split(f"## {metric}\n", 1)[1].split("\n## ", 1)[0]
    return [line.split("|")[1] for line in part.splitlines() if line.startswith("|") and not line.startswith("|---")
            and not line.startswith(f"|{metric}|")]


def check_packed_model_transcribes(zip_path, wav, tmp_path):
    """The packed model of a recipe loads in `s4speech transcribe` and in ESPnet's Speech2Text."""
    assert zipfile.is_zipfile(zip_path)
    out = tmp_path / "transcripts"
    p = subprocess.run([sys.executable, "-m", "s4speech.cli", "transcribe", "--model", str(zip_path), str(wav),
                        "--out_dir", str(out), "--format", "json", "--beam_size", "2"],
                       capture_output=True, text=True, timeout=300, env={"XDG_CACHE_HOME": str(tmp_path / "cache"),
                                                                        "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(next(out.glob("*.json")).read_text())
    assert doc["segments"] is not None and "text" in doc


def test_librispeech_recipe_with_lm(tmp_path):
    root, _ = make_librispeech(tmp_path / "corpus", LIBRISPEECH)
    lm_text = tmp_path / "lm.txt"
    lm_text.write_text("THE QUICK BROWN FOX\nTWO THREE FOUR\nGO STOP YES NO\n" * 20)
    work = tmp_path / "run"
    cfg = tiny_asr_config(tmp_path / "tiny_ssm.yaml", "ssm")
    p = run_recipe("librispeech/asr1", work, "--corpus_dir", root, "--ngpu", "0", "--nj", "2", "--inference_nj", "1",
                   "--num_workers", "0", "--asr_config", cfg, "--lm_config", tiny_lm_config(tmp_path / "lm.yaml"),
                   "--lm_train_text", lm_text, "--inference_config", tiny_decode_config(tmp_path / "dec.yaml", 0.3),
                   "--long_sets", "test_clean_long_5s", "--nbpe", "30", "--min_sec", "0.1")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rdir = work / "recipes/librispeech/asr1"
    # no copy of the corpus audio: the dumped wav.scp points at the FLAC files themselves
    wav = read_table(rdir / "dump/raw/train_960/wav.scp")
    assert len(wav) == 11 and all(p.startswith(str(root)) and p.endswith(".flac") for p in wav.values())
    assert not list((rdir / "dump").rglob("*.flac")) and not list((rdir / "dump").rglob("*.wav"))
    # speed perturbation on the fly: in the training options, not as files
    conf = yaml.safe_load((rdir / "exp/asr_tiny_ssm/config.yaml").read_text())
    effects = conf["preprocessor_conf"]["data_aug_effects"]
    assert sorted(e[2]["factor"] for e in effects) == [0.9, 1.0, 1.1]
    assert conf["num_workers"] == 0 and conf["max_epoch"] == 2  # the tiny config, not run.sh's
    assert sorted(p.name for p in (rdir / "exp").glob("asr_*") if p.is_dir()) == ["asr_stats_unigram", "asr_tiny_ssm"]
    # the LM: trained on the given text plus the transcripts, dev perplexity reported
    assert (rdir / "exp/lm_lm/valid.loss.ave.pth").exists() or (rdir / "exp/lm_lm/valid.loss.best.pth").exists()
    lm_lines = (rdir / "data/lm/train.txt").read_text().splitlines()
    assert len(lm_lines) == 11 + 60
    report = (rdir / "RESULTS.md").read_text()
    assert "LM `lm_lm`: perplexity" in report
    wer_rows = rows(report, "WER")
    for s in ("test_clean", "test_other", "test_clean_long_5s"):
        for dec in ("decode_dec", "decode_dec_lm"):
            assert f"asr_tiny_ssm / {dec} / {s}" in wer_rows, wer_rows
    assert len(wer_rows) == 6 and "lm_weight 0.0" in report and "lm_weight 0.3" in report
    assert (rdir / "longform_wer.png").stat().st_size > 1000
    check_packed_model_transcribes(rdir / "exp/asr_tiny_ssm.zip", root / "LibriSpeech/test-clean/1089/134686/1089-134686-0000.flac",
                                   tmp_path)


def test_librispeech_100_recipe(tmp_path):
    root, _ = make_librispeech(tmp_path / "corpus", {k: v for k, v in LIBRISPEECH.items() if "360" not in k and "500" not in k})
    work = tmp_path / "run"
    p = run_recipe("librispeech_100/asr1", work, "--corpus_dir", root, "--ngpu", "0", "--nj", "2", "--inference_nj", "1",
                   "--num_workers", "0", "--asr_config", tiny_asr_config(tmp_path / "tiny_tr.yaml", "transformer"),
                   "--inference_config", tiny_decode_config(tmp_path / "dec.yaml"), "--long_sets", "test_clean_long_5s",
                   "--nbpe", "20", "--min_sec", "0.1")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rdir = work / "recipes/librispeech_100/asr1"
    assert len(read_table(rdir / "dump/raw/train_100/wav.scp")) == 4
    assert rows((rdir / "RESULTS.md").read_text(), "CER") == [
        f"asr_tiny_tr / decode_dec / {s}" for s in ("test_clean", "test_clean_long_5s", "test_other")]
    assert zipfile.is_zipfile(rdir / "exp/asr_tiny_tr.zip")


def test_csj_recipe_on_segmented_lectures(tmp_path):
    """CSJ's run.sh with its own --speed_perturb_factors on segmented lectures (the perturbation used to
    look utterances up in the lecture-keyed wav.scp: KeyError at stage 2). The LM stages are LibriSpeech's
    test's (run.sh's --use_lm is switched off here to keep the suite short)."""
    root, _, _ = make_csj(tmp_path / "CSJ")
    work = tmp_path / "run"
    p = run_recipe("csj/asr1", work, "--corpus_dir", root, "--ngpu", "0", "--nj", "2", "--inference_nj", "1",
                   "--num_workers", "0", "--asr_config", tiny_asr_config(tmp_path / "tiny_ssm.yaml", "ssm"),
                   "--use_lm", "false", "--inference_config", tiny_decode_config(tmp_path / "dec.yaml"),
                   "--test_sets", "eval1", "--long_sets", "eval1_long_5s", "--min_sec", "0.1")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rdir = work / "recipes/csj/asr1"
    assert (rdir / "dump/raw/train_filtered/segments").exists()  # read in place from the lectures
    assert not list((rdir / "dump").rglob("*.wav")) and not list((rdir / "dump").rglob("*.flac"))
    conf = yaml.safe_load((rdir / "exp/asr_tiny_ssm/config.yaml").read_text())
    assert conf["train_data_path_and_name_and_type"][0][2] == "kaldi_segments"
    assert sorted(e[2]["factor"] for e in conf["preprocessor_conf"]["data_aug_effects"]) == [0.9, 1.0, 1.1]
    wer_rows = rows((rdir / "RESULTS.md").read_text(), "CER")
    assert wer_rows == [f"asr_tiny_ssm / decode_dec / {s}" for s in ("eval1", "eval1_long_5s")]


def test_ljspeech_tts_recipe(tmp_path):
    from helpers import make_ljspeech

    root = make_ljspeech(tmp_path / "corpus", SHARED / "misc/LJ050-0131.wav")
    work = tmp_path / "run"
    p = run_recipe("ljspeech/tts1", work, "--corpus_dir", root, "--ngpu", "0", "--nj", "2", "--num_workers", "0",
                   "--tts_config", tiny_tts_config(tmp_path / "tiny_tts.yaml", 22050), "--n_long", "1",
                   "--long_chars", "40", "--maxlenratio", "3", "--min_sec", "0.1")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rdir = work / "recipes/ljspeech/tts1"
    assert all(v.startswith(str(root)) for v in read_table(rdir / "dump/raw/train/wav.scp").values())  # no copies
    report = (rdir / "RESULTS.md").read_text()
    assert "|tts_tiny_tts|test|1|" in report and "## Long inputs" in report
    assert zipfile.is_zipfile(rdir / "exp/tts_tiny_tts.zip")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo ASR recipe (recipes/demo/asr1/run.sh) on an asterisk-layout tree, with a tiny S4-decoder system."""
    from helpers import make_asterisk

    tmp = tmp_path_factory.mktemp("demo")
    root = make_asterisk(tmp / "corpus")
    work = tmp / "run"
    p = run_recipe("demo/asr1", work, "--corpus_dir", root, "--nj", "2", "--inference_nj", "1", "--num_workers", "0",
                   "--asr_config", tiny_asr_config(tmp / "asr_ssm.yaml", "ssm", fs=8000),
                   "--inference_config", tiny_decode_config(tmp / "dec.yaml"), "--min_sec", "0.1",
                   "--long_sets", "test_long_3s")  # run.sh's: 10 recordings each of 30, 60 and 120 s
    return tmp, work, p


def test_demo_asr_recipe(demo):
    tmp, work, p = demo
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rdir = work / "recipes/demo/asr1"
    # the 8 kHz prompts are read where they lie
    assert all(v.startswith(str(tmp / "corpus")) for v in read_table(rdir / "dump/raw/train/wav.scp").values())
    assert rows((rdir / "RESULTS.md").read_text(), "WER") == [
        "asr_asr_ssm / decode_dec / test", "asr_asr_ssm / decode_dec / test_long_3s"]
    assert len(read_table(rdir / "data/test_long_3s/text")) == 10
    assert zipfile.is_zipfile(rdir / "exp/asr_asr_ssm.zip")


def test_demo_tts_recipe_scored_by_the_demo_asr_model(demo, tmp_path):
    tmp, work, p = demo
    assert p.returncode == 0
    p = run_recipe("demo/tts1", work, "--corpus_dir", tmp / "corpus", "--nj", "2", "--num_workers", "0", "--tts_config",
                   tiny_tts_config(tmp_path / "tts_ssm.yaml", 8000), "--n_long", "1", "--long_chars", "40",
                   "--min_sec", "0.1", "--max_eval_utts", "2")  # the synthesis limit from the training data
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rdir = work / "recipes/demo/tts1"
    report = (rdir / "RESULTS.md").read_text()
    assert "|tts_tts_ssm|test|" in report and "|natural recordings|test|" in report  # CER by the demo ASR model
    assert "beam 4, CTC weight 0.3" in report and "Griffin-Lim (32 iterations)" in report
    assert "x (characters + 1) frames, from the training data" in report
    assert zipfile.is_zipfile(rdir / "exp/tts_tts_ssm.zip")
