"""import-espnet-s4: ESPnet's built-in ``decoder: s4`` converted to ``decoder: ssm``.

The reference for "ESPnet's logits" needs care on a machine without pykeops and without ESPnet's
CUDA Cauchy extension (this one): ESPnet then falls back on ``cauchy_naive``, which sums the Cauchy
kernel over one half of each conjugate pair only (pykeops' ``cauchy_conj`` and the CUDA extension,
with ``symmetric=True``, sum over both). Its teacher-forced forward on CPU is then not the function of
its own recurrence (``test_espnet_cpu_fallback_is_not_its_own_model`` shows this). We compare with
(1) ESPnet's forward with the Cauchy sum over both halves of each pair, i.e. what ESPnet computes
with pykeops or its CUDA extension (the set-ups such models are trained with), substituted here by
a plain PyTorch equivalent, and (2) ESPnet's own recurrence (``setup_step`` + ``step``), unmodified.
"""
import copy

import pytest
import torch
import yaml

import s4speech  # noqa: F401
from s4speech.asr.decoder import SSMDecoder
from s4speech.asr.convert import UnsupportedModel, convert, convert_decoder_conf, espnet_recurrent_logits, main

V, D = 12, 32
SOS = V - 1

# ESPnet's LibriSpeech S4-decoder layer list (egs2/librispeech/asr1/conf/tuning/train_asr_s4_decoder.yaml),
# small: d_state 16, 4 heads
LAYER = [
    {"_name_": "s4", "postact": "glu", "dropout": 0.1, "n_ssm": 1, "bidirectional": False, "lr": 0.0025,
     "dt_min": 0.001, "dt_max": 0.1, "measure": "legs", "d_state": 16},
    {"_name_": "mha", "n_head": 4, "dropout": 0.1},
    {"_name_": "ff", "expand": 4, "activation": "gelu", "dropout": 0.1},
]


def espnet_conf(n_layers=2, prenorm=True, n_ssm=1, ff_act="gelu", l_max=None):
    layer = copy.deepcopy(LAYER)
    layer[0]["n_ssm"] = n_ssm
    if l_max is not None:
        layer[0]["l_max"] = l_max
    layer[2]["activation"] = ff_act
    return dict(dropinp=0.0, dropout=0.1, drop_path=0.1, prenorm=prenorm, n_layers=n_layers, transposed=False,
                tie_dropout=False, layer=layer, residual="residual", norm="layer")


def cauchy_both_halves(v, z, w):
    """sum_n v_n / (z - w_n) + conj(v_n) / (z - conj(w_n)): what ESPnet's pykeops/CUDA Cauchy kernels return."""
    v = torch.cat([v, v.conj()], -1)
    w = torch.cat([w, w.conj()], -1)
    return (v.unsqueeze(-1) / (z.unsqueeze(-2) - w.unsqueeze(-1))).sum(-2)


@pytest.fixture
def symmetric_cauchy(monkeypatch):
    import espnet2.asr.state_spaces.s4 as s4mod

    monkeypatch.setattr(s4mod, "cauchy_naive", cauchy_both_halves)


def make_espnet(seed=0, train_len=40, **kw):
    """A random ESPnet S4Decoder, moved away from its initialisation as training would, whose internal
    kernel length is set (C holds C~ for L = train_len), as after training."""
    from espnet2.asr.decoder.s4_decoder import S4Decoder

    torch.manual_seed(seed)
    dec = S4Decoder(V, D, **espnet_conf(**kw))
    with torch.no_grad():
        for name, p in dec.named_parameters():
            if name.endswith(("inv_w_real", "w_imag", ".P", ".B")):
                p.add_(0.1 * torch.randn_like(p) * p.abs().mean())
            elif name.endswith("log_dt"):
                p.uniform_(-5, -1.5)
        dec.output.weight.mul_(4)  # peakier output distributions: a more telling beam search
        dec.train()  # one training forward sets the kernel length (l_max None: the first batch's)
        dec(torch.randn(2, 9, D), torch.tensor([9, 7]), torch.randint(0, V, (2, train_len)),
            torch.tensor([train_len, train_len - 3]))
    return dec.eval()


def convert_decoder(esp, **kw):
    cfg = {"decoder": "s4", "decoder_conf": espnet_conf(**kw)}
    sd = {"decoder." + k: v for k, v in esp.state_dict().items()}
    new_cfg, new_sd = convert(cfg, sd)
    ours = SSMDecoder(V, D, **new_cfg["decoder_conf"]).eval()
    ours.load_state_dict({k[len("decoder."):]: v for k, v in new_sd.items()})
    return ours, new_cfg


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


VARIANTS = [
    dict(),                                      # the LibriSpeech layer list: n_ssm 1, pre-norm, GELU
    dict(n_ssm=None),                            # one (A, B) per channel
    dict(prenorm=False, ff_act="relu"),          # post-norm blocks, another activation
    dict(n_ssm=4, l_max=64),                     # tied in groups; kernel length fixed by l_max
]


@pytest.mark.parametrize("kw", VARIANTS)
def test_teacher_forced_logits_equal_espnet(kw, symmetric_cauchy):
    esp = make_espnet(**kw)
    L_int = int(esp.decoder.layers[0].layer.kernel.kernel.L)
    assert L_int > 0  # C in the checkpoint is C~, not C
    ours, _ = convert_decoder(esp, **kw)
    x = torch.randn(2, 13, D)
    hl = torch.tensor([13, 8])
    U = min(L_int, 40)
    ys = torch.randint(0, V, (2, U))
    yl = torch.tensor([U, U - 6])
    with torch.no_grad():
        got = ours(x, hl, ys, yl)[0]
        ref = esp(x, hl, ys, yl)[0]  # with the Cauchy sum over both halves (symmetric_cauchy)
    for i in range(2):
        assert rel(got[i, : yl[i]], ref[i, : yl[i]]) < 1e-4
    # and against ESPnet's own recurrence, which involves no Cauchy kernel at all
    with torch.no_grad():
        rec = espnet_recurrent_logits(esp, x[:1], ys[:1])
    assert rel(got[0], rec[0]) < 1e-4


def test_post_norm_variant_steps_like_its_teacher_forced_forward():
    """normalize_before: false (ESPnet prenorm: false) also decodes step by step exactly."""
    esp = make_espnet(prenorm=False, ff_act="relu")
    ours, cfg = convert_decoder(esp, prenorm=False, ff_act="relu")
    assert cfg["decoder_conf"]["normalize_before"] is False
    x = torch.randn(11, D)
    ys = torch.randint(0, V, (1, 20))
    with torch.no_grad():
        ref = ours(x[None], torch.tensor([11]), ys, torch.tensor([20]))[0].log_softmax(-1)[0]
        state, steps = ours.init_state(x), []
        for t in range(20):
            lp, state = ours.score(ys[0, : t + 1], state, x)
            steps.append(lp)
    assert (torch.stack(steps) - ref).abs().max() < 1e-4


def test_longer_than_the_espnet_kernel_length(symmetric_cauchy):
    """Past its internal length ESPnet doubles it (rewriting C~ in place); the true C stays the same."""
    esp = make_espnet(train_len=24)
    ours, _ = convert_decoder(esp)  # converted while L = 24
    x = torch.randn(1, 10, D)
    ys = torch.randint(0, V, (1, 90))
    with torch.no_grad():
        got = ours(x, torch.tensor([10]), ys, torch.tensor([90]))[0]
        ref = esp(x, torch.tensor([10]), ys, torch.tensor([90]))[0]
    assert int(esp.decoder.layers[0].layer.kernel.kernel.L) == 96
    assert rel(got, ref) < 1e-4


def test_espnet_cpu_fallback_is_not_its_own_model():
    """Documented ESPnet behaviour: without pykeops / the CUDA extension, ESPnet's teacher-forced forward
    (half-pair Cauchy sum) differs from its own recurrence by far more than rounding."""
    import espnet2.asr.state_spaces.s4 as s4mod

    if s4mod.has_pykeops or s4mod.has_cauchy_extension:
        pytest.skip("ESPnet uses a full Cauchy kernel here")
    esp = make_espnet()
    x = torch.randn(1, 13, D)
    ys = torch.randint(0, V, (1, 30))
    with torch.no_grad():
        fwd = esp(x, torch.tensor([13]), ys, torch.tensor([30]))[0]
        rec = espnet_recurrent_logits(esp, x, ys)
        ours, _ = convert_decoder(esp)
        got = ours(x, torch.tensor([13]), ys, torch.tensor([30]))[0]
    assert rel(fwd, rec) > 1e-2
    assert rel(got, rec) < 1e-4


def _beam_search(dec, x, beam=4, maxlen=8):
    from espnet.nets.batch_beam_search import BatchBeamSearch

    bs = BatchBeamSearch(scorers={"decoder": dec}, weights={"decoder": 1.0}, beam_size=beam, vocab_size=V,
                         sos=SOS, eos=SOS, token_list=None, pre_beam_score_key=None)
    with torch.no_grad():
        hyps = bs(x, maxlenratio=maxlen / len(x), minlenratio=0.0)
    return [(h.yseq.tolist(), float(h.score)) for h in hyps]


def test_beam_search_scores_are_per_hypothesis_where_espnet_is_not():
    esp = make_espnet(seed=3)
    ours, _ = convert_decoder(esp)
    x = torch.randn(10, D)

    maxlen = 8

    def loglik(logits, yseq):
        # a hypothesis still running at maxlen gets an unscored <eos> appended (ESPnet's post_process)
        scored = yseq[1:-1] if len(yseq) == maxlen + 2 else yseq[1:]
        lp = logits.log_softmax(-1)[0]
        return lp[: len(scored)].gather(1, torch.tensor(scored)[:, None]).sum().item()

    # ours: every hypothesis' score is its teacher-forced log-likelihood
    hyps = _beam_search(ours, x, maxlen=maxlen)
    assert len(hyps) > 1 and len({tuple(y) for y, _ in hyps}) == len(hyps)
    for yseq, score in hyps:
        y = torch.tensor(yseq[:-1])[None]
        with torch.no_grad():
            logits = ours(x[None], torch.tensor([len(x)]), y, torch.tensor([y.shape[1]]))[0]
        assert abs(loglik(logits, yseq) - score) < 1e-4

    # ESPnet's S4Decoder.batch_score: with several hypotheses it steps every one of them from the first
    # hypothesis' state ("workaround for remaining beam width of 1": states = states[0]), so scores are
    # not the hypotheses' own log-likelihoods. The true ones come from its recurrence, one hypothesis alone.
    for m in esp.modules():
        if hasattr(m, "setup_step"):
            m.setup_step()
    esp_hyps = _beam_search(esp, x, maxlen=maxlen)
    errors = []
    for yseq, score in esp_hyps:
        with torch.no_grad():
            logits = espnet_recurrent_logits(esp, x[None], torch.tensor(yseq[:-1])[None])
        errors.append(abs(loglik(logits, yseq) - score))
    assert max(errors) > 1e-2, errors  # ESPnet's scores are wrong ...
    assert min(errors) < 1e-4, errors  # ... except along the first hypothesis' path


@pytest.mark.parametrize("change, message", [
    (lambda c: c["layer"][0].update(mode="diag"), "mode"),
    (lambda c: c["layer"].reverse(), "layer list"),
    (lambda c: c.update(residual="decay"), "residual"),
    (lambda c: c["layer"][0].update(gate=2), "gate"),
    (lambda c: c["layer"][0].update(rank=2, measure="legt"), "rank"),
    (lambda c: c.update(transposed=True), "transposed"),
])
def test_unsupported_variants_are_refused(change, message):
    conf = espnet_conf()
    change(conf)
    with pytest.raises(UnsupportedModel, match=message):
        convert_decoder_conf(conf)


def test_cli_converts_a_full_asr_model(tmp_path, symmetric_cauchy):
    """config.yaml + model.pth of an ESPnet ASR model with decoder: s4 -> decoder: ssm, loaded by ASRTask."""
    from espnet2.tasks.asr import ASRTask

    args = ASRTask.get_parser().parse_args(["--output_dir", str(tmp_path / "exp")])
    args.token_list = ["<blank>"] + [chr(97 + i) for i in range(V - 2)] + ["<sos/eos>"]
    args.input_size = 20
    args.frontend = None
    args.normalize = "utterance_mvn"
    args.encoder = "transformer"
    args.encoder_conf = dict(output_size=D, attention_heads=4, linear_units=64, num_blocks=1, input_layer="linear")
    args.decoder = "s4"
    args.decoder_conf = espnet_conf()
    torch.manual_seed(0)
    model = ASRTask.build_model(args)
    with torch.no_grad():  # "training" sets the S4 kernel length
        model.train()
        model.decoder(torch.randn(2, 9, D), torch.tensor([9, 7]), torch.randint(0, V, (2, 33)), torch.tensor([33, 30]))
    cfg = yaml.safe_load(yaml.safe_dump(vars(args)))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    torch.save(model.state_dict(), tmp_path / "model.pth")

    out = tmp_path / "ssm"
    assert main(["--config", str(tmp_path / "config.yaml"), "--model", str(tmp_path / "model.pth"),
                 "--out", str(out)]) == 0
    new_cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert new_cfg["decoder"] == "ssm"
    assert {k: v for k, v in new_cfg.items() if not k.startswith("decoder")} == \
        {k: v for k, v in cfg.items() if not k.startswith("decoder")}
    new, _ = ASRTask.build_model_from_file(out / "config.yaml", out / "model.pth")
    assert isinstance(new.decoder, SSMDecoder)
    old_sd, new_sd = model.state_dict(), new.state_dict()
    rest = [k for k in old_sd if not k.startswith("decoder.")]
    assert rest and all(torch.equal(old_sd[k], new_sd[k]) for k in rest)  # encoder, CTC ... untouched
    model.eval(), new.eval()
    speech = torch.randn(1, 50, 20)
    with torch.no_grad():
        enc, enc_len = new.encode(speech, torch.tensor([50]))
        ys = torch.randint(0, V, (1, 20))
        got = new.decoder(enc, enc_len, ys, torch.tensor([20]))[0]
        ref = model.decoder(enc, enc_len, ys, torch.tensor([20]))[0]
    assert rel(got, ref) < 1e-4


def test_cli_refuses_an_inexact_conversion(tmp_path, capsys):
    conf = espnet_conf()
    conf["layer"][0]["mode"] = "diag"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"decoder": "s4", "decoder_conf": conf}))
    torch.save({}, tmp_path / "model.pth")
    assert main(["--config", str(tmp_path / "config.yaml"), "--model", str(tmp_path / "model.pth"),
                 "--out", str(tmp_path / "o"), "--no-verify"]) == 2
    assert "diag" in capsys.readouterr().err


class _Payload:
    """Pickled into a checkpoint: loading it with weights_only=False would run code."""

    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_cli_loads_tensors_only_and_says_what_it_refuses(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"decoder": "s4", "decoder_conf": espnet_conf()}))
    torch.save({"decoder.x": torch.zeros(1), "extra": _Payload()}, tmp_path / "model.pth")
    assert main(["--config", str(tmp_path / "config.yaml"), "--model", str(tmp_path / "model.pth"),
                 "--out", str(tmp_path / "o")]) == 2
    out = capsys.readouterr()
    assert "code ran" not in out.out and f"{tmp_path / 'model.pth'}: not a checkpoint of tensors" in out.err
    assert not (tmp_path / "o").exists()


def test_verify_refuses_a_checkpoint_that_does_not_match_its_config(tmp_path, symmetric_cauchy):
    from espnet2.tasks.asr import ASRTask

    from s4speech.asr.convert import verify

    args = ASRTask.get_parser().parse_args(["--output_dir", str(tmp_path / "exp")])
    args.token_list = ["<blank>"] + [chr(97 + i) for i in range(V - 2)] + ["<sos/eos>"]
    args.input_size, args.frontend, args.normalize = 20, None, "utterance_mvn"
    args.encoder = "transformer"
    args.encoder_conf = dict(output_size=D, attention_heads=4, linear_units=64, num_blocks=1, input_layer="linear")
    args.decoder, args.decoder_conf = "s4", espnet_conf()
    cfg = yaml.safe_load(yaml.safe_dump(vars(args)))
    sd = ASRTask.build_model(args).state_dict()
    new_cfg, new_sd = convert(cfg, sd)
    broken = {k: v for k, v in sd.items() if not k.startswith("ctc.")}  # ESPnet would load it half-initialised
    with pytest.raises(UnsupportedModel, match=r"missing keys \['ctc\."):
        verify(cfg, broken, new_cfg, new_sd)
