"""local/librispeech.py on a generated LibriSpeech-layout corpus (real speech from mini_an4, as FLAC)."""
import hashlib
import io
import logging
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from s4speech.corpora import librispeech as ls
from s4speech.io.kaldi import read_table

from helpers import LAYOUT, an4_utterances, corpus_cli, make_librispeech, write_chapter

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_librispeech(tmp_path_factory.mktemp("ls_corpus"))


def check_kaldi_dir(d: Path):
    """Every Kaldi file consistent; returns (wav, text, utt2spk, segments or None)."""
    names = ["wav.scp", "text", "utt2spk", "spk2utt"]
    for name in names:
        keys = [line.split(" ", 1)[0] for line in (d / name).read_text().splitlines()]
        assert keys == sorted(keys), f"{d / name} not sorted"
    wav, text, utt2spk, spk2utt = (read_table(d / n) for n in names)
    assert set(text) == set(utt2spk)
    assert all(t.strip() for t in text.values())
    for utt, spk in utt2spk.items():
        assert utt.startswith(spk)
    inverse = {}
    for utt, spk in utt2spk.items():
        inverse.setdefault(spk, []).append(utt)
    assert {s: u.split() for s, u in spk2utt.items()} == {s: sorted(u) for s, u in inverse.items()}
    segments = None
    if (d / "segments").exists():
        segments = {u: v.split() for u, v in read_table(d / "segments").items()}
        assert set(segments) == set(text)
        assert {v[0] for v in segments.values()} == set(wav)
        for rec, s, e in segments.values():
            assert 0 <= float(s) < float(e)
    else:
        assert set(wav) == set(text)
    for path in wav.values():
        assert Path(path).is_file(), path
    return wav, text, utt2spk, segments


def test_prepare_sets(corpus, tmp_path):
    root, expected = corpus
    counts = ls.prepare(root, tmp_path / "data", sets=("dev", "dev_clean", "test_clean", "train_100"))
    assert counts == {"dev": 7, "dev_clean": 5, "test_clean": 7, "train_100": 2}
    for name, parts in [("dev", ["dev-clean", "dev-other"]), ("test_clean", ["test-clean"]),
                        ("train_100", ["train-clean-100"])]:
        wav, text, utt2spk, segments = check_kaldi_dir(tmp_path / "data" / name)
        assert segments is None
        want = {utt: v for (utt, part), v in expected.items() if part in parts}
        assert set(text) == set(want)
        for utt, (spk, words, samples) in want.items():
            assert text[utt] == words
            assert utt2spk[utt] == spk
            assert Path(wav[utt]).name == f"{utt}.flac"
            x, sr = sf.read(wav[utt], dtype="int16")
            assert sr == 16000 and np.array_equal(x, samples)
    # corpus_dir may also be the LibriSpeech directory itself
    assert [u.utt_id for u in ls.prepare_part(root / "LibriSpeech", "dev-other")] == ["116-288045-0000", "116-288045-0001"]
    spk2utt = read_table(tmp_path / "data" / "dev" / "spk2utt")
    assert sorted(spk2utt) == ["116-288045", "1272-128104", "1272-135031"]
    assert spk2utt["1272-135031"].split() == ["1272-135031-0000", "1272-135031-0001"]


def test_part_names_match_espnet():
    assert ls.PARTS["train_960"] == ["train-clean-100", "train-clean-360", "train-other-500"]
    assert ls.PARTS["dev"] == ["dev-clean", "dev-other"]
    assert ls.PARTS["test_clean"] == ["test-clean"] and ls.PARTS["test_other"] == ["test-other"]
    assert set(ls.MD5) == set(ls.ALL_PARTS) == set(ls.EXPECTED_UTTS)
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in ls.MD5.values())


def test_missing_part_and_unknown_set(corpus, tmp_path):
    root, _ = corpus
    with pytest.raises(FileNotFoundError, match="train-clean-360"):
        ls.prepare(root, tmp_path / "data", sets=("train_960",), download_missing=False)
    with pytest.raises(ValueError, match="test_dirty"):
        ls.prepare(root, tmp_path / "data", sets=("test_dirty",))


def test_unreachable_download_is_one_clear_error(corpus, tmp_path):
    root, _ = corpus
    # a file:// base URL with no archive behind it: fails like an unreachable mirror, without network
    with pytest.raises(OSError, match=r"train-clean-360\.tar\.gz: download failed"):
        ls.download(root, ["train-clean-360"], base_url=(tmp_path / "mirror").as_uri())
    assert not (root / "train-clean-360.tar.gz").exists()


def test_malformed_input_is_skipped_with_warnings(tmp_path, caplog):
    an4 = an4_utterances()
    part = tmp_path / "LibriSpeech" / "test-other"
    d = write_chapter(part, "1688", "142285", [an4[i] for i in range(6)], trans_lines=[
        f"1688-142285-0000 {an4[0][1]}\n",
        # 0001: audio without transcript line
        f"1688-142285-0002 {an4[2][1]}\n",
        f"1688-142285-0003 {an4[3][1]}\n",
        "1688-142285-0004\n",  # malformed: no text
        f"1688-142285-0005 {an4[5][1]}\n",
        f"1688-142285-0009 {an4[6][1]}\n",  # transcript line without audio
        "1688-142285-000X SOME TEXT\n",  # malformed id
        f"1688-999999-0000 {an4[6][1]}\n",  # utterance of another chapter
        "\n",
    ])
    (d / "1688-142285-0002.flac").unlink()
    (d / "1688-142285-0003.flac").write_bytes(b"fLaC this is not a flac file" * 10)  # unreadable
    orphan = write_chapter(part, "2033", "164914", [an4[6]])
    (orphan / "2033-164914.trans.txt").unlink()  # chapter without transcript file
    with caplog.at_level(logging.WARNING, logger="s4speech.corpora.librispeech"):
        utts = ls.prepare_part(tmp_path, "test-other")
    assert [u.utt_id for u in utts] == ["1688-142285-0000", "1688-142285-0005"]
    assert [u.text for u in utts] == [an4[0][1], an4[5][1]]
    msgs = [r.getMessage() for r in caplog.records]

    def warned(*needles):
        return any(all(n in m for n in needles) for m in msgs)

    assert warned("1688-142285-0001.flac", "no transcript line")
    assert warned("1688-142285-0002", "no 1688-142285-0002.flac")
    assert warned("1688-142285-0009", "no 1688-142285-0009.flac")
    assert warned("1688-142285-0003.flac", "unreadable audio")
    assert warned("1688-142285.trans.txt:4", "malformed")
    assert warned("1688-142285.trans.txt:7", "malformed")
    assert warned("1688-142285.trans.txt:8", "not from chapter")
    assert warned("2033-164914.trans.txt", "missing transcript file")
    # the data dir written from them is consistent
    assert ls.prepare(tmp_path, tmp_path / "data", sets=("test_other",)) == {"test_other": 2}
    check_kaldi_dir(tmp_path / "data" / "test_other")


def test_duplicate_utterance_id_is_an_error(tmp_path):
    an4 = an4_utterances()
    write_chapter(tmp_path / "LibriSpeech" / "dev-clean", "84", "121123", [an4[0], an4[1]], trans_lines=[
        f"84-121123-0000 {an4[0][1]}\n", f"84-121123-0001 {an4[1][1]}\n", "84-121123-0000 AGAIN\n"])
    with pytest.raises(ValueError, match="84-121123-0000"):
        ls.prepare_part(tmp_path, "dev-clean")
    # the same id in two parts of one set
    write_chapter(tmp_path / "LibriSpeech" / "test-clean", "84", "121123", [an4[0]])
    write_chapter(tmp_path / "LibriSpeech" / "test-other", "84", "121123", [an4[2]])
    with pytest.raises(ValueError, match="84-121123-0000"):
        ls.write_kaldi_dir(tmp_path / "data", ls.prepare_part(tmp_path, "test-clean")
                           + ls.prepare_part(tmp_path, "test-other"))


def greedy_runs(durations, target):
    runs, run, total = [], [], 0.0
    for i, dur in enumerate(durations):
        run.append(i)
        total += dur
        if total >= target:
            runs.append(run)
            run, total = [], 0.0
    return runs


def test_long_form(corpus, tmp_path):
    root, expected = corpus
    ls.prepare(root, tmp_path / "data", sets=("test_clean",))
    counts = ls.long_form(tmp_path / "data" / "test_clean", tmp_path / "data" / "test_clean_long",
                          durations=(3, 6, 100))
    chapters = {"1089-134686": LAYOUT["test-clean"]["1089"]["134686"],
                "121-121726": LAYOUT["test-clean"]["121"]["121726"]}
    an4 = an4_utterances()
    durs = {c: [len(an4[i][0]) / 16000 for i in idx] for c, idx in chapters.items()}
    assert counts == {3: 3, 6: 1, 100: 0}
    assert not Path(f"{tmp_path}/data/test_clean_long_100s").exists()
    for d in (3, 6):
        out = tmp_path / "data" / f"test_clean_long_{d}s"
        wav, text, utt2spk, segments = check_kaldi_dir(out)
        assert segments is None
        lf_map = {k: v.split() for k, v in read_table(out / "long_form_map").items()}
        assert set(lf_map) == set(text)
        want = {}
        for chapter, ds in durs.items():
            for run in greedy_runs(ds, d):
                want[f"{chapter}-{run[0]:04d}_long{d}s"] = [f"{chapter}-{i:04d}" for i in run]
        assert lf_map == want
        for utt, sources in lf_map.items():
            assert utt2spk[utt] == sources[0].rsplit("-", 1)[0]  # grouped by chapter
            assert {s.rsplit("-", 1)[0] for s in sources} == {utt2spk[utt]}
            assert text[utt] == " ".join(expected[s, "test-clean"][1] for s in sources)
            x, sr = sf.read(wav[utt], dtype="int16")
            assert sr == 16000 and len(x) / sr >= d
            assert np.array_equal(x, np.concatenate([expected[s, "test-clean"][2] for s in sources]))
            assert Path(wav[utt]).parent == out / "wav"
        assert not list((out / "wav").glob(".*"))  # no temp files left


def test_download_skips_existing_and_verifies_archive(corpus, tmp_path):
    root, _ = corpus
    ls.download(root, ["dev-clean", "test-clean"])  # both there: no network needed
    with pytest.raises(ValueError, match="unknown LibriSpeech part"):
        ls.download(root, ["dev-dirty"])
    # a local archive (as a finished download): checksum, then extraction
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted((root / "LibriSpeech" / "dev-other").rglob("*")):
            tar.add(p, arcname=str(p.relative_to(root)), recursive=False)
    archive = tmp_path / "dev-other.tar.gz"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="MD5"):
        ls.download(tmp_path, ["dev-other"], md5={"dev-other": "0" * 32})
    assert not archive.exists()  # a corrupt archive is not kept
    archive.write_bytes(buf.getvalue())
    ls.download(tmp_path, ["dev-other"], md5={"dev-other": hashlib.md5(buf.getvalue()).hexdigest()})
    assert not archive.exists()
    assert len(ls.prepare_part(tmp_path, "dev-other")) == 2


def test_cli(corpus, tmp_path):
    root, _ = corpus
    assert corpus_cli("librispeech", root, tmp_path / "data", "dev", "test_clean") == ["dev", "7", "test_clean", "7"]
    check_kaldi_dir(tmp_path / "data" / "dev")


class RangeHandler(BaseHTTPRequestHandler):
    """Serves ``server.payload`` at any path, honouring ``Range: bytes=N-`` unless ``server.ignore_range``."""

    def do_GET(self):
        data = self.server.payload
        self.server.ranges.append(self.headers.get("Range"))
        rng = self.headers.get("Range")
        start = int(rng.split("=")[1].rstrip("-")) if rng and not self.server.ignore_range else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("ignore_range", [False, True])
def test_download_resumes_over_http(corpus, tmp_path, ignore_range):
    root, _ = corpus
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(root / "LibriSpeech" / "test-clean", arcname="LibriSpeech/test-clean")
    payload = buf.getvalue()
    server = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    server.payload, server.ignore_range, server.ranges = payload, ignore_range, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        half = len(payload) // 2
        (tmp_path / "test-clean.tar.gz.part").write_bytes(payload[:half])  # an interrupted transfer
        ls.download(tmp_path, ["test-clean"], base_url=f"http://127.0.0.1:{server.server_address[1]}/12",
                    md5={"test-clean": hashlib.md5(payload).hexdigest()})
    finally:
        server.shutdown()
        server.server_close()
    assert server.ranges == [f"bytes={half}-"]
    assert not list(tmp_path.glob("test-clean.tar.gz*"))
    assert len(ls.prepare_part(tmp_path, "test-clean")) == 7


def test_recipe_runner_prepares_formats_and_builds_long_form(corpus, tmp_path):
    """Stages 1-5 of the LibriSpeech recipe's runner on the generated layout (no download: parts exist)."""
    root, _ = corpus
    cmd = [sys.executable, "-m", "s4speech.recipe", "--corpus", "librispeech", "--corpus_dir", str(root),
           "--stage", "1", "--stop_stage", "5", "--train_set", "train_100", "--valid_set", "dev",
           "--test_sets", "test_clean", "--long_sets", "test_clean_long_5s", "--token_type", "unigram",
           "--nbpe", "20", "--fs", "16000", "--min_sec", "0.1"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    for s in ["train_100", "dev", "test_clean", "test_clean_long_5s"]:
        assert (tmp_path / "data" / s / ".done").exists()
        assert (tmp_path / "dump/raw" / s / "wav.scp").exists()
    long_text = read_table(tmp_path / "dump/raw/test_clean_long_5s/text")
    assert long_text and all(len(t.split()) > 1 for t in long_text.values())
    tokens = (tmp_path / "data/token_list/unigram20/tokens.txt").read_text().split()
    assert tokens[:2] == ["<blank>", "<unk>"] and tokens[-1] == "<sos/eos>" and len(tokens) > 10
    # a re-run finds every stage complete and leaves the outputs alone
    before = (tmp_path / "dump/raw/train_100/wav.scp").stat().st_mtime_ns
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "data: already prepared" in p.stderr
    assert (tmp_path / "dump/raw/train_100/wav.scp").stat().st_mtime_ns == before
