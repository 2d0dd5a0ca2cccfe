import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from s4speech.io.kaldi import Utterance, write_kaldi_dir

from helpers import an4_utts

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CONFIGS = [ROOT / "conf/demo/asr_ssm.yaml", ROOT / "conf/demo/asr_transformer.yaml"]
os.environ.setdefault("OMP_NUM_THREADS", "2")
warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED.is_dir(), f"test data not found at {SHARED}"
    return SHARED


@pytest.fixture(scope="session")
def asr_recipe_run(tmp_path_factory, shared_data):
    """Tiny S4-decoder and Transformer-decoder systems trained and decoded through ESPnet on mini AN4.

    Returns (work dir, completed process); models in work/exp/asr_asr_ssm and work/exp/asr_asr_transformer."""
    work = tmp_path_factory.mktemp("an4")
    an4 = shared_data / "mini_an4"
    write_kaldi_dir(work / "data/train", an4_utts(an4, "train", copies=8))
    write_kaldi_dir(work / "data/dev", an4_utts(an4, "test", copies=2))
    test = an4_utts(an4, "test")
    write_kaldi_dir(work / "data/test", test)
    # a long-form set: the test utterances joined into one recording
    import numpy as np
    import soundfile as sf

    parts = [sf.read(u.audio, dtype="float32")[0] for u in test]
    (work / "long").mkdir()
    sf.write(work / "long/rec.wav", np.concatenate([np.r_[p, np.zeros(8000, np.float32)] for p in parts]), 16000)
    write_kaldi_dir(work / "data/test_long", [Utterance("long-rec", "long", str(work / "long/rec.wav"),
                                                        " ".join(u.text for u in test))])
    cmd = [sys.executable, "-m", "s4speech.recipe", "--corpus", "none", "--stage", "3", "--stop_stage", "11",
           "--long_sets", "test_long", "--datadir", "data", "--dumpdir", "dump", "--expdir", "exp", "--nj", "1",
           "--inference_config", str(ROOT / "conf/demo/decode.yaml"),
           "--train_args", "--max_epoch 3 --batch_bins 200000 --scheduler_conf warmup_steps=10 --specaug none"]
    for c in CONFIGS:
        cmd += ["--asr_config", str(c)]
    p = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return work, p


