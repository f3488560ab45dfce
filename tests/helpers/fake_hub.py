"""A real HTTP server on 127.0.0.1 speaking the Hugging Face Hub endpoints huggingface_hub uses: model info (with
`?blobs=true` file metadata: sizes, git ids, LFS sha256), the tree listing, and HEAD/GET of /resolve with Range.
It can list path-trick names, drop a connection mid-file, stall mid-file until released (so a test can interrupt a
download at a known byte), refuse ranges, or advertise an LFS sha256 its bytes do not have. It logs every request
and the bytes it actually sent, which is how tests prove that nothing is downloaded twice.

Nothing leaves the machine: the `hub` fixture points HF_ENDPOINT and huggingface_hub's import-time endpoint
constants at the server."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

REPO_ID = "Team-ACE/Hostile"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
WEIGHTS = bytes(range(256)) * 4096  # 1 MiB: several download chunks, so a drop lands mid-file
CHUNK = 64 * 1024  # huggingface_hub's download chunk here (10 MiB by default): it writes whole chunks only
FILES = {"config.json": b'{"model_type": "llama"}', "sub/model.safetensors": WEIGHTS}
LFS_SUFFIXES = (".safetensors", ".gguf")  # stored in LFS, as on the real hub


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeHub:
    """What the server serves; tests change it between calls. `repos` maps repo id -> {file name: bytes};
    `files` is REPO_ID's."""

    repos: dict[str, dict[str, bytes]] = field(default_factory=lambda: {REPO_ID: dict(FILES)})
    listed: list[str] = field(default_factory=list)  # names only in model_info's siblings (never served)
    tree_only: list[str] = field(default_factory=list)  # names only in the tree listing (never served)
    sha: str = COMMIT
    advertised: dict[str, str] = field(default_factory=dict)  # LFS sha256 claimed for a file, if not its own
    drop_after: dict[str, int] = field(default_factory=dict)  # first GET of a file: close after this many bytes
    stall_after: dict[str, int] = field(default_factory=dict)  # first GET of a file: send this many, then wait
    stalled: threading.Event = field(default_factory=threading.Event)  # set once a stalled GET sent its bytes
    release: threading.Event = field(default_factory=threading.Event)  # ends the stall (the connection closes)
    fail_ranges: bool = False  # answer a ranged (resuming) GET with 500
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range header)
    sent: list[tuple[str, int]] = field(default_factory=list)  # (file name, body bytes written) per GET
    url: str = ""

    @property
    def files(self) -> dict[str, bytes]:
        return self.repos[REPO_ID]

    @files.setter
    def files(self, value: dict[str, bytes]) -> None:
        self.repos[REPO_ID] = value

    def lfs_sha(self, name: str, data: bytes) -> str:
        return self.advertised.get(name, sha256_hex(data))

    def tree_entry(self, repo: dict[str, bytes], name: str) -> dict:
        data = repo.get(name, b"")
        entry = {"type": "file", "path": name, "size": len(data), "oid": git_sha1(data)}
        if name.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"oid": self.lfs_sha(name, data), "size": len(data), "pointerSize": 134}
        return entry

    def sibling(self, repo: dict[str, bytes], name: str, blobs: bool) -> dict:
        if not blobs:
            return {"rfilename": name}
        data = repo.get(name, b"")
        out = {"rfilename": name, "size": len(data), "blobId": git_sha1(data)}
        if name.endswith(LFS_SUFFIXES):
            out["lfs"] = {"sha256": self.lfs_sha(name, data), "size": len(data), "pointerSize": 134}
        return out

    def repo(self, repo_id: str) -> dict[str, bytes] | None:
        """A repo by id, ignoring case, as the hub resolves ids."""
        return next((files for rid, files in self.repos.items() if rid.lower() == repo_id.lower()), None)

    def bytes_sent(self, name: str) -> int:
        return sum(n for f, n in self.sent if f == name)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    api = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+?)(?:/(?P<kind>revision|tree)/(?P<rev>[^/]+))?")
    resolve = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[0-9a-f]{40})/(?P<name>.+)")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, obj: object) -> None:
            body = json.dumps(obj).encode()
            self._send(200, {"Content-Type": "application/json", "Content-Length": str(len(body))}, body)

        def _missing(self, code: str) -> None:
            self._send(404, {"X-Error-Code": code, "Content-Length": "0"})

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            path = parts.path
            hub.requests.append((self.command, path, self.headers.get("Range")))
            if m := api.fullmatch(path):
                repo = hub.repo(unquote(m["repo"]))
                if repo is None:
                    return self._missing("RepoNotFound")
                if m["kind"] != "tree":
                    blobs = parse_qs(parts.query).get("blobs") == ["True"] or "blobs=true" in parts.query.lower()
                    names = [*repo, *hub.listed]
                    return self._json({"id": unquote(m["repo"]), "sha": hub.sha,
                                       "siblings": [hub.sibling(repo, n, blobs) for n in names]})
                return self._json([hub.tree_entry(repo, n) for n in [*repo, *hub.tree_only]])
            m = resolve.fullmatch(path)
            repo = hub.repo(m["repo"]) if m else None
            name = unquote(m["name"]) if m else ""
            if repo is None or m is None:
                return self._missing("RepoNotFound")
            if m["rev"] != hub.sha or name not in repo:
                return self._missing("EntryNotFound")
            self._file(name, repo[name])

        def _file(self, name: str, data: bytes) -> None:
            headers = {"X-Repo-Commit": hub.sha, "ETag": f'"{git_sha1(data)}"', "Accept-Ranges": "bytes"}
            if name.endswith(LFS_SUFFIXES):
                headers |= {"X-Linked-Etag": f'"{hub.lfs_sha(name, data)}"', "X-Linked-Size": str(len(data))}
            rng = self.headers.get("Range")
            start = int(rng[6:-1]) if rng and re.fullmatch(r"bytes=\d+-", rng) else 0
            if start and hub.fail_ranges:
                return self._send(500, {"Content-Length": "0"})
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            headers["Content-Length"] = str(len(data) - start)
            cut = hub.drop_after.pop(name, None) if self.command == "GET" else None
            stall = hub.stall_after.pop(name, None) if self.command == "GET" and cut is None else None
            if cut is not None or stall is not None:  # promise the whole file, send part, then hang up
                body = data[start:start + (cut if cut is not None else stall)]
                self._send(206 if start else 200, headers, body)
                self.wfile.flush()
                hub.sent.append((name, len(body)))
                if stall is not None:
                    hub.stalled.set()
                    hub.release.wait(timeout=60)
                self.close_connection = True
                return
            self._send(206 if start else 200, headers, data[start:])
            if self.command == "GET":
                hub.sent.append((name, len(data) - start))

    return Handler


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A fresh fake hub on a random local port, an empty HF cache under tmp_path, online mode."""
    from huggingface_hub import constants

    state = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", state.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    # huggingface_hub read these at import (perhaps while another test had HF_HUB_OFFLINE=1): pin them here too,
    # so that no code path can reach huggingface.co.
    monkeypatch.setattr(constants, "ENDPOINT", state.url)
    template = state.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)
    yield state
    state.release.set()
    server.shutdown()
    server.server_close()
    thread.join()
