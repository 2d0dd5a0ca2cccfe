"""Drop-in for ``espnet2.bin.asr_inference`` with s4speech's components registered (same options).

Its ``Speech2Text`` is ESPnet's, with s4speech's CTC prefix scorer in the batched beam search
(``s4speech.asr.ctc``: the same hypotheses as ESPnet's, a fraction of its time). ``--batch_size N`` (N > 1;
ESPnet's own refuses it) decodes N utterances at a time: each is encoded alone (the same encoder output as
with batch size 1) and their beam searches run together (``s4speech.asr.search``: the same n-best, the S4
decoder scoring all their hypotheses in one call per step). The outputs are ESPnet's
(``<output_dir>/<n>best_recog/{text,token,token_int,score}``)."""
from __future__ import annotations

import inspect
import logging
import sys

import espnet2.bin.asr_inference as _espnet

import s4speech  # noqa: F401  registers the 'ssm' components
from s4speech.asr.ctc import use_fast_ctc

log = logging.getLogger("s4speech.asr_inference")


class Speech2Text(_espnet.Speech2Text):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        use_fast_ctc(self)


_espnet.Speech2Text = Speech2Text  # ESPnet's inference() builds it by this name

# what --batch_size > 1 leaves to ESPnet's one-utterance loop (with batch size 1)
ONE_AT_A_TIME = ("enh_s2t_task", "multi_asr", "streaming", "time_sync", "partial_ar", "hugging_face_decoder")


def main(cmd=None):
    args = _espnet.get_parser().parse_args(cmd)
    kwargs = vars(args)
    kwargs.pop("config", None)
    print(_espnet.get_commandline_args(), file=sys.stderr)
    if kwargs["batch_size"] > 1:
        other = [k for k in ONE_AT_A_TIME if kwargs.get(k)]
        if not other and kwargs.get("transducer_conf") is None:
            return inference_batched(**kwargs)
        log.warning("--batch_size %d with %s: decoding one utterance at a time", kwargs["batch_size"], other[0]
                    if other else "transducer_conf")
        kwargs["batch_size"] = 1
    _espnet.inference(**kwargs)


def _results(s2t, speeches):
    """What ``s2t(speech)`` returns for each speech (a 1-D tensor), the beam searches run together; an
    utterance too short for the encoder gets ESPnet's placeholder result, as in its inference loop."""
    import torch
    from espnet.nets.beam_search import Hypothesis
    from espnet.nets.pytorch_backend.transformer.subsampling import TooShortUttError

    from s4speech.asr.search import recognize_many

    encs, out = [], [None] * len(speeches)
    for i, speech in enumerate(speeches):
        x = speech[None].to(getattr(torch, s2t.dtype)).to(s2t.device)
        try:
            enc, _ = s2t.asr_model.encode(speech=x, speech_lengths=x.new_full([1], x.shape[1], dtype=torch.long))
        except TooShortUttError as e:
            logging.warning(f"Utterance {i}: {e}")
            out[i] = [[" ", ["<space>"], [2], Hypothesis(score=0.0, scores={}, states={}, yseq=[])]] * s2t.nbest
            continue
        if isinstance(enc, tuple):  # intermediate CTC outputs: ESPnet's own call
            out[i] = s2t(speech)
            continue
        encs.append((i, enc[0]))
    for (i, _), res in zip(encs, recognize_many(s2t, [e for _, e in encs])):
        out[i] = res
    return out


def inference_batched(*, output_dir, batch_size, ngpu, seed, dtype, num_workers, log_level,
                      data_path_and_name_and_type, key_file, allow_variable_data_keys, model_tag,
                      word_lm_train_config=None, **kwargs) -> None:
    """ESPnet's ``inference`` (normal ASR) with ``batch_size`` utterances decoded at a time."""
    import torch
    from espnet2.fileio.datadir_writer import DatadirWriter
    from espnet2.tasks.asr import ASRTask
    from espnet2.torch_utils.set_all_random_seed import set_all_random_seed

    if word_lm_train_config is not None:
        raise NotImplementedError("Word LM is not implemented")
    if ngpu > 1:
        raise NotImplementedError("only single GPU decoding is supported")
    logging.basicConfig(level=log_level, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    set_all_random_seed(seed)
    known = inspect.signature(Speech2Text.__bases__[0].__init__).parameters  # ESPnet's
    s2t_kwargs = {k: v for k, v in kwargs.items() if k in known}
    s2t = Speech2Text.from_pretrained(model_tag=model_tag, device="cuda" if ngpu >= 1 else "cpu", dtype=dtype,
                                      batch_size=1, **s2t_kwargs)
    loader = ASRTask.build_streaming_iterator(
        data_path_and_name_and_type, dtype=dtype, batch_size=1, key_file=key_file, num_workers=num_workers,
        preprocess_fn=ASRTask.build_preprocess_fn(s2t.asr_train_args, False),
        collate_fn=ASRTask.build_collate_fn(s2t.asr_train_args, False),
        allow_variable_data_keys=allow_variable_data_keys, inference=True)
    nbest = s2t.nbest
    with DatadirWriter(output_dir) as writer, torch.no_grad():
        group: list = []

        def flush():
            for key, results in zip([k for k, _ in group], _results(s2t, [s for _, s in group])):
                interctc = None
                if isinstance(results, tuple):
                    results, interctc = results
                for n, (text, token, token_int, hyp) in zip(range(1, nbest + 1), results):
                    w = writer[f"{n}best_recog"]
                    w["token"][key] = " ".join(token)
                    w["token_int"][key] = " ".join(map(str, token_int))
                    w["score"][key] = str(hyp.score)
                    if text is not None:
                        w["text"][key] = text
                for idx, text in (interctc or {}).items():
                    writer["1best_recog"][f"encoder_interctc_layer{idx}.txt"][key] = " ".join(text)
            group.clear()

        for keys, batch in loader:
            assert len(keys) == 1, keys
            group.append((keys[0], batch["speech"][0]))
            if len(group) >= batch_size:
                flush()
        if group:
            flush()


if __name__ == "__main__":
    main()
