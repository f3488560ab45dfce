"""The CLI loads llama.cpp only for commands that load a model: each command runs in a fresh interpreter, which
reports at exit whether `llama_cpp` was ever imported. And the table of lazily loaded verbs matches the commands
their modules define."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from toolace.cli import VERB_MODULES, main

PROBE = """
import atexit, sys
atexit.register(lambda: print("llama_cpp imported:", "llama_cpp" in sys.modules))
sys.argv = ["toolace", *sys.argv[1:]]
from toolace.cli import main
main()
"""


def _imports_llama_cpp(*args: str, home: Path) -> tuple[bool, subprocess.CompletedProcess[str]]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "TOOLACE_HOME": str(home), "HOME": str(home)})
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("llama_cpp imported: "), proc.stdout + proc.stderr
    return line.endswith("True"), proc


@pytest.mark.parametrize("args", [
    ["--help"],
    ["grammar", "--tools", str(EXAMPLES / "weather.json")],
    ["grammar", "--tools", str(EXAMPLES / "weather.json"), "--check", '[get_weather(location="Paris")]'],
    ["list"],
    ["list", "--json"],
    ["rm", "--partials"],
    ["pull", "--help"],
    ["run", "--help"],
])
def test_light_commands_never_import_llama_cpp(args: list[str], tmp_path: Path) -> None:
    imported, proc = _imports_llama_cpp(*args, home=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not imported


def test_show_reads_the_header_without_llama_cpp(smollm2_gguf: Path, tmp_path: Path) -> None:
    imported, proc = _imports_llama_cpp("show", str(smollm2_gguf), "--n-ctx", "4096", home=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\narchitecture:    llama\n" in proc.stdout and not imported


def test_a_command_that_loads_a_model_does(tmp_path: Path) -> None:
    """Near miss: `call` loads llama.cpp (here it then fails on the missing model file)."""
    imported, proc = _imports_llama_cpp("call", "hi", "--tools", str(EXAMPLES / "weather.json"), "--model",
                                        str(tmp_path / "absent.gguf"), home=tmp_path)
    assert proc.returncode == 2 and "absent.gguf" in proc.stderr
    assert imported


def test_verb_table_matches_the_command_modules() -> None:
    defined = {c.name: module for module in set(VERB_MODULES.values())
               for c in importlib.import_module(module).COMMANDS}
    assert defined == VERB_MODULES
    assert not set(VERB_MODULES) & set(main.commands)  # no verb shadows a command defined in toolace/cli.py
