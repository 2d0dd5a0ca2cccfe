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
