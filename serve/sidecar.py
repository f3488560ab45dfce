"""Running the server as an app's child process (docs/embedding.md): bind (port 0 = a free port), say where once
ready (one JSON line on stdout, or `--ready-file`), end with the parent (`--parent-pid`), and stop promptly on
SIGTERM or Ctrl-C: in-flight generations are cancelled at their next token, connections get a short grace, and
whatever else the server started is closed by its own `with` blocks on the way out."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolace.errors import InputError, OutputError
from toolace.limits import PARENT_POLL_SECONDS, SHUTDOWN_GRACE_SECONDS
from toolace.paths import atomic_output


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads so a taken port fails fast (port 0: the OS picks)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    return sock


def ready_line(sock: socket.socket, model: str) -> dict[str, Any]:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = "127.0.0.1"
    return {"url": f"http://{shown}:{port}", "pid": os.getpid(), "model": model}


def announce(info: dict[str, Any], ready_file: str | None) -> None:
    """Write the ready file whole, then print the ready line (stdout, flushed: a host app reads it from the pipe);
    in that order, so an app that read the line finds the file too."""
    line = json.dumps(info)
    if ready_file:
        try:
            with atomic_output(Path(ready_file)) as tmp:
                tmp.write_text(line + "\n")
        except OSError as e:
            raise OutputError(f"cannot write the ready file {ready_file}: {e}") from None
    print(line, flush=True)


def check_parent(parent_pid: int | None) -> None:
    if parent_pid is not None and (not isinstance(parent_pid, int) or parent_pid < 1 or not _alive(parent_pid)):
        raise InputError(f"--parent-pid {parent_pid}: no such process")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def run(app: Any, sock: socket.socket, model: str, cancel_all: Callable[[], None], ready_file: str | None = None,
        parent_pid: int | None = None, log_level: str = "info") -> None:
    """Serve `app` on `sock` until SIGTERM/SIGINT or the parent's exit."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:
                announce(ready_line(sock, model), ready_file)

        def handle_exit(self, sig: int, frame: Any) -> None:
            """A requested stop: cancel every generation (they stop at their next token, so connections close
            within the grace) and shut down; a second Ctrl-C forces it. Unlike uvicorn's own, the signal is not
            raised again afterwards, so a stop the app asked for ends with exit code 0."""
            cancel_all()
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
                            lifespan="off")
    server = Server(config)
    if parent_pid is not None:
        threading.Thread(target=_watch_parent, args=(parent_pid, server, cancel_all), daemon=True,
                         name="toolace-parent-watch").start()
    server.run(sockets=[sock])
    sys.stdout.flush()


def _watch_parent(pid: int, server: Any, cancel_all: Callable[[], None]) -> None:
    stop = threading.Event()
    while not stop.wait(PARENT_POLL_SECONDS):
        if not _alive(pid):
            cancel_all()
            server.should_exit = True
            return
