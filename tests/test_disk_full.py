"""Writes that fail midway (disk full, file too large): one clear error, nothing at any output path, no temp file
left (a pull keeps only its resumable partial download), and a prompt-cache write that fails does not fail the
answer. The failure is real: the command runs in a
subprocess under RLIMIT_FSIZE (SIGXFSZ ignored), so the kernel refuses the write that crosses the limit with EFBIG,
as a full disk refuses one with ENOSPC."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from tests.helpers.fake_hub import FakeHub
from tests.helpers.gguf_repos import TINY, TINY_FILES, resolve_gets, store_files
from toolace import models
from toolace.convert import store

MB = 2**20

LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv = ["toolace", *sys.argv[2:]]
from toolace.cli import main
main()
"""


def _run(limit: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", LIMITED, str(limit), *args], capture_output=True, text=True,
                          timeout=300)


def _error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


def test_convert_into_a_full_disk(tiny_llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "tiny.gguf"
    proc = _run(4 * MB, "convert", str(tiny_llama_dir), "-o", str(out), "--outtype", "f16")
    assert proc.returncode == 1
    assert _error_line(proc) == f"Error: {out}: cannot write: File too large; nothing was written there"
    assert list(out.parent.iterdir()) == []
    ok = _run(1024 * MB, "convert", str(tiny_llama_dir), "-o", str(out), "--outtype", "f16")  # near miss
    assert ok.returncode == 0 and out.is_file(), ok.stderr[-2000:]


def test_convert_quantized_into_a_full_disk(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """The quantized path writes a 16-bit intermediate first; it hits the limit, and the same one line comes back
    as for the float path, with neither the intermediate nor the output left."""
    out = tmp_path / "out" / "tiny-q8.gguf"
    proc = _run(4 * MB, "convert", str(tiny_llama_dir), "-o", str(out), "--outtype", "Q8_0")
    assert proc.returncode == 1
    assert _error_line(proc) == f"Error: {out}: cannot write: File too large; nothing was written there"
    assert list(out.parent.iterdir()) == []
    ok = _run(1024 * MB, "convert", str(tiny_llama_dir), "-o", str(out), "--outtype", "Q8_0")  # near miss
    assert ok.returncode == 0 and [p.name for p in out.parent.iterdir()] == [out.name], ok.stderr[-2000:]


def test_pull_into_a_full_disk(hub_home: Path, hub: FakeHub) -> None:
    """A pulled GGUF that hits the limit: one line, nothing registered, and the bytes that made it kept for the
    next pull, which resumes from them."""
    proc = _run(100_000, "pull", f"{TINY}:Q4_K_M")  # a tag given: stderr holds the error line alone
    folder = hub_home / "models" / ".pulls" / "team-ace--tiny-gguf--q4_k_m"
    assert proc.returncode == 1
    assert _error_line(proc) == (f"Error: {folder}: cannot write: File too large; the 100,000 bytes downloaded are "
                                 "kept there for the same pull to resume (`toolace rm --partials` removes them)")
    assert store_files(hub_home) == {} and store.entry("tiny-gguf") is None
    assert models.pull(TINY)["size"] == len(TINY_FILES["tiny.Q4_K_M.gguf"])  # near miss: room again, it resumes
    assert resolve_gets(hub)[-1] == ("tiny.Q4_K_M.gguf", "bytes=100000-")


def test_quantize_into_a_full_disk(tiny_llama_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "q8.gguf"
    proc = _run(4 * MB, "quantize", str(tiny_llama_gguf), str(out), "--type", "Q8_0")
    assert proc.returncode == 1
    line = _error_line(proc)
    assert line.startswith(f"Error: {out}: cannot write the quantized file (disk full or file too large?): "), line
    assert line.endswith("; nothing was written there")
    assert list(tmp_path.iterdir()) == []
    ok = _run(1024 * MB, "quantize", str(tiny_llama_gguf), str(out), "--type", "Q8_0")
    assert ok.returncode == 0 and out.is_file(), ok.stderr[-2000:]


@pytest.mark.parametrize("limit", [64 * 1024, 1024 * MB])
def test_prompt_cache_on_a_full_disk_still_answers(smollm2_gguf: Path, tmp_path: Path, limit: int) -> None:
    """The cache write fails (no .kv file, no temp file) and the call still returns its valid call."""
    home = tmp_path / "home"
    code = LIMITED.replace("from toolace.cli import main\nmain()", f"""
import os
os.environ["TOOLACE_HOME"] = {str(home)!r}
import json
from toolace.api import ToolACE
ta = ToolACE.load({str(smollm2_gguf)!r}, n_ctx=2048)
tools = json.load(open({str(EXAMPLES / "weather.json")!r}))
r = ta.call("What's the weather like in Paris in celsius?", tools, "required", max_tokens=48)
print(json.dumps({{"valid": r.valid, "calls": r.calls}}))
""")
    proc = subprocess.run([sys.executable, "-c", code, str(limit)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["valid"] and result["calls"][0]["name"] == "get_weather"
    cache = home / "kv-cache"
    kv = sorted(p.name for p in cache.glob("*.kv")) if cache.is_dir() else []
    leftovers = [p.name for p in cache.iterdir() if p.name.startswith(".")] if cache.is_dir() else []
    assert leftovers == []
    if limit < MB:
        assert kv == [] and "prompt cache not written" in proc.stderr
    else:
        assert len(kv) == 1  # near miss: with room, the prefix is cached
