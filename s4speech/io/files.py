"""Atomic file writes: a reader sees either the old file or the whole new one, never a part."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_output(path: str | os.PathLike, write: Callable[[str], None], mode: int = 0o644) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it onto ``path``.

    The temporary file keeps the suffix of ``path`` (writers such as soundfile pick the format from it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write(path: str | os.PathLike, content: str) -> Path:
    """Write a UTF-8 text file atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(content)

    return atomic_output(path, write)
