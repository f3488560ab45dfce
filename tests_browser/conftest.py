"""Browser fixtures (`make test-browser` only; `make test` never collects this folder): Debian's Chromium driven by
Playwright for Python through `executable_path`, a fresh profile per run, every background service off, so the
browser's only traffic is to the server under test on 127.0.0.1. Playwright never downloads a browser here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from toolace.fixtures import SMOLLM2_GGUF, fixture_path

CHROMIUM = os.environ.get("TOOLACE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    path = fixture_path(SMOLLM2_GGUF)
    if not path.exists():
        pytest.fail(f"fixture {path} missing: run `make fixtures` first (tests never download)")
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A persistent Chromium context on a fresh profile folder."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: `make test-browser` installs Debian's chromium (apt-get install chromium)")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 860}, accept_downloads=True)
        try:
            yield context
        finally:
            context.close()
