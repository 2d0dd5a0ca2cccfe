"""Drop-in for ``espnet2.bin.asr_inference`` with s4speech's components registered (same options).

Its ``Speech2Text`` is ESPnet's, with s4speech's CTC prefix scorer in the batched beam search
(``s4speech.asr.ctc``: the same hypotheses as ESPnet's, a fraction of its time)."""
import espnet2.bin.asr_inference as _espnet

import s4speech  # noqa: F401  registers the 'ssm' components
from s4speech.asr.ctc import use_fast_ctc


class Speech2Text(_espnet.Speech2Text):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        use_fast_ctc(self)


_espnet.Speech2Text = Speech2Text  # ESPnet's inference() builds it by this name


def main(cmd=None):
    _espnet.main(cmd)


if __name__ == "__main__":
    main()
