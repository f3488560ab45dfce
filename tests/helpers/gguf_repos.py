"""GGUF repos the fake hub serves in the pull and store tests: a repo with several quants (and a vision projector
that is not one), and a split model. Files are real GGUFs built on the fly (tests/helpers/gguf_bytes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.fake_hub import FakeHub
from tests.helpers.gguf_bytes import model_gguf

TINY = "Team-ACE/Tiny-GGUF"
TINY_FILES = {
    "README.md": b"# tiny",
    "tiny.Q4_K_M.gguf": model_gguf(15, fill=1),
    "tiny.Q8_0.gguf": model_gguf(7, fill=2),
    "tiny-IQ4_XS.gguf": model_gguf(30, fill=3),
    "mmproj-tiny-f16.gguf": model_gguf(1, fill=4),  # a vision projector: never offered as a quant
}
BIG = "Team-ACE/Big-GGUF"
BIG_PARTS = [f"Q4_K_M/big-Q4_K_M-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
BIG_FILES = {name: model_gguf(15, fill=i, split=(i, 3)) for i, name in enumerate(BIG_PARTS, 1)}


@pytest.fixture
def hub_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub: FakeHub) -> Path:
    """An empty TOOLACE_HOME whose pulls come from the fake hub, which serves TINY and BIG."""
    monkeypatch.setenv("TOOLACE_HOME", str(tmp_path / "home"))
    hub.repos |= {TINY: dict(TINY_FILES), BIG: dict(BIG_FILES)}
    return tmp_path / "home"


def resolve_gets(hub: FakeHub) -> list[tuple[str, str | None]]:
    """(file name, Range header) of every GET of a file, in order."""
    return [(path.split("/resolve/", 1)[1].split("/", 1)[1], rng) for method, path, rng in hub.requests
            if method == "GET" and "/resolve/" in path]


def store_files(home: Path) -> dict[str, bytes]:
    root = home / "models"
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.gguf")} if root.is_dir() else {}


