"""The process table, read from /proc: which processes descend from this one, which carry a marker argument.
Tests use it to prove that no MCP server outlives the code that started it."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def interruptible() -> None:
    """A `preexec_fn`: SIGINT back to its default in the child. A shell that starts a job in the background (a CI
    runner's `cmd &`) has it ignore SIGINT, and Python then never raises KeyboardInterrupt, so a test that sends
    Ctrl-C would see it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) for every live process we can read."""
    out: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
        out[int(entry.name)] = (int(fields[1]), fields[0])
    return out


def descendants(pid: int | None = None) -> set[int]:
    """Every process below `pid` (default: this one), zombies included: an unreaped child is a leak too."""
    root = os.getpid() if pid is None else pid
    table = _table()
    found: set[int] = set()
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, (pp, _) in table.items() if pp == parent and p not in found]
        found.update(kids)
        frontier.extend(kids)
    return found


def with_marker(marker: str) -> set[int]:
    """Processes whose command line contains `marker` (they may have been re-parented to init)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    out.add(int(entry.name))
            except OSError:
                continue
    return out
