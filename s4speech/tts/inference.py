"""ESPnet's ``Text2Speech`` for ``tts: ssm`` too (``s4speech.bin.tts_inference`` runs ESPnet's CLI with it).

ESPnet's ``Text2Speech`` hands ``--threshold/--minlenratio/--maxlenratio`` only to its own
autoregressive models; the ``Text2Speech`` here is ESPnet's, also handing them to ``tts: ssm``.
"""
import espnet2.bin.tts_inference as _espnet

import s4speech  # noqa: F401  registers the 'ssm' components (tts: ssm)
from s4speech.tts.model import SSMTTS


class Text2Speech(_espnet.Text2Speech):
    def __init__(self, *args, threshold: float = 0.5, minlenratio: float = 0.0, maxlenratio: float = 10.0, **kwargs):
        super().__init__(*args, threshold=threshold, minlenratio=minlenratio, maxlenratio=maxlenratio, **kwargs)
        if isinstance(self.tts, SSMTTS):
            self.decode_conf.update(threshold=threshold, minlenratio=minlenratio, maxlenratio=maxlenratio)

