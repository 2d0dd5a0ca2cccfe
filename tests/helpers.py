"""Test helpers: corpora in their own layouts (LibriSpeech, CSJ, LJSpeech) made of real speech from
../shared/data (and Japanese speech from pyopenjtalk when installed), tiny configs, running a recipe's own
run.sh outside the repository."""
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from s4speech.corpora import csj
from s4speech.io.kaldi import Utterance

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SR = 16000
DEV_LECTURE = next(f"S02M{i:04d}" for i in range(1000) if csj.split_of(f"S02M{i:04d}") == "dev")


# ---- mini AN4 ---------------------------------------------------------------------------------------
def an4_utts(an4: Path, split: str, copies: int = 1):
    utts = []
    for line in (an4 / "etc" / f"an4_{split}.transcription").read_text().splitlines():
        m = re.match(r"(?:<s> )?(.*?)(?: </s>)? \((\S+)-(\S+)-(\S+)\)$", line.strip())
        text, prefix, spk, suffix = m.groups()
        wav = next((an4 / "wav").glob(f"*/{spk}/{prefix}-{spk}-{suffix}.sph"))
        for c in range(copies):
            utts.append(Utterance(f"{spk}-{prefix}-{suffix}-c{c}", spk, str(wav), text.lower()))
    return utts


def an4_utterances():
    """[(samples int16, TEXT)] for the 7 transcribed mini_an4 recordings, in a fixed order."""
    texts = {}
    for name in ("an4_train.transcription", "an4_test.transcription"):
        for line in (SHARED / "mini_an4" / "etc" / name).read_text().splitlines():
            words, _, utt = line.rpartition(" (")
            texts[utt.rstrip(")")] = " ".join(w for w in words.split() if w not in ("<s>", "</s>"))
    out = []
    for sph in sorted((SHARED / "mini_an4" / "wav").glob("*/*/*.sph")):
        if sph.stem not in texts:
            continue
        x, sr = sf.read(sph, dtype="int16")
        assert sr == 16000
        out.append((x, texts[sph.stem]))
    assert len(out) == 7
    return out


# part -> reader -> chapter -> indices into an4_utterances()
LAYOUT = {
    "dev-clean": {"1272": {"128104": [0, 1, 2], "135031": [3, 4]}},
    "dev-other": {"116": {"288045": [5, 6]}},
    "test-clean": {"1089": {"134686": [0, 1, 2, 3, 4]}, "121": {"121726": [5, 6]}},
    "train-clean-100": {"19": {"198": [6, 5]}},
}


def write_chapter(part_dir: Path, reader: str, chapter: str, items, trans_lines=None):
    d = part_dir / reader / chapter
    d.mkdir(parents=True, exist_ok=True)
    lines = []
    for n, (x, text) in enumerate(items):
        utt = f"{reader}-{chapter}-{n:04d}"
        sf.write(d / f"{utt}.flac", x, 16000, subtype="PCM_16")
        lines.append(f"{utt} {text}\n")
    (d / f"{reader}-{chapter}.trans.txt").write_text("".join(lines if trans_lines is None else trans_lines))
    return d


def make_librispeech(root: Path, layout: dict = LAYOUT):
    """A LibriSpeech-layout corpus of mini_an4 speech under root -> (root, {(utt, part): (speaker, text, samples)})."""
    an4 = an4_utterances()
    expected = {}  # utt -> (speaker, text, samples)
    for part, readers in layout.items():
        for reader, chapters in readers.items():
            for chapter, idx in chapters.items():
                write_chapter(root / "LibriSpeech" / part, reader, chapter, [an4[i] for i in idx])
                for n, i in enumerate(idx):
                    expected[f"{reader}-{chapter}-{n:04d}", part] = (f"{reader}-{chapter}", an4[i][1], an4[i][0])
    return root, expected




# ---- CSJ ---------------------------------------------------------------------------------------------
try:
    import pyopenjtalk
except ImportError:  # pragma: no cover - exercised where pyopenjtalk-plus is not installed
    pyopenjtalk = None

_speech_cache: dict[str, np.ndarray] = {}


def speech(text: str) -> np.ndarray:
    """int16 16 kHz speech for ``text``, a multiple of 1 ms long."""
    if text not in _speech_cache:
        if pyopenjtalk is not None:
            from scipy.signal import resample_poly

            w, sr = pyopenjtalk.tts(text)
            x = resample_poly(np.asarray(w, dtype=np.float64), SR, int(sr))
            x = np.round(x * (16000 / max(np.abs(x).max(), 1.0))).astype(np.int16)  # peak at -6 dBFS
        else:
            sphs = sorted((SHARED / "mini_an4" / "wav").glob("*/*/*.sph"))
            x, _ = sf.read(sphs[sum(map(ord, text)) % len(sphs)], dtype="int16")
        pad = (-len(x)) % (SR // 1000)
        _speech_cache[text] = np.concatenate([x, np.zeros(pad, np.int16)])
    return _speech_cache[text]


@dataclass
class IPU:
    words: list  # orthographic SDB forms, or (orthographic, katakana) pairs
    say: str  # what is synthesised
    gap: float  # pause before it, seconds (a multiple of 1 ms)
    ch: str = "L"
    start: float = 0.0
    end: float = 0.0
    extra: list = field(default_factory=list)  # raw lines inserted after the words


def sdb_line(lecture, n, ipu_no, ipu, orth, kana):
    time = f"{ipu_no:04d} {ipu.start:09.3f}-{ipu.end:09.3f} {ipu.ch}:-001-001"
    plain = orth.strip("()<>")
    cols = [lecture, f"{n:06d}", lecture, time, plain, orth, kana, plain, kana, plain, kana,
            "名詞", "", "", "", "", ""]
    assert len(cols) == 17
    return "\t".join(cols)


def build_lecture(corpus: Path, volume: str, lecture: str, ipus: list, encoding="cp932", wav=True):
    """Write MORPH/SDB/<volume>/<lecture>.sdb and the WAV(s); fills in each IPU's start/end."""
    t = 0.5
    for ipu in ipus:
        t = round(t + ipu.gap, 3)
        ipu.start, ipu.end = t, round(t + len(speech(ipu.say)) / SR, 3)
        t = ipu.end
    total = int(round((t + 0.5) * SR))
    channels = sorted({i.ch for i in ipus})
    audio = {ch: np.zeros(total, np.int16) for ch in channels}
    lines, n = [], 0
    for k, ipu in enumerate(ipus, 1):
        a = int(round(ipu.start * SR))
        x = speech(ipu.say)
        audio[ipu.ch][a:a + len(x)] = x
        for w in ipu.words:
            orth, kana = w if isinstance(w, tuple) else (w, w)
            n += 1
            lines.append(sdb_line(lecture, n, k, ipu, orth, kana))
        lines.extend(ipu.extra)
    sdb = corpus / "MORPH" / "SDB" / volume / f"{lecture}.sdb"
    sdb.parent.mkdir(parents=True, exist_ok=True)
    sdb.write_bytes(("\r\n".join(lines) + "\r\n").encode(encoding))
    if wav:
        wav_dir = corpus / "WAV" / volume
        wav_dir.mkdir(parents=True, exist_ok=True)
        for ch in channels:
            name = lecture if len(channels) == 1 else f"{lecture}-{ch}"
            sf.write(wav_dir / f"{name}.wav", audio[ch], SR, subtype="PCM_16")
    return audio


def eval1_ipus():
    return [
        IPU(["(F えー)", "今日", "は", "音声", "認識", "の", "話", "を", "し", "ます"], "えー今日は音声認識の話をします", 0.0),
        IPU(["(D こ)", "これ", "は", "<H>", "大切", "です"], "ここれは大切です", 0.2),
        IPU(["(A エーアイ;ＡＩ)", "を", "使い", "ます<H>"], "エーアイを使います", 1.0),
        IPU(["<笑>"], "ふふふ", 0.3),  # noise only: dropped
        IPU(["(W ウー;ウーン)", "そう", "です", "ね"], "ウーそうですね", 0.3),
        IPU(["(R ××)", "さん", "が"], "なになにさんが", 0.2),  # anonymised: dropped
        IPU(["次", "に", "(F あの"], "次にあの", 0.2),  # a filler tag left open...
        IPU(["ー)", "結果", "です"], "結果です", 0.8),  # ...closed in the next IPU: linked
    ]


def train_ipus():
    ipus = [IPU(["表", "の", "機能", "を", "見", "ます"], "表の機能を見ます", 0.0),
            IPU(["ソフト", "の", "能力", "です"], "ソフトの能力です", 0.1),
            IPU(["声", "を", "出し", "ます"], "声を出します", 0.1),
            IPU(["一・", "番", "目", "です"], "一番目です", 0.1),
            IPU(["最後", "の", "文", "です"], "最後の文です", 0.1),
            IPU(["これ", "は", "消え", "ます"], "これは消えます", 2.0)]
    # a malformed line (too few columns) inside the last IPU: that IPU is skipped
    ipus[-1].extra = ["A01F0055\t000099\tA01F0055"]
    return ipus


def dialogue_ipus():
    return [IPU(["はい", "そう", "です"], "はいそうです", 0.0, "L"),
            IPU(["そう", "です", "か"], "そうですか", 0.1, "R"),
            IPU(["(F ええ)", "そうです"], "ええそうです", 0.1, "L")]


def make_csj(root: Path):
    """A CSJ-layout corpus under root (lectures: eval1, train, dev, excluded, dialogue, EUC-JP, no audio,
    broken audio, undecodable SDB) -> (root, {lecture: (volume, ipus)}, {lecture: {channel: int16 audio}})."""
    lect = {
        "A01M0110": ("core", eval1_ipus()),
        "A01F0055": ("core", train_ipus()),
        DEV_LECTURE: ("noncore", [IPU(["開発", "用", "です"], "開発用です", 0.0),
                                  IPU(["(F まあ)", "以上", "です"], "まあ以上です", 0.4)]),
        "S05M0613": ("noncore", [IPU(["除外", "です"], "除外です", 0.0)]),
        "D01F0002": ("noncore", dialogue_ipus()),
        "A02M0004": ("noncore", [IPU(["ＥＵＣ", "で", "書か", "れ", "た", "講演"], "イーユーシーで書かれた講演", 0.0)]),
        "A02M0001": ("core", [IPU(["音声", "なし"], "音声なし", 0.0)]),
        "A02M0002": ("core", [IPU(["壊れ", "た", "音声"], "壊れた音声", 0.0)]),
    }
    audio = {}
    for lecture, (vol, ipus) in lect.items():
        audio[lecture] = build_lecture(root, vol, lecture, ipus, encoding="euc_jp" if lecture == "A02M0004" else "cp932",
                                       wav=lecture != "A02M0001")
    (root / "WAV" / "core" / "A02M0002.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")  # unreadable
    (root / "MORPH" / "SDB" / "core" / "A02M0003.sdb").write_bytes(bytes(range(0x80, 0x100)) * 4)  # undecodable
    sf.write(root / "WAV" / "core" / "A02M0003.wav", np.zeros(SR, np.int16), SR)
    return root, lect, audio




# ---- LJSpeech ------------------------------------------------------------------------------------------
def make_ljspeech(root: Path, clip: Path) -> Path:
    tree = root / "LJSpeech-1.1"
    (tree / "wavs").mkdir(parents=True)
    x, fs = sf.read(str(clip), dtype="int16")
    ids = [f"LJ001-{i:04d}" for i in range(1, 13)]
    for i, utt in enumerate(ids):
        sf.write(str(tree / "wavs" / f"{utt}.wav"), x[: fs // 2 + 100 * i], fs, subtype="PCM_16")
    (tree / "wavs" / "LJ009-0001.wav").write_bytes(b"not a wav file")
    lines = [f"{u}|Raw text {i}, with “quotes”.|Normalized text number {i}, with “quotes”." for i, u in enumerate(ids)]
    lines[3] = f"{ids[3]}|Mr. Smith paid $5.|"  # no normalized text: the raw one is used
    lines += ["malformed line without separators",
              "LJ001-0001|duplicate|duplicate",
              "LJ009-0002|no audio for this one|no audio for this one",
              "LJ009-0001|unreadable audio|unreadable audio",
              "LJ001-0005|||",  # a 4th field
              "../evil|bad id|bad id",
              ""]
    (tree / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root




# ---- tiny configs and running a recipe's own run.sh --------------------------------------------------
def tiny_asr_config(path: Path, decoder: str = "ssm", fs: int = 16000, n_mels: int = 20) -> Path:
    """A Conformer encoder (1 block) with the given decoder, small enough to train in seconds."""
    import yaml

    dec = {"ssm": dict(num_blocks=1, attention_heads=2, linear_units=32, dropout_rate=0.0, d_state=8, kernel="s4"),
           "transformer": dict(num_blocks=1, attention_heads=2, linear_units=32, dropout_rate=0.0)}[decoder]
    conf = dict(
        frontend="default", frontend_conf=dict(fs=fs, n_fft=512 if fs > 8000 else 256, hop_length=160 if fs > 8000 else 80, n_mels=n_mels),
        specaug=None, encoder="conformer",
        encoder_conf=dict(output_size=32, attention_heads=2, linear_units=32, num_blocks=1, input_layer="conv2d",
                          dropout_rate=0.0, cnn_module_kernel=3, macaron_style=True, use_cnn_module=True,
                          pos_enc_layer_type="rel_pos", selfattention_layer_type="rel_selfattn", rel_pos_type="latest"),
        decoder=decoder, decoder_conf=dec, model_conf=dict(ctc_weight=0.3),
        optim="adam", optim_conf=dict(lr=0.005), scheduler="warmuplr", scheduler_conf=dict(warmup_steps=5),
        batch_type="unsorted", batch_size=4, max_epoch=2, best_model_criterion=[["valid", "acc", "max"]],
        keep_nbest_models=2, num_att_plot=0, seed=0)
    path.write_text(yaml.safe_dump(conf))
    return path


def tiny_lm_config(path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(dict(
        lm="seq_rnn", lm_conf=dict(unit=16, nlayers=1), optim="adam", optim_conf=dict(lr=0.01),
        batch_type="unsorted", batch_size=8, max_epoch=1, best_model_criterion=[["valid", "loss", "min"]],
        keep_nbest_models=1, num_att_plot=0, seed=0)))
    return path


def tiny_decode_config(path: Path, lm_weight: float = 0.0) -> Path:
    # maxlenratio 0.3: an untrained model that never emits <eos> stops at 0.3 x the encoder frames
    path.write_text(f"beam_size: 2\nctc_weight: 0.3\nlm_weight: {lm_weight}\nmaxlenratio: 0.3\nminlenratio: 0.0\nnbest: 1\n")
    return path


def run_recipe(recipe: str, work: Path, *args, timeout: float = 1500) -> "subprocess.CompletedProcess":
    """``recipes/<recipe>/run.sh`` (e.g. "librispeech/asr1") copied to ``work/recipes/<recipe>/`` with the
    repository's conf/ beside it, run with this Python and the given options (they follow run.sh's own)."""
    import os
    import shutil
    import subprocess
    import sys

    dst = work / "recipes" / recipe
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "recipes" / recipe / "run.sh", dst / "run.sh")
    if not (work / "conf").exists():
        (work / "conf").symlink_to(ROOT / "conf")
    return subprocess.run(["bash", str(dst / "run.sh"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHON": sys.executable})


def tiny_tts_config(path: Path, fs: int = 8000) -> Path:
    """tts: ssm small enough to train in seconds, features at ``fs``."""
    import yaml

    n_fft, hop = (1024, 256) if fs > 16000 else (256, 80)
    path.write_text(yaml.safe_dump(dict(
        feats_extract="fbank",
        feats_extract_conf=dict(fs=fs, n_fft=n_fft, win_length=n_fft, hop_length=hop, n_mels=20, fmin=40, fmax=fs // 2),
        tts="ssm",
        tts_conf=dict(adim=32, aheads=2, elayers=1, eunits=64, dlayers=1, dunits=64, dprenet_units=32, postnet_layers=1,
                      postnet_chans=32, reduction_factor=3, d_state=8),
        optim="adam", optim_conf=dict(lr=0.005), scheduler="warmuplr", scheduler_conf=dict(warmup_steps=3),
        batch_type="unsorted", batch_size=4, max_epoch=1, best_model_criterion=[["valid", "loss", "min"]],
        keep_nbest_models=1, num_att_plot=0, seed=0)))
    return path


# ---- the demo corpus (Debian's asterisk prompts) ---------------------------------------------------------
def make_asterisk(root: Path, copies: int = 3) -> Path:
    """A tree laid out as the unpacked asterisk-core-sounds packages: the 7 transcribed mini_an4 recordings
    (real speech, resampled to the prompts' 8 kHz), each under ``copies`` prompt ids, and the gzipped
    transcript with ``<prompt id>: <text>`` lines."""
    import gzip

    import librosa

    from s4speech.corpora import asterisk

    sounds = root / asterisk.SOUNDS_DIR / asterisk.SOUNDS_SUBDIRS[0]
    lines = ["; fake core sounds made of mini AN4 recordings", ""]
    for n, (x, text) in enumerate(an4_utterances()):
        y = librosa.resample(x.astype(np.float32) / 32768, orig_sr=SR, target_sr=asterisk.SAMPLE_RATE)
        for c in range(copies):
            prompt = f"an4/u{n}-{c}"
            (sounds / prompt).parent.mkdir(parents=True, exist_ok=True)
            sf.write(sounds / f"{prompt}.wav", y, asterisk.SAMPLE_RATE, subtype="PCM_16")
            lines.append(f"{prompt}: {text.capitalize()}.")
    (root / asterisk.TRANSCRIPT_DIR).mkdir(parents=True, exist_ok=True)
    with gzip.open(root / asterisk.TRANSCRIPT_DIR / asterisk.TRANSCRIPT_NAMES[0], "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return root


def corpus_cli(corpus: str, root: Path, data_dir: Path, *sets: str) -> list[str]:
    """``python -m s4speech.corpora.<corpus> --corpus_dir root --data_dir data_dir --sets ...``: its output
    words (``<set> <utterances>`` pairs); the command must succeed."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", f"s4speech.corpora.{corpus}", "--corpus_dir", str(root),
                        "--data_dir", str(data_dir), "--sets", *sets], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()
