"""toolace.edge.prompt: a typed answer read so that SIGTERM and Ctrl-C are never slept through.

Python runs a signal's handler in the main thread, between bytecodes; its C-level handler only sets a flag. When
the flag is set while the main thread is about to block in read(2) (the moment a supervisor sees the prompt), or
the kernel delivers the signal to another thread, a plain input() sleeps until the next typed line: the flaky
`test_interrupted_cli_leaves_no_server_behind[sigterm]`. Here the second case is made certain: the main thread
blocks SIGTERM, so the kernel must hand it to the one other thread."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHILD = """
import signal, sys, threading
from toolace.edge import prompt, sigterm_unwinds
threading.Thread(target=threading.Event().wait, daemon=True).start()  # unblocked: the kernel's only choice
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # this thread's mask only (set after the start)
with sigterm_unwinds():
    print("answer:", prompt("run it? (y = yes, n = skip it, q = stop)", choices=["y", "n", "q"]), flush=True)
"""


def _until(proc: subprocess.Popen, text: bytes, limit: float = 60.0) -> bytes:
    """Read stderr until `text` shows up (a prompt has no newline); `limit` only bounds a hang."""
    seen = b""
    deadline = time.monotonic() + limit
    while text not in seen:
        ready, _, _ = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(proc.stderr.fileno(), 4096) if ready else b""  # type: ignore[union-attr]
        if not chunk:
            pytest.fail(f"never saw {text!r}; got {seen!r}")
        seen += chunk
    return seen


@pytest.mark.parametrize(("typed", "answer"), [(None, None), (b"y\n", "y"), (b"x\nn\n", "n")],
                         ids=["sigterm-on-another-thread", "typed-y", "invalid-then-n"])
def test_prompt_is_not_deaf_to_sigterm(typed: bytes | None, answer: str | None) -> None:
    """SIGTERM handled by another thread still ends the wait (SystemExit 143, which unwinds `finally` blocks); the
    near misses: a typed answer is returned, an answer outside the choices is asked again."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=Path(__file__).parent.parent)
    try:
        _until(proc, b"run it?")
        if typed is None:
            proc.send_signal(signal.SIGTERM)
        else:
            proc.stdin.write(typed)  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        proc.wait(timeout=60)  # bounds a hang only: a deaf prompt never returns
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = proc.stdout.read().decode()  # type: ignore[union-attr]
    if answer is None:
        assert proc.returncode == 128 + signal.SIGTERM and out == ""
    else:
        assert proc.returncode == 0 and out == f"answer: {answer}\n"
        if typed == b"x\nn\n":
            assert b"Error: 'x' is not one of 'y', 'n', 'q'." in proc.stderr.read()  # type: ignore[union-attr]
