"""tts: ssm inference safeguards: the attention constraint (window around the focus of the guided heads), the stop
rule that waits for the attention to reach the end of the text, the maxlenratio warning, and the options through
SSMTTS.inference, Text2Speech, ``s4speech.bin.tts_inference`` and ``s4speech synthesize``."""
import logging

import pytest
import torch
import yaml

import s4speech  # noqa: F401  registers tts: ssm
from s4speech.tts.model import SSMTTS

from test_tts import TRAIN_CONF, tiny, trained_a_little

NEVER = dict(threshold=2.0)  # a stop probability never reaches 2
LOGGER = "s4speech.tts.model"


def focus_of(m: SSMTTS, att_w: torch.Tensor) -> torch.Tensor:
    """att_w (dlayers, aheads, steps, T) -> (steps,) argmax of the guided heads' mean, computed here, not by the model."""
    first, h = m.focus_heads()
    return att_w[first:, :h].mean((0, 1)).argmax(-1)


def always_stopping(m: SSMTTS) -> SSMTTS:
    """Stop probability ~1 at every step (prob_out does not feed back: frames and attention are unchanged)."""
    with torch.no_grad():
        m.prob_out.weight.zero_()
        m.prob_out.bias.fill_(20.0)
    return m


# ---- which heads ---------------------------------------------------------------------------------
def test_focus_heads_are_those_of_the_guided_attention_loss():
    assert tiny(dlayers=3, aheads=4, num_layers_applied_guided_attn=2, num_heads_applied_guided_attn=2).focus_heads() \
        == (1, 2)  # the last 2 blocks, their first 2 heads (as forward's att_ws[::-1][:n], w[:, :h])
    assert tiny(dlayers=3, num_layers_applied_guided_attn=-1, num_heads_applied_guided_attn=-1).focus_heads() == (0, 2)
    assert tiny(dlayers=3, use_guided_attn_loss=False).focus_heads() == (0, 2)  # no guided heads: all of them


# ---- the attention constraint --------------------------------------------------------------------
@pytest.mark.parametrize("r,bw,fw", [(1, 1, 2), (1, 2, 4), (2, 0, 1)])
def test_constrained_attention_never_leaves_the_window(r, bw, fw):
    m = tiny(r=r, dprenet_dropout_rate=0.0).eval()
    moved = 0
    for seed in range(3):
        torch.manual_seed(seed)
        x = torch.randint(1, 19, (15,))
        att = m.inference(x, maxlenratio=2.0, use_att_constraint=True, backward_window=bw, forward_window=fw,
                          **NEVER)["att_w"]  # (dlayers, aheads, steps, 16)
        focus = focus_of(m, att)
        prev = torch.cat([torch.zeros(1, dtype=torch.long), focus[:-1]])  # the window's centre: 0 at the first step
        pos = torch.arange(att.shape[-1])
        inside = (pos[None] >= prev[:, None] - bw) & (pos[None] <= prev[:, None] + fw)  # (steps, T)
        first, h = m.focus_heads()
        w = att[first:, :h]
        assert (w.masked_select(~inside.expand_as(w)) == 0).all()  # exactly 0 outside: masked before the softmax
        assert torch.allclose(w.sum(-1), torch.ones(()), atol=1e-5)
        assert ((focus - prev >= -bw) & (focus - prev <= fw)).all()
        moved += int((focus != prev).sum())
    assert moved > 0  # the window followed the focus


def test_only_the_focus_heads_are_constrained():
    m = tiny(dlayers=2, aheads=2, num_layers_applied_guided_attn=1, num_heads_applied_guided_attn=1,
             dprenet_dropout_rate=0.0).eval()
    assert m.focus_heads() == (1, 1)
    torch.manual_seed(0)
    x = torch.randint(1, 19, (15,))
    att = m.inference(x, maxlenratio=1.0, use_att_constraint=True, backward_window=1, forward_window=2, **NEVER)["att_w"]
    focus = focus_of(m, att)
    prev = torch.cat([torch.zeros(1, dtype=torch.long), focus[:-1]])
    pos = torch.arange(att.shape[-1])
    outside = (pos[None] < prev[:, None] - 1) | (pos[None] > prev[:, None] + 2)
    assert (att[1, 0][outside] == 0).all()
    for layer, head in [(0, 0), (0, 1), (1, 1)]:  # free: weight outside the window of the constrained head
        assert (att[layer, head][outside] > 0).all()


@pytest.mark.parametrize("encoder_type,r", [("transformer", 1), ("ssm", 2)])
def test_without_the_constraint_the_outputs_are_unchanged(encoder_type, r):
    m = trained_a_little(tiny(encoder_type, r, dprenet_dropout_rate=0.0))
    x = torch.randint(1, 19, (11,))
    before = {}
    hook = m.postnet.register_forward_pre_hook(lambda mod, inp: before.update(x=inp[0][0].T.clone()))
    gen = m.inference(x, maxlenratio=3.0, **NEVER)  # the defaults: no constraint, no stop on attention
    hook.remove()
    tf = m.inference(x, feats=before["x"], use_teacher_forcing=True)  # as test_tts's recurrent == teacher forcing
    for k in ("feat_gen", "prob", "att_w"):
        assert (gen[k] - tf[k]).abs().max().item() < 1e-4, k
    off = m.inference(x, maxlenratio=3.0, use_att_constraint=False, backward_window=0, forward_window=1,
                      stop_on_attention=True, end_window=0, **NEVER)  # never stops: the stop rule changes nothing
    for k in ("feat_gen", "prob", "att_w"):
        assert torch.equal(gen[k], off[k]), k
    on = m.inference(x, maxlenratio=3.0, use_att_constraint=True, backward_window=0, forward_window=1, **NEVER)
    assert on["feat_gen"].shape == gen["feat_gen"].shape and not torch.allclose(on["att_w"], gen["att_w"])


def test_bad_windows_are_refused():
    m = tiny().eval()
    x = torch.randint(1, 19, (5,))
    for bad in [dict(forward_window=0), dict(backward_window=-1), dict(end_window=-1)]:
        with pytest.raises(ValueError, match="forward_window >= 1"):
            m.inference(x, **bad)


# ---- the stop rule -------------------------------------------------------------------------------
@pytest.mark.parametrize("constraint", [{}, dict(use_att_constraint=True, backward_window=2, forward_window=4)],
                         ids=["free", "constrained"])
def test_stop_on_attention_waits_until_the_focus_reached_the_end(constraint):
    if constraint:  # the focus moves a few tokens per step
        m, n = always_stopping(tiny(r=1, dprenet_dropout_rate=0.0).eval()), 15
    else:  # the focus jumps towards <eos>
        m, n = always_stopping(trained_a_little(tiny(r=2, dprenet_dropout_rate=0.0))), 9
    r, T = m.reduction_factor, n + 1
    # a text whose focus (deterministic: no dropout) reaches its furthest position only after the first step
    for seed in range(20):
        torch.manual_seed(seed)
        x = torch.randint(1, 19, (n,))
        f = focus_of(m, m.inference(x, maxlenratio=3.0, **constraint, **NEVER)["att_w"])
        if f.max() > f[0]:
            break
    else:
        pytest.fail("no text whose attention moves forward after the first step")
    e = int(f.max())
    reach = int((f >= e).nonzero()[0])  # the first step (0-based) with the focus within end_window of <eos>
    end_window = T - 1 - e  # reached at positions >= T - 1 - end_window = e
    assert reach > 0
    minlen = int(T * 1.0 / r)
    # without stop_on_attention: the first step (or minlen)
    assert m.inference(x, threshold=0.5, **constraint)["att_w"].shape[2] == 1
    assert m.inference(x, threshold=0.5, minlenratio=1.0, stop_on_attention=False, **constraint)["att_w"].shape[2] \
        == minlen
    # with it: the step at which the focus got there, not before, although the probability was ~1 all along
    out = m.inference(x, threshold=0.5, maxlenratio=3.0, stop_on_attention=True, end_window=end_window, **constraint)
    assert out["att_w"].shape[2] == reach + 1 and (out["prob"] > 0.99).all()
    assert (focus_of(m, out["att_w"])[:-1] < e).all() and focus_of(m, out["att_w"])[-1] >= e
    # minlen still holds
    out = m.inference(x, threshold=0.5, minlenratio=1.0, stop_on_attention=True, end_window=end_window, **constraint)
    assert out["att_w"].shape[2] == max(minlen, reach + 1)
    # a text within end_window of <eos> everywhere (short text): as without the rule
    assert m.inference(x[:2], threshold=0.5, stop_on_attention=True, end_window=3, **constraint)["att_w"].shape[2] == 1


def test_stop_on_attention_runs_to_maxlen_when_the_focus_never_gets_there(caplog):
    m = always_stopping(tiny(r=1, dprenet_dropout_rate=0.0).eval())
    x = torch.randint(1, 19, (29,))  # 30 positions: the end is at >= 30 - 1 - 3 = 26
    # the constraint moves the focus at most forward_window = 1 per step: 10 steps never get past position 10
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = m.inference(x, threshold=0.5, maxlenratio=10.5 / 30, use_att_constraint=True, forward_window=1,
                          stop_on_attention=True, end_window=3)
    assert out["att_w"].shape[2] == 10 and (out["prob"] > 0.99).all()
    assert (focus_of(m, out["att_w"]) <= torch.arange(1, 11)).all()
    recs = [r for r in caplog.records if r.name == LOGGER]
    assert len(recs) == 1 and recs[0].levelno == logging.WARNING
    msg = recs[0].getMessage()
    assert "text of 29 tokens" in msg and "limit of 10 decoder steps" in msg
    assert "stop_on_attention" in msg and "10 step(s)" in msg  # why: the stop probability was overruled 10 times
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):  # without the rule: stops at once, no warning
        assert m.inference(x, threshold=0.5, maxlenratio=10.5 / 30, use_att_constraint=True, forward_window=1,
                           stop_on_attention=False)["att_w"].shape[2] == 1
    assert not [r for r in caplog.records if r.name == LOGGER]


def test_the_maxlenratio_warning_is_logged_once_per_text(caplog):
    m = trained_a_little(tiny(r=2, dprenet_dropout_rate=0.0))
    texts = [torch.randint(1, 19, (n,)) for n in (9, 14)]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for x in texts:
            out = m.inference(x, maxlenratio=2.0, **NEVER)
            assert out["att_w"].shape[2] == int((len(x) + 1) * 2.0 / 2)
    recs = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(recs) == 2
    for msg, n in zip(recs, (9, 14)):
        steps = int((n + 1) * 2.0 / 2)
        assert f"text of {n} tokens" in msg and f"limit of {steps} decoder steps" in msg
        assert f"{2 * steps} frames" in msg and "maxlenratio 2" in msg and "stop_on_attention" not in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):  # stopping in time: no warning
        m.inference(texts[0], threshold=0.0, maxlenratio=2.0)
        m.inference(texts[0], feats=torch.randn(8, 12), use_teacher_forcing=True)
    assert not [r for r in caplog.records if r.name == LOGGER]


# ---- the options through the entry points --------------------------------------------------------
OPTIONS = dict(use_att_constraint=True, backward_window=2, forward_window=5, stop_on_attention=False, end_window=4)
TOKENS = ["<blank>", "<unk>", "<space>", *"abcdefghijklmnopqrstuvwxyz", "<sos/eos>"]


@pytest.fixture(scope="module")
def model_pth(tmp_path_factory):
    """An untrained tiny tts: ssm as ESPnet writes one: config.yaml + model.pth (8 kHz fbank, r = 3)."""
    from espnet2.tasks.tts import TTSTask

    d = tmp_path_factory.mktemp("ssm_model")
    conf = {k: TRAIN_CONF[k] for k in ("feats_extract", "feats_extract_conf", "tts", "tts_conf")}
    (d / "train.yaml").write_text(yaml.safe_dump(conf))
    args = TTSTask.get_parser().parse_args(["--config", str(d / "train.yaml"), "--token_list", "x", "--token_type",
                                            "char", "--normalize", "none"])
    args.token_list = TOKENS
    torch.manual_seed(0)
    model = TTSTask.build_model(args)
    (d / "config.yaml").write_text(yaml.safe_dump(vars(args)))
    torch.save(model.state_dict(), d / "model.pth")
    return d / "model.pth"


@pytest.fixture
def inference_calls(monkeypatch):
    """The keyword arguments of every SSMTTS.inference call."""
    calls, orig = [], SSMTTS.inference

    def spy(self, *a, **kw):
        calls.append(kw)
        return orig(self, *a, **kw)

    monkeypatch.setattr(SSMTTS, "inference", spy)
    return calls


def test_text2speech_hands_the_safeguards_to_tts_ssm(model_pth, inference_calls):
    from s4speech.tts.inference import SAFEGUARDS, Text2Speech

    t2s = Text2Speech(train_config=str(model_pth.parent / "config.yaml"), model_file=str(model_pth), maxlenratio=1.0)
    assert {k: t2s.decode_conf[k] for k in SAFEGUARDS} == SAFEGUARDS  # defaults: stop_on_attention on
    assert SAFEGUARDS["stop_on_attention"] is True and SAFEGUARDS["use_att_constraint"] is False
    t2s = Text2Speech(train_config=str(model_pth.parent / "config.yaml"), model_file=str(model_pth), maxlenratio=1.0,
                      **OPTIONS)
    t2s("abc")
    assert {k: inference_calls[-1][k] for k in OPTIONS} == OPTIONS and inference_calls[-1]["maxlenratio"] == 1.0


def test_synthesize_help_lists_the_options(capsys):
    from s4speech.cli import main
    from s4speech.tts.synthesize import get_parser

    with pytest.raises(SystemExit) as e:
        main(["synthesize", "--help"])
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    for opt in ("--use_att_constraint", "--backward_window", "--forward_window", "--stop_on_attention",
                "--end_window", "--threshold", "--minlenratio", "--maxlenratio"):
        assert opt in out, opt
    base = ["--model", "m", "--text", "t", "--out", "o.wav"]
    a = get_parser().parse_args(base)
    assert (a.use_att_constraint, a.backward_window, a.forward_window, a.stop_on_attention, a.end_window) == \
        (False, 1, 3, True, 3)
    a = get_parser().parse_args([*base[:2], "--use_att_constraint", *base[2:], "--stop_on_attention", "false",
                                 "--backward_window", "2", "--forward_window", "5", "--end_window", "4"])
    assert {k: getattr(a, k) for k in OPTIONS} == OPTIONS
    assert get_parser().parse_args([*base, "--use_att_constraint", "no"]).use_att_constraint is False
    with pytest.raises(SystemExit):
        get_parser().parse_args([*base, "--stop_on_attention", "maybe"])


def test_synthesize_cli_hands_the_options_to_the_synthesizer(monkeypatch, tmp_path):
    from s4speech.io.expdir import ModelError
    from s4speech.tts import synthesize

    got = {}

    def fake(model, **kw):
        got.update(kw)
        raise ModelError("fake")

    monkeypatch.setattr(synthesize, "Synthesizer", fake)
    assert synthesize.main(["--model", "m", "--text", "hi", "--out", str(tmp_path / "o.wav"), "--use_att_constraint",
                            "--backward_window", "2", "--forward_window", "5", "--stop_on_attention", "false",
                            "--end_window", "4"]) == 1
    assert {k: got[k] for k in OPTIONS} == OPTIONS


def test_synthesizer_passes_the_options_into_decode_conf(model_pth, inference_calls, caplog):
    from s4speech.tts.synthesize import Synthesizer

    syn = Synthesizer(model_pth, maxlenratio=1.0, griffin_lim_iters=2, **OPTIONS)
    assert {k: syn.t2s.decode_conf[k] for k in OPTIONS} == OPTIONS
    with caplog.at_level(logging.WARNING):
        res = syn("abc def")
    assert {k: inference_calls[-1][k] for k in OPTIONS} == OPTIONS
    p = res.pieces[0]
    if not p.stopped:  # an untrained model: it may run to maxlen -- then one warning, the model's
        assert p.steps == p.maxlen
        assert len([r for r in caplog.records if r.levelno >= logging.WARNING and "no stop" in r.getMessage()]) == 1
    syn = Synthesizer(model_pth, maxlenratio=1.0, griffin_lim_iters=2)
    assert syn.t2s.decode_conf["stop_on_attention"] is True and syn.t2s.decode_conf["use_att_constraint"] is False


def test_tts_inference_cli_hands_the_options_to_the_model(model_pth, inference_calls, tmp_path, monkeypatch):
    import espnet2.bin.tts_inference as espnet_tts_inference

    from s4speech.bin.tts_inference import get_parser, main

    monkeypatch.setattr(espnet_tts_inference, "Text2Speech", espnet_tts_inference.Text2Speech)  # main replaces it
    a = get_parser().parse_args(["--output_dir", "o", "--data_path_and_name_and_type", "t,text,text"])
    assert (a.use_att_constraint, a.backward_window, a.forward_window, a.stop_on_attention, a.end_window) == \
        (False, 1, 3, True, 3)
    text = tmp_path / "text"
    text.write_text("u1 abc\nu2 hello world\n")
    main(["--ngpu", "0", "--num_workers", "0", "--output_dir", str(tmp_path / "out"), "--train_config",
          str(model_pth.parent / "config.yaml"), "--model_file", str(model_pth), "--data_path_and_name_and_type",
          f"{text},text,text", "--maxlenratio", "1.0", "--use_att_constraint", "true", "--backward_window", "2",
          "--forward_window", "5", "--stop_on_attention", "false", "--end_window", "4"])
    assert len(inference_calls) == 2
    for kw in inference_calls:
        assert {k: kw[k] for k in OPTIONS} == OPTIONS and kw["maxlenratio"] == 1.0
    assert (tmp_path / "out/speech_shape/speech_shape").read_text().count("\n") == 2
