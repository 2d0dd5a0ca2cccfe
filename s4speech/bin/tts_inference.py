"""Drop-in for ``espnet2.bin.tts_inference`` with s4speech's components registered (same options);
``Text2Speech`` is s4speech's, which also hands ``--threshold/--minlenratio/--maxlenratio`` to ``tts: ssm``."""
import espnet2.bin.tts_inference as _espnet

from s4speech.tts.inference import Text2Speech


def main(cmd=None):
    _espnet.Text2Speech = Text2Speech  # ESPnet's inference() builds it by this name
    _espnet.main(cmd)


if __name__ == "__main__":
    main()
