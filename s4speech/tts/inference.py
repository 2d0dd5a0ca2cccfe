"""ESPnet's ``Text2Speech`` for ``tts: ssm`` too (``s4speech.bin.tts_inference`` runs ESPnet's CLI with it).

ESPnet's ``Text2Speech`` hands ``threshold/minlenratio/maxlenratio`` only to its own autoregressive models
and ``use_att_constraint/backward_window/forward_window`` only to Tacotron 2; the ``Text2Speech`` here is
ESPnet's, also handing them -- and ``stop_on_attention/end_window`` -- to ``tts: ssm`` (see
``SSMTTS.inference``). Other models get what ESPnet gives them.
"""
import espnet2.bin.tts_inference as _espnet

import s4speech  # noqa: F401  registers the 'ssm' components (tts: ssm)
from s4speech.tts.model import SSMTTS

# the inference safeguards of tts: ssm and their defaults at the entry points (Text2Speech, the CLIs)
SAFEGUARDS = dict(use_att_constraint=False, backward_window=1, forward_window=3, stop_on_attention=True, end_window=3)


class Text2Speech(_espnet.Text2Speech):
    def __init__(self, *args, threshold: float = 0.5, minlenratio: float = 0.0, maxlenratio: float = 10.0,
                 use_att_constraint: bool = False, backward_window: int = 1, forward_window: int = 3,
                 stop_on_attention: bool = True, end_window: int = 3, **kwargs):
        super().__init__(*args, threshold=threshold, minlenratio=minlenratio, maxlenratio=maxlenratio,
                         use_att_constraint=use_att_constraint, backward_window=backward_window,
                         forward_window=forward_window, **kwargs)
        if isinstance(self.tts, SSMTTS):
            self.decode_conf.update(threshold=threshold, minlenratio=minlenratio, maxlenratio=maxlenratio,
                                    use_att_constraint=bool(use_att_constraint), backward_window=int(backward_window),
                                    forward_window=int(forward_window), stop_on_attention=bool(stop_on_attention),
                                    end_window=int(end_window))


def with_defaults(**defaults) -> type:
    """A ``Text2Speech`` whose constructor defaults are ``defaults`` (ESPnet's ``inference`` builds it with a fixed
    set of keywords; the options ESPnet's CLI lacks reach it this way)."""

    class Configured(Text2Speech):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**defaults, **kwargs})

    Configured.__name__ = Configured.__qualname__ = "Text2Speech"
    return Configured
