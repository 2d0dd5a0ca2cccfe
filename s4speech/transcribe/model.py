"""The ASR model: an ESPnet experiment dir or packed model loaded as ESPnet's ``Speech2Text`` loads it, and
what transcription needs from it (sample rate, batched encoder, CTC posteriors, beam search).

A plain attention/CTC model is built by ``build`` (the classes its config names, without importing ESPnet's
task module: loading takes a fraction of the time); anything else by ESPnet's ``Speech2Text`` itself.

Which files make the model, the unpacking of a packed ``.zip`` and the repair of the config's relative paths
are ``s4speech.io.expdir``'s."""
from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from s4speech.io.expdir import ESPNET_DEFAULT_FS, ModelError, config_rate, loadable_config, model_files

log = logging.getLogger("s4speech.transcribe")

MIN_DECODE_SECONDS = 0.3  # shorter inputs are padded with zeros (convolutional subsampling needs frames)



def _speech2text_class():
    """ESPnet's Speech2Text, imported quietly (``import s4speech`` has registered the ssm components)."""
    from s4speech.transcribe.build import quiet_imports

    with quiet_imports():
        from espnet2.bin.asr_inference import Speech2Text
    return Speech2Text


def _build(cfg, pth, **kw):
    """The model and its beam search built without ESPnet's task module (``build``), or None where ESPnet's
    Speech2Text is to build it: a config ``build`` does not cover, or one it fails on (ESPnet then says why)."""
    from s4speech.transcribe import build

    try:
        return build.load(cfg, pth, **kw)
    except Exception as e:  # noqa: BLE001 - ESPnet's own loader reports what is wrong
        log.debug("%s: building without ASRTask failed (%s: %s); loading with ESPnet's Speech2Text",
                  cfg, type(e).__name__, e)
        return None


class Model:
    """A loaded ASR model: ESPnet's Speech2Text plus what transcription needs to know about it."""

    def __init__(self, s2t, name: str = "model"):
        self.s2t = s2t
        self.name = name
        self.asr = s2t.asr_model
        args = s2t.asr_train_args
        self.sample_rate = config_rate(vars(args)) or ESPNET_DEFAULT_FS
        self.token_type = getattr(args, "token_type", None)
        self.device = s2t.device

    @classmethod
    def load(cls, model: str | os.PathLike, *, device: str = "cpu", beam_size: int = 4,
             ctc_weight: float = 0.3, quantize: bool = False, compile_step: bool = False) -> "Model":
        """An experiment dir, a ``.pth`` with ``config.yaml`` beside it or a packed ``.zip`` -> Model.
        A Model is returned as it is, a Speech2Text wrapped (its own device and decoding options).
        ``quantize``: int8 dynamic quantization of the Linear layers (CPU), as ESPnet's quantize_asr_model;
        ``compile_step``: the S4 decoder's beam-search step through torch.compile (``SSMDecoder.compile_step``)."""
        if isinstance(model, Model):
            return model
        if model.__class__.__name__ == "Speech2Text":
            return cls(model, name=type(model).__name__)
        cfg, pth = model_files(model, "asr")
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ModelError("--device cuda: no CUDA device is available")
        try:
            cfg = loadable_config(cfg)
            s2t = _build(cfg, pth, device=device, beam_size=beam_size, ctc_weight=ctc_weight, quantize=quantize)
            if s2t is None:
                s2t = _speech2text_class()(asr_train_config=str(cfg), asr_model_file=str(pth), device=device,
                                           beam_size=beam_size, ctc_weight=ctc_weight, lm_weight=0.0, nbest=1,
                                           batch_size=1, maxlenratio=0.0, minlenratio=0.0,
                                           quantize_asr_model=quantize)
                from s4speech.asr.ctc import use_fast_ctc

                use_fast_ctc(s2t)
        except Exception as e:  # noqa: BLE001 - one line naming the model and the cause
            raise ModelError(f"model {model}: cannot load ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:300]})") from None
        if compile_step and hasattr(s2t.asr_model.decoder, "compile_step"):
            s2t.asr_model.decoder.compile_step()
        return cls(s2t, name=str(model))

    # -- encoder, CTC, beam search
    @property
    def blank_id(self) -> int:
        return getattr(self.asr, "blank_id", 0)

    def padded(self, wave: np.ndarray) -> np.ndarray:
        """``wave`` with zeros appended up to MIN_DECODE_SECONDS (the encoder's subsampling needs frames)."""
        n = int(MIN_DECODE_SECONDS * self.sample_rate)
        return wave if len(wave) >= n else np.pad(wave, (0, n - len(wave)))

    def encode(self, waves: Sequence[np.ndarray]):
        """Padded batch encode -> (encoder output (B, T, D), output lengths (B,))."""
        import torch

        lens = torch.tensor([len(w) for w in waves], dtype=torch.long)
        x = torch.zeros(len(waves), int(lens.max()), dtype=torch.float32)
        for i, w in enumerate(waves):
            x[i, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
        enc, olens = self.asr.encode(x.to(self.device), lens.to(self.device))
        if isinstance(enc, tuple):  # intermediate CTC outputs
            enc = enc[0]
        return enc, olens

    def ctc_logp(self, enc) -> np.ndarray | None:
        """(T, D) encoder output -> (T, V) CTC log-probabilities, or None without CTC."""
        ctc = getattr(self.asr, "ctc", None)
        if ctc is None:
            return None
        return ctc.log_softmax(enc[None])[0].float().cpu().numpy()

    def beam_search(self, enc) -> tuple[str, list[int]]:
        """(T, D) encoder output -> (text, token ids) of the best hypothesis."""
        return self.beam_search_many([enc])[0]

    def beam_search_many(self, encs: Sequence) -> list[tuple[str, list[int]]]:
        """(T_u, D) encoder outputs -> (text, token ids) of each one's best hypothesis, the searches run
        together (``s4speech.asr.search``; the same hypotheses as one at a time)."""
        from s4speech.asr.search import recognize_many

        out = []
        for res in recognize_many(self.s2t, encs):  # ESPnet's own token/text conversion
            if not res:
                out.append(("", []))
                continue
            text, _tokens, token_int, _hyp = res[0]
            out.append(((text or "").strip(), list(token_int)))
        return out

    def tokens(self, ids: Sequence[int]) -> list[str]:
        return self.s2t.converter.ids2tokens(ids)
