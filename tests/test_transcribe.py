"""`s4speech transcribe`: segmentation, bad inputs, atomic outputs, resume, formats, CLI -- on real speech.

The models are the tiny S4-decoder and Transformer-decoder systems of the shared ``asr_recipe_run``
fixture (8 kHz, 3 epochs on mini AN4: their transcripts are poor, so accuracy is not tested here;
the segmentation tests do not depend on the model)."""
import json
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import SHARED

import s4speech.transcribe as T
from s4speech.transcribe.segmentation import _cut
from s4speech.io.audio import AudioError, AudioReader, read
from s4speech.cli import main as cli_main

AN4 = sorted((SHARED / "mini_an4" / "wav").glob("*/*/*.sph"))
JFK = SHARED / "misc" / "jfk.flac"
LJ = SHARED / "misc" / "LJ050-0131.wav"
SRT_TIME = r"(\d\d):(\d\d):(\d\d),(\d\d\d)"
VTT_TIME = r"(\d\d):(\d\d):(\d\d)\.(\d\d\d)"


def _secs(m, i=0):
    h, mi, s, ms = (int(g) for g in m.groups()[4 * i: 4 * i + 4])
    return h * 3600 + mi * 60 + s + ms / 1000


@pytest.fixture(autouse=True)
def one_thread():
    """Decoding is many small ops: one thread is faster on 2 busy cores (and restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def models(asr_recipe_run):
    work, _ = asr_recipe_run
    return {"ssm": work / "exp" / "asr_asr_ssm", "transformer": work / "exp" / "asr_asr_transformer"}


@pytest.fixture(scope="module")
def ssm(models):
    return T.Model.load(models["ssm"], beam_size=2)


def _trim(x, rate, rel_db=30.0):
    """The speech of an utterance: first to last 10 ms frame within rel_db of its loudest frame."""
    hop = rate // 100
    n = len(x) // hop
    db = 10 * np.log10((x[: n * hop].reshape(n, hop).astype(np.float64) ** 2).mean(1) + 1e-12)
    idx = np.flatnonzero(db > db.max() - rel_db)
    return x[idx[0] * hop: (idx[-1] + 1) * hop]


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    """Real AN4 utterances (their speech only) joined by 0.5-1 s of low noise: (wav, speech spans in s)."""
    rate, rng = 16000, np.random.default_rng(0)
    noise = lambda sec: (rng.standard_normal(int(sec * rate)) * 10 ** (-65 / 20)).astype(np.float32)  # noqa: E731
    parts, spans, t = [noise(0.6)], [], 0.6
    for f in AN4:
        x = _trim(read(f, rate)[0], rate)
        spans.append((t, t + len(x) / rate))
        gap = noise(rng.uniform(0.5, 1.0))
        parts += [x, gap]
        t += (len(x) + len(gap)) / rate
    path = tmp_path_factory.mktemp("joined") / "joined.wav"
    sf.write(path, np.concatenate(parts), rate, subtype="PCM_16")
    return path, spans


def _check_joins(segs, spans, tol=0.3):
    segs = sorted(segs)
    for a, b in spans:  # every utterance starts and ends at a segment boundary (within tol)
        assert min(abs(s - a) for s, _ in segs) <= tol, (a, segs)
        assert min(abs(e - b) for _, e in segs) <= tol, (b, segs)
    for (_, b), (a, _) in zip(spans, spans[1:]):  # and no segment runs across a join
        mid = (b + a) / 2
        assert not any(s < mid - 0.05 and e > mid + 0.05 for s, e in segs), (mid, segs)


# ---- segmentation (no model) --------------------------------------------------------------------------
def test_segmenter_finds_the_joins_of_concatenated_utterances(joined):
    path, spans = joined
    for rate in (16000, 8000):  # at the file's rate and resampled
        segs = T.segment_file(path, rate)
        _check_joins(segs, spans)
        assert all(e - s <= 20.0 for s, e in segs)


def test_max_segment_splits_long_speech_at_pauses():
    segs = T.segment_file(JFK, 16000, max_segment=2.0)
    assert len(segs) >= 5
    assert all(0 < e - s <= 2.0 + 1e-6 for s, e in segs)
    assert all(b[0] >= a[1] - 1e-6 for a, b in zip(segs, segs[1:]))  # ordered, no overlap
    assert segs[0][0] < 0.5 and segs[-1][1] > 10.5  # the speech of the whole 11 s is covered


def test_memory_of_a_pass_does_not_grow_with_length(tmp_path):
    """Segmenting and cutting out segments holds blocks, not the recording: 2 vs 12 minutes."""
    rate = 8000
    x = np.concatenate([read(f, rate)[0] for f in AN4] + [np.zeros(rate // 2, np.float32)])
    peaks = []
    for minutes in (2, 12):
        path = tmp_path / f"{minutes}.wav"
        with sf.SoundFile(path, "w", rate, 1, "PCM_16") as f:
            for _ in range(int(minutes * 60 * rate / len(x)) + 1):
                f.write(x)
        tracemalloc.start()
        r = AudioReader(path, 16000)  # resampled on the way
        segs, _ = T.find_segments(r)
        spans = [(int(s * 16000), int(e * 16000)) for s, e in segs]
        n = sum(len(w) for _, w in _cut(r.blocks(), spans))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert len(segs) > minutes * 10 and n > 0.5 * minutes * 60 * 16000  # mostly speech
    assert peaks[1] < 1.3 * peaks[0] + 2e6, peaks  # 6x the audio, about the same peak (~ a few 10 s blocks)
    assert peaks[1] < 40e6  # 12 min at 16 kHz float32 would be 46 MB


def test_streamed_resampling_and_mixdown_match_one_shot():
    import soxr

    r = AudioReader(JFK, 16000)
    blocks = list(r.blocks())
    assert max(len(b) for b in blocks) <= 10.5 * 16000
    y = np.concatenate(blocks)
    x, rate = sf.read(JFK, dtype="float32")
    ref = soxr.resample(x.mean(axis=1), rate, 16000, quality="HQ")
    assert rate == 44100 and abs(len(y) - len(ref)) <= 1
    n = min(len(y), len(ref))
    assert np.max(np.abs(y[:n] - ref[:n])) < 1e-3


def test_ctc_alignment_recovers_a_long_token_path():
    rng = np.random.default_rng(1)
    V, L = 30, 160  # > 127 extended states
    tokens = rng.integers(1, V, L)
    tokens[10] = tokens[9]  # a repeat needs a blank between
    T_, spans, t = 0, [], 0
    for _ in tokens:
        t += int(rng.integers(1, 3))  # blanks
        d = int(rng.integers(1, 3))
        spans.append((t, t + d))
        t += d
    T_ = t + 2
    logp = np.full((T_, V), np.log(0.1 / (V - 1)))
    logp[:, 0] = np.log(0.9)
    for k, (a, b) in enumerate(spans):
        logp[a:b, :] = np.log(0.1 / (V - 1))
        logp[a:b, tokens[k]] = np.log(0.9)
    assert T.ctc_align(logp, tokens.tolist()) == spans
    assert T.ctc_align(logp[:L], tokens.tolist()) is None  # cannot fit


# ---- transcription through the models ----------------------------------------------------------------
def test_transcribe_api_segments_and_all_formats(ssm, joined, tmp_path):
    import s4speech

    path, spans = joined
    out = tmp_path / "out"
    (tr,) = s4speech.transcribe(ssm, [path], out_dir=out, formats="all", batch_size=4)
    assert tr.ok and not tr.skipped and tr.duration == pytest.approx(spans[-1][1] + 0.75, abs=0.3)
    _check_joins([(s.start, s.end) for s in tr.segments], spans)
    assert sorted(Path(p).name for p in tr.outputs) == ["joined.json", "joined.srt", "joined.txt", "joined.vtt"]
    cues = [s for s in tr.segments if s.text]

    doc = json.loads((out / "joined.json").read_text())
    assert set(doc) >= {"audio", "duration", "sample_rate", "model", "segmentation", "text", "segments"}
    assert doc["sample_rate"] == 16000 and doc["segmentation"] == "energy" and doc["audio"] == str(path)
    assert doc["text"] == tr.text == " ".join(s.text for s in cues)
    prev = 0.0
    for i, s in enumerate(doc["segments"]):
        assert set(s) == {"id", "start", "end", "text", "words"} and s["id"] == i
        assert prev <= s["start"] < s["end"] <= doc["duration"] + 1e-3
        prev = s["end"]
        for w in s["words"]:
            assert set(w) == {"word", "start", "end"} and s["start"] <= w["start"] <= w["end"] <= s["end"]
        if s["words"]:
            assert " ".join(w["word"] for w in s["words"]) == s["text"]

    srt = (out / "joined.srt").read_text()
    blocks = [b for b in srt.strip().split("\n\n") if b]
    assert len(blocks) == len(cues)
    for n, (b, seg) in enumerate(zip(blocks, cues), 1):
        idx, times, text = b.split("\n", 2)
        m = re.fullmatch(f"{SRT_TIME} --> {SRT_TIME}", times)
        assert idx == str(n) and m and text == seg.text
        assert _secs(m, 0) == pytest.approx(seg.start, abs=1e-3) and _secs(m, 1) == pytest.approx(seg.end, abs=1e-3)

    vtt = (out / "joined.vtt").read_text()
    head, *vblocks = vtt.strip().split("\n\n")
    assert head == "WEBVTT" and len(vblocks) == len(cues)
    for b, seg in zip(vblocks, cues):
        times, text = b.split("\n", 1)
        m = re.fullmatch(f"{VTT_TIME} --> {VTT_TIME}", times)
        assert m and text == seg.text and _secs(m, 0) < _secs(m, 1)

    assert (out / "joined.txt").read_text().splitlines() == [s.text for s in cues]
    assert not list(out.glob(".*"))  # no temp files


def test_no_segment_is_one_utterance_and_matches_speech2text(ssm, tmp_path):
    wav = AN4[2]
    (tr,) = T.transcribe(ssm, wav, segment=False, out_dir=tmp_path, formats="json")
    assert tr.ok and len(tr.segments) == 1
    assert tr.segments[0].start == 0 and tr.segments[0].end == pytest.approx(sf.info(wav).duration, abs=1e-3)
    x, _ = read(wav, ssm.sample_rate)
    assert tr.text == (ssm.s2t(x)[0][0] or "").strip()  # the same beam search on the whole file
    assert json.loads((tmp_path / f"{wav.stem}.json").read_text())["segmentation"] == "none"


def test_ctc_segmentation_with_the_transformer_model(models, joined):
    path, _ = joined
    (tr,) = T.transcribe(models["transformer"], [path], vad="ctc", max_segment=5.0, beam_size=1, word_times=False)
    assert tr.ok, tr.error
    segs = [(s.start, s.end) for s in tr.segments]
    assert all(0 <= s < e <= tr.duration + 1e-6 and e - s <= 5.0 + 1e-6 for s, e in segs)
    assert all(b[0] >= a[1] - 1e-6 for a, b in zip(segs, segs[1:]))
    if not segs:  # a 3-epoch model may see blanks only; then it says so
        assert any("no speech found" in w for w in tr.warnings)


def _bad_inputs(d: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, expected cause) for each kind of bad input, made from real speech."""
    x, rate = read(LJ)
    lj = d / "lj.wav"
    sf.write(lj, x, rate, subtype="PCM_16")
    b = lj.read_bytes()
    bad = {}
    bad["missing"] = (d / "missing.wav", "no such file")
    (d / "folder.wav").mkdir()
    bad["directory"] = (d / "folder.wav", "is a directory")
    (d / "empty.wav").write_bytes(b"")
    bad["empty"] = (d / "empty.wav", "empty file")
    sf.write(d / "header.wav", np.zeros(0, np.float32), rate)
    bad["header"] = (d / "header.wav", "header only")
    (d / "truncated.wav").write_bytes(b[: len(b) // 2])
    bad["truncated"] = (d / "truncated.wav", "truncated")
    fl = JFK.read_bytes()
    (d / "cut.flac").write_bytes(fl[: len(fl) // 3])
    bad["truncated_flac"] = (d / "cut.flac", "corrupt or truncated")
    (d / "corrupt.flac").write_bytes(b"fLaC" + bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)))
    bad["corrupt"] = (d / "corrupt.flac", "corrupt FLAC")
    (d / "notes.xyz").write_text("these are not audio samples\n" * 50)
    bad["unsupported"] = (d / "notes.xyz", "unsupported or unrecognised audio format")
    y = x.copy()
    y[rate * 2] = np.nan
    sf.write(d / "nan.wav", y, rate, subtype="FLOAT")
    bad["nan"] = (d / "nan.wav", "NaN or infinite")
    sf.write(d / "three.wav", np.stack([x[:rate]] * 3, 1), rate)
    bad["channels"] = (d / "three.wav", "3 channels")
    sf.write(d / "silence.wav", np.zeros(2 * rate, np.float32), rate)
    bad["silence"] = (d / "silence.wav", "silence only")
    sf.write(d / "short.wav", x[rate: rate + rate // 20], rate)
    bad["short"] = (d / "short.wav", "too short")
    return bad


def test_bad_inputs_each_fail_on_one_line_and_the_others_go_on(models, tmp_path, capsys):
    bad = _bad_inputs(tmp_path)
    an4, rate = read(AN4[3])
    clipped = tmp_path / "clipped.wav"
    sf.write(clipped, np.clip(an4 * 40, -1, 1), rate, subtype="PCM_16")
    good = AN4[4]
    out = tmp_path / "out"
    out.mkdir()
    old = {"nan": "earlier transcript of nan\n", "truncated_flac": "earlier transcript of cut\n"}
    for k, text in old.items():
        (out / f"{bad[k][0].stem}.txt").write_text(text)
    paths = [str(good)] + [str(p) for p, _ in bad.values()] + [str(clipped)]
    rc = cli_main(["transcribe", "--model", str(models["ssm"]), *paths, "--out_dir", str(out),
                   "--beam_size", "2", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == len(bad), err
    for (path, cause), line in zip(bad.values(), lines):
        assert line.startswith(f"error: {path}: ") and cause in line, (line, cause)
    assert any(l.startswith("warning:") and "clipped" in l and str(clipped) in l for l in err.splitlines()), err
    # the good and the clipped recordings were decoded; failed ones kept their earlier output intact
    assert (out / f"{good.stem}.txt").exists() and (out / "clipped.txt").exists()
    for k, text in old.items():
        assert (out / f"{bad[k][0].stem}.txt").read_text() == text
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{good.stem}.txt", "clipped.txt", "nan.txt", "cut.txt"])


def test_outputs_are_atomic_when_writing_fails(ssm, tmp_path):
    out = tmp_path / "out"
    wav = AN4[0]
    (out / f"{wav.stem}.json").mkdir(parents=True)  # the output path is taken by a directory
    (tr,) = T.transcribe(ssm, [wav], out_dir=out, formats="json")
    assert not tr.ok and tr.error.startswith(f"{wav}: ") and "\n" not in tr.error
    assert [p.name for p in out.iterdir()] == [f"{wav.stem}.json"]  # no temp file left behind


def test_resume_skips_done_recordings(models, tmp_path, capsys):
    out = tmp_path / "out"
    a, b = AN4[0], AN4[1]
    base = ["transcribe", "--model", str(models["ssm"]), "--out_dir", str(out), "--format", "srt,txt", "--beam_size", "1"]
    assert cli_main(base + [str(a)]) == 0
    done = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert sorted(done) == [f"{a.stem}.srt", f"{a.stem}.txt"]
    capsys.readouterr()
    assert cli_main(base + ["--resume", str(a), str(b)]) == 0
    err = capsys.readouterr().err
    assert "transcribed 1, skipped 1, failed 0" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in done} == done  # untouched
    assert (out / f"{b.stem}.srt").exists()
    (out / f"{a.stem}.txt").write_text("stale\n")
    assert cli_main(base + ["--resume", str(a)]) == 0
    assert (out / f"{a.stem}.txt").read_text() == "stale\n"  # an existing output is trusted
    assert cli_main(base + [str(a)]) == 0  # without --resume: written again
    assert (out / f"{a.stem}.txt").read_text() != "stale\n"


def test_packed_model_zip_and_cli_exit_codes(asr_recipe_run, models, tmp_path, monkeypatch, capsys):
    from espnet2.main_funcs.pack_funcs import pack

    work, _ = asr_recipe_run
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(work)  # ESPnet packs paths relative to the recipe dir
    zip_path = tmp_path / "ssm.zip"
    pack(files={"asr_model_file": "exp/asr_asr_ssm/valid.acc.ave.pth"},
         yaml_files={"asr_train_config": "exp/asr_asr_ssm/config.yaml"},
         option=["exp/asr_stats_char/train/feats_stats.npz"], outpath=str(zip_path))
    monkeypatch.chdir(tmp_path)
    wav = str(AN4[1])
    opts = ["--beam_size", "1", "--format", "json", "--quiet"]
    assert cli_main(["transcribe", "--model", str(zip_path), wav, "--out_dir", "z", *opts]) == 0
    assert cli_main(["transcribe", "--model", str(models["ssm"]), wav, "--out_dir", "d", *opts]) == 0
    z, d = (json.loads((tmp_path / o / f"{AN4[1].stem}.json").read_text()) for o in ("z", "d"))
    assert z["segments"] == d["segments"]  # the same weights give the same transcript
    capsys.readouterr()
    assert cli_main(["transcribe", "--model", str(tmp_path / "nomodel"), wav, *opts]) == 1
    assert "error: model" in capsys.readouterr().err
    assert cli_main(["transcribe", "--model", str(models["ssm"]), str(tmp_path / "nofile.wav"), *opts]) == 1
    assert f"error: {tmp_path / 'nofile.wav'}: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_main(["transcribe", wav])  # no --model
    assert e.value.code == 2


def test_a_file_given_twice_is_transcribed_and_reported_once(ssm, tmp_path, monkeypatch):
    """The same file under several spellings (relative, ./, absolute, a symlink) and a missing file given
    twice: one Transcript each, in order of first mention, with or without out_dir."""
    import s4speech.transcribe.api as api

    monkeypatch.chdir(tmp_path)
    x, rate = read(AN4[1])
    sf.write(tmp_path / "a.wav", x, rate, subtype="PCM_16")
    (tmp_path / "link.wav").symlink_to(tmp_path / "a.wav")
    calls = []
    real = api.transcribe_one
    monkeypatch.setattr(api, "transcribe_one", lambda m, path, *a, **k: calls.append(path) or real(m, path, *a, **k))
    paths = ["a.wav", "./a.wav", str(tmp_path / "a.wav"), "link.wav", "gone.wav", "./gone.wav"]
    for out_dir in (None, tmp_path / "out"):
        calls.clear()
        res = T.transcribe(ssm, paths, out_dir=out_dir, beam_size=1, word_times=False)
        assert [r.path for r in res] == ["a.wav", "gone.wav"], out_dir
        assert res[0].ok and not res[1].ok and "no such file" in res[1].error
        assert calls == ["a.wav", "gone.wav"], out_dir
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.txt"]


def test_options_dataclass_matches_the_keywords():
    """TranscribeOptions carries transcribe's keywords with the same defaults, and checks them."""
    import dataclasses
    import inspect

    sig = inspect.signature(T.transcribe).parameters
    fields = {f.name: f.default for f in dataclasses.fields(T.TranscribeOptions)}
    assert fields == {k: p.default for k, p in sig.items() if p.kind is p.KEYWORD_ONLY}
    assert T.TranscribeOptions(formats="srt,all").formats == ["srt", "txt", "vtt", "json"]
    assert T.TranscribeOptions(segment=False).segmentation == "none"
    for bad in ({"formats": "doc"}, {"vad": "webrtc"}, {"batch_size": 0}, {"max_segment": 1.0}, {"min_silence": 0}):
        with pytest.raises(ValueError):
            T.TranscribeOptions(**bad)


def test_import_stays_cheap_and_the_module_is_callable():
    code = ("import sys, s4speech; t = s4speech.transcribe; import s4speech.transcribe as m; "
            "assert t is m and callable(t) and m.main and 'espnet2.tasks.asr' not in sys.modules; "
            "from s4speech.cli import COMMANDS; assert COMMANDS['transcribe'][0] == 's4speech.transcribe'")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_audio_error_is_one_line_naming_the_file(tmp_path):
    f = tmp_path / "x.wav"
    f.write_bytes(b"RIFF" + b"\0" * 100)
    with pytest.raises(AudioError) as e:
        AudioReader(f, 16000)
    assert str(e.value).startswith(f"{f}: corrupt WAV") and "\n" not in str(e.value)


def test_benchmark_table_replaces_only_its_readme_section():
    from s4speech.bench.sections import replace_between
    from s4speech.bench.transcribe import BEGIN, END

    readme = f"# Title\n\nintro\n\n{BEGIN}\n| old | table |\n{END}\n\n## Next\ntext\n"
    new = replace_between(readme, BEGIN, END, "| new | table |")
    assert new == f"# Title\n\nintro\n\n{BEGIN}\n| new | table |\n{END}\n\n## Next\ntext\n"
    assert replace_between(new, BEGIN, END, "| new | table |") == new  # re-running is idempotent
    # a file without the markers keeps its text and gets the marked section appended
    assert replace_between("no markers here\n", BEGIN, END, "| t |") == f"no markers here\n\n{BEGIN}\n| t |\n{END}\n"


def test_int8_transcription_of_the_ssm_model(models, tmp_path):
    """--quantize: the Linear layers of encoder and decoder become int8 dynamic-quantized ones, and the S4
    decoder's step runs with them (it used to fail on quantized Linear layers)."""
    m = T.Model.load(models["ssm"], beam_size=2, quantize=True)
    kinds = {type(mod).__name__ for mod in m.asr.decoder.modules()}
    assert "Linear" in kinds and all(type(mod).__module__.startswith("torch.ao.nn.quantized")
                                     for mod in m.asr.decoder.modules() if type(mod).__name__ == "Linear")
    (res,) = T.transcribe(m, [str(JFK)], progress=False)
    assert res.error is None and res.segments
    rc = T.main(["--model", str(models["ssm"]), str(JFK), "--quantize", "--quiet", "--out_dir", str(tmp_path)])
    assert rc == 0 and (tmp_path / "jfk.txt").exists()


def test_segments_searched_together_get_the_hypotheses_they_get_alone(models):
    """The beam searches of a batch's segments run together (``Model.beam_search_many``): each segment's
    text and tokens are those of its own search, for the S4 and the Transformer decoder."""
    for name in ("ssm", "transformer"):
        m = T.Model.load(models[name], beam_size=3)
        waves = [m.padded(_trim(read(f, m.sample_rate)[0], m.sample_rate)) for f in AN4]
        with torch.no_grad():
            enc, olens = m.encode(waves)
            encs = [enc[j, : int(olens[j])] for j in range(len(waves))]
            alone = [m.beam_search(e) for e in encs]
            together = m.beam_search_many(encs)
        assert together == alone, name
        assert len(alone) > 1 and all(ids for _, ids in alone)
