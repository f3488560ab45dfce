"""Converted GGUFs shared by every test module of one pytest session (kept in the session's base temp folder,
so the F16 of the tiny fixture is made once however many modules ask for it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolace.convert.convert import convert


def converted(factory: pytest.TempPathFactory, checkpoint: Path, outtype: str) -> Path:
    out = factory.getbasetemp() / "converted" / f"{checkpoint.name}-{outtype}.gguf"
    if not out.exists():
        convert(checkpoint, out, outtype)
    return out
