"""decoder: ssm and encoder: ssm as ESPnet components: scoring, beam search, padding, loading."""
import pytest
import torch

import s4speech  # noqa: F401
from s4speech.asr.decoder import SSMDecoder
from s4speech.asr.encoder import SSMEncoder

V, D, SOS = 12, 32, 11  # vocab, encoder width, sos/eos id


def make_decoder(kernel="s4", seed=0):
    torch.manual_seed(seed)
    return SSMDecoder(V, D, attention_heads=4, linear_units=64, num_blocks=2, dropout_rate=0.0,
                      d_state=16, kernel=kernel).eval()


@pytest.mark.parametrize("kernel", ["s4", "s4d"])
def test_step_by_step_equals_teacher_forcing(kernel):
    dec = make_decoder(kernel)
    x = torch.randn(17, D)
    ys = torch.cat([torch.tensor([SOS]), torch.randint(0, V - 1, (30,))])
    with torch.no_grad():
        logits, _ = dec(x[None], torch.tensor([17]), ys[None], torch.tensor([len(ys)]))
        ref = logits.log_softmax(-1)[0]
        state, steps = dec.init_state(x), []
        for t in range(len(ys)):
            lp, state = dec.score(ys[: t + 1], state, x)
            steps.append(lp)
    assert (torch.stack(steps) - ref).abs().max() < 1e-4


def test_padded_batch_forward_matches_single():
    dec = make_decoder()
    x = torch.randn(2, 20, D)
    ys = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        out, _ = dec(x, torch.tensor([20, 13]), ys, torch.tensor([9, 6]))
        alone, _ = dec(x[1:, :13], torch.tensor([13]), ys[1:, :6], torch.tensor([6]))
    assert (out[1, :6] - alone[0]).abs().max() < 1e-5


def test_batch_score_of_different_hypotheses_equals_scoring_each_alone():
    dec = make_decoder()
    x = torch.randn(15, D)
    n = 6
    ys = torch.cat([torch.full((n, 1), SOS), torch.randint(0, V - 1, (n, 8))], 1)
    with torch.no_grad():
        states = [dec.batch_init_state(x)] * n
        for t in range(ys.shape[1]):
            batch_lp, states = dec.batch_score(ys[:, : t + 1], states, x.expand(n, *x.shape))
        alone = []
        for i in range(n):
            s = dec.init_state(x)
            for t in range(ys.shape[1]):
                lp, s = dec.score(ys[i, : t + 1], s, x)
            alone.append(lp)
    assert (batch_lp - torch.stack(alone)).abs().max() < 1e-5
    # and the hypotheses really differ
    assert (batch_lp[0] - batch_lp[1]).abs().max() > 1e-3


def test_select_state_reorders_hypotheses():
    dec = make_decoder()
    x = torch.randn(10, D)
    ys = torch.tensor([[SOS, 1, 2], [SOS, 3, 4]])
    with torch.no_grad():
        states = [dec.init_state(x)] * 2
        for t in range(3):
            lp, states = dec.batch_score(ys[:, : t + 1], states, x.expand(2, *x.shape))
        picked = [dec.select_state(states, 1), dec.select_state(states, 1)]
        ys2 = torch.tensor([[SOS, 3, 4, 5], [SOS, 3, 4, 6]])
        lp2, _ = dec.batch_score(ys2, picked, x.expand(2, *x.shape))
        s = dec.init_state(x)
        for t in range(4):
            ref, s = dec.score(ys2[0, : t + 1], s, x)
    assert (lp2[0] - ref).abs().max() < 1e-5


def test_cross_attention_memory_computed_once_per_utterance():
    dec = make_decoder()
    calls = []
    for blk in dec.decoders:
        blk.src_attn.kv.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(10, D)
    with torch.no_grad():
        states = [dec.init_state(x)] * 4
        for t in range(5):
            _, states = dec.batch_score(torch.full((4, t + 1), SOS), states, x.expand(4, *x.shape))
    assert len(calls) == len(dec.decoders)


@pytest.fixture(scope="module")
def trained_decoder():
    """A decoder trained for a few hundred steps to copy the token sequence the 'encoder' shows."""
    torch.manual_seed(0)
    dec = SSMDecoder(V, D, attention_heads=4, linear_units=64, num_blocks=2, dropout_rate=0.0, d_state=16)
    table = torch.randn(V, D)
    pos = torch.randn(8, D)  # the 'encoder' marks positions, as a real one does
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)

    def batch(n=16):
        L = torch.randint(3, 7, (n,))
        seqs = [torch.randint(0, SOS, (int(l),)) for l in L]
        T = int(L.max())
        x = torch.zeros(n, T, D)
        yin = torch.full((n, T + 1), SOS)
        yout = torch.full((n, T + 1), -1)
        for i, s in enumerate(seqs):
            x[i, : len(s)] = table[s] + pos[: len(s)]
            yin[i, 1 : len(s) + 1] = s
            yout[i, : len(s)] = s
            yout[i, len(s)] = SOS  # eos
        return x + 0.1 * torch.randn_like(x), L, yin, yout

    for _ in range(400):
        x, L, yin, yout = batch()
        logits, _ = dec(x, L, yin, L + 1)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), yout.reshape(-1), ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dec.eval()
    seq = torch.tensor([3, 1, 4, 1, 5])
    return dec, table[seq] + pos[:5] + 0.3 * torch.randn(5, D), loss.item()


def _search(cls, dec, x, beam, nbest):
    from espnet.nets.beam_search import BeamSearch  # noqa: F401

    bs = cls(scorers={"decoder": dec}, weights={"decoder": 1.0}, beam_size=beam, vocab_size=V,
             sos=SOS, eos=SOS, token_list=None, pre_beam_score_key=None)
    with torch.no_grad():
        hyps = bs(x, maxlenratio=2.0, minlenratio=0.0)
    return [(h.yseq.tolist(), float(h.score)) for h in hyps[:nbest]]


def test_beam_search_and_batch_beam_search_agree(trained_decoder):
    from espnet.nets.batch_beam_search import BatchBeamSearch
    from espnet.nets.beam_search import BeamSearch

    dec, x, loss = trained_decoder
    assert loss < 0.5, f"toy decoder did not learn (loss {loss})"
    a = _search(BeamSearch, dec, x, beam=4, nbest=4)
    b = _search(BatchBeamSearch, dec, x, beam=4, nbest=4)
    assert [y for y, _ in a] == [y for y, _ in b]
    assert all(abs(sa - sb) < 1e-4 for (_, sa), (_, sb) in zip(a, b))
    assert a[0][0] == [SOS, 3, 1, 4, 1, 5, SOS]
    # every hypothesis' score equals its teacher-forced log-likelihood (its own state was used)
    for yseq, score in a:
        y = torch.tensor(yseq)
        with torch.no_grad():
            lp = dec(x[None], torch.tensor([len(x)]), y[None, :-1], torch.tensor([len(y) - 1]))[0].log_softmax(-1)
        assert abs(lp[0].gather(1, y[1:, None]).sum().item() - score) < 1e-4


def test_beam_one_equals_greedy_over_teacher_forced_outputs(trained_decoder):
    from espnet.nets.batch_beam_search import BatchBeamSearch

    dec, x, _ = trained_decoder
    x = x + 0.5 * torch.randn_like(x)  # make it less trivial
    (yseq, _), = _search(BatchBeamSearch, dec, x, beam=1, nbest=1)
    greedy = [SOS]
    with torch.no_grad():
        while len(greedy) < 2 * len(x) + 1:  # the search's maxlen (maxlenratio=2)
            y = torch.tensor(greedy)[None]
            nxt = int(dec(x[None], torch.tensor([len(x)]), y, torch.tensor([y.shape[1]]))[0][0, -1].argmax())
            greedy.append(nxt)
            if nxt == SOS:
                break
    assert yseq == greedy


def make_encoder(**kw):
    torch.manual_seed(0)
    args = dict(output_size=32, linear_units=64, num_blocks=2, dropout_rate=0.0, d_state=16)
    args.update(kw)
    return SSMEncoder(20, **args).eval()


@pytest.mark.parametrize("kw", [{}, {"kernel": "s4d", "macaron_style": False, "cnn_module_kernel": 0}])
def test_encoder_padding_does_not_leak(kw):
    enc = make_encoder(**kw)
    x = torch.randn(3, 120, 20)
    lens = torch.tensor([120, 77, 50])
    x[1, 77:] = 5.0  # garbage in the padding must not matter
    x[2, 50:] = -3.0
    with torch.no_grad():
        out, olens, _ = enc(x, lens)
        for i in (1, 2):
            alone, alens, _ = enc(x[i : i + 1, : lens[i]], lens[i : i + 1])
            assert alens[0] == olens[i]
            assert (out[i, : olens[i]] - alone[0]).abs().max() < 1e-4


def test_registration_keeps_espnet_keys_and_is_idempotent():
    from espnet2.asr.decoder.s4_decoder import S4Decoder
    from espnet2.tasks.asr import decoder_choices, encoder_choices

    from s4speech import registry

    registry.install()
    registry.install()
    assert decoder_choices.get_class("ssm") is SSMDecoder
    assert encoder_choices.get_class("ssm") is SSMEncoder
    assert decoder_choices.get_class("s4") is S4Decoder
    assert decoder_choices.get_class("transformer").__name__ == "TransformerDecoder"


def test_loading_a_mismatched_checkpoint_names_the_keys():
    dec = make_decoder()
    sd = dec.state_dict()
    sd["decoders.0.ssm.kernel.extra"] = torch.zeros(1)
    del sd["decoders.1.ff.w1.weight"]
    with pytest.raises(RuntimeError, match=r"decoders\.1\.ff\.w1\.weight.*decoders\.0\.ssm\.kernel\.extra"):
        make_decoder().load_state_dict(sd, strict=False)
    make_decoder(seed=1).load_state_dict(dec.state_dict(), strict=False)  # a matching one loads


def test_joint_ctc_and_lm_fusion_beam_searches_agree(trained_decoder):
    """decoder: ssm inside ESPnet's full scorer set: CTC prefix scoring and an LM (shallow fusion)."""
    from espnet2.asr.ctc import CTC
    from espnet2.lm.seq_rnn_lm import SequentialRNNLM
    from espnet.nets.batch_beam_search import BatchBeamSearch
    from espnet.nets.beam_search import BeamSearch
    from espnet.nets.scorers.ctc import CTCPrefixScorer
    from espnet.nets.scorers.length_bonus import LengthBonus

    dec, x, _ = trained_decoder
    torch.manual_seed(1)
    ctc = CTC(V, D).eval()
    lm = SequentialRNNLM(V, unit=16, nlayers=1).eval()
    results = []
    for cls in (BeamSearch, BatchBeamSearch):
        scorers = {"decoder": dec, "ctc": CTCPrefixScorer(ctc, SOS), "lm": lm, "length_bonus": LengthBonus(V)}
        weights = {"decoder": 0.7, "ctc": 0.3, "lm": 0.2, "length_bonus": 0.1}
        bs = cls(scorers=scorers, weights=weights, beam_size=4, vocab_size=V, sos=SOS, eos=SOS,
                 token_list=None, pre_beam_score_key="full")
        with torch.no_grad():
            hyps = bs(x, maxlenratio=2.0, minlenratio=0.0)
        results.append([(h.yseq.tolist(), round(float(h.score), 3)) for h in hyps[:3]])
    assert results[0] == results[1]
    assert len(results[0]) >= 2


def test_drop_path_drops_whole_branches_in_training_only():
    """drop_path (stochastic depth, as ESPnet's decoder: s4): in training a branch's output is dropped for
    whole sequences (and the survivors scaled); in eval mode the decoder is the one without it."""
    import torch

    from s4speech.asr.decoder import SSMDecoder

    torch.manual_seed(0)
    dec = SSMDecoder(20, 16, attention_heads=2, linear_units=32, num_blocks=2, dropout_rate=0.0, drop_path=0.5)
    plain = SSMDecoder(20, 16, attention_heads=2, linear_units=32, num_blocks=2, dropout_rate=0.0)
    plain.load_state_dict(dec.state_dict())
    x, xl = torch.randn(3, 7, 16), torch.tensor([7, 7, 7])
    ys, yl = torch.randint(0, 20, (3, 5)), torch.tensor([5, 5, 5])
    dec.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(dec(x, xl, ys, yl)[0], plain(x, xl, ys, yl)[0])
    dec.train(), plain.train()
    blk = dec.decoders[0]
    h = torch.ones(8, 5, 16)
    torch.manual_seed(1)
    out = blk._drop_path(h)
    rows = {round(float(v), 6) for v in out[:, 0, 0]}
    assert rows == {0.0, 2.0} and all(torch.equal(out[i], out[i, :1, :1].expand_as(out[i])) for i in range(8))
    with torch.no_grad():
        torch.manual_seed(2)
        a = dec(x, xl, ys, yl)[0]
        b = plain(x, xl, ys, yl)[0]
    assert not torch.allclose(a, b)
