"""vLLM fixtures (`make test-vllm` only; `make test` never collects this folder). vLLM runs from its own virtualenv
(.venv-vllm, or $TOOLACE_VLLM_PYTHON) as a subprocess on 127.0.0.1; the tests drive it with the openai client from
the project's environment. The model is the demo SmolLM2 as an HF checkpoint built from the fixture GGUF."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.helpers.openai_cases import Target
from tests.helpers.tiny_llama import build_smollm2_hf
from toolace.fixtures import SMOLLM2_GGUF, fixture_path

REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = os.environ.get("TOOLACE_VLLM_PYTHON", str(REPO / ".venv-vllm" / "bin" / "python"))
START_SECONDS = 600  # a cold start with --enforce-eager takes ~30 s on 2 cores; a loaded CI machine, longer
# Small, fast to start: no compilation, 1 GiB of KV cache (the CPU backend reserves RAM for it), a short context.
SERVER_ARGS = ["--enforce-eager", "--max-model-len", "2048", "--gpu-memory-utilization", "0.2",
               "--kv-cache-memory-bytes", str(1 << 30), "--seed", "0", "--host", "127.0.0.1"]


@pytest.fixture(scope="session")
def smollm2_hf() -> Path:
    gguf = fixture_path(SMOLLM2_GGUF)
    if not gguf.exists():
        pytest.fail(f"fixture {gguf} missing: run `make fixtures` first (tests never download)")
    return build_smollm2_hf(Path("unused"), gguf)


@pytest.fixture(scope="session")
def vllm_export(tmp_path_factory: pytest.TempPathFactory, smollm2_hf: Path) -> Path:
    """`toolace export vllm` run by vLLM's own Python (so the export imports without llama.cpp there)."""
    out = tmp_path_factory.mktemp("vllm-export")
    subprocess.run([VLLM_PYTHON, "-m", "toolace.serve.vllm.export", "vllm", str(out), "--model", str(smollm2_hf)],
                   check=True, timeout=120)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_vllm(command: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """Start a vLLM server; return it and its /v1 URL once /v1/models answers."""
    port = _free_port()
    with log.open("wb") as sink:
        proc = subprocess.Popen([*command, *SERVER_ARGS, "--port", str(port)], stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    start = time.monotonic()
    deadline = start + START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.stderr.write(log.read_text(errors="replace")[-4000:])
            pytest.fail(f"vLLM exited with {proc.returncode} while starting (log: {log})")
        try:
            if httpx.get(f"{url}/models", timeout=5).status_code == 200:
                MEASURED[f"startup_seconds_{log.stem}"] = round(time.monotonic() - start, 1)
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_vllm(proc)
    pytest.fail(f"vLLM did not answer within {START_SECONDS} s (log: {log})")


def stop_vllm(proc: subprocess.Popen) -> None:
    """SIGTERM the server's session (API server, engine core, workers), then SIGKILL what is left."""
    import signal

    for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def target(url: str) -> Target:
    client = OpenAI(base_url=url, api_key="unused", timeout=300, max_retries=0)
    return Target(client, client.models.list().data[0].id)


@pytest.fixture(scope="module")
def export_server(vllm_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """vLLM started by the export's serve.sh."""
    proc, url = start_vllm([str(vllm_export / "serve.sh")], tmp_path_factory.mktemp("logs") / "vllm-export.log")
    yield url
    stop_vllm(proc)


# Figures for docs/scale-out.md: written to $TOOLACE_VLLM_REPORT (JSON) at the end of the session when set.
MEASURED: dict[str, object] = {}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("TOOLACE_VLLM_REPORT")
    if path and MEASURED:
        import json

        Path(path).write_text(json.dumps(MEASURED, indent=2, ensure_ascii=False) + "\n")
