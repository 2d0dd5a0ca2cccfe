"""A trained ESPnet ASR model and its beam search, built from the training config importing only the classes
the config names.

ESPnet's ``Speech2Text`` builds the model through ``ASRTask.build_model``; importing ``espnet2.tasks.asr``
(every frontend, encoder and decoder ESPnet has, and its g2p/nltk text front-ends) takes ~10 s, several
times a bare ``import torch``. ``load`` does what ``ASRTask.build_model_from_file`` and ``Speech2Text.__init__``
do for a plain attention/CTC model -- the same classes, built in the same order with the same arguments,
the same state dict loading, the same ``BatchBeamSearch`` with the same scorers and weights -- and
``Recognizer`` decodes as ``Speech2Text`` does, so hypotheses are the same. A config outside that
(transducer, Hugging Face or Whisper parts, phoneme tokens, intermediate CTC, adapters, a class not in
``CHOICES``) makes ``load`` return None: the caller then uses ESPnet's own ``Speech2Text``.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import sys
from pathlib import Path

import torch

from s4speech import registry

log = logging.getLogger("s4speech.transcribe")

# The classes of ASRTask's choices (espnet2/tasks/asr.py) that import quickly: choice -> {name: "module:Class"}.
_ASR, _ENC, _DEC = "espnet2.asr", "espnet2.asr.encoder", "espnet2.asr.decoder"
CHOICES: dict[str, dict[str, str]] = {
    "frontend": {"default": f"{_ASR}.frontend.default:DefaultFrontend",
                 "sliding_window": f"{_ASR}.frontend.windowing:SlidingWindow"},
    "specaug": {"specaug": f"{_ASR}.specaug.specaug:SpecAug"},
    "normalize": {"global_mvn": "espnet2.layers.global_mvn:GlobalMVN",
                  "utterance_mvn": "espnet2.layers.utterance_mvn:UtteranceMVN"},
    "model": {"espnet": f"{_ASR}.espnet_model:ESPnetASRModel"},
    "preencoder": {"sinc": f"{_ASR}.preencoder.sinc:LightweightSincConvs",
                   "linear": f"{_ASR}.preencoder.linear:LinearProjection"},
    "encoder": {"conformer": f"{_ENC}.conformer_encoder:ConformerEncoder",
                "transformer": f"{_ENC}.transformer_encoder:TransformerEncoder",
                "contextual_block_transformer":
                    f"{_ENC}.contextual_block_transformer_encoder:ContextualBlockTransformerEncoder",
                "contextual_block_conformer":
                    f"{_ENC}.contextual_block_conformer_encoder:ContextualBlockConformerEncoder",
                "vgg_rnn": f"{_ENC}.vgg_rnn_encoder:VGGRNNEncoder",
                "rnn": f"{_ENC}.rnn_encoder:RNNEncoder",
                "branchformer": f"{_ENC}.branchformer_encoder:BranchformerEncoder",
                "e_branchformer": f"{_ENC}.e_branchformer_encoder:EBranchformerEncoder",
                "multiconv_conformer": f"{_ENC}.multiconvformer_encoder:MultiConvConformerEncoder"},
    "postencoder": {"length_adaptor": f"{_ASR}.postencoder.length_adaptor_postencoder:LengthAdaptorPostEncoder"},
    "decoder": {"transformer": f"{_DEC}.transformer_decoder:TransformerDecoder",
                "lightweight_conv": f"{_DEC}.transformer_decoder:LightweightConvolutionTransformerDecoder",
                "lightweight_conv2d": f"{_DEC}.transformer_decoder:LightweightConvolution2DTransformerDecoder",
                "dynamic_conv": f"{_DEC}.transformer_decoder:DynamicConvolutionTransformerDecoder",
                "dynamic_conv2d": f"{_DEC}.transformer_decoder:DynamicConvolution2DTransformerDecoder",
                "rnn": f"{_DEC}.rnn_decoder:RNNDecoder",
                "s4": f"{_DEC}.s4_decoder:S4Decoder"},
}
for _attr, _path in registry.COMPONENTS["espnet2.tasks.asr"].items():  # s4speech's own: encoder/decoder "ssm"
    CHOICES[_attr.replace("_choices", "")][registry.KEY] = _path
OPTIONAL = ("specaug", "normalize", "preencoder", "postencoder", "decoder")  # None: no such part
TOKENIZERS = {"char": "espnet2.text.char_tokenizer:CharTokenizer", "word": "espnet2.text.word_tokenizer:WordTokenizer",
              "bpe": "espnet2.text.sentencepiece_tokenizer:SentencepiecesTokenizer"}
WHISPER_BPE = ("whisper_en", "whisper_multilingual")
# what ASRTask.build_model and Speech2Text read as attributes (a config without one is ESPnet's to reject)
REQUIRED = ("token_list", "input_size", "specaug", "normalize", "ctc_conf", "model_conf", "init", "token_type",
            "bpemodel")
BEAM_SEARCH = ("espnet2.asr.ctc", "espnet.nets.batch_beam_search", "espnet.nets.beam_search",
               "espnet.nets.scorer_interface", "espnet.nets.scorers.ctc", "espnet.nets.scorers.length_bonus",
               "espnet2.text.token_id_converter")


@contextlib.contextmanager
def quiet_imports():
    """What ESPnet's modules print when imported (flash-attn notices, nltk download failures of its g2p
    modules) goes to the debug log, not the terminal."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        yield
    if buf.getvalue().strip():
        log.debug("importing ESPnet printed:\n%s", buf.getvalue())


def _class(path: str) -> type:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _parts(conf: dict) -> dict[str, str | None]:
    """{part: its name in the config} of the parts ASRTask.build_model builds (the frontend unless
    features come from outside; the model class defaults to "espnet")."""
    return {p: conf.get(p, "espnet" if p == "model" else None) for p in CHOICES
            if not (p == "frontend" and conf.get("input_size") is not None)}


def unsupported(args: argparse.Namespace) -> str | None:
    """Why ``load`` leaves this config to ESPnet's Speech2Text, or None when it builds it itself."""
    conf = vars(args)
    missing = [k for k in REQUIRED if k not in conf]
    if missing:
        return f"no {', '.join(missing)}"
    for part, name in _parts(conf).items():
        if name not in CHOICES[part] and not (name is None and part in OPTIONAL):
            return f"{part}: {name}"
    if conf.get("use_adapter"):
        return "an adapter"
    if (conf["model_conf"] or {}).get("transducer_multi_blank_durations") is not None:
        return "a multi-blank transducer"
    if (conf.get("encoder_conf") or {}).get("interctc_layer_idx"):
        return "intermediate CTC"
    if (conf["token_type"] is not None and conf["token_type"] not in TOKENIZERS) or conf["bpemodel"] in WHISPER_BPE:
        return f"token_type: {conf['token_type']}"
    return None


def _modules(args: argparse.Namespace) -> list[str]:
    """The modules ``load`` imports for this config."""
    paths = [CHOICES[p][n] for p, n in _parts(vars(args)).items() if n is not None]
    paths += [TOKENIZERS[args.token_type]] if args.token_type in TOKENIZERS else []
    modules = [p.split(":")[0] for p in paths] + list(BEAM_SEARCH)
    return modules + (["espnet2.torch_utils.initialize"] if args.init else [])


def build_model(args: argparse.Namespace):
    """``ASRTask.build_model`` for the classes of ``CHOICES`` (a decoder other than a transducer)."""
    from espnet2.asr.ctc import CTC

    if isinstance(args.token_list, str):
        with open(args.token_list, encoding="utf-8") as f:
            token_list = [line.rstrip() for line in f]
        args.token_list = list(token_list)
    elif isinstance(args.token_list, (tuple, list)):
        token_list = list(args.token_list)
    else:
        raise RuntimeError("token_list must be str or list")
    vocab_size = len(token_list)
    if args.input_size is None:
        frontend = _class(CHOICES["frontend"][args.frontend])(**args.frontend_conf)
        input_size = frontend.output_size()
    else:
        args.frontend, args.frontend_conf, frontend, input_size = None, {}, None, args.input_size

    def part(name: str, **kw):
        choice = getattr(args, name, None)
        return None if choice is None else _class(CHOICES[name][choice])(**kw, **getattr(args, f"{name}_conf"))

    specaug = part("specaug")
    normalize = part("normalize")
    preencoder = part("preencoder")
    if preencoder is not None:
        input_size = preencoder.output_size()
    encoder = part("encoder", input_size=input_size)
    encoder_output_size = input_size if encoder is None else encoder.output_size()
    postencoder = part("postencoder", input_size=encoder_output_size)
    if postencoder is not None:
        encoder_output_size = postencoder.output_size()
    decoder = part("decoder", vocab_size=vocab_size, encoder_output_size=encoder_output_size)
    ctc = CTC(odim=vocab_size, encoder_output_size=encoder_output_size, **args.ctc_conf)
    model = _class(CHOICES["model"][getattr(args, "model", "espnet")])(
        vocab_size=vocab_size, frontend=frontend, specaug=specaug, normalize=normalize, preencoder=preencoder,
        encoder=encoder, postencoder=postencoder, decoder=decoder, ctc=ctc, joint_network=None,
        token_list=token_list, **args.model_conf)
    if args.init is not None:
        from espnet2.torch_utils.initialize import initialize

        initialize(model, args.init)
    return model


def load(config: str | Path, model_file: str | Path, *, device: str = "cpu", beam_size: int = 4,
         ctc_weight: float = 0.3, quantize: bool = False) -> "Recognizer | None":
    """What ``Speech2Text(asr_train_config=config, asr_model_file=model_file, device=device,
    beam_size=beam_size, ctc_weight=ctc_weight, lm_weight=0.0, nbest=1, batch_size=1)`` builds,
    or None for a config that ``unsupported`` names."""
    import yaml

    with open(config, encoding="utf-8") as f:
        args = argparse.Namespace(**(yaml.safe_load(f) or {}))
    reason = unsupported(args)
    if reason is not None:
        log.debug("%s: built by ESPnet's ASRTask (%s)", config, reason)
        return None
    with quiet_imports():
        for module in _modules(args):
            importlib.import_module(module)
    # ASRTask.build_model_from_file
    model = build_model(args)
    if device != "mps":
        model.to(device)
    load_device = f"cuda:{torch.cuda.current_device()}" if device == "cuda" else device
    state = torch.load(model_file, map_location="cpu" if device == "mps" else load_device, weights_only=False)
    if "module" in state:  # deepspeed checkpoints
        state = state["module"]
    model.load_state_dict(state, strict=False)
    # Speech2Text.__init__: the beam search (attention decoder + CTC prefix scores, no LM)
    from espnet.nets.batch_beam_search import BatchBeamSearch
    from espnet.nets.beam_search import BeamSearch
    from espnet.nets.scorer_interface import BatchScorerInterface
    from espnet.nets.scorers.ctc import CTCPrefixScorer
    from espnet.nets.scorers.length_bonus import LengthBonus

    model.to(dtype=torch.float32).eval()
    if quantize:  # Speech2Text(quantize_asr_model=True): int8 dynamic quantization of the Linear layers
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    token_list = model.token_list
    scorers = dict(decoder=model.decoder, ctc=CTCPrefixScorer(ctc=model.ctc, eos=model.eos),
                   length_bonus=LengthBonus(len(token_list)), ngram=None)
    weights = dict(decoder=1.0 - ctc_weight, ctc=ctc_weight, lm=0.0, ngram=0.9, length_bonus=0.0)
    beam_search = BeamSearch(beam_size=beam_size, weights=weights, scorers=scorers, sos=model.sos, eos=model.eos,
                             vocab_size=len(token_list), token_list=token_list,
                             pre_beam_score_key=None if ctc_weight == 1.0 else "full", normalize_length=False)
    if all(isinstance(v, BatchScorerInterface) for v in beam_search.full_scorers.values()):
        beam_search.__class__ = BatchBeamSearch
    from s4speech.asr.ctc import use_fast_ctc

    use_fast_ctc(beam_search)  # the same hypotheses as ESPnet's CTC prefix scorer, a fraction of its time
    beam_search.to(device=device, dtype=torch.float32).eval()
    for scorer in scorers.values():
        if isinstance(scorer, torch.nn.Module):
            scorer.to(device=device, dtype=torch.float32).eval()
    return Recognizer(model, args, _tokenizer(args), beam_search, device)


def _tokenizer(args: argparse.Namespace):
    """Speech2Text's text tokenizer for char, word and BPE tokens (None: token ids only)."""
    if args.token_type == "char":
        return _class(TOKENIZERS["char"])(non_linguistic_symbols=None, space_symbol="<space>",
                                          remove_non_linguistic_symbols=False, nonsplit_symbols=None)
    if args.token_type == "word":
        return _class(TOKENIZERS["word"])(delimiter=None)
    if args.token_type == "bpe" and args.bpemodel is not None:
        return _class(TOKENIZERS["bpe"])(args.bpemodel, {})
    return None


class Recognizer:
    """``Speech2Text`` for a model ``load`` built: the same attributes transcription uses (``asr_model``,
    ``asr_train_args``, ``converter``, ``tokenizer``, ``beam_search``, ``device``), ``recognizer(speech)``
    -> [(text, tokens, token ids, hypothesis)] and ``_decode_single_sample(enc)`` as ESPnet has them."""

    def __init__(self, asr_model, asr_train_args: argparse.Namespace, tokenizer, beam_search, device: str):
        from espnet2.text.token_id_converter import TokenIDConverter

        self.asr_model, self.asr_train_args = asr_model, asr_train_args
        self.converter = TokenIDConverter(token_list=asr_model.token_list)
        self.tokenizer, self.beam_search, self.device = tokenizer, beam_search, device
        self.dtype, self.maxlenratio, self.minlenratio, self.nbest = "float32", 0.0, 0.0, 1

    @torch.no_grad()
    def __call__(self, speech):
        if not isinstance(speech, torch.Tensor):
            speech = torch.tensor(speech)
        speech = speech.unsqueeze(0).to(getattr(torch, self.dtype))
        lengths = speech.new_full([1], dtype=torch.long, fill_value=speech.size(1))
        enc, _ = self.asr_model.encode(speech=speech.to(self.device), speech_lengths=lengths.to(self.device))
        assert len(enc) == 1, len(enc)
        return self._decode_single_sample(enc[0])

    def _decode_single_sample(self, enc: torch.Tensor) -> list:
        decoder = getattr(self.beam_search.nn_dict, "decoder", None)
        s4 = sys.modules.get("espnet2.asr.decoder.s4_decoder")  # imported when the model has one
        if s4 is not None and isinstance(decoder, s4.S4Decoder):  # S4 autoregressive generation needs it
            for module in decoder.modules():
                if hasattr(module, "setup_step"):
                    module.setup_step()
        nbest = self.beam_search(x=enc, maxlenratio=self.maxlenratio, minlenratio=self.minlenratio)
        results = []
        for hyp in nbest[: self.nbest]:
            token_int = hyp.yseq[1:-1] if isinstance(hyp.yseq, list) else hyp.yseq[1:-1].tolist()
            token_int = [t for t in token_int if t != 0]  # the blank, as ESPnet assumes
            token = self.converter.ids2tokens(token_int)
            text = self.tokenizer.tokens2text(token) if self.tokenizer is not None else None
            results.append((text, token, token_int, hyp))
        return results
