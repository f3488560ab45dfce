"""The one CLI edge: library errors become click's one-line `Error: ...` with the error's exit code (2 for bad
input, 1 otherwise), and SIGTERM unwinds like Ctrl-C so temporary outputs and child processes are cleaned up."""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from toolace.errors import ToolaceError

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
