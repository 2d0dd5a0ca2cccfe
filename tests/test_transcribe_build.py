"""``s4speech.transcribe.build``: the ASR model and beam search built without ESPnet's task module decode exactly
as ESPnet's ``Speech2Text`` does -- on small random-initialised models of several kinds (no training), on real
speech -- and loading a model for transcription imports neither ``espnet2.tasks.asr`` nor ESPnet's inference
script."""
import argparse
import subprocess
import sys

import numpy as np
import pytest
import yaml

from test_transcribe import AN4, one_thread  # noqa: F401 - one_thread: autouse, one torch thread a test

from s4speech.io.audio import read
from s4speech.io.expdir import loadable_config, model_file
from s4speech.transcribe import Model, build

TOKENS = ["<blank>", "<unk>", "<space>", *"aeinorst", "<sos/eos>"]
SMALL = {"output_size": 32, "attention_heads": 2, "linear_units": 64, "num_blocks": 1}
FRONTEND = {"fs": 16000, "n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 40}
VARIANTS = {  # name -> config entries over ASRTask's defaults
    "conformer_ssm": dict(encoder="conformer", encoder_conf={**SMALL, "input_layer": "conv2d", "rel_pos_type": "latest",
                                                             "pos_enc_layer_type": "rel_pos",
                                                             "selfattention_layer_type": "rel_selfattn",
                                                             "use_cnn_module": True, "cnn_module_kernel": 7},
                          decoder="ssm", decoder_conf={"num_blocks": 1, "attention_heads": 2, "linear_units": 64,
                                                       "d_state": 8}),
    "transformer_word_mvn": dict(encoder="transformer", encoder_conf=SMALL, decoder="transformer",
                                 decoder_conf={"attention_heads": 2, "linear_units": 64, "num_blocks": 1},
                                 specaug="specaug", specaug_conf={"apply_time_warp": False,
                                                                  "freq_mask_width_range": [0, 8],
                                                                  "time_mask_width_ratio_range": [0.0, 0.05]},
                                 normalize="global_mvn", token_type="word"),
    "rnn_init": dict(encoder="rnn", encoder_conf={"num_layers": 1, "hidden_size": 32, "output_size": 32},
                     decoder="rnn", decoder_conf={"num_layers": 1, "hidden_size": 32}, normalize=None,
                     init="xavier_uniform"),
    "interctc": dict(encoder="transformer", encoder_conf={**SMALL, "num_blocks": 2, "interctc_layer_idx": [1]},
                     decoder="transformer", decoder_conf={"attention_heads": 2, "linear_units": 64, "num_blocks": 1}),
}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """name -> experiment dir (config.yaml as ESPnet's training writes it, random weights in valid.acc.ave.pth)."""
    import torch
    from espnet2.tasks.asr import ASRTask

    root = tmp_path_factory.mktemp("random_models")
    stats = root / "feats_stats.npz"
    rng = np.random.default_rng(0)
    np.savez(stats, count=np.array(1000.0), sum=rng.normal(0, 10, 40) * 1000, sum_square=np.full(40, 2e5))
    dirs = {}
    for name, over in VARIANTS.items():
        conf = vars(ASRTask.get_parser().parse_args(["--output_dir", str(root / name), "--token_list", "none"]))
        conf.update({"token_list": TOKENS, "token_type": "char", "frontend": "default", "frontend_conf": FRONTEND,
                     "model_conf": {"ctc_weight": 0.3}, **over})
        if conf["normalize"] == "global_mvn":
            conf["normalize_conf"] = {"stats_file": str(stats)}
        torch.manual_seed(0)
        model = ASRTask.build_model(argparse.Namespace(**conf))
        with torch.no_grad():  # output biases that favour the letters: hypotheses of some tokens, not just <eos>
            bias = torch.tensor(rng.normal(0, 1, len(TOKENS)), dtype=torch.float32)
            bias[[0, len(TOKENS) - 1]] -= 1.5
            for m in model.modules():
                if isinstance(m, torch.nn.Linear) and m.out_features == len(TOKENS) and m.bias is not None:
                    m.bias += bias
        d = root / name
        d.mkdir()
        (d / "config.yaml").write_text(yaml.safe_dump(conf))
        torch.save(model.state_dict(), d / "valid.acc.ave.pth")
        dirs[name] = d
    return dirs


def _espnet_speech2text(d, beam_size, ctc_weight):
    """ESPnet's Speech2Text with our CTC prefix scorer swapped in, as transcription uses it (that scorer
    against ESPnet's own: tests/test_decoding_speed.py)."""
    from espnet2.bin.asr_inference import Speech2Text

    from s4speech.asr.ctc import use_fast_ctc

    return use_fast_ctc(Speech2Text(asr_train_config=str(loadable_config(d / "config.yaml")),
                                    asr_model_file=str(model_file(d)), beam_size=beam_size, ctc_weight=ctc_weight,
                                    lm_weight=0.0, nbest=1, batch_size=1, maxlenratio=0.0, minlenratio=0.0))


def test_choices_are_the_classes_of_asrtask():
    import espnet2.tasks.asr as asr

    choices = {c.name: c for c in asr.ASRTask.class_choices_list}
    for part, names in build.CHOICES.items():
        for name, path in names.items():
            assert build._class(path) is choices[part].get_class(name), (part, name)


@pytest.mark.parametrize("name,ctc_weight", [("conformer_ssm", 0.3), ("conformer_ssm", 1.0),
                                             ("transformer_word_mvn", 0.3), ("rnn_init", 0.5)])
def test_built_model_decodes_as_speech2text(model_dirs, name, ctc_weight):
    import torch

    d = model_dirs[name]
    ref = _espnet_speech2text(d, 2, ctc_weight)
    rec = build.load(d / "config.yaml", d / "valid.acc.ave.pth", beam_size=2, ctc_weight=ctc_weight)
    assert type(rec) is build.Recognizer
    assert type(rec.asr_model) is type(ref.asr_model)
    ref_state, state = ref.asr_model.state_dict(), rec.asr_model.state_dict()
    assert list(state) == list(ref_state) and all(torch.equal(state[k], ref_state[k]) for k in state)
    assert type(rec.beam_search) is type(ref.beam_search)
    assert rec.beam_search.weights == ref.beam_search.weights
    assert list(rec.beam_search.full_scorers) == list(ref.beam_search.full_scorers)
    assert list(rec.beam_search.part_scorers) == list(ref.beam_search.part_scorers)
    assert type(rec.tokenizer) is type(ref.tokenizer) and rec.converter.token_list == ref.converter.token_list
    for f in AN4[:2]:
        x = read(f, 16000)[0][: 2 * 16000]  # 2 s: up to 200 decoder steps (the RNN encoder does not subsample)
        got, want = rec(x), ref(x)
        assert len(got) == len(want) == 1
        (text, tokens, ids, hyp), (t2, tok2, ids2, hyp2) = got[0], want[0]
        assert (text, tokens, ids) == (t2, tok2, ids2) and len(ids) > 0
        assert float(hyp.score) == pytest.approx(float(hyp2.score), abs=1e-5)


def test_trained_models_transcribe_as_with_speech2text(asr_recipe_run):
    """The tiny trained S4-decoder and Transformer-decoder systems: the same transcripts, segments and word
    times loaded by Model.load as with ESPnet's Speech2Text."""
    import s4speech.transcribe as T

    work, _ = asr_recipe_run
    files = [AN4[1], AN4[2], AN4[3]]
    for name in ("asr_asr_ssm", "asr_asr_transformer"):
        d = work / "exp" / name
        m = Model.load(d, beam_size=2)
        assert type(m.s2t) is build.Recognizer
        ref = T.transcribe(_espnet_speech2text(d, 2, 0.3), files, batch_size=2)
        got = T.transcribe(m, files, batch_size=2)
        assert [(r.text, r.segments) for r in got] == [(r.text, r.segments) for r in ref]
        assert any(r.text for r in got)


def test_configs_outside_build_are_loaded_by_speech2text(model_dirs):
    d = model_dirs["interctc"]
    with open(d / "config.yaml") as f:
        assert build.unsupported(argparse.Namespace(**yaml.safe_load(f))) == "intermediate CTC"
    assert build.load(d / "config.yaml", d / "valid.acc.ave.pth") is None
    m = Model.load(d, beam_size=2)
    assert type(m.s2t).__name__ == "Speech2Text"
    x, _ = read(AN4[0], 16000)
    text, ids = m.beam_search(m.encode([x])[0][0])
    results, _interctc = _espnet_speech2text(d, 2, 0.3)(x)  # such a model also gives intermediate CTC outputs
    assert (text, ids) == ((results[0][0] or "").strip(), results[0][2])


def test_loading_imports_no_espnet_task_module(model_dirs):
    code = ("import sys, s4speech.transcribe as T; m = T.Model.load(sys.argv[1]); "
            "assert type(m.s2t).__name__ == 'Recognizer', type(m.s2t); "
            "bad = [k for k in ('espnet2.tasks.asr', 'espnet2.tasks.abs_task', 'espnet2.bin.asr_inference', "
            "'espnet2.text.phoneme_tokenizer') if k in sys.modules]; assert not bad, bad")
    for name in ("conformer_ssm", "transformer_word_mvn"):
        p = subprocess.run([sys.executable, "-c", code, str(model_dirs[name])], capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
