"""A plain (non-editable) install of the wheel runs a recipe's first stage from any folder: everything a
recipe needs (corpus preparation included) ships in the package."""
import os
import subprocess
import sys

from helpers import ROOT, make_librispeech


def test_wheel_runs_a_recipe_stage_from_another_folder(tmp_path):
    import shutil

    src = tmp_path / "src"  # a copy of what the wheel is built from: no stale build/ of the checkout
    shutil.copytree(ROOT / "s4speech", src / "s4speech", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.py", src / "setup.py")
    wheels = tmp_path / "wheels"
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                        str(src)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    (wheel,) = wheels.glob("s4speech-*.whl")
    site = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    root, _ = make_librispeech(tmp_path / "corpus")
    work = tmp_path / "elsewhere"
    work.mkdir()
    # the installed copy only: no checkout on the path (the venv's editable install is hidden by -I and PYTHONPATH)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import s4speech, runpy; assert s4speech.__file__.startswith(sys.argv[1]), "
            "s4speech.__file__; sys.argv = ['s4speech.recipe'] + sys.argv[2:]; runpy.run_module('s4speech.recipe', run_name='__main__')")
    p = subprocess.run([sys.executable, "-I", "-c", code, str(site), "--corpus", "librispeech", "--corpus_dir", str(root),
                        "--stage", "1", "--stop_stage", "1", "--train_set", "train_100", "--test_sets", "test_clean"],
                       cwd=work, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert p.returncode == 0, p.stderr[-3000:]
    assert (work / "data/train_100/wav.scp").exists() and (work / "data/test_clean/.done").exists()
