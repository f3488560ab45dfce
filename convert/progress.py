"""What a pull reports while it downloads (convert/pull_gguf.py): a small module of its own, so an app or the CLI
can name the type without importing the download machinery."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class PullProgress:
    """What a progress callback receives, after every chunk written: bytes of the whole pull (all parts)."""

    file: str
    done: int
    total: int
    rate: float  # bytes per second since this pull started (resumed bytes excluded)
    eta: float | None  # seconds left at that rate; None before the first byte

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


ProgressCallback = Callable[[PullProgress], None]
