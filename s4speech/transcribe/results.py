"""What a transcription returns: a Transcript per recording, its Segments, their Words (times in seconds)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Word:
    word: str
    start: float
    end: float


@dataclass
class Segment:
    start: float
    end: float
    text: str = ""
    words: list[Word] = field(default_factory=list)


@dataclass
class Transcript:
    path: str
    text: str = ""
    segments: list[Segment] = field(default_factory=list)
    duration: float = 0.0
    sample_rate: int = 0  # of the file; the model's rate is Model.sample_rate
    error: str | None = None  # one line, "<path>: <cause>", when the recording failed
    skipped: bool = False  # --resume found its outputs
    warnings: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None
