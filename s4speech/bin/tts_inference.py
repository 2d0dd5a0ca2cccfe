"""Drop-in for ``espnet2.bin.tts_inference`` with s4speech's components registered (same options, plus the
``tts: ssm`` safeguards ESPnet's parser lacks: ``--stop_on_attention``, ``--end_window``). ``Text2Speech`` is
s4speech's, which also hands ``--threshold/--minlenratio/--maxlenratio`` and ESPnet's Tacotron 2 options
``--use_att_constraint/--backward_window/--forward_window`` to ``tts: ssm``."""
import sys

import espnet2.bin.tts_inference as _espnet
from espnet2.utils.types import str2bool
from espnet.utils.cli_utils import get_commandline_args

from s4speech.tts.inference import SAFEGUARDS, with_defaults

OURS = ("stop_on_attention", "end_window")  # the options ESPnet's inference() does not take


def get_parser():
    parser = _espnet.get_parser()
    group = parser.add_argument_group("tts: ssm decoding")
    group.add_argument("--stop_on_attention", type=str2bool, default=SAFEGUARDS["stop_on_attention"],
                       help="tts: ssm: let the stop token end the output only once the attention of the guided "
                            "heads has reached the end of the text (or at --maxlenratio)")
    group.add_argument("--end_window", type=int, default=SAFEGUARDS["end_window"],
                       help="tts: ssm: the attention has reached the end within this many tokens of <eos>")
    return parser


def main(cmd=None):
    print(get_commandline_args(), file=sys.stderr)
    kwargs = vars(get_parser().parse_args(cmd))
    kwargs.pop("config", None)
    ours = {k: kwargs.pop(k) for k in OURS}
    _espnet.Text2Speech = with_defaults(**ours)  # ESPnet's inference() builds it by this name
    _espnet.inference(**kwargs)


if __name__ == "__main__":
    main()
