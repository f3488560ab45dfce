"""Where toolace keeps files: one home folder, overridable with TOOLACE_HOME."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from toolace.errors import OutputError, ToolaceError
from toolace.limits import HASH_CHUNK_BYTES

HOME_ENV = "TOOLACE_HOME"
TEMP_SUFFIX = ".part"  # atomic_output's temporaries: hidden `.NAME.*.part` beside their target


def toolace_home() -> Path:
    """The folder for fixtures, the model store and KV caches (TOOLACE_HOME, else ~/.cache/toolace)."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "toolace"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in bounded chunks (model files are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def read_json_file(path: Path, limit: int, error: type[ToolaceError], what: str) -> Any:
    """Parse a JSON file of at most `limit` bytes; any fault is one `error` naming `what`."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise error(f"{what}: cannot read: {e.strerror}") from None
    if size > limit:
        raise error(f"{what}: {size} bytes is over the {limit}-byte limit for this file")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except ValueError as e:  # bad UTF-8, bad JSON, or an integer over Python's digit limit (4,300 digits)
        raise error(f"{what}: not valid JSON: {e}") from None
    except RecursionError:
        raise error(f"{what}: JSON nests too deeply") from None


# Write failures that are about the output's storage, named as such (other OSErrors keep their own meaning).
WRITE_FAILURES = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def output_error(target: Path, reason: str) -> OutputError:
    """The one message for an output that could not be written (atomic writes leave nothing behind)."""
    return OutputError(f"{target}: {reason}; nothing was written there")


@contextmanager
def try_lock(path: Path, create: bool = True) -> Iterator[bool]:
    """Take an exclusive flock on `path` without waiting; yields whether it was free (it is held until exit).
    `create`: make the file if it is missing (a lock file); else a missing file is not free."""
    try:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            yield False
            return
        yield True
    finally:
        os.close(fd)


def remove_if_abandoned(path: Path) -> int | None:
    """Remove a temporary file whose writer is gone (nobody holds its lock: see atomic_output); its size, or None
    when a process is still writing it or it is already gone."""
    with try_lock(path, create=False) as free:  # never recreate one another process just removed
        if not free:
            return None
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            return None
        return size


@contextmanager
def atomic_output(path: str | os.PathLike[str], suffix: str = TEMP_SUFFIX) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block completes.

    The temporary file lives in the target folder so the rename is atomic, and is removed on any failure
    (including KeyboardInterrupt), so an interrupted write leaves nothing at `path`."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    except OSError as e:
        raise output_error(target, f"cannot write: {e.strerror or e}") from None
    # Held until the file is renamed or removed: a temp file whose lock is free was left by a dead process (kill -9),
    # which is how `toolace rm --partials` tells leftovers from writes in progress (convert/partials.py).
    fcntl.flock(fd, fcntl.LOCK_EX)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp_path, target)
    except BaseException as e:
        tmp_path.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in WRITE_FAILURES:
            raise output_error(target, f"cannot write: {e.strerror or e}") from None
        raise
    finally:
        os.close(fd)

