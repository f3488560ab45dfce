"""`toolace list`, `show` and `rm` on models pulled from the fake hub, their exact output and their --json; a pull
interrupted by SIGINT in a real `toolace pull` process; and the leftovers a `kill -9` during a conversion leaves,
which `rm --partials` sweeps only once nobody is writing them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.helpers.fake_hub import CHUNK, COMMIT, FakeHub, sha256_hex
from tests.helpers.gguf_repos import BIG, TINY, TINY_FILES, resolve_gets
from tests.helpers.procs import interruptible
from toolace import models, probes
from toolace.cli import main
from toolace.cli_models import human_bytes
from toolace.convert import store
from toolace.convert.gguf_files import DEFAULT_QUANT_WHY
from toolace.errors import DownloadCancelled
from toolace.runtime.refs import resolve_model

GIB = 2**30
Q4 = "tiny.Q4_K_M.gguf"


def _cancelled_partial(quant: str, name: str) -> None:
    """A pull of TINY:quant stopped after its first chunk: a partial download of CHUNK bytes."""
    cancel = threading.Event()
    with pytest.raises(DownloadCancelled):
        models.pull(f"{TINY}:{quant}", name=name, cancel=cancel, progress=lambda p: cancel.set())


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_list_show_rm(hub_home: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _cli("list") == (0, "no models yet: `toolace pull REPO[:QUANT]` adds one\n")
    models.pull(TINY)
    models.pull(BIG)
    _cancelled_partial("Q8_0", "tiny-q8")
    rev = COMMIT[:7]
    assert _cli("list") == (0, "\n".join([
        "NAME       SOURCE                      QUANT   SIZE             SHA256        LAST USED",
        f"big-gguf   Team-ACE/Big-GGUF@{rev}   Q4_K_M  601 kB           463238e1a599  never",
        f"tiny-gguf  Team-ACE/Tiny-GGUF@{rev}  Q4_K_M  201 kB           903fe5409546  never",
        f"tiny-q8    Team-ACE/Tiny-GGUF@{rev}  Q8_0    66 kB of 201 kB  partial       -",
    ]) + "\n")
    rows = json.loads(_cli("list", "--json")[1])
    assert [(r["name"], r["state"], r.get("size"), r.get("downloaded")) for r in rows] == [
        ("big-gguf", "ready", 601184, None), ("tiny-gguf", "ready", 200768, None),
        ("tiny-q8", "partial", 200768, CHUNK)]

    monkeypatch.setattr(probes, "available_memory_bytes", lambda: 8 * GIB)
    path = hub_home / "models" / "tiny-gguf" / Q4
    # At 1024 tokens: KV 2 layers x 1024 x 8 values x 2 bytes = 32 KiB; compute: scores 2 x 1024 x 64 x 4 + mask
    # 1024 x 64 x 4 + activations 64 x (5 x 8 + 2 x 16) x 4 + one logits row 4 x 4 = 786 KiB; vocabulary 4 x 550 B.
    assert _cli("show", "tiny-gguf", "--n-ctx", "1024") == (0, "\n".join([
        "name:            tiny-gguf",
        f"path:            {path}",
        f"source:          Team-ACE/Tiny-GGUF@{rev}",
        f"sha256:          {sha256_hex(TINY_FILES[Q4])}",
        "architecture:    llama",
        "parameters:      50,000",
        "quant:           Q4_K_M",
        "size:            201 kB",
        "context:         4,096 tokens (trained)",
        "chat template:   Llama 3, 250 characters",
        "tool calling:    no (toolace adds the tools itself)",
        "memory at 1,024: 1.0 MiB (weights 0.2 MiB + KV cache 0.0 MiB f16 + compute 0.8 MiB + tokenizer 0.0 MiB)",
        "available:       8.00 GiB",
    ]) + "\n")
    shown = json.loads(_cli("show", "big-gguf", "--json")[1])
    assert shown["files"] == [str(hub_home / "models" / "big-gguf" / f"big-Q4_K_M-0000{i}-of-00003.gguf")
                              for i in (1, 2, 3)]
    assert shown["memory"]["kv_cache"] == 2 * 8192 * 8 * 2 and shown["template"]["family"] == "Llama 3"

    assert _cli("rm", "tiny-gguf") == (0, "removed tiny-gguf: freed 201 kB\n")
    assert not (hub_home / "models" / "tiny-gguf").exists() and store.entry("tiny-gguf") is None
    assert _cli("rm", "tiny-gguf") == (2, "Error: no model named 'tiny-gguf' in the store (`toolace list` shows "
                                          "them)\n")
    report = json.loads(_cli("rm", "--partials", "--json")[1])
    assert [(r["kind"], r["name"], r["bytes"]) for r in report["removed"]] == [("download", "tiny-q8", CHUNK)]
    assert report["freed"] == CHUNK and not any((hub_home / "models" / ".pulls").iterdir())
    assert _cli("rm", "--partials") == (0, "nothing to remove\n")
    assert [r["name"] for r in models.list()] == ["big-gguf"]


def test_last_used_is_set_by_loading_not_by_showing(hub_home: Path, hub: FakeHub) -> None:
    models.pull(TINY)
    models.show("tiny-gguf")
    assert models.list()[0].get("last_used") is None
    resolve_model("tiny-gguf")  # what ToolACE.load does first
    assert time.strptime(models.list()[0]["last_used"], store.TIME_FORMAT)


PULL = """
import sys
from huggingface_hub import constants
constants.DOWNLOAD_CHUNK_SIZE = int(sys.argv[1])  # as the in-process tests: small chunks reach the disk early
sys.argv = ["toolace", *sys.argv[2:]]
from toolace.cli import main
from toolace.cli_models import human_bytes
main()
"""


def test_sigint_mid_download_leaves_a_resumable_partial(hub_home: Path, hub: FakeHub) -> None:
    hub.stall_after = {Q4: 3 * CHUNK + 100}
    proc = subprocess.Popen([sys.executable, "-c", PULL, str(CHUNK), "pull", TINY], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, TOOLACE_HOME=str(hub_home)),
                            preexec_fn=interruptible)
    try:
        assert hub.stalled.wait(120)
        parts = hub_home / "models" / ".pulls" / "team-ace--tiny-gguf--q4_k_m"
        deadline = time.monotonic() + 60  # a bound on a wait, not an assertion about speed
        while sum(p.stat().st_size for p in parts.glob("*.part")) < 3 * CHUNK and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        hub.release.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and out == ""
    assert err == (f"Q4_K_M: the default quant ({DEFAULT_QUANT_WHY}); name another with {TINY}:QUANT, or let "
                   "--max-ram SIZE pick the best that fits\n"
                   f"Error: {TINY}:Q4_K_M: interrupted; {3 * CHUNK:,} of {len(TINY_FILES[Q4]):,} bytes are kept in "
                   f"{parts}: the same pull resumes them (`toolace rm --partials` removes them)\n")
    assert store.entry("tiny-gguf") is None
    assert [(m["state"], m["downloaded"]) for m in models.list()] == [("partial", 3 * CHUNK)]
    entry = models.pull(TINY)
    assert Path(entry["path"]).read_bytes() == TINY_FILES[Q4]
    assert resolve_gets(hub)[-1] == (Q4, f"bytes={3 * CHUNK}-")
    assert hub.bytes_sent(Q4) == len(TINY_FILES[Q4]) + 100  # only the bytes that never reached the disk, twice


def test_kill_9_during_conversion_leaves_a_leftover_that_rm_partials_sweeps(tiny_llama_dir: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("TOOLACE_HOME", str(home))
    out = home / "models" / "tiny-Q8_0.gguf"
    proc = subprocess.Popen([sys.executable, "-m", "toolace.cli", "convert", str(tiny_llama_dir), "-o", str(out),
                             "--outtype", "Q8_0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not [p for p in out.parent.glob(".tiny-Q8_0.gguf.*.bf16.part") if p.stat().st_size] \
                and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGSTOP)  # frozen mid-write: its lock is held, so the file is not stale
        [leftover] = out.parent.glob(".tiny-Q8_0.gguf.*.bf16.part")
        assert models.remove(partials=True) == {"removed": [], "freed": 0} and leftover.exists()
        proc.kill()  # SIGKILL: no cleanup runs, the kernel drops the lock
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    freed = human_bytes(leftover.stat().st_size)
    assert _cli("rm", "--partials") == (0, f"removed conversion leftover {leftover}: freed {freed}\n")
    assert not leftover.exists() and not out.exists()
