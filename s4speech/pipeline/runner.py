"""The stage runner shared by every recipe: a stage table, skipping of finished stages, one main loop.

A recipe is a dataclass of settings (``pipeline.asr.ASRRecipe``, ``pipeline.tts.TTSRecipe``) and a
table ``{number: Stage}``. A stage whose outputs are complete is skipped on re-run (a ``.done``
marker is written last); training resumes from its last checkpoint; a failing stage stops the run
naming the stage and the cause (the traceback goes to the log).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from s4speech.io.files import atomic_write

log = logging.getLogger("s4speech.recipe")


class StageError(RuntimeError):
    """A stage that cannot go on; the message says why (and which log to read)."""


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable  # run(recipe) -> None


def done(path: Path) -> bool:
    return (Path(path) / ".done").exists()


def mark_done(path: Path) -> None:
    atomic_write(Path(path) / ".done", time.ctime() + "\n")


def _header(f, cmd) -> None:
    f.write(f"# {' '.join(map(str, cmd))}\n# started {time.ctime()}\n")
    f.flush()


def spawn(cmd: list, log_file: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``cmd`` with its output appended to ``log_file`` (the parent's handle is closed at once)."""
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", encoding="utf-8") as f:
        _header(f, cmd)
        return subprocess.Popen([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def log_tail(log_file: Path, n: int = 5) -> str:
    lines = Path(log_file).read_text(encoding="utf-8", errors="replace").strip().splitlines()[-n:]
    return "\n  ".join(lines)


def run(cmd: list, log_file: Path, what: str, env: dict | None = None) -> None:
    """Run a command with its output in log_file; a failure is a StageError quoting the log's tail."""
    log.info("%s: %s (log: %s)", what, " ".join(map(str, cmd)), log_file)
    rc = spawn(cmd, log_file, env).wait()
    if rc != 0:
        raise StageError(f"{what} failed (exit {rc}); see {log_file}:\n  {log_tail(log_file)}")


def run_all(jobs: list[tuple[list, Path, dict | None]], what: str) -> None:
    """Run commands in parallel (one log each); a failure names every failed job's log."""
    procs = [(spawn(cmd, lf, env), lf) for cmd, lf, env in jobs]
    failed = [lf for p, lf in procs if p.wait() != 0]
    if failed:
        raise StageError(f"{what} failed; see {', '.join(map(str, failed))}:\n  {log_tail(failed[0])}")


def run_stages(recipe, stages: dict[int, Stage], start: int, stop: int) -> int:
    """Run stages start..stop of the table; 0 on success, 1 (with one line naming the stage) on failure."""
    for n in range(start, stop + 1):
        if n not in stages:
            continue
        st = stages[n]
        log.info("stage %d: %s", n, st.name)
        t0 = time.time()
        try:
            st.run(recipe)
        except StageError as e:
            print(f"error: stage {n} ({st.name}): {e}", file=sys.stderr)
            return 1
        except Exception as e:  # noqa: BLE001 - name the stage, keep the traceback in the log
            log.exception("stage %d failed", n)
            print(f"error: stage {n} ({st.name}): {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        log.info("stage %d (%s) took %.1f s", n, st.name, time.time() - t0)
    return 0
