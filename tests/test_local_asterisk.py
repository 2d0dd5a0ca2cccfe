"""Data preparation of the Asterisk prompts corpus (local/asterisk.py).

Most tests run on small fake corpus trees laid out like the unpacked Debian
packages: one built from the mini AN4 audio in ../shared (no network needed),
one from a few real prompts when `fetch` can get the packages (else skipped).
"""
from __future__ import annotations

import gzip
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from s4speech.corpora import asterisk
from s4speech.corpora.asterisk import Prompt, fetch, normalize_text, prepare, read_prompts
from s4speech.io.kaldi import read_table

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
AN4 = SHARED / "data" / "mini_an4"
SOUNDS = Path("usr/share/asterisk/sounds/en_US_f_Allison")
TRANSCRIPT = Path("usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
SETS = ("train", "dev", "test")


def write_tree(root: Path, wavs: dict[str, bytes], transcript: str) -> Path:
    """A corpus tree like the unpacked packages: {prompt_id: WAV file bytes} and the transcript text."""
    for prompt_id, data in wavs.items():
        wav = root / SOUNDS / f"{prompt_id}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        wav.write_bytes(data)
    (root / TRANSCRIPT).parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(root / TRANSCRIPT, "wt", encoding="utf-8") as f:
        f.write(transcript)
    return root


def wav_bytes(path: Path, audio: np.ndarray, sr: int) -> bytes:
    sf.write(path, audio, sr, subtype="PCM_16", format="WAV")
    return path.read_bytes()


# --------------------------------------------------------------------------- the AN4-based fake tree

# Prompt id -> (AN4 utterance, transcript as in the real file: mixed case, punctuation, notes).
AN4_PROMPTS = {
    "yes": ("an251-fash-b", "Yes."),
    "go": ("an253-fash-b", "Go!"),
    "start": ("an152-mwhw-b", "Start [spoken quickly]"),
    "digits/cen8-fbbh-b": ("cen8-fbbh-b", None),
    "digits/cen8-mwhw-b": ("cen8-mwhw-b", None),
    "digits/cen8-fcaw-b": ("cen8-fcaw-b", None),
    "vm-date": ("cen8-mmxg-b", None),
    # the same audio again under other ids
    "letters/y": ("an251-fash-b", "Y, as in \"yes\""),
    "go-again": ("an253-fash-b", "Go (again)."),
    "dictate/start": ("an152-mwhw-b", "START: now"),
    "digits/h-11": ("cen8-fbbh-b", None),
    "digits/h-12": ("cen8-mwhw-b", None),
}
GOOD = sorted(AN4_PROMPTS)
# Written at AN4's 16 kHz, not resampled; "yes" is the test prompt with seed 0, so the
# long recordings must resample it.
AT_16K = {"yes", "letters/y", "go-again", "digits/h-11"}


def an4_texts() -> dict[str, str]:
    texts = {}
    for name in ("an4_train.transcription", "an4_test.transcription"):
        for line in (AN4 / "etc" / name).read_text().splitlines():
            words, utt = line.rsplit("(", 1)
            texts[utt.strip(" )")] = " ".join(w for w in words.split() if w not in ("<s>", "</s>"))
    return texts


@pytest.fixture(scope="module")
def an4_tree(tmp_path_factory) -> Path:
    """Fake corpus from mini AN4 audio, with every kind of bad entry in its transcript."""
    import librosa

    assert AN4.is_dir(), f"test data not found at {AN4}"
    work = tmp_path_factory.mktemp("an4_audio")
    texts = an4_texts()
    wavs: dict[str, bytes] = {}
    lines = ["; Core Asterisk Sounds in English (fake)", ""]
    for n, (prompt_id, (an4_id, text)) in enumerate(sorted(AN4_PROMPTS.items())):
        (sph,) = AN4.glob(f"wav/*/*/{an4_id}.sph")
        audio, sr = sf.read(sph, dtype="float32")
        if prompt_id not in AT_16K:  # most at 8 kHz, like the real prompts
            audio, sr = librosa.resample(audio, orig_sr=sr, target_sr=8000), 8000
        wavs[prompt_id] = wav_bytes(work / f"{n}.wav", audio, sr)
        lines.append(f"{prompt_id}: {text or texts[an4_id].capitalize() + '.'}")
    good = wavs["yes"]
    wavs["garbage"] = b"this is not a RIFF file" * 20
    wavs["truncated"] = good[:20]  # cut inside the header
    wavs["header-only"] = good[:44]  # a valid header, no samples
    wavs["beep"] = good
    (sph,) = AN4.glob("wav/*/*/cen7-fash-b.sph")  # AN4 has no transcript for it: our orphan wav
    wavs["orphan"] = wav_bytes(work / "orphan.wav", *sf.read(sph, dtype="float32"))
    lines[5:5] = ["this line has no colon at all"]
    lines += [
        "missing-prompt: This prompt has no recording.",
        "garbage: Garbage bytes.",
        "truncated: Cut short.",
        "header-only: No samples.",
        "beep: [this is a simple beep tone]",
        "yes: A second transcript for yes.",
        ": no prompt id",
    ]
    return write_tree(tmp_path_factory.mktemp("an4_tree"), wavs, "\n".join(lines) + "\n")


def read_dir(d: Path) -> dict[str, str]:
    """Check a Kaldi data dir for consistency; return its text table."""
    wav, text, utt2spk, spk2utt = (read_table(d / n) for n in ("wav.scp", "text", "utt2spk", "spk2utt"))
    assert list(text) == sorted(text) and list(wav) == sorted(wav) and list(utt2spk) == sorted(utt2spk)
    assert set(wav) == set(text) == set(utt2spk) and text
    assert set(utt2spk.values()) == {"f1"} and all(u.startswith("f1-") for u in text)
    assert spk2utt == {"f1": " ".join(sorted(text))}
    assert all(t and t == " ".join(t.split()) for t in text.values())
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in wav.values())
    assert not (d / "segments").exists()
    return text


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- tests


def test_normalize_text():
    assert normalize_text("Agent Logged off.") == "agent logged off"
    assert normalize_text("letters/at: at [@]") == "letters at at"
    assert normalize_text("IAX (note: does not say \"2\")") == "iax"
    assert normalize_text("Call-Forward on No Answer.") == "call forward on no answer"
    assert normalize_text("If you'd like... press 'one', 2 or  #") == "if you'd like press one 2 or"
    assert normalize_text("<beep ascending>") == ""
    assert normalize_text("[this is a simple beep tone]") == ""
    assert normalize_text("Dial 5 to allow_this") == "dial 5 to allow this"


def test_read_prompts_skips_bad_entries_with_warnings(an4_tree, caplog):
    assert fetch(an4_tree) == an4_tree  # an unpacked tree is used as it is
    caplog.set_level(logging.WARNING, logger="s4speech.corpora.asterisk")
    prompts = read_prompts(an4_tree)
    assert sorted(p.prompt_id for p in prompts) == GOOD
    assert all(isinstance(p, Prompt) and p.wav_path == an4_tree / SOUNDS / f"{p.prompt_id}.wav" for p in prompts)
    by_id = {p.prompt_id: p.text for p in prompts}
    assert by_id["yes"] == "yes"  # the first of the duplicates
    assert by_id["start"] == "start" and by_id["letters/y"] == "y as in yes" and by_id["dictate/start"] == "start now"
    assert by_id["digits/cen8-fcaw-b"] == "eleven twenty seven fifty seven"

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    transcript = str(an4_tree / TRANSCRIPT)
    assert all(w.startswith(transcript + ":") for w in warnings), warnings
    expected = {
        "no colon at all": "no ':'",
        "missing-prompt.wav": "no such wav file",
        "garbage.wav": "unreadable audio",
        "truncated.wav": "unreadable audio",
        "header-only.wav": "no samples",
        "beep.wav": "no words",
        "'yes'": "duplicate prompt id",
        "': no prompt id'": "bad prompt id",
    }
    for what, reason in expected.items():
        assert sum(what in w and reason in w for w in warnings) == 1, (what, reason, warnings)
    assert len(warnings) == len(expected)
    assert not any("orphan" in w for w in warnings)


def test_prepare_writes_consistent_disjoint_splits(an4_tree, tmp_path):
    counts = prepare(an4_tree, tmp_path / "data")
    texts = {s: read_dir(tmp_path / "data" / s) for s in SETS}
    assert counts == {s: len(texts[s]) for s in SETS}
    assert counts == {"train": 10, "dev": 1, "test": 1}
    ids = {s: set(texts[s]) for s in ("train", "dev", "test")}
    assert not (ids["train"] & ids["dev"] or ids["train"] & ids["test"] or ids["dev"] & ids["test"])
    assert ids["train"] | ids["dev"] | ids["test"] == {asterisk.utterance_id(p) for p in GOOD}
    assert "f1-digits_cen8-fcaw-b" in ids["train"] | ids["dev"] | ids["test"]
    expected_wavs = {asterisk.utterance_id(p): str(an4_tree / SOUNDS / f"{p}.wav") for p in GOOD}
    for s in ("train", "dev", "test"):
        wav_scp = read_table(tmp_path / "data" / s / "wav.scp")
        assert wav_scp == {u: expected_wavs[u] for u in wav_scp}

    # The dirs hold split_prompts' split; the same seed gives the same split, others may differ.
    split = asterisk.split_prompts(read_prompts(an4_tree), seed=0)
    assert {s: {asterisk.utterance_id(p.prompt_id) for p in split[s]} for s in ids} == ids
    other = asterisk.split_prompts(read_prompts(an4_tree), seed=1)
    assert sorted(p.prompt_id for ps in other.values() for p in ps) == GOOD
    assert {s: len(other[s]) for s in ids} == {"train": 10, "dev": 1, "test": 1}


def check_long(data: Path, targets, per_length: int = asterisk.LONG_PER_LENGTH) -> None:
    """test_long_<d>s recordings: per_length of each target, 8 kHz 16-bit, long enough, silent at the
    listed joins, texts the test prompts concatenated in order (going on across recordings)."""
    test_texts = list(read_dir(data / "test").values())
    for target in targets:
        d = data / f"test_long_{target:g}s"
        texts = read_dir(d)
        wavs = read_table(d / "wav.scp")
        joins = {k: [float(t) for t in v.split()] for k, v in read_table(d / "joins").items()}
        assert set(joins) == set(texts) and len(texts) == per_length
        assert list(texts) == [f"f1-long{target:g}s-{k:02d}" for k in range(per_length)]
        cursor = 0
        for utt_id, text in texts.items():
            assert Path(wavs[utt_id]).parent == (d / "wav").absolute()
            info = sf.info(wavs[utt_id])
            assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "PCM_16")
            assert info.duration >= target
            audio, _ = sf.read(wavs[utt_id], dtype="int16")
            times = joins[utt_id]
            assert times == sorted(times) and all(0 < t < info.duration for t in times)
            for t in times:  # the centre of a 0.3 s pause of digital silence
                c = round(t * 8000)
                assert not audio[c - 1000:c + 1000].any()
            n = len(times) + 1
            assert text == " ".join(test_texts[(cursor + i) % len(test_texts)] for i in range(n))
            cursor += n


def test_long_recordings(an4_tree, tmp_path):
    prepare(an4_tree, tmp_path / "short")
    assert list(read_table(tmp_path / "short/test/text")) == ["f1-yes"]  # a 16 kHz prompt: resampled
    assert sf.info(an4_tree / SOUNDS / "yes.wav").samplerate == 16000
    assert asterisk.long_form(tmp_path / "short/test", tmp_path / "short/test_long", (4, 9.5), per_length=3) == {4: 3, 9.5: 3}
    check_long(tmp_path / "short", (4, 9.5), per_length=3)
    # The defaults: 10 recordings each of 30, 60 and 120 s, the one ~1-3 s test prompt reused cyclically.
    prepare(an4_tree, tmp_path / "data")
    assert asterisk.long_form(tmp_path / "data/test", tmp_path / "data/test_long") == {30: 10, 60: 10, 120: 10}
    check_long(tmp_path / "data", (30, 60, 120))


def test_rerun_is_idempotent(an4_tree, tmp_path):
    data = tmp_path / "data"
    prepare(an4_tree, data)
    asterisk.long_form(data / "test", data / "test_long", (4, 9), per_length=2)
    first = snapshot(data)
    assert prepare(an4_tree, data) == {"train": 10, "dev": 1, "test": 1}
    assert asterisk.long_form(data / "test", data / "test_long", (4, 9), per_length=2) == {4: 2, 9: 2}
    assert snapshot(data) == first
    assert not any(".tmp" in name for name in first)
    # Fewer recordings replace the old ones instead of leaving stale ones.
    asterisk.long_form(data / "test", data / "test_long", (4,), per_length=1)
    assert [p.name for p in (data / "test_long_4s/wav").iterdir()] == ["f1-long4s-00.wav"]
    check_long(data, (4,), per_length=1)


def test_main_and_errors(an4_tree, tmp_path):
    assert asterisk.main(["--corpus_dir", str(an4_tree), "--data_dir", str(tmp_path / "data"), "--seed", "3"]) == 0
    assert sum(len(read_dir(tmp_path / "data" / s)) for s in ("train", "dev", "test")) == len(GOOD)
    with pytest.raises(RuntimeError, match="no usr/share/asterisk/sounds"):
        read_prompts(tmp_path)
    small = tmp_path / "small"
    shutil.copytree(an4_tree, small)
    write_tree(small, {}, "yes: Yes.\ngo: Go.\n")
    with pytest.raises(ValueError, match="at least 3 usable prompts"):
        prepare(small, tmp_path / "small_data")
    with pytest.raises(ValueError, match="durations must be positive"):
        asterisk.long_form(tmp_path / "data/test", tmp_path / "data/test_long", (30, 0))
    assert asterisk.main(["--long_form", str(tmp_path / "data/test"), "--data_dir", str(tmp_path / "data/test_long"),
                          "--durations", "5"]) == 0
    assert len(read_dir(tmp_path / "data/test_long_5s")) == asterisk.LONG_PER_LENGTH


# --------------------------------------------------------------------------- the real packages


@pytest.fixture(scope="session")
def real_root(tmp_path_factory) -> Path:
    """The real corpus, fetched with apt-get (or installed); the tests using it skip without it."""
    try:
        return fetch(tmp_path_factory.mktemp("asterisk"))
    except RuntimeError as e:
        pytest.skip(f"cannot fetch the Asterisk packages: {e}")


def test_real_packages(real_root):
    assert fetch(real_root) == real_root  # idempotent: nothing fetched again
    prompts = read_prompts(real_root)
    assert len(prompts) > 500
    by_id = {p.prompt_id: p for p in prompts}
    assert by_id["digits/1"].text == "one"
    assert by_id["letters/at"].text == "at"
    assert "pls-try-call-later" not in by_id  # transcript without a recording
    assert not any(i.startswith("silence/") for i in by_id)  # no words
    info = sf.info(by_id["digits/1"].wav_path)
    assert (info.samplerate, info.subtype) == (8000, "PCM_16")


def test_prepare_on_real_prompts(real_root, tmp_path):
    """A small tree of real prompt WAVs and their real transcript lines."""
    sounds = asterisk.sounds_dir(real_root)
    lines = gzip.open(asterisk.transcript_path(real_root), "rt", encoding="utf-8").read().splitlines()
    wanted = [f"digits/{i}" for i in range(10)] + ["letters/at", "spy-iax2", "vm-intro", "auth-thankyou", "beep"]
    picked = [line for line in lines if line.partition(":")[0] in wanted]
    assert len(picked) == len(wanted)
    tree = write_tree(tmp_path / "tree", {p: (sounds / f"{p}.wav").read_bytes() for p in wanted}, "\n".join(picked))
    counts = prepare(tree, tmp_path / "data")
    assert counts == {"train": 12, "dev": 1, "test": 1}  # 14 prompts: beep has no words
    asterisk.long_form(tmp_path / "data/test", tmp_path / "data/test_long", (5, 10), per_length=2)
    text = {**read_dir(tmp_path / "data/train"), **read_dir(tmp_path / "data/dev"), **read_dir(tmp_path / "data/test")}
    assert text["f1-digits_7"] == "seven" and text["f1-spy-iax2"] == "iax"
    assert text["f1-vm-intro"] == ("please leave your message after the tone when done hang up or press the pound key")
    check_long(tmp_path / "data", (5, 10), per_length=2)
