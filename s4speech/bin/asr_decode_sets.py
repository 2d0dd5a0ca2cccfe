"""Several of ESPnet's decoding runs in one process, so that ESPnet is imported once, not once per test set:

    python -m s4speech.bin.asr_decode_sets JOBS.json

JOBS.json: a list of ``espnet2.bin.asr_inference`` argument lists, run in order (same options as ESPnet's).
"""
import json
import sys
from pathlib import Path

from s4speech.bin.asr_inference import main as espnet_inference  # ESPnet's, with s4speech's CTC scorer


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m s4speech.bin.asr_decode_sets JOBS.json")
    for cmd in json.loads(Path(argv[0]).read_text(encoding="utf-8")):
        espnet_inference([str(c) for c in cmd])


if __name__ == "__main__":
    main()
