"""Interrupted conversions leave nothing at the output path; `pull` works from the hub cache offline and registers
the model; repo ids with path tricks are refused before any download."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.helpers.procs import interruptible
from toolace.cli_models import pull_cmd
from toolace.convert import store
from toolace.convert.hub import check_repo_id
from toolace.convert.info import info
from toolace.convert.pull import default_name, pull
from toolace.errors import DownloadError, InputError

REPO = Path(__file__).resolve().parent.parent


def _temps(folder: Path, name: str) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(f".{name}.")]


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=interruptible)


def _wait_for(proc: subprocess.Popen, folder: Path, name: str, min_bytes: int,
              skip_suffix: str | None = None) -> Path:
    """Wait until a temporary output of at least `min_bytes` is being written, and return it."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"finished before it could be interrupted: {proc.stderr.read().decode()[-500:]}"
        for p in _temps(folder, name):
            if skip_suffix and p.name.endswith(skip_suffix):
                continue
            try:
                if p.stat().st_size >= min_bytes:
                    return p
            except FileNotFoundError:
                continue
        time.sleep(0.005)
    raise AssertionError("no temporary output appeared")


def _convert_args(src: Path, out: Path, outtype: str) -> list[str]:
    return ["-c", "import sys; from toolace.convert.convert import convert; convert(*sys.argv[1:])",
            str(src), str(out), outtype]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_while_writing(tmp_path: Path, tiny_llama_dir: Path, sig: signal.Signals) -> None:
    out = tmp_path / "model.gguf"
    proc = _start(_convert_args(tiny_llama_dir, out, "f32"))  # 275 MB of output: long enough to catch mid-way
    part = _wait_for(proc, tmp_path, out.name, 20 * 2**20)
    proc.send_signal(sig)
    assert proc.wait(60) != 0
    assert not out.exists()
    if sig == signal.SIGINT:  # Python unwinds: the partial file is removed too
        assert _temps(tmp_path, out.name) == []
    else:  # nothing can run after SIGKILL: the partial file stays, under its temporary name only
        assert _temps(tmp_path, out.name) == [part]


def test_interrupted_while_llama_cpp_quantizes(tmp_path: Path, tiny_llama_dir: Path) -> None:
    out = tmp_path / "model.gguf"
    proc = _start(_convert_args(tiny_llama_dir, out, "Q4_K_M"))
    _wait_for(proc, tmp_path, out.name, 1, skip_suffix=".bf16.part")  # the quantizer's output has begun
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) != 0
    assert not out.exists() and _temps(tmp_path, out.name) == []


def test_killed_while_llama_cpp_quantizes(tmp_path: Path, tiny_llama_dir: Path) -> None:
    """SIGKILL cannot be cleaned up after: the temporary files may stay, but nothing ever appears at the output."""
    out = tmp_path / "model.gguf"
    proc = _start(_convert_args(tiny_llama_dir, out, "Q4_K_M"))
    _wait_for(proc, tmp_path, out.name, 1, skip_suffix=".bf16.part")
    proc.kill()
    assert proc.wait(60) == -signal.SIGKILL
    assert not out.exists() and all(p.name.startswith(f".{out.name}.") for p in tmp_path.iterdir())


def test_cli_sigterm_cleans_up(tmp_path: Path, tiny_llama_dir: Path) -> None:
    out = tmp_path / "model.gguf"
    proc = _start(["-c", "from toolace.cli_convert import convert_cmd; convert_cmd()",
                   str(tiny_llama_dir), "-o", str(out), "--outtype", "f32"])
    _wait_for(proc, tmp_path, out.name, 20 * 2**20)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 128 + signal.SIGTERM
    assert not out.exists() and _temps(tmp_path, out.name) == []


@pytest.mark.parametrize("bad", ["../etc", "a/../b", "/abs/path", "owner/name/extra", "owner", "own er/name",
                                 "owner/na;me", ".hidden/name", "owner/-name", "owner/name.", "a" * 97 + "/b",
                                 "owner/..", "", "owner/name\n"])
def test_repo_ids_with_tricks_refused(bad: str) -> None:
    with pytest.raises(InputError, match=r"is not a hub repo id"):
        check_repo_id(bad)


def test_repo_id_names() -> None:
    assert check_repo_id("Team-ACE/ToolACE-8B") == "Team-ACE/ToolACE-8B"
    assert default_name("Team-ACE/ToolACE-8B") == "toolace-8b"
    assert default_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "smollm2-135m-instruct"


@pytest.fixture
def offline_hub(tmp_path: Path, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hugging Face cache holding the tiny fixture as Team-ACE/ToolACE-8B, laid out as huggingface_hub lays out
    a download (refs/main -> snapshot folder of relative links into blobs/, LFS blobs named by their sha256, which
    `download` checks); HF_HUB_OFFLINE=1 so nothing is fetched."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--Team-ACE--ToolACE-8B"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap, blobs = repo / "snapshots" / commit, repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for f in tiny_llama_dir.iterdir():
        data = f.read_bytes()
        blob = blobs / (hashlib.sha256 if f.suffix == ".safetensors" else hashlib.sha1)(data).hexdigest()
        try:
            os.link(f, blob)  # a link, not a copy, where the fixture cache shares the file system
        except OSError:
            shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOOLACE_HOME", str(tmp_path / "home"))
    return snap


def test_pull_offline_converts_quantizes_registers(offline_hub: Path, tmp_path: Path) -> None:
    assert store.lookup("toolace-8b") is None and store.list_models() == []
    path = pull("Team-ACE/ToolACE-8B", quant="Q8_0")
    assert path == tmp_path / "home" / "models" / "toolace-8b-Q8_0.gguf"
    assert store.lookup("toolace-8b") == path
    [entry] = store.list_models()
    assert entry["name"] == "toolace-8b" and entry["size"] == path.stat().st_size
    summary = info(path)
    assert summary["file_type"] == "Q8_0" and summary["name"] == "ToolACE 8B"  # named after the repo, not the hash
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".") and p.suffix == ".part"] == []


def test_pull_errors(offline_hub: Path) -> None:
    with pytest.raises(DownloadError, match=r"Team-ACE/Other: not in the local cache and HF_HUB_OFFLINE is set"):
        pull("Team-ACE/Other")
    with pytest.raises(InputError, match=r"unknown quantization type 'Q3'"):
        pull("Team-ACE/ToolACE-8B", quant="Q3")
    result = CliRunner().invoke(pull_cmd, ["../../etc/passwd"])
    assert result.exit_code == 2 and "is not a hub repo id" in result.output
    result = CliRunner().invoke(pull_cmd, ["Team-ACE/Other", "-q", "Q8_0"])
    assert result.exit_code == 1 and "HF_HUB_OFFLINE is set" in result.output


def test_store_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOOLACE_HOME", str(tmp_path))
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    store.register("m-1", model)
    store.register("m-2", model)
    assert [m["name"] for m in store.list_models()] == ["m-1", "m-2"] and store.lookup("m-1") == model
    with pytest.raises(InputError, match=r"model name 'Bad/Name'"):
        store.register("Bad/Name", model)
    with pytest.raises(InputError, match=r"no such model file"):
        store.register("m-3", tmp_path / "absent.gguf")
    model.unlink()
    assert store.lookup("m-1") is None and store.list_models()[0]["size"] is None
    store.registry_path().write_text("{broken")
    from toolace.errors import ModelFileError

    with pytest.raises(ModelFileError, match=r"registry is not valid JSON"):
        store.list_models()
