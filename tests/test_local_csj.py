"""local/csj.py on a generated CSJ-layout corpus: Shift-JIS SDB files and lecture WAVs.

The speech is synthesised from the Japanese transcripts with pyopenjtalk
(package ``pyopenjtalk-plus``) when it is installed, else taken from
mini_an4 recordings; the assertions hold either way (they use the times the
fixture itself laid out).
"""
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from s4speech.corpora import csj
from s4speech.corpora.csj import normalize_words
from s4speech.io.kaldi import read_table

from helpers import DEV_LECTURE, IPU, SR, build_lecture, corpus_cli, make_csj

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # from pyopenjtalk's dictionary

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_csj(tmp_path_factory.mktemp("csj") / "CSJ")


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    root, lect, audio = corpus
    data = tmp_path_factory.mktemp("csj_data")
    handler = _Collect()
    logging.getLogger("s4speech.corpora.csj").addHandler(handler)
    try:
        counts = csj.prepare(root, data, sets=("train", "dev", "eval1"))
    finally:
        logging.getLogger("s4speech.corpora.csj").removeHandler(handler)
    return data, counts, handler.messages


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def check_kaldi_dir(d: Path):
    wav, text, utt2spk, spk2utt = (read_table(d / n) for n in ("wav.scp", "text", "utt2spk", "spk2utt"))
    segments = {u: v.split() for u, v in read_table(d / "segments").items()}
    assert set(text) == set(utt2spk) == set(segments)
    assert {rec for rec, _, _ in segments.values()} == set(wav)
    inverse = {}
    for utt, spk in utt2spk.items():
        assert utt.startswith(spk + "_")
        inverse.setdefault(spk, []).append(utt)
    assert {s: u.split() for s, u in spk2utt.items()} == {s: sorted(u) for s, u in inverse.items()}
    for utt, (rec, s, e) in segments.items():
        info = sf.info(wav[rec])
        assert 0 <= float(s) < float(e) <= info.frames / info.samplerate + 1e-3
    return wav, text, utt2spk, segments


def utt_id(spk, start, end):
    return f"{spk}_{round(start * 1000):07d}_{round(end * 1000):07d}"


def test_eval1_text_and_segmentation(corpus, prepared):
    root, lect, _ = corpus
    data, counts, _ = prepared
    wav, text, utt2spk, segments = check_kaldi_dir(data / "eval1")
    i = lect["A01M0110"][1]
    want = {
        utt_id("A01M0110", i[0].start, i[1].end): "えー今日は音声認識の話をしますここれは大切です",
        utt_id("A01M0110", i[2].start, i[2].end): "ＡＩを使います",
        utt_id("A01M0110", i[4].start, i[4].end): "ウーンそうですね",
        utt_id("A01M0110", i[6].start, i[7].end): "次にあのー結果です",
    }
    assert text == want
    assert counts["eval1"] == 4
    assert set(utt2spk.values()) == {"A01M0110"}
    assert list(wav.values()) == [str((root / "WAV" / "core" / "A01M0110.wav").resolve())]
    for utt, (rec, s, e) in segments.items():
        assert utt == utt_id("A01M0110", float(s), float(e))


def test_splits(corpus, prepared):
    root, lect, _ = corpus
    data, counts, _ = prepared
    spk = {name: set(read_table(data / name / "utt2spk").values()) for name in ("train", "dev", "eval1")}
    assert spk == {"train": {"A01F0055", "D01F0002-L", "D01F0002-R", "A02M0004"},
                   "dev": {DEV_LECTURE}, "eval1": {"A01M0110"}}
    assert counts == {"train": 5, "dev": 1, "eval1": 4}
    assert csj.split_of("S05M0613") == "excluded"
    assert all(len(v) == 10 for v in csj.EVAL.values())
    assert len({x for v in csj.EVAL.values() for x in v} | set(csj.EXCLUDED)) == 36
    assert csj.EVAL["eval1"] == ("A01M0110", "A01M0137", "A01M0097", "A04M0123", "A04M0121",
                                 "A04M0051", "A03M0156", "A03M0112", "A03M0106", "A05M0011")
    assert not any(csj.split_of(x) in ("dev", "train") for v in csj.EVAL.values() for x in v)
    # dev: fixed ~1 % of lecture ids
    ids = [f"A{a:02d}{g}{n:04d}" for a in range(1, 12) for g in "MF" for n in range(200)]
    frac = sum(csj.is_dev(x) for x in ids) / len(ids)
    assert 0.005 < frac < 0.02


def test_dev_merging_and_train_cap(corpus, prepared):
    root, lect, _ = corpus
    data, _, _ = prepared
    d = lect[DEV_LECTURE][1]
    _, text, _, _ = check_kaldi_dir(data / "dev")
    assert text == {utt_id(DEV_LECTURE, d[0].start, d[1].end): "開発用ですまあ以上です"}
    wav, text, utt2spk, segments = check_kaldi_dir(data / "train")
    t = lect["A01F0055"][1]
    a = {u: v for u, v in text.items() if u.startswith("A01F0055")}
    # 0.1 s pauses, all within 20 s: one utterance; the last IPU holds a malformed line
    assert a == {utt_id("A01F0055", t[0].start, t[4].end): "表の機能を見ますソフトの能力です声を出します一番目です最後の文です"}
    assert text[utt_id("A02M0004", *[lect["A02M0004"][1][0].start, lect["A02M0004"][1][0].end])] == "ＥＵＣで書かれた講演"


def test_max_duration_cap(corpus, tmp_path):
    root, lect, _ = corpus
    t = lect["A01F0055"][1]
    cap = t[2].end - t[0].start + 0.01  # three IPUs fit, four do not
    utts = csj.prepare_lecture(root, root / "MORPH/SDB/core/A01F0055.sdb", max_duration=cap)
    assert [(u.start, u.end) for u in utts] == [(t[0].start, t[2].end), (t[3].start, t[4].end)]
    assert [u.text for u in utts] == ["表の機能を見ますソフトの能力です声を出します", "一番目です最後の文です"]
    # max_gap: 0.1 s pauses are not merged below 0.1
    utts = csj.prepare_lecture(root, root / "MORPH/SDB/core/A01F0055.sdb", max_gap=0.05)
    assert len(utts) == 5
    assert all(u.end - u.start <= cap for u in utts)


def test_dialogue_channels(corpus, prepared):
    root, lect, _ = corpus
    data, _, _ = prepared
    wav, text, utt2spk, segments = check_kaldi_dir(data / "train")
    d = lect["D01F0002"][1]
    got = {u: (utt2spk[u], text[u], Path(wav[segments[u][0]]).name) for u in text if u.startswith("D01F0002")}
    assert d[2].start - d[0].end > 0.5  # L's two IPUs are farther apart than max_gap (R spoke between)
    assert got == {
        utt_id("D01F0002-L", d[0].start, d[0].end): ("D01F0002-L", "はいそうです", "D01F0002-L.wav"),
        utt_id("D01F0002-R", d[1].start, d[1].end): ("D01F0002-R", "そうですか", "D01F0002-R.wav"),
        utt_id("D01F0002-L", d[2].start, d[2].end): ("D01F0002-L", "ええそうです", "D01F0002-L.wav"),
    }


def test_bad_input_warnings(prepared):
    _, _, msgs = prepared

    def warned(*needles):
        return any(all(n in m for n in needles) for m in msgs)

    assert warned("A02M0001.sdb", "no WAV", "lecture skipped")
    assert warned("A02M0002.wav", "unreadable audio")
    assert warned("A02M0003.sdb", "not UTF-8, EUC-JP or Shift-JIS")
    assert warned("A01F0055.sdb:", "malformed line")
    assert not warned("A01M0110")  # nothing wrong with it


def test_shift_jis_decoding():
    text = "表示\t能力\tソフト\t(F えー)"  # 表, 能, ソ have 0x5C as second Shift-JIS byte
    raw = text.encode("shift_jis")
    assert b"\\" in raw
    assert csj.decode_sdb(raw) == text
    assert csj.decode_sdb(raw, "cp932") == text
    assert csj.decode_sdb(text.encode("euc_jp")) == text
    assert csj.decode_sdb(text.encode("utf-8")) == text
    with pytest.raises(csj.SdbError):
        csj.decode_sdb(b"\x82\xa0\xff\xfe")
    with pytest.raises(csj.SdbError):
        csj.decode_sdb(text.encode("utf-8"), "ascii")


@pytest.mark.parametrize("words,want", [
    (["(F えー)", "それ", "で"], "えーそれで"),
    (["(D こ)", "これ"], "ここれ"),
    (["<H>", "今日<Q>", "は", "<笑>", "<咳>", "<雑音>", "<P:00453.373-00454.013>"], "今日は"),
    (["(A エー", "ディー;ＡＤ)", "変換"], "ＡＤ変換"),
    (["(W ウー;ウーン)"], "ウーン"),
    (["(M (F うーん)", "それ", "だっ", "たら)", "と"], "うーんそれだったらと"),
    (["(? 行く,言う)"], "行く"),
    (["(笑 そう)", "です"], "そうです"),
    (["一・", "んーー", "ゎ", "ヮ"], "一んわワ"),
    (["(R ××)", "さん"], "××さん"),
])
def test_normalize_words(words, want):
    assert normalize_words(words) == want


def test_normalize_words_errors_and_separator():
    assert normalize_words(["(F えー)", "それ", "で"], " ") == "えー それ で"
    for bad in (["(F えー"], ["えー)"], ["(えー)"]):
        with pytest.raises(csj.SdbError):
            normalize_words(bad)


def test_kana_form(tmp_path):
    build_lecture(tmp_path, "core", "A03M0099", [
        IPU([("(F えー)", "(F エー)"), ("今日", "キョー"), ("は", "ワ"), ("(W 云う;言う)", "(W ユウ;イウ)")],
            "えー今日は言う", 0.0)])
    [u] = csj.prepare_lecture(tmp_path, tmp_path / "MORPH/SDB/core/A03M0099.sdb", form="kana")
    assert u.text == "エーキョーワイウ"
    [u] = csj.prepare_lecture(tmp_path, tmp_path / "MORPH/SDB/core/A03M0099.sdb")
    assert u.text == "えー今日は言う"


def test_duplicate_ids_are_errors(tmp_path):
    build_lecture(tmp_path, "core", "A03M0098", [IPU(["同じ"], "同じ", 0.0)])
    build_lecture(tmp_path, "noncore", "A03M0098", [IPU(["同じ"], "同じ", 0.0)])
    with pytest.raises(ValueError, match="A03M0098"):
        csj.find_lectures(tmp_path)
    # two IPUs with the same times (not adjacent in the file) -> the same utterance id
    other = tmp_path / "o"
    ipus = [IPU(["一"], "いち", 0.0), IPU(["二"], "に", 2.0)]
    build_lecture(other, "core", "A03M0097", ipus)
    sdb = other / "MORPH/SDB/core/A03M0097.sdb"
    lines = sdb.read_bytes().decode("cp932").splitlines()
    sdb.write_bytes(("\r\n".join(lines + [lines[0].replace("一", "三")]) + "\r\n").encode("cp932"))
    with pytest.raises(ValueError, match=utt_id("A03M0097", ipus[0].start, ipus[0].end)):
        csj.prepare(other, other / "data", sets=("train",), max_gap=0.0)


def test_long_form_by_lecture(corpus, prepared, tmp_path):
    root, lect, audio = corpus
    data, _, _ = prepared
    wav_in, text_in, _, seg_in = check_kaldi_dir(data / "train")
    counts = csj.long_form(data / "train", tmp_path / "train_long", durations=(2, 1000))
    assert counts[1000] == 0
    out = tmp_path / "train_long_2s"
    wav, text, utt2spk, segments = read_table(out / "wav.scp"), read_table(out / "text"), \
        read_table(out / "utt2spk"), None
    assert not (out / "segments").exists()
    lf_map = {k: v.split() for k, v in read_table(out / "long_form_map").items()}
    assert set(lf_map) == set(text) and counts[2] == len(text) > 0
    used = [s for v in lf_map.values() for s in v]
    assert used == sorted(used) and len(used) == len(set(used))
    for utt, sources in lf_map.items():
        spk = utt2spk[utt]
        assert all(s.startswith(spk + "_") for s in sources)  # one lecture/channel per recording
        assert text[utt] == "".join(text_in[s] for s in sources)
        x, sr = sf.read(wav[utt], dtype="int16")
        assert sr == SR and len(x) >= 2 * SR
        parts = []
        for s in sources:
            rec, a, b = seg_in[s]
            y, _ = sf.read(wav_in[rec], dtype="int16")
            parts.append(y[int(round(float(a) * SR)):int(round(float(b) * SR))])
        assert np.array_equal(x, np.concatenate(parts))
    # no lecture reaches 1000 s: that bucket is skipped
    assert not Path(f"{tmp_path}/train_long_1000s").exists()


def test_cli(corpus, tmp_path):
    root, _, _ = corpus
    assert corpus_cli("csj", root, tmp_path / "data", "eval1", "dev") == ["eval1", "4", "dev", "1"]
    check_kaldi_dir(tmp_path / "data" / "eval1")


def test_recipe_runner_stage1_to_3(corpus, tmp_path):
    """The CSJ recipe's runner: data preparation (with segments) and formatting without copying audio:
    the dumped set keeps the segments into the lecture WAVs, which ESPnet reads as `kaldi_segments`."""
    root, _, _ = corpus
    cmd = [sys.executable, "-m", "s4speech.recipe", "--corpus", "csj", "--corpus_dir", str(root),
           "--stage", "1", "--stop_stage", "3", "--train_set", "train", "--valid_set", "dev",
           "--test_sets", "eval1", "--fs", "16000"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    seg = read_table(tmp_path / "data/eval1/segments")
    rec_in = read_table(tmp_path / "data/eval1/wav.scp")
    dumped_seg = read_table(tmp_path / "dump/raw/eval1/segments")
    dumped_wav = read_table(tmp_path / "dump/raw/eval1/wav.scp")
    assert set(dumped_seg) == set(seg)
    n = {u: int(v) for u, v in read_table(tmp_path / "dump/raw/eval1/utt2num_samples").items()}
    for utt, value in seg.items():
        rec, s, e = value.split()
        rec2, s2, e2 = dumped_seg[utt].split()
        assert (float(s2), float(e2)) == (float(s), float(e))
        assert Path(dumped_wav[rec2]).resolve() == Path(rec_in[rec]).resolve()  # the lecture itself
        assert n[utt] == round(float(e) * SR) - round(float(s) * SR)
    assert not list((tmp_path / "dump").rglob("*.wav")) and not list((tmp_path / "dump").rglob("*.flac"))
    assert read_table(tmp_path / "dump/raw/eval1/text") == read_table(tmp_path / "data/eval1/text")
    # ESPnet's data loader reads the segments (registered by `import s4speech`)
    code = ("import s4speech, sys\nfrom espnet2.train.dataset import ESPnetDataset\n"
            "ds = ESPnetDataset([(sys.argv[1], 'speech', 'kaldi_segments')])\n"
            "print(' '.join(f'{k}:{len(ds[k][1][\"speech\"])}' for k in sorted(ds.loader_dict['speech'].keys())))")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dump/raw/eval1/segments")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    got = dict(x.split(":") for x in p.stdout.split())
    assert {u: int(v) for u, v in got.items()} == n
