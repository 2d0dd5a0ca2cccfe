"""tts: ssm -- recurrent inference vs teacher forcing, stopping, training through ESPnet's TTS task on real
audio, synthesis (CLI and bad text), registration, shipped configs, LJSpeech preparation, MCD / F0 measures."""
import http.server
import json
import logging
import re
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

import s4speech  # noqa: F401  registers tts: ssm
from s4speech.io.kaldi import Utterance, read_table, write_kaldi_dir
from s4speech.tts.model import SSMTTS

from conftest import ROOT
from helpers import an4_utts, make_ljspeech

TINY = dict(adim=32, aheads=2, elayers=1, eunits=64, dlayers=2, dunits=64, dprenet_units=32, postnet_layers=2,
            postnet_chans=32, d_state=16)


def tiny(encoder_type="transformer", r=1, **kw):
    torch.manual_seed(0)
    return SSMTTS(idim=20, odim=12, encoder_type=encoder_type, reduction_factor=r, **{**TINY, **kw})


def trained_a_little(m: SSMTTS) -> SSMTTS:
    """A few optimizer steps so that the weights are not at their initial values."""
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    text, tl = torch.randint(1, 19, (2, 9)), torch.tensor([9, 6])
    feats, fl = torch.randn(2, 30, 12), torch.tensor([30, 22])
    for _ in range(3):
        loss, _, _ = m(text, tl, feats, fl)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


# ---- the model ----------------------------------------------------------------------------------
@pytest.mark.parametrize("encoder_type,r", [("transformer", 1), ("transformer", 3), ("ssm", 2)])
def test_recurrent_inference_equals_teacher_forcing(encoder_type, r):
    m = trained_a_little(tiny(encoder_type, r, dprenet_dropout_rate=0.0))  # Tacotron's prenet dropout is on in eval
    x = torch.randint(1, 19, (11,))
    before = {}
    hook = m.postnet.register_forward_pre_hook(lambda mod, inp: before.update(x=inp[0][0].T.clone()))
    gen = m.inference(x, threshold=2.0, maxlenratio=3.0)  # never stops: 3 * 12 / r steps
    hook.remove()
    steps = int(12 * 3.0 / r)
    assert gen["feat_gen"].shape == (steps * r, 12) and gen["prob"].shape == (steps * r,)
    assert gen["att_w"].shape == (2, 2, steps, 12)  # (dlayers, aheads, T_feats / r, T_text + eos)
    # the same decoder fed the generated frames in one teacher-forced pass
    tf = m.inference(x, feats=before["x"], use_teacher_forcing=True)
    for k in ("feat_gen", "prob", "att_w"):
        assert (gen[k] - tf[k]).abs().max().item() < 1e-4, k
    assert torch.allclose(gen["att_w"].sum(-1), torch.ones(()), atol=1e-5)


def test_inference_stops_on_the_stop_token_and_respects_max_and_min_length():
    m = trained_a_little(tiny(r=2, dprenet_dropout_rate=0.0))  # deterministic: two runs see the same frames
    x = torch.randint(1, 19, (9,))  # 10 input positions with <eos>
    with torch.no_grad():
        m.prob_out.weight.zero_()
        m.prob_out.bias.fill_(20.0)  # stop probability ~1 at every step
    out = m.inference(x, threshold=0.5)
    assert out["att_w"].shape[2] == 1 and out["feat_gen"].shape[0] == 2
    out = m.inference(x, threshold=0.5, minlenratio=1.0)  # not before 10 * 1.0 / 2 = 5 steps
    assert out["att_w"].shape[2] == 5
    with torch.no_grad():
        m.prob_out.bias.fill_(-20.0)  # never stops
    for ratio, steps in [(2.0, 10), (0.5, 2), (0.01, 1)]:
        out = m.inference(x, threshold=0.5, maxlenratio=ratio)
        assert out["att_w"].shape[2] == steps and out["feat_gen"].shape[0] == 2 * steps
        assert (out["prob"] < 0.5).all()
    # a stop at a given step: the stop logit follows the decoder output, so threshold the observed probabilities
    with torch.no_grad():
        m.prob_out.weight.normal_(0, 1.0)
        m.prob_out.bias.zero_()
    probs = m.inference(x, threshold=2.0, maxlenratio=2.0)["prob"].view(-1, 2).max(-1).values
    k = int(torch.argsort(probs[1:], descending=True)[0]) + 1  # some step after the first
    thr = float(probs[: k + 1].max())
    first = int((probs >= thr).nonzero()[0])
    assert m.inference(x, threshold=thr, maxlenratio=2.0)["att_w"].shape[2] == first + 1


def test_each_step_reuses_the_cross_attention_memory_and_a_fixed_size_state():
    m = trained_a_little(tiny("ssm"))
    calls = []
    hooks = [blk.src_attn.kv.register_forward_hook(lambda *a: calls.append(1)) for blk in m.decoders]
    out = m.inference(torch.randint(1, 19, (7,)), threshold=2.0, maxlenratio=5.0)
    for h in hooks:
        h.remove()
    assert out["att_w"].shape[2] == 40 and len(calls) == len(m.decoders)  # keys/values once per utterance
    state = m.decoders[0].ssm.default_state(1)
    assert state.shape == (1, 32, 16)  # (batch, H, N) whatever the length


def test_bounded_output_for_a_very_long_input():
    m = trained_a_little(tiny("ssm"))  # the S4 text encoder has no T x T attention
    x = torch.randint(1, 19, (10_000,))
    out = m.inference(x, threshold=2.0, maxlenratio=0.003)
    assert out["att_w"].shape[2] == int(10_001 * 0.003) and out["att_w"].shape[-1] == 10_001


def test_training_loss_stats_and_guided_attention():
    m = tiny(r=2)
    text, tl = torch.randint(1, 19, (3, 8)), torch.tensor([8, 5, 3])
    feats, fl = torch.randn(3, 21, 12), torch.tensor([21, 16, 9])
    loss, stats, weight = m(text, tl, feats, fl)
    assert torch.isfinite(loss) and int(weight) == 3
    assert {"l1_loss", "l2_loss", "bce_loss", "enc_dec_attn_loss", "loss"} <= set(stats)
    assert float(stats["loss"]) == pytest.approx(float(stats["l1_loss"] + stats["l2_loss"] + stats["bce_loss"]
                                                       + stats["enc_dec_attn_loss"]), rel=1e-5)
    loss.backward()
    assert m.decoders[0].ssm.kernel.log_dt.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="reduction factor"):
        m(text, tl, feats, torch.tensor([21, 16, 1]))
    with pytest.raises(ValueError, match="encoder_type"):
        SSMTTS(idim=5, odim=4, encoder_type="lstm")


def test_strict_loading_names_the_keys():
    m = tiny()
    sd = m.state_dict()
    sd.pop("feat_out.weight")
    with pytest.raises(RuntimeError, match="feat_out.weight"):
        tiny().load_state_dict(sd, strict=False)


# ---- ESPnet --------------------------------------------------------------------------------------
def test_registration_keeps_espnet_keys():
    from espnet2.tasks.tts import tts_choices
    from espnet2.tts.tacotron2 import Tacotron2
    from espnet2.tts.transformer import Transformer

    assert tts_choices.get_class("ssm") is SSMTTS
    assert tts_choices.get_class("transformer") is Transformer and tts_choices.get_class("tacotron2") is Tacotron2
    assert {"tacotron2", "transformer", "fastspeech", "fastspeech2", "vits"} <= set(tts_choices.classes)


TTS_CONFIGS = sorted(ROOT.glob("conf/*/tts_*.yaml"))


@pytest.mark.parametrize("cfg", TTS_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_build_through_espnet(cfg):
    from espnet2.tasks.tts import TTSTask

    conf = yaml.safe_load(cfg.read_text())
    args = TTSTask.get_parser().parse_args(["--config", str(cfg), "--token_list", "x", "--token_type", "char",
                                            "--normalize", "none"])
    args.token_list = ["<blank>", "<unk>", *"abcdefghij", "<sos/eos>"]
    torch.manual_seed(0)
    model = TTSTask.build_model(args).eval()
    assert type(model.tts).__name__ == {"ssm": "SSMTTS", "transformer": "Transformer"}[conf["tts"]]
    fs = conf["feats_extract_conf"]["fs"]
    with torch.no_grad():
        loss, _, _ = model(torch.tensor([[2, 3, 4, 5], [6, 7, 8, 0]]), torch.tensor([4, 3]),
                           torch.randn(2, fs // 2) * 0.1, torch.tensor([fs // 2, fs // 3]))
    assert torch.isfinite(loss)
    if conf["tts"] == "ssm":  # the comparison is fair: the twin differs only in its TTS module
        other = yaml.safe_load(cfg.with_name(cfg.name.replace("_ssm", "_transformer")).read_text())
        strip = lambda c: {k: v for k, v in c.items() if k not in ("tts", "tts_conf")}
        assert strip(conf) == strip(other)
        shared = ("adim", "aheads", "elayers", "eunits", "dlayers", "dunits", "reduction_factor", "postnet_layers",
                  "postnet_chans", "dprenet_units", "loss_type", "guided_attn_loss_lambda", "bce_pos_weight")
        assert {k: conf["tts_conf"][k] for k in shared} == {k: other["tts_conf"][k] for k in shared}


TRAIN_CONF = dict(
    feats_extract="fbank",
    feats_extract_conf=dict(fs=8000, n_fft=256, win_length=256, hop_length=80, n_mels=20, fmin=40, fmax=4000),
    tts="ssm",
    tts_conf=dict(adim=32, aheads=2, elayers=1, eunits=64, dlayers=2, dunits=64, dprenet_units=32, postnet_layers=2,
                  postnet_chans=32, reduction_factor=3, d_state=16, ssm_lr=0.002, guided_attn_loss_lambda=10.0),
    optim="adam", optim_conf=dict(lr=0.005), scheduler="warmuplr", scheduler_conf=dict(warmup_steps=3),
    exclude_weight_decay=True, grad_clip=1.0, batch_type="unsorted", batch_size=6, max_epoch=3,
    best_model_criterion=[["valid", "loss", "min"]], keep_nbest_models=2, num_att_plot=0, seed=0,
)


@pytest.fixture(scope="module")
def tts_run(tmp_path_factory, shared_data):
    """The TTS recipe's stages 2-9 on real speech -- mini AN4 (16 kHz) and an LJSpeech clip (22.05 kHz),
    resampled to 8 kHz: a tiny tts: ssm trained through ESPnet's TTS task, synthesis, evaluation, report."""
    work = tmp_path_factory.mktemp("tts")
    lj = Utterance("LJ-LJ050-0131", "LJ", str(shared_data / "misc/LJ050-0131.wav"),
                   "unless a system is established for the frequent formal review of activities thereunder")
    train = an4_utts(shared_data / "mini_an4", "train", copies=3)
    train += [Utterance(f"LJ-c{c}", "LJ", lj.audio, lj.text) for c in range(3)]
    write_kaldi_dir(work / "data/train", [Utterance(u.utt_id, u.speaker, u.audio, u.text.lower()) for u in train])
    dev = an4_utts(shared_data / "mini_an4", "test") + [lj]
    write_kaldi_dir(work / "data/dev", [Utterance(u.utt_id, u.speaker, u.audio, u.text.lower()) for u in dev])
    write_kaldi_dir(work / "data/test", [Utterance(u.utt_id, u.speaker, u.audio, u.text.lower()) for u in dev])
    cfg = work / "tts_ssm.yaml"
    cfg.write_text(yaml.safe_dump(TRAIN_CONF))
    cmd = [sys.executable, "-m", "s4speech.recipe", "--task", "tts", "--corpus", "none", "--stage", "2", "--stop_stage", "9",
           "--tts_config", str(cfg), "--max_eval_utts", "2", "--n_long", "2", "--long_chars", "60",
           "--maxlenratio", "4"]
    p = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return work


def test_a_few_training_steps_through_espnet_lower_the_loss(tts_run):
    sysdir = tts_run / "exp/tts_tts_ssm"
    log = (sysdir / "train.log").read_text()
    losses = [float(m) for m in re.findall(r"epoch results: \[train\].*? loss=([0-9.]+)", log)]
    assert len(losses) == 3, log[-2000:]
    assert losses[-1] < losses[0] * 0.8, losses
    assert (sysdir / "valid.loss.ave.pth").exists() and (sysdir / "train_seconds").exists()
    conf = yaml.safe_load((sysdir / "config.yaml").read_text())
    assert conf["tts"] == "ssm" and Path(conf["normalize_conf"]["stats_file"]).is_absolute()
    assert "<sos/eos>" in (tts_run / "data/token_list/char/tokens.txt").read_text().split()


def test_recipe_synthesizes_evaluates_and_reports(tts_run):
    synth = tts_run / "exp/tts_tts_ssm/synth"
    assert sorted(p.name for p in (synth / "test/wav").glob("*.wav")) == sorted(
        f"{u}.wav" for u in sorted(read_table(tts_run / "dump/raw/test/text"))[:2])
    recs = [json.loads(x) for x in (synth / "long/records.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(r["chars"] >= 60 and r["steps"] <= r["maxlen"] for r in recs)
    assert all(r["stopped"] or r["steps"] == r["maxlen"] for r in recs)
    res = json.loads((synth / "eval.json").read_text())
    assert res["test"]["n"] == 2 and res["test"]["mcd"]["value"] > 0 and res["test"]["rtf"] > 0
    assert res["test"]["mcd"]["n"] == res["test"]["mcd"]["of"] == 2 and res["test"]["log_f0_rmse"]["of"] == 2
    lg = res["long"]
    assert lg["n"] == 2 and lg["rate"] == (lg["no_stop"] + lg["early_stop"]) / 2
    assert lg["no_stop"] == sum(not r["stopped"] for r in recs)
    report = (tts_run / "RESULTS.md").read_text()
    assert "|tts_tts_ssm|test|2|" in report and "## Long inputs" in report


@pytest.fixture(scope="module")
def synthesizer(tts_run):
    from s4speech.tts.synthesize import Synthesizer

    return Synthesizer(tts_run / "exp/tts_tts_ssm", maxlenratio=3.0, chunk_chars=40, max_chars=2000)


def test_synthesizer_through_text2speech(synthesizer):
    res = synthesizer("yes, march third!")  # ',' and '!' are not in the token list: dropped
    assert res.fs == 8000 and res.wav.dtype == np.float32 and len(res.wav) > 0 and np.isfinite(res.wav).all()
    assert res.feats.shape[1] == 20 and len(res.pieces) == 1
    p = res.pieces[0]
    assert p.text == "yes march third" and p.n_tokens == 15 and 1 <= p.steps <= p.maxlen == int(16 * 3.0 / 3)
    assert res.feats.shape[0] == 3 * p.steps
    assert res.att_ws[0].shape == (2, 2, p.steps, 16)


def test_synthesizer_text_errors_and_long_text_is_split(synthesizer):
    from s4speech.tts.synthesize import TextError

    for bad, msg in [("", "empty text"), ("   \n\t ", "empty text"), ("жжж ыыы", "no character"),
                     ("a" * 10_000, "more than --max_chars")]:
        with pytest.raises(TextError, match=msg):
            synthesizer.prepare(bad)
    pieces = synthesizer.prepare(" ".join(["march third nineteen twenty eight"] * 50))  # 1,649 characters
    assert len(pieces) > 40 and all(0 < len(p) <= 40 for p in pieces)
    assert " ".join(pieces) == " ".join(["march third nineteen twenty eight"] * 50)


def test_synthesize_cli(tts_run, tmp_path, capsys):
    from s4speech.cli import main

    model = str(tts_run / "exp/tts_tts_ssm")
    out = tmp_path / "one.wav"
    assert main(["synthesize", "--model", model, "--text", "go", "--out", str(out), "--plot", "--maxlenratio", "3"]) == 0
    info = sf.info(str(out))
    assert info.samplerate == 8000 and info.frames > 0
    assert out.with_suffix(".mel.png").stat().st_size > 1000 and out.with_suffix(".att.png").stat().st_size > 1000
    assert not list(tmp_path.glob(".*"))  # no temporary files left
    capsys.readouterr()
    assert main(["synthesize", "--model", model, "--text", "x" * 10_000, "--out", str(tmp_path / "big.wav")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "more than --max_chars" in err[0] and not (tmp_path / "big.wav").exists()
    assert main(["synthesize", "--model", model, "--text", "", "--out", str(tmp_path / "e.wav")]) == 1
    assert capsys.readouterr().err.strip() == "error: empty text"
    lines = tmp_path / "lines.txt"
    lines.write_text("utt1\tyes\n\nжжж\nno way\n")
    rc = main(["synthesize", "--model", model, "--text_file", str(lines), "--out_dir", str(tmp_path / "d"),
               "--maxlenratio", "3", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "error: 0003: no character of the text is in the model's vocabulary" in err
    assert sorted(p.name for p in (tmp_path / "d").glob("*.wav")) == ["0004.wav", "utt1.wav"]
    assert main(["synthesize", "--model", str(tmp_path), "--text", "yes", "--out", str(out)]) == 1
    assert "no config.yaml" in capsys.readouterr().err


def test_tts_inference_drop_in_honours_maxlenratio(tts_run, tmp_path):
    text = tmp_path / "text"
    text.write_text("a yes\nb march third nineteen twenty eight\n")
    sysdir = tts_run / "exp/tts_tts_ssm"
    p = subprocess.run([sys.executable, "-m", "s4speech.bin.tts_inference", "--ngpu", "0", "--output_dir",
                        str(tmp_path / "out"), "--train_config", str(sysdir / "config.yaml"), "--model_file",
                        str(sysdir / "valid.loss.ave.pth"), "--data_path_and_name_and_type", f"{text},text,text",
                        "--maxlenratio", "1.0", "--threshold", "2.0"], cwd=tts_run, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    shapes = read_table(tmp_path / "out/speech_shape/speech_shape")
    # threshold 2 never stops: exactly int((tokens + 1) * 1.0 / 3) steps of 3 frames
    assert shapes == {"a": "3,20", "b": f"{3 * int(34 / 3)},20"}  # 3 and 33 characters
    assert (tmp_path / "out/wav/a.wav").exists() and (tmp_path / "out/att_ws/b.png").exists()


# ---- LJSpeech preparation ------------------------------------------------------------------------
def test_ljspeech_prepare_on_a_generated_tree(tmp_path, shared_data, caplog):
    from s4speech.corpora import ljspeech

    root = make_ljspeech(tmp_path / "corpus", shared_data / "misc/LJ050-0131.wav")
    with caplog.at_level(logging.WARNING, logger="s4speech.corpora.ljspeech"):
        counts = ljspeech.prepare(root, tmp_path / "data")
    assert counts == {"train": 10, "dev": 1, "test": 1}
    warned = caplog.text
    for why in ("malformed line", "duplicate clip id", "LJ009-0002.wav", "LJ009-0001.wav", "4 fields", "bad clip id"):
        assert why in warned, why
    text = read_table(tmp_path / "data/train/text")
    assert text["LJ001-0001"] == 'normalized text number 0, with "quotes".'
    assert text["LJ001-0004"] == "mr. smith paid 5."
    assert read_table(tmp_path / "data/test/text") == {"LJ001-0012": 'normalized text number 11, with "quotes".'}
    assert read_table(tmp_path / "data/dev/utt2spk") == {"LJ001-0011": "LJ"}
    assert Path(read_table(tmp_path / "data/train/wav.scp")["LJ001-0002"]).is_file()


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support (resumed downloads); counts the requests."""
    requests: list = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            return self.send_error(404)
        data = path.read_bytes()
        rng = self.headers.get("Range")
        type(self).requests.append(rng)
        if rng:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                return self.send_error(416)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_ljspeech_download_resumes_and_unpacks(tmp_path, shared_data):
    from s4speech.corpora import ljspeech
    from s4speech.io import download

    src = make_ljspeech(tmp_path / "src", shared_data / "misc/LJ050-0131.wav")
    served = tmp_path / "www"
    served.mkdir()
    with tarfile.open(served / ljspeech.ARCHIVE, "w:bz2") as tar:
        tar.add(src / "LJSpeech-1.1", arcname="LJSpeech-1.1")
    blob = (served / ljspeech.ARCHIVE).read_bytes()
    corpus = tmp_path / "downloads"
    corpus.mkdir()
    (corpus / (ljspeech.ARCHIVE + ".part")).write_bytes(blob[: len(blob) // 3])  # an interrupted download
    handler = lambda *a, **k: _RangeHandler(*a, directory=str(served), **k)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _RangeHandler.requests = []
        url = f"http://127.0.0.1:{server.server_port}/{ljspeech.ARCHIVE}"
        assert ljspeech.fetch(corpus, url=url) == corpus
        assert _RangeHandler.requests == [f"bytes={len(blob) // 3}-"]  # resumed, not restarted
        assert (corpus / ljspeech.ARCHIVE).read_bytes() == blob and not (corpus / (ljspeech.ARCHIVE + ".part")).exists()
        assert (corpus / "LJSpeech-1.1/metadata.csv").read_bytes() == (src / "LJSpeech-1.1/metadata.csv").read_bytes()
        assert ljspeech.fetch(corpus, url=url) == corpus and len(_RangeHandler.requests) == 1  # present: no request
        with pytest.raises(OSError, match="HTTP 404"):
            download.fetch(url + ".missing", tmp_path / "x.tar.bz2")
    finally:
        server.shutdown()
        server.server_close()


# ---- objective measures --------------------------------------------------------------------------
def _voice(f0: float, formant: float, fs: int = 8000, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * fs)) / fs
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.03 * np.sin(2 * np.pi * 3 * t))) / fs
    x = sum(np.sin(k * phase) / k * np.exp(-(((k * f0 - formant) / 500) ** 2)) for k in range(1, 25))
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def test_mcd_and_f0_measures():
    from s4speech.metrics import tts as ev

    a, b = _voice(140, 700), _voice(210, 1600)
    assert ev.mcd(a, a, 8000) == pytest.approx(0.0, abs=1e-6)
    d = ev.mcd(a, b, 8000)
    assert d > 3.0 and ev.mcd(a, a * 0.999 + 1e-3 * _voice(150, 900), 8000) < d
    same = ev.log_f0_rmse(a, a, 8000)
    assert same.rmse == pytest.approx(0.0, abs=1e-9) and same.vuv_error == 0.0 and same.voiced_pairs > 50
    diff = ev.log_f0_rmse(a, b, 8000)
    assert diff.rmse == pytest.approx(np.log(210 / 140), rel=0.15) and diff.cents > 500
    m, f = ev.compare(ev.analyze(a, 8000), ev.analyze(b, 8000))  # reference analysed once for several systems
    assert m == pytest.approx(d) and f.rmse == pytest.approx(diff.rmse)
    # a time-stretched copy aligns by DTW: small distortion although the lengths differ
    stretched = _voice(140, 700, seconds=1.3)
    assert ev.mcd(a, stretched, 8000) < 0.5 * d
    assert ev.failures([dict(chars=10, frames=100, stopped=True), dict(chars=10, frames=10, stopped=True),
                        dict(chars=10, frames=300, stopped=False)], frames_per_char=10.0) == ev.Failures(3, 1, 1)
    with pytest.raises(ValueError):
        ev.mcd(np.zeros(0), a, 8000)


def test_cer_asr_model_of_another_recipe_dir_loads(asr_recipe_run, shared_data, tmp_path, monkeypatch):
    """The TTS evaluation transcribes with an ASR experiment whose config holds paths relative to its own
    recipe dir (recipes/demo/tts1 uses ../asr1/exp/asr_asr_ssm): it must load from elsewhere."""
    from s4speech.metrics.tts import transcribe

    work, _ = asr_recipe_run
    monkeypatch.chdir(tmp_path)  # not the ASR recipe dir
    wav = an4_utts(shared_data / "mini_an4", "test")[0].audio
    out = transcribe({"u1": Path(wav)}, work / "exp/asr_asr_ssm")
    assert list(out) == ["u1"] and isinstance(out["u1"], str)
