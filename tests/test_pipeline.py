"""The stage runner's mechanics: run.sh defaults replaced by the user's options, stated sample rates, the
report drawn from this run only, logs closed, measures that say what they are over."""
import os
from pathlib import Path

import pytest
import yaml

from s4speech.pipeline import cli
from s4speech.pipeline.asr import ASRRecipe
from s4speech.pipeline.runner import StageError, run, run_all
from s4speech.pipeline.tts import TTSRecipe, count_params


def test_options_after_the_separator_replace_run_sh_defaults_lists_included():
    ns = cli.parse(["--corpus", "librispeech", "--asr_config", "a.yaml", "--asr_config", "b.yaml",
                    "--inference_config", "d.yaml", "--ngpu", "4", "--test_sets", "x", "y",
                    "--", "--asr_config", "mine.yaml", "--ngpu", "0", "--test_sets", "z"])
    assert ns.asr_config == ["mine.yaml"] and ns.ngpu == 0 and ns.test_sets == ["z"]
    assert ns.inference_config == ["d.yaml"] and ns.corpus == "librispeech"  # not given again: kept
    r = cli.build(ns)
    assert r.asr_configs == ["mine.yaml"] and r.launch.ngpu == 0 and r.inference_nj == r.nj
    # without the separator repeated options add up, as argparse's
    assert cli.parse(["--corpus", "x", "--asr_config", "a", "--asr_config", "b"]).asr_config == ["a", "b"]
    # two inference configs: a decoding each, and each with the LM too when --use_lm
    r = cli.build(cli.parse(["--corpus", "x", "--inference_config", "p.yaml", "--inference_config", "q.yaml",
                             "--use_lm", "true", "--lm_config", "lm.yaml"]))
    assert [d.name for d in r.decodings()] == ["decode_p", "decode_p_lm", "decode_q", "decode_q_lm"]


def test_tts_task_has_its_own_stage_table_and_defaults():
    ns = cli.parse(["--task", "tts", "--corpus", "ljspeech", "--tts_config", "t.yaml"])
    r = cli.build(ns)
    assert isinstance(r, TTSRecipe) and r.max_sec == 20.0 and ns.stop_stage == 10
    assert cli.get_parser("tts").format_help().count("synthesize") >= 1


def test_sample_rate_is_stated_or_an_error(tmp_path):
    (tmp_path / "tts.yaml").write_text(yaml.safe_dump({"feats_extract_conf": {"n_fft": 1024}}))
    with pytest.raises(StageError, match="state the sample rate"):  # no silent 22,050 Hz
        TTSRecipe("none", tts_configs=[str(tmp_path / "tts.yaml")]).sample_rate()
    assert TTSRecipe("none", tts_configs=[str(tmp_path / "tts.yaml")], fs=24000).sample_rate() == 24000
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"frontend_conf": {"fs": "22.05k"}}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"frontend_conf": {"fs": 16000}}))
    assert ASRRecipe("none", asr_configs=[str(tmp_path / "a.yaml")]).sample_rate() == 22050
    with pytest.raises(StageError, match="different sample rates"):
        ASRRecipe("none", asr_configs=[str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")]).sample_rate()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"encoder": "conformer"}))
    assert ASRRecipe("none", asr_configs=[str(tmp_path / "c.yaml")]).sample_rate() == 16000  # ESPnet's frontend


def test_report_embeds_no_long_form_plot_of_an_earlier_run(tmp_path, monkeypatch):
    from s4speech.pipeline.report import write_asr_report

    monkeypatch.chdir(tmp_path)
    Path("longform_wer.png").write_bytes(b"\x89PNG stale plot of another run")
    (tmp_path / "dec.yaml").write_text("beam_size: 7\nctc_weight: 0.4\n")
    r = ASRRecipe("none", asr_configs=["c.yaml"], inference_configs=[str(tmp_path / "dec.yaml")])
    res = {"wer": dict.fromkeys(["Snt", "Wrd", "Corr", "Sub", "Del", "Ins", "Err", "S.Err"], 1)}
    res["cer"] = res["wer"]
    report = write_asr_report(r, {("asr_c", "decode_dec", "test"): res}).read_text()
    assert "longform_wer.png" not in report and "Long-form" not in report
    assert "beam_size 7, ctc_weight 0.4, lm_weight 0.0" in report  # the settings used, not a literal
    assert "|asr_c / decode_dec / test|1|1|" in report


def _open_fds_to(path: Path) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except OSError:
            pass
    return n


def test_a_command_log_is_closed_and_a_failure_quotes_it(tmp_path):
    log = tmp_path / "job.log"
    run(["sh", "-c", "echo hello"], log, "a job")
    assert _open_fds_to(log) == 0 and "hello" in log.read_text()
    with pytest.raises(StageError, match=r"a job failed \(exit 3\); see .*job.log:\n(.|\n)*  boom$"):
        run(["sh", "-c", "echo boom; exit 3"], log, "a job")
    assert _open_fds_to(log) == 0
    logs = [tmp_path / f"decode.{j}.log" for j in (1, 2)]  # parallel jobs, as the decoding stage runs them
    run_all([(["sh", "-c", f"echo job {j}"], lf, None) for j, lf in enumerate(logs)], "decoding")
    assert [_open_fds_to(lf) for lf in logs] == [0, 0] and "job 1" in logs[1].read_text()


def test_means_say_how_many_utterances_they_are_over():
    from s4speech.metrics.tts import mean
    from s4speech.pipeline.report import _measure

    m = mean([0.2, float("nan"), 0.4])  # log-F0 RMSE is undefined without frames voiced in both
    assert (round(m.value, 6), m.n, m.of) == (0.3, 2, 3)
    assert _measure(vars(m), ".3f") == "0.300 (2 of 3)" and _measure(vars(mean([1.0, 2.0])), ".1f") == "1.5"


def test_an_unreadable_checkpoint_is_an_error_naming_it(tmp_path):
    bad = tmp_path / "valid.loss.ave.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(StageError, match=f"{bad}: cannot read the checkpoint"):
        count_params(tmp_path, bad)


ESPNET_EPOCH_LINE = (
    "[vm] 2026-12-02 00:41:25,786 (trainer:394) INFO: {e}epoch results: [train] iter_time=0.007, loss_ctc=28.155, "
    "acc={tr}, loss=25.502, clip=100.000, optim0_lr0=0.001, train_time=0.986, time=1 minute and 21.83 seconds, "
    "total_count=352, [valid] loss_ctc=43.751, cer_ctc=0.453, acc={va}, cer=0.821, loss=40.194, time=2.1 seconds, "
    "total_count=64, gpu_max_cached_mem_GB=0.0\n")


def _train_log(path: Path, accs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(ESPNET_EPOCH_LINE.format(e=e, tr=tr, va=va) for e, tr, va in accs)
                    + "[vm] ... INFO: 3epoch:train:1-10batch: iter_time=0.01, acc=0.9\n")  # not an epoch result
    return path


def test_epoch_results_of_an_espnet_train_log(tmp_path):
    from s4speech.io.expdir import epoch_results

    log = _train_log(tmp_path / "train.log", [(1, 0.2, 0.25), (2, 0.4, 0.35), (2, 0.45, 0.38), (3, 0.6, 0.5)])
    ep = epoch_results(log)
    assert sorted(ep) == [1, 2, 3]
    assert ep[2]["valid"]["acc"] == 0.38 and ep[2]["train"]["acc"] == 0.45  # resumed: the last line of an epoch
    assert ep[1]["train"]["total_count"] == 352 and "time" not in ep[1]["train"]  # "1 minute and ..." is no number
    assert ep[3]["valid"] == {"loss_ctc": 43.751, "cer_ctc": 0.453, "acc": 0.5, "cer": 0.821, "loss": 40.194,
                              "total_count": 64.0, "gpu_max_cached_mem_GB": 0.0}


def test_report_has_learning_curves_of_every_system(tmp_path, monkeypatch):
    from s4speech.pipeline.report import write_asr_report

    monkeypatch.chdir(tmp_path)
    _train_log(tmp_path / "exp/asr_a/train.log", [(1, 0.2, 0.3), (2, 0.5, 0.6), (3, 0.7, 0.55)])
    _train_log(tmp_path / "exp/asr_b/train.log", [(1, 0.1, 0.2)])
    r = ASRRecipe("none", asr_configs=["a.yaml", "b.yaml", "c.yaml"], results=tmp_path / "out" / "RESULTS.md")
    r.results.parent.mkdir()
    res = {"wer": dict.fromkeys(["Snt", "Wrd", "Corr", "Sub", "Del", "Ins", "Err", "S.Err"], 1)}
    res["cer"] = res["wer"]
    report = write_asr_report(r, {("asr_a", "decode_default", "test"): res}).read_text()
    assert "![learning curves](learning_curves.png)" in report
    assert (tmp_path / "out/learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "|asr_a|3|0.600 (epoch 2)|0.550|0.700|" in report  # best validation accuracy and where
    assert "|asr_b|1|0.200 (epoch 1)|0.200|0.100|" in report
    assert "|asr_c|0|no validation acc in exp/asr_c/train.log||||" in report  # not trained: said, not hidden


def test_synthesis_limit_comes_from_the_training_data(tmp_path, monkeypatch):
    from s4speech.io.kaldi import Utterance, write_kaldi_dir
    from s4speech.pipeline.tts import MAXLEN_MARGIN, limit_text, synth_limit

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tts.yaml").write_text(yaml.safe_dump({"feats_extract_conf": {"fs": 8000, "hop_length": 80}}))
    r = TTSRecipe("none", tts_configs=[str(tmp_path / "tts.yaml")])
    d = r.filtered(r.train_set)
    write_kaldi_dir(d, [Utterance("a", "s", "a.wav", "hello there"), Utterance("b", "s", "b.wav", "one")])
    (d / "utt2num_samples").write_text("a 16000\nb 16000\n")  # 200 frames each: 11 chars, 3 chars (+ silence)
    b = MAXLEN_MARGIN * 400 / 14  # frames per character of all the training data, with the margin
    a, slope = synth_limit(r)
    assert slope == round(b, 2) and a == round(200 - b * 4, 1) > 0  # "one" (+1) fits exactly: its silence is a
    assert a + slope * 12 >= 200 and a + slope * 4 >= 200 - 0.1  # every training utterance can be completed
    assert "from the training data" in limit_text(r)
    given = TTSRecipe("none", tts_configs=r.tts_configs, maxlenratio=7.0)
    assert synth_limit(given) is None and limit_text(given).startswith("maxlenratio 7.0")


def test_systems_side_by_side_only_on_cpu(tmp_path):
    from s4speech.pipeline.train import Launch, train_systems

    r = ASRRecipe("none", asr_configs=["a.yaml", "b.yaml"], expdir=tmp_path, train_jobs=2, launch=Launch(ngpu=1))
    with pytest.raises(StageError, match="side by side on CPU"):
        train_systems(r, "asr", [])
    assert cli.build(cli.parse(["--corpus", "none", "--asr_config", "a.yaml", "--train_jobs", "3"])).train_jobs == 3


@pytest.mark.parametrize("segmented", [False, True])
def test_decoding_jobs_read_their_utterances_longest_first(tmp_path, segmented):
    """A decoding job's utterances in another order than the set's tables (longest first): its own tables
    list them in that order, which ESPnet's streaming loader reads (on a set's own wav.scp it fails)."""
    import numpy as np
    import soundfile as sf
    from espnet2.train.iterable_dataset import IterableESPnetDataset

    import s4speech  # noqa: F401  registers kaldi_segments
    from s4speech.pipeline.asr import ASRRecipe, job_speech

    d = tmp_path / "set"
    d.mkdir()
    lengths = {"a": 800, "b": 2400, "c": 1600, "d": 3200}
    if segmented:
        sf.write(d / "rec.wav", np.zeros(12000, np.float32), 8000)
        (d / "wav.scp").write_text(f"rec {d / 'rec.wav'}\n")
        (d / "segments").write_text("".join(f"{k} rec 0.0 {n / 8000}\n" for k, n in lengths.items()))
    else:
        for k, n in lengths.items():
            sf.write(d / f"{k}.wav", np.zeros(n, np.float32), 8000)
        (d / "wav.scp").write_text("".join(f"{k} {d / k}.wav\n" for k in lengths))
    keys = sorted(lengths, key=lambda k: -lengths[k])  # d b c a
    r = ASRRecipe(corpus="none")

    def read(spec):
        path, name, kind = spec.split(",")
        return [(k, len(x["speech"])) for k, x in IterableESPnetDataset([(path, name, kind)], key_file=keys_file)]

    keys_file = str(tmp_path / "keys")
    Path(keys_file).write_text("".join(f"{k}\n" for k in keys))
    if not segmented:  # read line by line, in step with the key file (segments are looked up by key)
        with pytest.raises(RuntimeError, match="not found"):
            read(r.speech_spec(d))
    assert read(job_speech(r, d, keys, tmp_path / "job")) == [(k, lengths[k]) for k in keys]
