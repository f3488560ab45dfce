"""The one CLI edge: library errors become click's one-line `Error: ...` with the error's exit code (2 for bad
input, 1 otherwise), SIGTERM unwinds like Ctrl-C so temporary outputs and child processes are cleaned up, and a
typed answer is read so that neither signal can be slept through (`prompt`)."""

from __future__ import annotations

import functools
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from toolace.errors import ToolaceError
from toolace.limits import PROMPT_POLL_SECONDS

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Make SIGTERM raise SystemExit (Python's default is to die on the spot, skipping `finally` blocks)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def click_error(e: ToolaceError) -> click.ClickException:
    exc = click.ClickException(str(e))
    exc.exit_code = e.exit_code
    return exc


def edge(fn: F) -> F:
    """Decorate a click command body: ToolaceError → one line and its exit code, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with sigterm_unwinds():
                return fn(*args, **kwargs)
        except ToolaceError as e:
            raise click_error(e) from None

    return wrapper  # type: ignore[return-value]


def _pollable_stdin() -> int | None:
    """stdin's descriptor when it is a pipe or file select() can watch; None for a terminal (input() keeps its line
    editing there), for no real file (click's test runner) and on Windows (select takes sockets only)."""
    if os.name == "nt":
        return None
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return None if os.isatty(fd) else fd


def _read_line(fd: int) -> str:
    """One line from `fd`. Python runs a signal's handler only between bytecodes: input() writes its prompt and then
    blocks in read(2), and a SIGTERM or Ctrl-C that lands in between (the moment a supervisor sees the prompt) only
    sets a flag, so read() sleeps on until the next typed line. Waiting in select() with a timeout returns to Python
    every PROMPT_POLL_SECONDS, where the pending handler runs. One byte per read: nothing past the newline is taken."""
    line = bytearray()
    while True:
        if not select.select([fd], [], [], PROMPT_POLL_SECONDS)[0]:
            continue
        byte = os.read(fd, 1)
        if not byte:  # end of input
            if not line:
                raise click.Abort()
            break
        if byte == b"\n":
            break
        line += byte
    return line.decode(sys.stdin.encoding or "utf-8", "replace").rstrip("\r")


def prompt(text: str, choices: Sequence[str] | None = None, default: str | None = None, suffix: str = ": ",
           err: bool = True) -> str:
    """click.prompt (on stderr unless `err` is False), safe against signals (see _read_line): the answer, one of
    `choices` when given, `default` for an empty line. Raises click.Abort at end of input or on Ctrl-C, as
    click.prompt does."""
    fd = _pollable_stdin()
    if fd is None:
        return str(click.prompt(text, default=default, show_default=False, prompt_suffix=suffix, err=err,
                                type=click.Choice(list(choices)) if choices else None))
    shown = f"{text} [{'/'.join(choices)}]{suffix}" if choices else f"{text}{suffix}"
    try:
        while True:
            click.echo(shown, nl=False, err=err)
            answer = _read_line(fd)
            if not answer and default is not None:
                return default
            if answer and (not choices or answer in choices):
                return answer
            if answer:
                click.echo(f"Error: {answer!r} is not one of {', '.join(map(repr, choices or ()))}.", err=True)
    except KeyboardInterrupt:
        raise click.Abort() from None
