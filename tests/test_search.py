"""Beam search over several utterances at once (s4speech.asr.search.search_many): each utterance gets the
n-best that ESPnet's BatchBeamSearch gives it alone, with the S4 decoder scored in one call per step."""
import pytest
import torch

import s4speech  # noqa: F401  registers decoder: ssm
from s4speech.asr.search import batches_utterances, search_many, supports
from s4speech.asr.decoder import SSMDecoder

V, D = 23, 32


def _models():
    from espnet2.asr.ctc import CTC
    from espnet2.asr.decoder.transformer_decoder import TransformerDecoder
    from espnet2.asr.encoder.transformer_encoder import TransformerEncoder
    from espnet2.asr.frontend.default import DefaultFrontend

    torch.manual_seed(0)
    fe = DefaultFrontend(fs=16000, n_mels=40)
    enc = TransformerEncoder(40, output_size=D, attention_heads=2, linear_units=64, num_blocks=1,
                             input_layer="conv2d")
    decs = {"ssm": SSMDecoder(V, D, attention_heads=2, linear_units=64, num_blocks=2, d_state=8),
            "transformer": TransformerDecoder(V, D, attention_heads=2, linear_units=64, num_blocks=1)}
    ctc = CTC(V, D)
    with torch.no_grad():
        ctc.ctc_lo.weight.mul_(8.0)  # peakier CTC posteriors than a random init's near-uniform ones
        for p in decs["ssm"].parameters():
            p.add_(0.05 * torch.randn_like(p))
    return fe.eval(), enc.eval(), {k: d.eval() for k, d in decs.items()}, ctc.eval()


@pytest.fixture(scope="module")
def tiny(shared_data):
    """The models and the encoder outputs of 4 real utterances of different lengths."""
    from helpers import an4_utterances

    fe, enc, decs, ctc = _models()
    xs = []
    with torch.no_grad():
        for wav, _ in an4_utterances()[:4]:
            speech = torch.tensor(wav, dtype=torch.float32)[None] / 32768
            feats, lens = fe(speech, torch.tensor([speech.shape[1]]))
            xs.append(enc(feats, lens)[0][0])
    assert len({x.shape[0] for x in xs}) > 1
    return decs, ctc, xs


def _search(dec, ctc, fast, beam=4, lm=None):
    """Speech2Text's batched beam search: decoder 0.7 + CTC 0.3 (+ an LM 0.5), length bonus."""
    from espnet.nets.batch_beam_search import BatchBeamSearch
    from espnet.nets.beam_search import BeamSearch
    from espnet.nets.scorers.ctc import CTCPrefixScorer
    from espnet.nets.scorers.length_bonus import LengthBonus

    from s4speech.asr.ctc import use_fast_ctc

    scorers = dict(decoder=dec, ctc=CTCPrefixScorer(ctc=ctc, eos=V - 1), length_bonus=LengthBonus(V))
    weights = dict(decoder=0.7, ctc=0.3, length_bonus=0.5)
    if lm is not None:
        scorers["lm"], weights["lm"] = lm, 0.5
    bs = BeamSearch(beam_size=beam, weights=weights, scorers=scorers, sos=V - 1, eos=V - 1, vocab_size=V,
                    token_list=None, pre_beam_score_key="full")
    bs.__class__ = BatchBeamSearch
    return use_fast_ctc(bs) if fast else bs


def _same(ref, got, tol=1e-4):
    assert len(ref) == len(got) > 0
    for a, b in zip(ref, got):
        assert a.yseq.tolist() == b.yseq.tolist()
        assert abs(float(a.score) - float(b.score)) < tol
        assert set(a.scores) == set(b.scores)
        for k in a.scores:
            assert abs(float(a.scores[k]) - float(b.scores[k])) < tol, k


@pytest.mark.parametrize("decoder,fast,maxlenratio", [("ssm", True, 0.0), ("ssm", False, 0.3),
                                                      ("transformer", True, 0.3)])
def test_each_utterance_gets_its_own_nbest(tiny, decoder, fast, maxlenratio):
    """Same n-best (tokens, total and per-scorer scores) as the search of each utterance alone, with the
    end detection (maxlenratio 0) and with a length limit that ends some searches early."""
    decs, ctc, xs = tiny
    dec = decs[decoder]
    with torch.no_grad():
        ref = [_search(dec, ctc, fast)(x=x, maxlenratio=maxlenratio) for x in xs]
        got = search_many(_search(dec, ctc, fast), xs, maxlenratio=maxlenratio)
    assert len(got) == len(xs)
    for r, g in zip(ref, got):
        _same(r, g)
    assert len({len(r[0].yseq) for r in ref}) > 1  # the utterances finish at different steps


def test_ssm_decoder_scores_all_utterances_in_one_call_per_step(tiny):
    decs, ctc, xs = tiny
    dec, method = decs["ssm"], "batch_score"
    calls = []
    fn = getattr(dec, method)

    def counted(ys, *a, **kw):
        calls.append(ys.shape[0])
        return fn(ys, *a, **kw)

    bs = _search(dec, ctc, True)
    setattr(dec, method, counted)
    try:
        with torch.no_grad():
            got = search_many(bs, xs, maxlenratio=0.3)
    finally:
        delattr(dec, method)
    assert all(got)
    # one call per step (at most the longest utterance's length limit), not one per utterance and step
    assert max(len(h[0].yseq) for h in got) - 2 <= len(calls) <= max(int(0.3 * x.shape[0]) for x in xs)
    assert calls[0] == len(xs) and max(calls) > 4 * (len(xs) - 1)  # one row of each, then all beams


def test_with_a_language_model(tiny):
    """ESPnet's Transformer LM in the search (shallow fusion): scored in one call for every utterance."""
    from espnet2.lm.transformer_lm import TransformerLM

    decs, ctc, xs = tiny
    torch.manual_seed(1)
    lm = TransformerLM(V, embed_unit=16, att_unit=16, head=2, unit=32, layer=1).eval()
    assert batches_utterances(lm) and batches_utterances(decs["ssm"]) and not batches_utterances(decs["transformer"])
    with torch.no_grad():
        ref = [_search(decs["ssm"], ctc, True, lm=lm)(x=x, maxlenratio=0.3) for x in xs]
        got = search_many(_search(decs["ssm"], ctc, True, lm=lm), xs, maxlenratio=0.3)
    for r, g in zip(ref, got):
        _same(r, g)


def test_other_searches_run_per_utterance(tiny):
    from espnet.nets.beam_search import BeamSearch
    from espnet.nets.scorers.ctc import CTCPrefixScorer

    decs, ctc, xs = tiny
    bs = BeamSearch(beam_size=3, weights=dict(decoder=0.7, ctc=0.3), vocab_size=V, sos=V - 1, eos=V - 1,
                    scorers=dict(decoder=decs["ssm"], ctc=CTCPrefixScorer(ctc=ctc, eos=V - 1)), token_list=None)
    assert not supports(bs)
    with torch.no_grad():
        got = search_many(bs, xs[:2], maxlenratio=0.3)
        ref = [bs(x=x, maxlenratio=0.3) for x in xs[:2]]
    for r, g in zip(ref, got):
        _same(r, g)


@pytest.mark.parametrize("fast", [True, False])
def test_scorers_with_wrapped_methods(tiny, fast):
    """A CTC scorer whose methods are wrapped on the instance (as a profiler or the breakdown benchmark
    does): every utterance is still scored against its own CTC posteriors."""
    decs, ctc, xs = tiny
    with torch.no_grad():
        ref = [_search(decs["ssm"], ctc, fast)(x=x, maxlenratio=0.3) for x in xs]
        bs = _search(decs["ssm"], ctc, fast)
        scorer, calls = bs.part_scorers["ctc"], []
        for name in ("batch_init_state", "batch_score_partial", "select_state"):
            def wrapped(*a, _f=getattr(scorer, name), **k):
                calls.append(1)
                return _f(*a, **k)
            setattr(scorer, name, wrapped)
        got = search_many(bs, xs, maxlenratio=0.3)
    assert calls
    for r, g in zip(ref, got):
        _same(r, g)
