"""Decoding speed options: the compiled decoder step (SSMDecoder.compile_step) scores as the eager one, and
s4speech's CTC prefix scorer (s4speech.asr.ctc, use_fast_ctc) gives ESPnet's hypotheses and scores.

The compiled-step tests compile a tiny decoder (tens of seconds on a small CPU; a C++ compiler is needed)."""
import copy
import pickle
import shutil

import pytest
import torch
import torch.nn as nn

import s4speech  # noqa: F401  registers decoder: ssm
from s4speech.asr.ctc import CTCPrefixScorer, use_fast_ctc
from s4speech.asr.decoder import COMPILE_ENV, SSMDecoder

V, D, SOS = 23, 32, 22

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                               reason="torch.compile on CPU needs a C++ compiler")


def make_decoder(kernel, **kw):
    torch.manual_seed(0)
    dec = SSMDecoder(V, D, attention_heads=2, linear_units=64, num_blocks=2, dropout_rate=0.0, d_state=8,
                     kernel=kernel, **kw)
    with torch.no_grad():  # non-trivial recurrences (the initial C, D are small next to the state)
        for p in dec.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return dec.eval()


def run_steps(dec, x, picks, g):
    """A search's calls: batch_score of the hypotheses ``picks[t]`` (rows of the previous call) -> per call
    (log-probs, h, states)."""
    states, ys, out = [dec.init_state(x)], torch.full((1, 1), SOS), []
    for t, pick in enumerate(picks):
        (lp, h), new = dec.batch_score(ys, states, x.expand(len(states), *x.shape), return_hs=True)
        out.append((lp, h, new))
        if pick is None:
            break
        states = [dec.select_state(new, p) for p in pick]
        ys = torch.cat([ys[pick], torch.randint(0, V - 1, (len(pick), 1), generator=g)], 1)
    return out


PICKS = [[0, 0, 0, 0], [3, 1, 1, 2, 0], [4, 2], [1, 0, 1], None]  # 1 -> 4 -> 5 -> 2 -> 3 rows, re-ordered


@needs_cxx
@pytest.mark.parametrize("kernel", ["s4", "s4d"])
def test_compiled_step_equals_eager_step(kernel):
    eager = make_decoder(kernel)
    comp = copy.deepcopy(eager).compile_step()
    with torch.no_grad():
        for T in (9, 14):  # another encoder length: no new compile needed (dynamic shapes), same results
            x = torch.randn(T, D, generator=torch.Generator().manual_seed(T))
            a = run_steps(eager, x, PICKS, torch.Generator().manual_seed(1))
            b = run_steps(comp, x, PICKS, torch.Generator().manual_seed(1))
            assert len(a) == len(b) == len(PICKS)
            for (lp_a, h_a, _), (lp_b, h_b, _) in zip(a, b):
                assert (lp_a - lp_b).abs().max() < 1e-5
                assert (h_a - h_b).abs().max() < 1e-5
    assert comp._compiled.fn is not None and comp._compiled.off is None  # the compiled step did run
    # states made by one step continue in the other (eager <-> planar layouts)
    x = torch.randn(11, D)
    with torch.no_grad():
        st = comp.init_state(x)
        _, new_c = comp.batch_score(torch.full((1, 1), SOS), [st], x[None])
        _, new_e = eager.batch_score(torch.full((1, 1), SOS), [eager.init_state(x)], x[None])
        ys = torch.tensor([[SOS, 5]])
        lp_ce, new_ce = eager.batch_score(ys, [eager.select_state(new_c, 0)], x[None])
        lp_ee, new_ee = eager.batch_score(ys, [eager.select_state(new_e, 0)], x[None])
        lp_cc, _ = comp.batch_score(torch.tensor([[SOS, 5, 7]]), [comp.select_state(new_ee, 0)], x[None])
        lp_e3, _ = eager.batch_score(torch.tensor([[SOS, 5, 7]]), [eager.select_state(new_ee, 0)], x[None])
    assert (lp_ce - lp_ee).abs().max() < 1e-5 and (lp_cc - lp_e3).abs().max() < 1e-5


@needs_cxx
def test_compiled_step_falls_back_to_eager_where_it_does_not_apply():
    dec = make_decoder("s4").compile_step()
    ref = make_decoder("s4")
    x = torch.randn(10, D)
    ys = torch.tensor([[SOS]])
    # autograd on: the eager step (a graph through the recurrence), nothing compiled
    lp, _ = dec.batch_score(ys, [dec.init_state(x)], x[None])
    assert lp.requires_grad and dec._compiled.fn is None
    with torch.no_grad():
        # hypotheses of two utterances in one call: eager
        x2 = torch.randn(6, D)
        lp2, _ = dec.batch_score(ys.expand(2, 1), [dec.init_state(x), dec.init_state(x2)],
                                 torch.stack([x, nn.functional.pad(x2, (0, 0, 0, 4))]))
        ref2, _ = ref.batch_score(ys.expand(2, 1), [ref.init_state(x), ref.init_state(x2)],
                                  torch.stack([x, nn.functional.pad(x2, (0, 0, 0, 4))]))
        assert torch.equal(lp2, ref2) and dec._compiled.fn is None
        # training mode: eager
        dec.train()
        lp3, _ = dec.batch_score(ys, [dec.init_state(x)], x[None])
        ref.train()
        assert torch.equal(lp3, ref.batch_score(ys, [ref.init_state(x)], x[None])[0])
        assert dec._compiled.fn is None
    # the option itself does not touch the parameters, copies or pickles
    assert set(dec.state_dict()) == set(ref.state_dict())
    assert copy.deepcopy(dec)._compiled.fn is None
    assert pickle.loads(pickle.dumps(dec))._compiled is not None
    assert dec.compile_step(False)._compiled is None


def test_compile_step_from_decoder_conf_or_environment(monkeypatch):
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    assert make_decoder("s4")._compiled is None
    assert make_decoder("s4", compile_step=True)._compiled is not None
    monkeypatch.setenv(COMPILE_ENV, "1")
    assert make_decoder("s4")._compiled is not None
    monkeypatch.setenv(COMPILE_ENV, "0")
    assert make_decoder("s4")._compiled is None


# ---- CTC prefix scores --------------------------------------------------------------------------------
class _LogSoftmax(nn.Module):
    def log_softmax(self, x):
        return torch.log_softmax(x, -1)


@pytest.mark.parametrize("prebeam", [True, False])
def test_ctc_scores_equal_espnets_step_by_step(prebeam):
    """batch_score_partial over a search-like sequence of calls (re-ordered rows, repeated tokens, <eos> and
    non-candidates picked), in float64 (where ESPnet's own rounding is negligible): the same scores."""
    from espnet.nets.scorers.ctc import CTCPrefixScorer as ESPnetCTC

    g = torch.Generator().manual_seed(0)
    T, n, S, eos = 40, 5, 6, V - 1
    x = 3 * torch.randn(T, V, generator=g, dtype=torch.float64)
    ours, esp = CTCPrefixScorer(_LogSoftmax(), eos), ESPnetCTC(_LogSoftmax(), eos)
    init = ours.batch_init_state(x)  # ours: the utterance's posteriors; ESPnet's keeps them in itself
    assert init is not None and esp.batch_init_state(x) is None
    y, st_o, st_e = torch.full((1, 1), eos), [init], [None]
    for step in range(12):
        nb = y.shape[0]
        ids = torch.topk(torch.randn(nb, V, generator=g), S, -1)[1] if prebeam else None
        if ids is not None:
            ids[0, 0] = y[0, -1]  # a candidate repeating the last token
        so, po = ours.batch_score_partial(y, ids, st_o, x)
        se, pe = esp.batch_score_partial(y, ids, st_e, x)
        assert so.shape == se.shape == (nb, V) and so.dtype == se.dtype
        assert (so - se).abs().max() < 1e-8, step
        # the next hypotheses: candidates (not the blank, not <eos>: those never continue), re-ordered, and
        # on every other step row 0's repeated last token
        cand = ids if ids is not None else torch.arange(V).expand(nb, V)
        pairs = [(r, int(c)) for r in range(nb) for c in cand[r] if int(c) not in (0, eos)]
        pick = torch.randperm(len(pairs), generator=g)[:n].tolist()
        pairs = [pairs[i] for i in pick]
        if step % 2 and int(y[0, -1]) not in (0, eos):
            pairs[0] = (0, int(y[0, -1]))
        st_o = [ours.select_state(po, r, t) for r, t in pairs]
        st_e = [esp.select_state(pe, r, t) for r, t in pairs]
        y = torch.cat([y[[r for r, _ in pairs]], torch.tensor([t for _, t in pairs])[:, None]], 1)


def _tiny_asr(dtype):
    from espnet2.asr.ctc import CTC
    from espnet2.asr.encoder.transformer_encoder import TransformerEncoder
    from espnet2.asr.frontend.default import DefaultFrontend

    torch.manual_seed(0)
    fe = DefaultFrontend(fs=16000, n_mels=40)
    enc = TransformerEncoder(40, output_size=D, attention_heads=2, linear_units=64, num_blocks=1,
                             input_layer="conv2d")
    dec = SSMDecoder(V, D, attention_heads=2, linear_units=64, num_blocks=2, d_state=8)
    ctc = CTC(V, D)
    with torch.no_grad():
        ctc.ctc_lo.weight.mul_(8.0)  # peakier CTC posteriors than a random init's near-uniform ones
    return [m.eval().to(dtype) for m in (fe, enc, dec, ctc)]


def _search(dec, ctc, beam, fast):
    """Speech2Text's beam search (decoder 0.7 + CTC 0.3, pre-beam on the full scores), ESPnet's scorer
    swapped for ours by use_fast_ctc when ``fast``."""
    from espnet.nets.batch_beam_search import BatchBeamSearch
    from espnet.nets.beam_search import BeamSearch
    from espnet.nets.scorers.ctc import CTCPrefixScorer as ESPnetCTC
    from espnet.nets.scorers.length_bonus import LengthBonus

    scorers = dict(decoder=dec, ctc=ESPnetCTC(ctc=ctc, eos=V - 1), length_bonus=LengthBonus(V))
    bs = BeamSearch(beam_size=beam, weights=dict(decoder=0.7, ctc=0.3, length_bonus=0.0), scorers=scorers,
                    sos=V - 1, eos=V - 1, vocab_size=V, token_list=None, pre_beam_score_key="full")
    bs.__class__ = BatchBeamSearch

    class S2T:  # what use_fast_ctc needs of a Speech2Text
        beam_search = bs

    s2t = S2T()
    if fast:
        assert use_fast_ctc(s2t) is s2t
        assert type(bs.scorers["ctc"]) is CTCPrefixScorer and bs.part_scorers["ctc"] is bs.scorers["ctc"]
    return bs


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-8)])
def test_fast_ctc_gives_espnets_nbest_on_real_speech(shared_data, dtype, tol):
    """A tiny random-init model on mini_an4 utterances: the same n-best (token sequences) and scores."""
    from helpers import an4_utterances

    fe, enc, dec, ctc = _tiny_asr(dtype)
    with torch.no_grad():
        for wav, _ in an4_utterances()[2:5]:
            speech = torch.tensor(wav, dtype=dtype)[None] / 32768
            feats, lens = fe(speech, torch.tensor([speech.shape[1]]))
            x = enc(feats, lens)[0][0]
            res = [_search(dec, ctc, 6, fast)(x, maxlenratio=0.4, minlenratio=0.0) for fast in (False, True)]
            ref, got = res
            assert len(ref) == len(got) > 1
            for a, b in zip(ref, got):
                assert a.yseq.tolist() == b.yseq.tolist()
                assert abs(float(a.score) - float(b.score)) < tol
                assert abs(float(a.scores["ctc"]) - float(b.scores["ctc"])) < tol


def test_use_fast_ctc_leaves_other_searches_alone():
    from espnet.nets.beam_search import BeamSearch
    from espnet.nets.scorers.ctc import CTCPrefixScorer as ESPnetCTC

    dec = make_decoder("s4")
    bs = BeamSearch(beam_size=2, weights=dict(decoder=0.7, ctc=0.3), vocab_size=V, sos=SOS, eos=SOS,
                    scorers=dict(decoder=dec, ctc=ESPnetCTC(ctc=_LogSoftmax(), eos=SOS)), token_list=None)
    assert use_fast_ctc(bs) is bs and type(bs.scorers["ctc"]) is ESPnetCTC  # not a BatchBeamSearch
