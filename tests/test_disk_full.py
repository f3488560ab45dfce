"""Writes that fail midway (disk full, file too large): one clear error, nothing at any output path, no temp file
left, and a prompt-cache write that fails does not fail the answer. The failure is real: the command runs in a
subprocess under RLIMIT_FSIZE (SIGXFSZ ignored), so the kernel refuses the write that crosses the limit with EFBIG,
as a full disk refuses one with ENOSPC."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES

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
