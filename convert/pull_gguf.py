"""`toolace pull REPO:QUANT` for a repo that publishes GGUF files: take the file(s) of one quant as they are.

Through huggingface_hub: the repo listing with each file's size and LFS sha256 (model_info with files_metadata),
the download URL and auth headers, and its `http_get` (Range requests, retries within a call, progress). The partial
file is ours, under TOOLACE_HOME/models/.pulls, so an interrupted pull (Ctrl-C, a cancel event, a dropped
connection, a full disk) resumes where it stopped next time; huggingface_hub's own download deletes its partial
file on any failure. Order of work: name checks, listing, quant choice, free space, download, sha256, GGUF pre-check,
chat template check, then the files move into the store and the name is registered, never before."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from toolace import probes
from toolace.errors import (
    DownloadCancelled,
    DownloadError,
    ModelFileError,
    OutputError,
    ResourceError,
    TemplateError,
    ToolaceError,
)
from toolace.limits import HASH_CHUNK_BYTES, MAX_REPO_FILES, PULL_FREE_SPACE_MARGIN_BYTES
from toolace.paths import WRITE_FAILURES, sha256_file

from . import store
from .gguf_check import check_gguf
from .gguf_files import GGUFChoice, choose_gguf
from .hub import COMMIT_RE, UNSAFE_NAME_RE
from .partials import PART_SUFFIX, pull_folder
from .progress import ProgressCallback, PullProgress
from .template_info import template_info

GB = 1e9


@dataclass(frozen=True)
class HubFile:
    name: str
    size: int
    sha256: str | None  # LFS files: the content's sha256
    git_oid: str | None  # small files: the git blob sha1


@dataclass(frozen=True)
class Listing:
    repo_id: str
    commit: str
    files: dict[str, HubFile]




def listing(repo_id: str, revision: str | None, endpoint: str | None) -> Listing:
    """The repo's files at one commit, with sizes and hashes (one model_info call, files_metadata=True)."""
    from huggingface_hub import HfApi

    info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, files_metadata=True)
    if not isinstance(info.sha, str) or not COMMIT_RE.fullmatch(info.sha):
        raise DownloadError(f"{repo_id}: the hub answered {info.sha!r}, not a commit hash")
    files: dict[str, HubFile] = {}
    for sibling in (info.siblings or [])[:MAX_REPO_FILES]:
        lfs = sibling.lfs
        files[sibling.rfilename] = HubFile(sibling.rfilename, int(sibling.size or (lfs.size if lfs else 0) or 0),
                                           lfs.sha256 if lfs else None, sibling.blob_id)
    return Listing(repo_id, info.sha, files)


def _needed(folder: Path, files: list[HubFile]) -> int:
    return sum(max(f.size - _part(folder, f).stat().st_size, 0) if _part(folder, f).is_file() else f.size
               for f in files)


def _part(folder: Path, f: HubFile) -> Path:
    """The partial file of `f`, named by its expected hash: a changed file on the hub never resumes old bytes."""
    return folder / f"{PurePosixPath(f.name).name}.{(f.sha256 or f.git_oid or 'nohash')[:16]}{PART_SUFFIX}"


def check_free_space(folder: Path, files: list[HubFile], what: str) -> None:
    """Refuse before a byte is written when the bytes still to download plus a margin do not fit the disk."""
    needed = _needed(folder, files)
    free = probes.free_disk_bytes(folder)
    if needed + PULL_FREE_SPACE_MARGIN_BYTES > free:
        raise ResourceError(f"{what}: not enough disk space in {folder.parent.parent}: "
                            f"{needed / GB:.2f} GB to download + {PULL_FREE_SPACE_MARGIN_BYTES / GB:.2f} GB margin, "
                            f"{free / GB:.2f} GB free; free some space (`toolace rm NAME`, `toolace rm --partials`) "
                            "or pull a smaller quant")


class _Meter:
    """Progress of a whole pull: calls the callback, honours the cancel event, draws a bar on a terminal."""

    def __init__(self, total: int, done: int, progress: ProgressCallback | None, cancel: threading.Event | None,
                 quiet: bool) -> None:
        self.total, self.done, self.start_done = total, done, done
        self.progress, self.cancel, self.quiet = progress, cancel, quiet
        self.started = time.monotonic()
        self.file = ""

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise DownloadCancelled("cancelled")

    def advance(self, n: int) -> None:
        # Checked before counting: http_get reports a chunk and then writes it, so a chunk refused here never
        # reaches the partial file, and every chunk counted did.
        self.check_cancel()
        self.done += n
        if self.progress is not None:
            elapsed = max(time.monotonic() - self.started, 1e-9)
            rate = (self.done - self.start_done) / elapsed
            eta = (self.total - self.done) / rate if rate > 0 else None
            self.progress(PullProgress(self.file, self.done, self.total, rate, eta))

    def bar_class(self) -> type:
        """A tqdm class for http_get: a bar on a terminal unless quiet, reporting each chunk to this meter."""
        from huggingface_hub.utils import tqdm as hf_tqdm

        meter = self

        class Bar(hf_tqdm):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["disable"] = True if meter.quiet else None  # None: tqdm draws only on a terminal
                super().__init__(*args, **kwargs)

            def update(self, n: float | None = 1) -> bool | None:
                shown = super().update(n)
                meter.advance(int(n or 0))
                return shown

        return Bar


def _download(listing_: Listing, f: HubFile, folder: Path, meter: _Meter, endpoint: str | None) -> Path:
    """One file into its partial, resumed from what is already there; returns the complete partial."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    part = _part(folder, f)
    meter.file = f.name
    meter.check_cancel()
    url = hf_hub_url(listing_.repo_id, f.name, revision=listing_.commit, endpoint=endpoint)
    with open(part, "ab") as out:
        if out.tell() > f.size:  # longer than the file: not ours to resume
            out.truncate(0)
        http_get(url, out, resume_size=out.tell(), headers=build_hf_headers(), expected_size=f.size,
                 displayed_filename=PurePosixPath(f.name).name, tqdm_class=meter.bar_class())
    return part


def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)  # noqa: S324 - git's object id, not a security hash
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(f: HubFile, part: Path, where: str) -> str:
    """The sha256 of a finished part, checked against the hub's LFS sha256 (or its git id for a small file); a
    mismatch removes the bytes, so the next pull starts over."""
    actual = sha256_file(part)
    if f.sha256 is not None:
        ok, claimed = actual == f.sha256, f.sha256
    else:
        ok, claimed = _git_blob_sha1(part) == f.git_oid, f"git id {f.git_oid}"
    if not ok:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{where}/{f.name}: sha256 {actual} does not match the hub's {claimed}; removed the "
                            "download, nothing was registered; pull again to refetch it")
    return actual


def _check_model(parts: list[Path], where: str) -> dict[str, Any]:
    """Every part passes the GGUF pre-check; the first carries a chat template that renders (or none: toolace then
    uses Llama-3's). Returns the template summary."""
    headers = [check_gguf(p) for p in parts]
    try:
        return template_info(headers[0].kv)
    except TemplateError as e:
        raise ModelFileError(f"{where}: {e}; not registered") from None


def _install(name: str, parts: list[Path], choice: GGUFChoice) -> list[Path]:
    """Move the verified parts into the store folder of `name` under their hub file names (llama.cpp finds a split
    model's parts by name), replacing an earlier pull of the same model."""
    final = store.models_dir() / name
    if final.exists():
        shutil.rmtree(final)
    final.mkdir(parents=True)
    placed = []
    for part, hub_name in zip(parts, choice.files, strict=True):
        target = final / PurePosixPath(hub_name).name
        os.replace(part, target)
        placed.append(target)
    return placed


def pull_gguf(listing_: Listing, choice: GGUFChoice, name: str, endpoint: str | None,
              progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
              quiet: bool = False) -> Path:
    """Download, verify and register the file(s) of `choice`; returns the (first) GGUF path."""
    where = f"{listing_.repo_id}:{choice.quant}"
    files = [listing_.files[n] for n in choice.files]
    for f in files:
        if UNSAFE_NAME_RE.search(f.name):
            raise DownloadError(f"{listing_.repo_id}: refusing to download {f.name!r}: a path-trick file name")
    total = sum(f.size for f in files)
    meta = {"name": name, "source": listing_.repo_id, "revision": listing_.commit, "quant": choice.quant,
            "files": list(choice.files), "size": total}
    with pull_folder(listing_.repo_id, choice.quant, meta) as folder:
        check_free_space(folder, files, where)
        meter = _Meter(total, total - _needed(folder, files), progress, cancel, quiet)
        parts = []
        try:
            for f in files:
                parts.append(_download(listing_, f, folder, meter, endpoint))
        except (KeyboardInterrupt, DownloadCancelled):
            kept = total - _needed(folder, files)
            raise DownloadCancelled(f"{where}: interrupted; {kept:,} of {total:,} bytes are kept in {folder}: the "
                                    "same pull resumes them (`toolace rm --partials` removes them)") from None
        except OSError as e:
            if e.errno in WRITE_FAILURES:
                kept = total - _needed(folder, files)
                raise OutputError(f"{folder}: cannot write: {e.strerror}; the {kept:,} bytes downloaded are kept "
                                  "there for the same pull to resume (`toolace rm --partials` removes them)") from None
            raise DownloadError(f"{where}: download failed: {e}") from None
        except ToolaceError:
            raise
        except Exception as e:  # the HTTP client's own errors (connection refused, retries exhausted)
            raise DownloadError(f"{where}: download failed: {type(e).__name__}: {e}") from None
        try:
            sha = [_verify(f, p, listing_.repo_id) for f, p in zip(files, parts, strict=True)]
            template = _check_model(parts, where)
        except ToolaceError:  # bytes that are wrong, or a model toolace refuses: nothing to resume, nothing kept
            shutil.rmtree(folder, ignore_errors=True)
            raise
        placed = _install(name, parts, choice)
        store.register(name, placed[0], source=listing_.repo_id, revision=listing_.commit, quant=choice.quant,
                       files=[str(p) for p in placed], size=total, sha256=sha[0], template=template,
                       kind="gguf")
        shutil.rmtree(folder)
    return placed[0]


def choose(listing_: Listing, quant: str) -> GGUFChoice:
    return choose_gguf(listing_.repo_id, sorted(listing_.files), quant)
