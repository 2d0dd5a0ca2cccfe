"""A marked part of a text file: the lines between a begin and an end marker (HTML comments in Markdown).

What a benchmark writes into a hand-written file (README.md) goes there, and only there."""
from __future__ import annotations

from pathlib import Path

from s4speech.io.files import atomic_write


def between(text: str, begin: str, end: str) -> str | None:
    """The text between the first ``begin`` and the next ``end``; None if either marker is missing."""
    a = text.find(begin)
    if a < 0:
        return None
    a += len(begin)
    b = text.find(end, a)
    return None if b < 0 else text[a:b]


def replace_between(text: str, begin: str, end: str, body: str, missing: str = "append") -> str:
    """``text`` with the part between the markers replaced by ``body`` (on lines of its own).

    Without the markers: ``missing="append"`` adds the marked section at the end of ``text`` (the rest
    kept as it is); ``missing="error"`` raises ValueError. Never replaces a text without markers."""
    section = "\n" + body.strip("\n") + "\n"
    if between(text, begin, end) is not None:
        a = text.index(begin) + len(begin)
        return text[:a] + section + text[text.index(end, a):]
    if missing != "append":
        raise ValueError(f"no {begin} ... {end} section to replace")
    sep = "" if not text else ("\n" if text.endswith("\n") else "\n\n")
    return text + sep + begin + section + end + "\n"


def write_between(path: str | Path, begin: str, end: str, body: str, missing: str = "append") -> Path:
    """``replace_between`` on the file ``path`` (a missing file is created with the marked section), atomically."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return atomic_write(path, replace_between(text, begin, end, body, missing))
