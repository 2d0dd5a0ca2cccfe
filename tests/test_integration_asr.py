"""End to end through ESPnet on real audio (mini AN4): format, tokens, stats, train two systems
(S4 decoder and ESPnet's Transformer decoder, same encoder), decode with beam 4, score."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from s4speech.io.kaldi import read_table
from s4speech.metrics.asr import score

from conftest import CONFIGS, ROOT


def epoch_losses(log: Path):
    return [float(m) for m in re.findall(r"\[train\].*?\bloss=([0-9.]+)", log.read_text())]


@pytest.mark.parametrize("system", ["asr_asr_ssm", "asr_asr_transformer"])
def test_trains_decodes_and_scores(asr_recipe_run, system):
    work, _ = asr_recipe_run
    exp = work / "exp" / system
    assert (exp / "valid.acc.ave.pth").exists() and (exp / "config.yaml").exists()
    losses = epoch_losses(exp / "train.log")
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    dec = exp / "decode_decode" / "test"
    hyp = read_table(dec / "text")
    assert set(hyp) == set(read_table(work / "dump/raw/test/text"))
    res = json.loads((dec / "result.json").read_text())
    assert res["wer"]["Snt"] == 2 and res["wer"]["Wrd"] > 0
    # the scoring stage's figures are those of the hypotheses it wrote, whatever 3 epochs reach
    assert res == score(read_table(work / "dump/raw/test/text"), hyp)
    log = (exp / "decode_decode" / "decode.1.log").read_text()
    assert "BatchBeamSearch implementation is selected" in log


def test_ssm_decoder_is_in_the_trained_model(asr_recipe_run):
    work, _ = asr_recipe_run
    cfg = (work / "exp/asr_asr_ssm/config.yaml").read_text()
    assert re.search(r"^decoder: ssm$", cfg, re.M)
    sd = torch.load(work / "exp/asr_asr_ssm/valid.acc.ave.pth", map_location="cpu")
    assert any(k.startswith("decoder.decoders.0.ssm.kernel.") for k in sd)


def test_model_loads_in_a_fresh_process_through_espnet_speech2text(asr_recipe_run):
    """ESPnet's own Speech2Text after `import s4speech`: batch_size 1 selects BatchBeamSearch,
    batch_size 2 keeps the plain BeamSearch (score() per hypothesis); both give the same n-best."""
    work, _ = asr_recipe_run
    code = (
        "import json, s4speech, soundfile as sf\n"
        "from espnet2.bin.asr_inference import Speech2Text\n"
        "from s4speech.asr.ctc import use_fast_ctc\n"
        "s2t = Speech2Text('exp/asr_asr_ssm/config.yaml', 'exp/asr_asr_ssm/valid.acc.ave.pth', beam_size=4,\n"
        "                  ctc_weight=0.3, device='cpu')\n"  # conf/demo/decode.yaml's settings
        "use_fast_ctc(s2t)\n"  # as s4speech.bin.asr_inference, which the recipe decodes with
        "for line in open('dump/raw/test/wav.scp'):\n"
        "    utt, path = line.split()\n"
        "    print('ONEBEST', utt, s2t(sf.read(path)[0])[0][0])\n"
        "for bs in (1, 2):\n"
        "    s2t = Speech2Text('exp/asr_asr_ssm/config.yaml', 'exp/asr_asr_ssm/valid.acc.ave.pth', beam_size=3,\n"
        "                      ctc_weight=0.3, nbest=3, batch_size=bs, device='cpu')\n"
        "    p = open('dump/raw/test/wav.scp').readline().split()[1]\n"
        "    x, sr = sf.read(p)\n"
        "    print('NBEST', bs, type(s2t.beam_search).__name__, json.dumps([(h[2], float(h[3].score)) for h in s2t(x)]))\n"
        "print(type(s2t.asr_model.decoder).__module__)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = [l.split(" ", 3) for l in p.stdout.splitlines() if l.startswith("NBEST")]
    assert [l[2] for l in lines] == ["BatchBeamSearch", "BeamSearch"]
    (batched, plain) = [json.loads(l[3]) for l in lines]
    # the same n-best with the same scores (up to float noise, which may swap near-ties in the order)
    b, p_ = ({tuple(t): sc for t, sc in hyps} for hyps in (batched, plain))
    assert b.keys() == p_.keys() and all(abs(b[t] - p_[t]) < 1e-3 for t in b), (batched, plain)
    assert "s4speech.asr.decoder" in p.stdout
    # the recipe's decoding stage decoded with the inference config's beam and CTC weight
    onebest = {l.split(" ", 2)[1]: (l.split(" ", 2) + [""])[2] for l in p.stdout.splitlines() if l.startswith("ONEBEST")}
    assert onebest == read_table(work / "exp/asr_asr_ssm/decode_decode/test/text")


def test_mismatched_checkpoint_is_refused_by_name(asr_recipe_run, tmp_path):
    work, _ = asr_recipe_run
    sd = torch.load(work / "exp/asr_asr_ssm/valid.acc.ave.pth", map_location="cpu")
    sd["decoder.decoders.0.ssm.bogus"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    code = (
        "import s4speech\nfrom espnet2.tasks.asr import ASRTask\n"
        f"ASRTask.build_model_from_file('exp/asr_asr_ssm/config.yaml', {str(tmp_path / 'bad.pth')!r}, 'cpu')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    assert "unexpected keys ['decoder.decoders.0.ssm.bogus']" in p.stderr


def test_rerun_skips_finished_stages(asr_recipe_run):
    work, _ = asr_recipe_run
    before = (work / "exp/asr_asr_ssm/valid.acc.ave.pth").stat().st_mtime
    cmd = [sys.executable, "-m", "s4speech.recipe", "--corpus", "none", "--stage", "3", "--stop_stage", "9",
           "--inference_config", str(ROOT / "conf/demo/decode.yaml")]
    for c in CONFIGS:
        cmd += ["--asr_config", str(c)]
    p = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "already trained" in p.stderr
    assert (work / "exp/asr_asr_ssm/valid.acc.ave.pth").stat().st_mtime == before


def test_long_form_and_report(asr_recipe_run):
    work, p = asr_recipe_run
    report = (work / "RESULTS.md").read_text()
    for row in ["asr_asr_ssm / decode_decode / test|", "asr_asr_transformer / decode_decode / test|",
                "asr_asr_ssm / decode_decode / test_long|", "asr_asr_transformer / decode_decode / test_long|"]:
        assert report.count(row) == 2, row  # one WER and one CER row each
    assert (work / "longform_wer.png").stat().st_size > 1000
    assert "# Results: none" in p.stdout  # the report is printed too


def test_two_process_training_on_cpu_writes_the_usual_checkpoints(asr_recipe_run, tmp_path):
    """--launcher torchrun --nproc_per_node 2 on CPU (gloo): ESPnet's distributed training, checkpoints that
    load as a one-process model's do."""
    import shutil
    import socket

    from helpers import tiny_asr_config

    work, _ = asr_recipe_run  # its dumps (8 kHz) and feature statistics (40 mel bins, the demo configs')
    shutil.copytree(work / "exp/asr_stats_char", work / "exp_ddp/asr_stats_char")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "s4speech.recipe", "--corpus", "none", "--stage", "7", "--stop_stage", "7",
           "--expdir", "exp_ddp", "--asr_config", str(tiny_asr_config(tmp_path / "tiny.yaml", fs=8000, n_mels=40)),
           "--launcher", "torchrun", "--nproc_per_node", "2", "--master_port", str(port), "--num_workers", "0"]
    p = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    exp = work / "exp_ddp/asr_tiny"
    log = (exp / "train.log").read_text()
    assert re.search(r"\[\S+:0/2\]", log) and "epoch results" in log  # rank 0 of 2
    assert {"valid.acc.ave.pth", "valid.acc.best.pth", "checkpoint.pth", "latest.pth", "1epoch.pth", "2epoch.pth"} <= \
        {f.name for f in exp.iterdir()}
    sd = torch.load(exp / "valid.acc.ave.pth", map_location="cpu")
    assert not any(k.startswith("module.") for k in sd)
    code = ("import s4speech\nfrom espnet2.tasks.asr import ASRTask\n"
            "m, a = ASRTask.build_model_from_file('exp_ddp/asr_tiny/config.yaml', 'exp_ddp/asr_tiny/valid.acc.ave.pth')\n"
            "print('LOADED', type(m.decoder).__name__, a.distributed)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=300)
    assert "LOADED SSMDecoder True" in p.stdout, p.stderr[-2000:]


@pytest.mark.parametrize("system", ["asr_asr_ssm", "asr_asr_transformer"])
def test_batched_decoding_gives_the_one_at_a_time_results(asr_recipe_run, system, tmp_path):
    """``s4speech.bin.asr_inference --batch_size 3`` (utterances beam-searched together) writes what
    ``--batch_size 1`` (ESPnet's own loop) writes: the same text and tokens, the same scores."""
    work, _ = asr_recipe_run
    wav = read_table(work / "dump/raw/train/wav.scp")
    keys = sorted(wav)[::7][:6] + sorted(read_table(work / "dump/raw/test/wav.scp"))
    scp = tmp_path / "wav.scp"
    wav.update(read_table(work / "dump/raw/test/wav.scp"))
    scp.write_text("".join(f"{k} {wav[k]}\n" for k in keys))
    (tmp_path / "keys").write_text("".join(f"{k}\n" for k in keys))
    out = {}
    for bs in (1, 3):
        cmd = [sys.executable, "-m", "s4speech.bin.asr_inference", "--batch_size", str(bs), "--ngpu", "0",
               "--config", str(ROOT / "conf/demo/decode.yaml"), "--nbest", "2",
               "--asr_train_config", f"exp/{system}/config.yaml", "--asr_model_file", f"exp/{system}/valid.acc.ave.pth",
               "--data_path_and_name_and_type", f"{scp},speech,sound", "--key_file", str(tmp_path / "keys"),
               "--output_dir", str(tmp_path / f"out{bs}")]
        p = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        out[bs] = {(n, f): read_table(tmp_path / f"out{bs}" / f"{n}best_recog" / f)
                   for n in (1, 2) for f in ("text", "token_int", "score")}
    for (n, f), ref in out[1].items():
        got = out[3][(n, f)]
        assert set(got) == set(ref) == set(keys), (n, f)
        if f == "score":  # "tensor(-12.3456)"
            num = lambda s: float(re.search(r"-?[0-9.]+(?:e[-+]?[0-9]+)?", s.replace("tensor", "")).group())
            assert all(abs(num(got[k]) - num(ref[k])) < 1e-3 for k in keys), (ref, got)
        elif n == 1:
            assert got == ref, (ref, got)
    assert len({out[1][(1, "text")][k] for k in keys}) > 2  # different utterances, different hypotheses
