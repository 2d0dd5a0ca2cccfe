"""Edge cases of the recurrent step: int8 (dynamic quantization), gradients through score/batch_score,
parameters edited through ``.data``, short utterances in the encoder, hypotheses of several utterances.

``python tests/test_step_edge_cases.py [reps]`` times batch_score per hypothesis: 4 utterances x beam 8
in one call against 1 utterance x beam 8 (d_model 256, 6 blocks, 200 encoder frames, vocabulary 500)."""
import copy
import os
import sys

if __name__ == "__main__":  # before torch starts OpenMP (see s4speech.bench)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch
import torch.nn as nn
import yaml

import s4speech  # noqa: F401  registers decoder: ssm, encoder: ssm
from s4speech.asr.decoder import SSMDecoder
from s4speech.asr.encoder import SSMEncoder
from s4speech.nn.blocks import DecoderBlock
from s4speech.ssm.layer import SSMLayer

V, D, SOS = 12, 32, 11  # vocab, encoder width, sos/eos id
INT8_TOL = 0.05  # log-prob differences of int8 on these small random models (measured ~0.015)
INT8_REL_TOL = 0.1  # relative output differences (measured ~0.005 for a block, ~0.04 for TTS inference)


def make_decoder(kernel="s4", seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(attention_heads=4, linear_units=64, num_blocks=2, dropout_rate=0.0, d_state=16, kernel=kernel)
    return SSMDecoder(V, D, **{**args, **kw}).eval()


def quantized(module):
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(module), {nn.Linear}, dtype=torch.qint8)


def run_hyps(dec, x, ys):
    """batch_score of the rows of ys (n, L), one token at a time from init_state -> last log-probs (n, V)."""
    n = ys.shape[0]
    states = [dec.init_state(x)] * n
    for t in range(ys.shape[1]):
        lp, states = dec.batch_score(ys[:, : t + 1], states, x.expand(n, *x.shape))
    return lp


def random_prefixes(n, L, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.full((n, 1), SOS), torch.randint(0, V - 1, (n, L - 1), generator=g)], 1)


# ---- 1. int8: dynamic quantization of the Linear layers -----------------------------------------------
@pytest.mark.parametrize("kernel", ["s4", "s4d"])
def test_quantized_decoder_batch_score_agrees_with_float(kernel):
    dec = make_decoder(kernel)
    qdec = quantized(dec)
    assert not isinstance(qdec.decoders[0].ff.w1, nn.Linear)  # really replaced
    x, ys = torch.randn(14, D), random_prefixes(3, 6)
    with torch.no_grad():
        ref, got = run_hyps(dec, x, ys), run_hyps(qdec, x, ys)
    assert (got - ref).abs().max() < INT8_TOL
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 2 / 3


def test_quantized_decoder_block_step_with_weights_as_tts_runs_it():
    torch.manual_seed(0)
    blk = DecoderBlock(D, D, 2, 64, 0.0, d_state=16).eval()
    qblk = quantized(blk)
    mem, x = torch.randn(1, 9, D), torch.randn(1, D)
    with torch.no_grad():
        outs = []
        for b in (blk, qblk):
            k, v = b.src_attn.memory(mem)
            state = b.ssm.default_state(1)
            for _ in range(4):
                y, state, w = b.step(x, state, k, v, None, inplace=True, return_weights=True)
            outs.append((y, w))
    (y, w), (qy, qw) = outs
    assert (qy - y).abs().max() < INT8_REL_TOL * y.abs().max() and (qw - w).abs().max() < INT8_TOL


def test_quantized_tts_inference_agrees_with_float():
    from s4speech.tts.model import SSMTTS

    torch.manual_seed(0)
    m = SSMTTS(idim=20, odim=12, adim=32, aheads=2, elayers=1, eunits=64, dlayers=2, dunits=64, dprenet_units=32,
               postnet_layers=2, postnet_chans=32, d_state=16, dprenet_dropout_rate=0.0).eval()
    qm = quantized(m)
    text = torch.randint(1, 19, (7,))
    ref = m.inference(text, threshold=2.0, maxlenratio=2.0)
    got = qm.inference(text, threshold=2.0, maxlenratio=2.0)
    assert got["feat_gen"].shape == ref["feat_gen"].shape
    assert (got["feat_gen"] - ref["feat_gen"]).abs().max() < INT8_REL_TOL * ref["feat_gen"].abs().max()


@pytest.fixture(scope="module")
def tiny_ssm_asr_model(tmp_path_factory):
    """config.yaml + model.pth of a random ESPnet ASR model: encoder ssm, decoder ssm, 20-dim features."""
    from espnet2.tasks.asr import ASRTask

    d = tmp_path_factory.mktemp("asr")
    args = ASRTask.get_parser().parse_args(["--output_dir", str(d / "exp")])
    args.token_list = ["<blank>", "<unk>"] + [chr(97 + i) for i in range(V - 3)] + ["<sos/eos>"]
    args.input_size, args.frontend, args.normalize = 20, None, "utterance_mvn"
    args.encoder = "ssm"
    args.encoder_conf = dict(output_size=D, linear_units=64, num_blocks=1, d_state=16, cnn_module_kernel=3)
    args.decoder = "ssm"
    args.decoder_conf = dict(attention_heads=4, linear_units=64, num_blocks=2, d_state=16)
    torch.manual_seed(0)
    model = ASRTask.build_model(args)
    (d / "config.yaml").write_text(yaml.safe_dump(yaml.safe_load(yaml.safe_dump(vars(args)))))
    torch.save(model.state_dict(), d / "model.pth")
    return d


def test_speech2text_quantized_decodes(tiny_ssm_asr_model):
    from espnet2.bin.asr_inference import Speech2Text

    d = tiny_ssm_asr_model
    feats = torch.randn(60, 20)
    results = {}
    for q in (False, True):
        s2t = Speech2Text(str(d / "config.yaml"), str(d / "model.pth"), beam_size=3, ctc_weight=0.3, nbest=1,
                          device="cpu", quantize_asr_model=q)
        assert isinstance(s2t.asr_model.decoder.output_layer, nn.Linear) != q
        assert isinstance(s2t.asr_model.encoder.encoders[0].ff2.w1, nn.Linear) != q
        (text, tokens, ids, hyp), = s2t(feats)
        results[q] = hyp
    assert len(results[True].yseq) >= 2 and torch.isfinite(results[True].score)


# ---- 2. gradients through score / batch_score ------------------------------------------------------
@pytest.mark.parametrize("kernel", ["s4", "s4d"])
def test_backward_through_score_and_batch_score_equals_teacher_forcing(kernel):
    dec = make_decoder(kernel)  # eval mode, gradients enabled
    x, ys = torch.randn(11, D), random_prefixes(2, 6)
    params = [p for p in dec.parameters()]

    def teacher_forced():
        lp = dec(x.expand(2, *x.shape), torch.tensor([11, 11]), ys[:, :-1], torch.tensor([5, 5]))[0].log_softmax(-1)
        return lp.gather(2, ys[:, 1:, None]).sum()

    ref = torch.autograd.grad(teacher_forced(), params, allow_unused=True)

    total = 0
    for i in range(2):  # score(): one hypothesis at a time
        state = dec.init_state(x)
        for t in range(ys.shape[1] - 1):
            lp, state = dec.score(ys[i, : t + 1], state, x)
            total = total + lp[ys[i, t + 1]]
    got_score = torch.autograd.grad(total, params, allow_unused=True)

    states, total = [dec.init_state(x)] * 2, 0  # batch_score(): both
    for t in range(ys.shape[1] - 1):
        lp, states = dec.batch_score(ys[:, : t + 1], states, x.expand(2, *x.shape))
        total = total + lp.gather(1, ys[:, t + 1 : t + 2]).sum()
    got_batch = torch.autograd.grad(total, params, allow_unused=True)

    for got in (got_score, got_batch):
        for name, g, r in zip([n for n, _ in dec.named_parameters()], got, ref):
            if r is None:
                assert g is None or g.abs().max() == 0, name
                continue
            assert (g - r).norm() <= 1e-4 * r.norm() + 1e-7, name


def test_inplace_step_still_used_without_gradients():
    layer = SSMLayer(8, d_state=16, kernel="s4").eval()
    state = layer.default_state(2)
    with torch.no_grad():
        _, new = layer.step(torch.randn(2, 8), state, inplace=True)
    assert new is state


# ---- 3. parameters edited through .data (EMA, weight averaging) -------------------------------------
def _conv_and_recurrence(layer, u):
    with torch.no_grad():
        y_conv = layer(u)
        state, ys = layer.default_state(u.shape[0]), []
        for t in range(u.shape[1]):
            y, state = layer.step(u[:, t], state)
            ys.append(y)
    return y_conv, torch.stack(ys, 1)


@pytest.mark.parametrize("kind", ["s4", "s4d"])
def test_step_follows_parameters_edited_through_data(kind):
    torch.manual_seed(0)
    layer = SSMLayer(8, d_state=16, kernel=kind).eval()
    u = torch.randn(2, 40, 8)
    _conv_and_recurrence(layer, u)  # the step parameters are cached now
    layer.kernel.log_dt.data.add_(0.5)  # in place, invisible to the parameter's version counter
    for p in layer.kernel.parameters():
        p.data.mul_(1.01)
    y_conv, y_rec = _conv_and_recurrence(layer, u)
    assert (y_rec - y_conv).abs().max() < 1e-4
    # eval() / train() also re-read the parameters (a step with a state not from default_state)
    with torch.no_grad():
        x0 = torch.zeros(2, 8, 16)
        before, _ = layer.kernel.step(u[:, 0], x0)
        layer.kernel.log_dt.data.sub_(0.5)
        layer.train().eval()
        after, _ = layer.kernel.step(u[:, 0], x0)
        fresh = copy.deepcopy(layer)
        fresh.kernel.refresh_step()
        expect, _ = fresh.kernel.step(u[:, 0], x0)
    assert not torch.allclose(before, after) and torch.allclose(after, expect)


def test_decoder_init_state_follows_parameters_edited_through_data():
    dec = make_decoder("s4")
    x, ys = torch.randn(10, D), random_prefixes(1, 5)
    with torch.no_grad():
        run_hyps(dec, x, ys)
        for blk in dec.decoders:
            blk.ssm.kernel.log_dt.data.add_(0.5)
        got = run_hyps(dec, x, ys)
        ref = dec(x[None], torch.tensor([10]), ys, torch.tensor([5]))[0].log_softmax(-1)[:, -1]
    assert (got - ref).abs().max() < 1e-4


# ---- 4. short utterances in encoder: ssm -------------------------------------------------------------
def exact_lengths(enc, lens):
    for m in enc.embed.conv:
        if isinstance(m, nn.Conv2d):
            lens = (lens - m.kernel_size[0]) // m.stride[0] + 1
    return lens


@pytest.mark.parametrize("input_layer,min_frames", [("conv2d", 7), ("conv2d2", 7), ("conv2d6", 11), ("conv2d8", 15)])
def test_encoder_short_utterances_in_a_batch(input_layer, min_frames):
    from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

    torch.manual_seed(0)
    enc = SSMEncoder(20, output_size=32, linear_units=64, num_blocks=1, dropout_rate=0.0, d_state=16,
                     input_layer=input_layer).eval()
    lens = torch.tensor([40, 1, 3, 4, min_frames - 1, min_frames, min_frames + 5])
    x = torch.randn(len(lens), 40, 20)
    for i, l in enumerate(lens):
        x[i, l:] = 7.0  # garbage padding
    with torch.no_grad():
        out, olens, _ = enc(x, lens)
        conformer = ConformerEncoder(20, output_size=16, attention_heads=2, linear_units=16, num_blocks=1,
                                     input_layer=input_layer).eval()
        _, esp_lens, _ = conformer(x, lens)
    assert torch.equal(olens, exact_lengths(enc, lens).clamp(min=1))
    assert (olens >= 1).all() and (olens <= esp_lens).all() and olens.max() == out.shape[1]
    with torch.no_grad():
        for i, l in enumerate(lens.tolist()):  # padding does not leak; alone (even below min_frames) it runs
            alone, alens, _ = enc(x[i : i + 1, :l], lens[i : i + 1])
            assert alens[0] == olens[i]
            assert (out[i, : olens[i]] - alone[0, : olens[i]]).abs().max() < 1e-4
        short, slens, _ = enc(x[1:5, : min_frames - 1], lens[1:5])  # a batch of short utterances only
    assert torch.equal(slens, olens[1:5])
    assert (short[:, 0] - out[1:5, 0]).abs().max() < 1e-4
    assert enc.min_input_frames == min_frames  # ESPnet's check_short_utt limits


# ---- 5. hypotheses of several utterances in one batch_score -----------------------------------------
def _score_alone(dec, x, y):
    with torch.no_grad():
        s = dec.init_state(x)
        for t in range(len(y)):
            (lp, h), (s,) = dec.batch_score(y[None, : t + 1], [s], x[None], return_hs=True)
    return lp[0], h[0]


def test_batch_score_of_several_utterances_equals_each_alone():
    dec = make_decoder("s4")
    g = torch.Generator().manual_seed(3)
    xs_u = [torch.randn(T, D, generator=g) for T in (15, 9, 21)]
    utt = [0, 1, 2, 0, 2, 1, 2, 0, 2]  # hypotheses of 3 utterances, interleaved, 3 / 2 / 4 of them
    ends = {3: 1, 5: 0}  # after these steps this utterance's hypotheses are gone (its search ended)
    states = [dec.init_state(xs_u[u]) for u in utt]
    ys = torch.full((len(utt), 1), SOS)
    Tm = max(len(x) for x in xs_u)
    with torch.no_grad():
        for t in range(7):
            xs = torch.stack([nn.functional.pad(xs_u[u], (0, 0, 0, Tm - len(xs_u[u]))) for u in utt])
            (lp, h), new = dec.batch_score(ys, states, xs, return_hs=True)
            if t == 6:
                break
            # the search's re-ordering: each row continues a random hypothesis of its own utterance
            pick = []
            for u in utt:
                if u != ends.get(t):
                    rows = [j for j, w in enumerate(utt) if w == u]
                    pick.append(rows[int(torch.randint(len(rows), (1,), generator=g))])
            utt = [utt[p] for p in pick]
            states = [dec.select_state(new, p) for p in pick]
            ys = torch.cat([ys[pick], torch.randint(0, V - 1, (len(pick), 1), generator=g)], 1)
    assert set(utt) == {2} and len(utt) == 4
    alone = [_score_alone(dec, xs_u[u], ys[j]) for j, u in enumerate(utt)]
    assert (lp - torch.stack([a[0] for a in alone])).abs().max() < 1e-5
    assert (h - torch.stack([a[1] for a in alone])).abs().max() < 1e-5


def test_batch_score_of_several_utterances_first_steps():
    """Rows of 3 utterances, scored together from their first token, equal each alone at every step."""
    dec = make_decoder("s4d")
    g = torch.Generator().manual_seed(4)
    xs_u = [torch.randn(T, D, generator=g) for T in (7, 13, 10)]
    utt = [2, 0, 1, 1, 0, 2, 2]
    ys = torch.cat([torch.full((len(utt), 1), SOS), torch.randint(0, V - 1, (len(utt), 4), generator=g)], 1)
    init = [dec.init_state(x) for x in xs_u]
    states = [init[u] for u in utt]
    xs = torch.stack([nn.functional.pad(xs_u[u], (0, 0, 0, 13 - len(xs_u[u]))) for u in utt])
    with torch.no_grad():
        for t in range(ys.shape[1]):
            lp, states = dec.batch_score(ys[:, : t + 1], states, xs)
            alone = torch.stack([_score_alone(dec, xs_u[u], ys[j, : t + 1])[0] for j, u in enumerate(utt)])
            assert (lp - alone).abs().max() < 1e-5, t


def test_batch_score_one_memory_per_utterance_is_kept_across_steps():
    """The keys/values of several utterances are stacked once, not at every step."""
    dec = make_decoder("s4d")
    xs_u = [torch.randn(T, D) for T in (8, 12)]
    utt = [0, 0, 1, 1]
    init = [dec.init_state(x) for x in xs_u]
    states = [init[u] for u in utt]
    xs = torch.stack([xs_u[u][:8] for u in utt])  # not used: the states carry their memories
    with torch.no_grad():
        _, s1 = dec.batch_score(torch.full((4, 1), SOS), states, xs)
        _, s2 = dec.batch_score(torch.full((4, 2), SOS), s1, xs)
    assert s1[0]["kv"] is s1[3]["kv"] is s2[0]["kv"]
    assert [s["utt"] for s in s2] == [0, 0, 1, 1]


def test_batch_score_mixed_prefix_lengths_new_hypotheses_and_training_mode():
    """States that consumed different numbers of tokens, states None (started from their row of xs, one
    memory per distinct row) and training mode (per-row memory copies): each equals scoring alone."""
    dec = make_decoder("s4")
    g = torch.Generator().manual_seed(5)
    xa, xb = torch.randn(9, D, generator=g), torch.randn(12, D, generator=g)
    ys = random_prefixes(4, 4, seed=5)
    with torch.no_grad():
        _, (sa,) = dec.batch_score(ys[:1, :2], [dec.init_state(xa)], xa[None])  # 2 tokens consumed
        _, (sb,) = dec.batch_score(ys[1:2, :3], [dec.init_state(xb)], xb[None])  # 3 tokens consumed
        xs = torch.stack([xa[:9], xb[:9], xa[:9], xb[:9]])  # rows 2 and 3 (states None) start from theirs
        calls = []
        hooks = [blk.src_attn.kv.register_forward_hook(lambda *a: calls.append(1)) for blk in dec.decoders]
        (lp, h), new = dec.batch_score(ys, [sa, sb, None, None], xs, return_hs=True)
        assert len(calls) == 2 * len(dec.decoders)  # rows 2 and 3: one new memory each
        dec.batch_score(ys[:3, :1], [None] * 3, xa.expand(3, *xa.shape))
        assert len(calls) == 3 * len(dec.decoders)  # one row of xs, expanded: one memory
        for hk in hooks:
            hk.remove()
        ref = [_score_alone(dec, x, y) for x, y in zip([xa, xb, xa[:9], xb[:9]], ys)]
        assert (lp - torch.stack([r[0] for r in ref])).abs().max() < 1e-5
        assert (h - torch.stack([r[1] for r in ref])).abs().max() < 1e-5
        assert [s["pos"] for s in new] == [4] * 4
        # hypotheses of two utterances in one call, training mode (dropout 0): the same as eval mode
        states = [dec.init_state(xa), dec.init_state(xb)]
        xs2 = torch.stack([nn.functional.pad(xa, (0, 0, 0, 3)), xb])
        ref2, _ = dec.batch_score(ys[:2], states, xs2)
        got2, _ = dec.train().batch_score(ys[:2], states, xs2)
    assert (got2 - ref2).abs().max() < 1e-5


def test_decoder_block_step_over_several_memories_with_weights():
    from s4speech.nn import MemoryRows

    torch.manual_seed(0)
    blk = DecoderBlock(D, D, 2, 64, 0.0, d_state=16).eval()
    mems = [torch.randn(1, T, D) for T in (5, 9)]
    kvs = [blk.src_attn.memory(m) for m in mems]
    k = torch.cat([nn.functional.pad(kv[0], (0, 0, 0, 9 - kv[0].shape[2])) for kv in kvs])
    v = torch.cat([nn.functional.pad(kv[1], (0, 0, 0, 9 - kv[1].shape[2])) for kv in kvs])
    mask = (torch.arange(9) < torch.tensor([5, 9])[:, None])[:, None, None]
    memory = [1, 0, 1]
    x, state = torch.randn(3, D), torch.randn(3, D, 16)
    with torch.no_grad():
        y, s, w = blk.step(x, state, k, v, None, return_weights=True, rows=MemoryRows.of(memory, 2, mask))
        for i, u in enumerate(memory):
            yi, si, wi = blk.step(x[i : i + 1], state[i : i + 1], *kvs[u], None, return_weights=True)
            assert (y[i] - yi[0]).abs().max() < 1e-5 and (s[i] - si[0]).abs().max() < 1e-6
            T = mems[u].shape[1]
            assert (w[i, :, :T] - wi[0]).abs().max() < 1e-6 and (w[i, :, T:] == 0).all()


# ---- timing (not a test) ------------------------------------------------------------------------------
def bench_several_utterances(reps: int = 30):
    """Median ms per hypothesis of batch_score: 1 utterance x beam 8 and 4 utterances x beam 8 (one call)."""
    import statistics
    import time

    d, T, beam = 256, 200, 8
    torch.manual_seed(0)
    dec = SSMDecoder(500, d, attention_heads=4, linear_units=4 * d, num_blocks=6, dropout_rate=0.0, d_state=64).eval()

    def call(U):
        xs_u = [torch.randn(T, d) for _ in range(U)]
        n = U * beam
        with torch.no_grad():
            st = [dec.init_state(x) for x in xs_u]
            xs = torch.stack([xs_u[i // beam] for i in range(n)])
            ys = torch.randint(0, 499, (n, 2))
            ys[:, 0] = 499
            _, new = dec.batch_score(ys[:, :1], [st[i // beam] for i in range(n)], xs)  # states as a search has them
        g = torch.Generator().manual_seed(1)
        states = [new[u * beam + j] for u in range(U) for j in torch.randperm(beam, generator=g).tolist()]
        return lambda: dec.batch_score(ys, states, xs)

    def median(fn):
        with torch.no_grad():
            for _ in range(3):
                fn()
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    calls, res = {1: call(1), 4: call(4)}, {1: [], 4: []}
    for _ in range(3):  # interleaved rounds on a shared machine: the best round's median
        for U, fn in calls.items():
            res[U].append(median(fn))
    one, four = min(res[1]) / beam, min(res[4]) / (4 * beam)
    print(f"1 utterance x beam 8: {one * 1e3:.3f} ms/hypothesis ({one * beam * 1e3:.2f} ms/call)")
    print(f"4 utterances x beam 8: {four * 1e3:.3f} ms/hypothesis ({four * 4 * beam * 1e3:.2f} ms/call), "
          f"ratio {four / one:.2f}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    bench_several_utterances(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
