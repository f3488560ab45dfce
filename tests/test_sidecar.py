"""The sidecar contract (docs/embedding.md) with real child processes: `toolace serve --port 0` prints one JSON
line once ready and that URL answers; `--parent-pid` ends the server when its parent dies; SIGTERM mid-stream ends
it, cancelling the generation, with no child process left. Bounds below are liveness limits (a hang fails the
test), not speed targets: the measured time is in docs/embedding.md."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.helpers.procs import with_marker

TOOLACE = str(Path(sys.executable).parent / "toolace")
READY_SECONDS = 120  # loading the demo model on a loaded 2-core machine
EXIT_SECONDS = 15  # liveness bound for a stop that should take ~1 s


def _serve_args(gguf: Path, marker: str, *extra: str) -> list[str]:
    # the marker rides in --alias so the process can be found in /proc even after re-parenting
    return [TOOLACE, "serve", "--model", str(gguf), "--port", "0", "--n-ctx", "512", "--parallel", "1",
            "--alias", marker, *extra]


def _read_ready(proc: subprocess.Popen[str]) -> dict:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"no ready line (exit {proc.poll()})"
    return json.loads(line)


def _gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # our own child: reap it, or it lingers as a zombie
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return False


def test_port_zero_prints_a_url_that_answers_and_sigterm_mid_stream(smollm2_gguf: Path, tmp_path: Path) -> None:
    marker = f"sidecar-{uuid.uuid4().hex[:8]}"
    ready_file = tmp_path / "ready.json"
    proc = subprocess.Popen(_serve_args(smollm2_gguf, marker, "--ready-file", str(ready_file)),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        info = _read_ready(proc)
        assert info["pid"] == proc.pid and info["url"].startswith("http://127.0.0.1:")
        assert json.loads(ready_file.read_text()) == info
        assert httpx.get(f"{info['url']}/health", timeout=30).json()["status"] == "ok"
        body = {"model": "m", "stream": True, "max_tokens": 2000, "temperature": 0,
                "messages": [{"role": "user", "content": "Tell me a very long story."}]}
        with httpx.stream("POST", f"{info['url']}/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            for _ in range(4):  # it is streaming
                next(lines)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rest = list(lines)  # the stream ends (cut off by the shutdown), it does not hang
        assert proc.wait(timeout=EXIT_SECONDS) == 0
        print(f"SIGTERM mid-stream: exited in {time.monotonic() - t0:.2f} s, {len(rest)} more lines")
        assert not with_marker(marker)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_parent_death_ends_the_server(smollm2_gguf: Path, tmp_path: Path) -> None:
    marker = f"sidecar-{uuid.uuid4().hex[:8]}"
    ready = tmp_path / "ready.json"
    # a host app: starts the server as its child with --parent-pid, then is killed without cleaning up
    host = ("import os, subprocess, sys, time; "
            f"subprocess.Popen({_serve_args(smollm2_gguf, marker)!r} + "
            f"['--parent-pid', str(os.getpid()), '--ready-file', {str(ready)!r}], stdout=subprocess.DEVNULL, "
            "stderr=subprocess.DEVNULL); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", host])
    try:
        deadline = time.monotonic() + READY_SECONDS
        while not ready.exists():
            assert time.monotonic() < deadline and parent.poll() is None, "the server never became ready"
            time.sleep(0.1)
        child = json.loads(ready.read_text())["pid"]
        assert httpx.get(json.loads(ready.read_text())["url"] + "/health", timeout=30).status_code == 200
        parent.kill()
        parent.wait()
        assert _gone(child, EXIT_SECONDS), "the server outlived its parent"
        assert not with_marker(marker)
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in with_marker(marker):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(("args", "message"), [
    (["--parent-pid", "999999999"], "Error: --parent-pid 999999999: no such process\n"),
    (["--port", "70000"], "Error: port must be an integer in [0, 65535], got 70000\n"),
])
def test_bad_sidecar_flags(smollm2_gguf: Path, args: list[str], message: str) -> None:
    r = subprocess.run([TOOLACE, "serve", "--model", str(smollm2_gguf), *args], capture_output=True, text=True,
                       timeout=120)
    assert (r.returncode, r.stderr) == (2, message)
