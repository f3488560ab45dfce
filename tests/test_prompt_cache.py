"""The disk prompt cache (runtime/cache.py) only saves time, so nothing in it fails a call: a corrupt or vanished
hash index or state file is a miss and is rewritten, eviction survives files that vanish under it, and the folder
is held to `cache_max_bytes`, least recently read first. Real model, real files, real llama.cpp state."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from toolace.api import ToolACE
from toolace.cli import main
from toolace.errors import InputError
from toolace.limits import DEFAULT_CACHE_TOKENS, MAX_CACHE_FILES
from toolace.paths import atomic_output, sha256_file
from toolace.runtime import cache as cache_module
from toolace.runtime.cache import INDEX_NAME, PromptCache, model_digest

EXAMPLES = Path(__file__).parent.parent / "examples"
QUESTION = "What's the weather like in Paris?"


@pytest.fixture(scope="module")
def ta(smollm2_gguf: Path) -> ToolACE:
    return ToolACE.load(str(smollm2_gguf), n_ctx=2048, kv_cache=False)


def restarted(smollm2_gguf: Path, folder: Path, max_bytes: int | None = None) -> ToolACE:
    """A fresh process's view: a newly loaded model whose prompt cache lives in `folder`."""
    fresh = ToolACE.load(str(smollm2_gguf), n_ctx=2048, kv_cache=False)
    fresh.cache = PromptCache(fresh.model, folder, max_bytes)
    return fresh


OTHER = b'"/elsewhere/m.gguf|1|2": "00ff"'  # another model's entry, which a usable index keeps
# A hash index that cannot be used (each is a miss, then rewritten), paired with a near miss that is used and kept.
INDEXES = [
    (b"\xff\xfe", b"{" + OTHER + b"}"),  # not UTF-8 (the repro)
    (b"{not json", b"{}"),
    (b'["a", "list"]', b'{' + OTHER + b', "/elsewhere/n.gguf|3|4": "11ee"}'),  # not an object
    (b'{"k": ' + b"1" * 5000 + b"}", b'{"k": "' + b"1" * 5000 + b'", ' + OTHER + b"}"),  # past the int digit limit
    (b"[" * 100_000 + b"]" * 100_000, b'{"k": ' + b"[" * 10 + b"]" * 10 + b", " + OTHER + b"}"),  # nests too deep
]


@pytest.mark.parametrize(("broken", "usable"), INDEXES, ids=["utf8", "json", "shape", "digits", "depth"])
def test_unusable_hash_index_is_a_miss_and_rewritten(smollm2_gguf: Path, tmp_path: Path, broken: bytes,
                                                     usable: bytes) -> None:
    digest = sha256_file(smollm2_gguf)
    st = smollm2_gguf.stat()
    ours = {f"{smollm2_gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}": digest}
    index = tmp_path / INDEX_NAME
    index.write_bytes(broken)
    assert model_digest(smollm2_gguf, tmp_path) == digest
    assert json.loads(index.read_text()) == ours  # rewritten whole, with only what is known
    assert [p.name for p in tmp_path.iterdir()] == [INDEX_NAME]  # no temporary file left beside it
    index.write_bytes(usable)
    assert model_digest(smollm2_gguf, tmp_path) == digest
    kept = {k: v for k, v in json.loads(usable).items() if isinstance(v, str)}  # hashes are strings; "k" is not
    assert json.loads(index.read_text()) == kept | ours


def test_hash_index_keeps_one_entry_per_model_path(smollm2_gguf: Path, tmp_path: Path) -> None:
    """A model file that changed (size or mtime) replaces its old entry, so the index cannot grow without bound."""
    model = tmp_path / "m.gguf"
    model.write_bytes(b"one")
    first = model_digest(model, tmp_path)
    model.write_bytes(b"two!")
    second = model_digest(model, tmp_path)
    assert first != second and list(json.loads((tmp_path / INDEX_NAME).read_text()).values()) == [second]


def test_cli_call_with_a_corrupt_hash_index(smollm2_gguf: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's repro: `printf '\\xff\\xfe' > $TOOLACE_HOME/kv-cache/model-hashes.json`, then `toolace call`
    with tools. The call answers, and the index is valid JSON again."""
    monkeypatch.setenv("TOOLACE_HOME", str(tmp_path))
    index = tmp_path / "kv-cache" / INDEX_NAME
    index.parent.mkdir()
    index.write_bytes(b"\xff\xfe")
    ran = CliRunner().invoke(main, ["call", QUESTION, "--tools", str(EXAMPLES / "weather.json"), "--model",
                                    str(smollm2_gguf), "--max-tokens", "32", "--tool-choice", "required", "--json"])
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.stdout)["calls"][0]["name"] == "get_weather"
    assert list(json.loads(index.read_text()).values()) == [sha256_file(smollm2_gguf)]
    assert len(list(index.parent.glob("*.kv"))) == 1  # and the prompt was cached


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_state_file_is_a_miss_then_rewritten(smollm2_gguf: Path, tmp_path: Path, damage: str) -> None:
    """Restart 1 stores the prompt; the file is damaged; restart 2 misses (same answer), removes and rewrites it;
    restart 3 hits. (Before, a damaged file stayed: every later start missed.)"""
    first = restarted(smollm2_gguf, tmp_path).call(QUESTION, [_weather()], max_tokens=24)
    (kv,) = tmp_path.glob("*.kv")
    good = kv.read_bytes()
    kv.write_bytes({"truncated": good[: len(good) // 2], "garbage": os.urandom(len(good)), "empty": b""}[damage])
    second = restarted(smollm2_gguf, tmp_path)
    assert second.call(QUESTION, [_weather()], max_tokens=24).raw == first.raw and second.cache.hits == 0
    assert kv.read_bytes() == good  # rewritten from the live context: the same state
    third = restarted(smollm2_gguf, tmp_path)
    assert third.call(QUESTION, [_weather()], max_tokens=24).raw == first.raw and third.cache.hits == 1


def _weather() -> dict:
    return json.loads((EXAMPLES / "weather.json").read_text())[0]


def _files(folder: Path, sizes: dict[str, int]) -> None:
    """State files of the given sizes, read (atime) in the order given: the first is the least recently used."""
    for n, (name, size) in enumerate(sizes.items()):
        path = folder / f"{name}.kv"
        path.write_bytes(b"\0" * size)
        os.utime(path, ns=(1_000_000_000 * (n + 1), 1_000_000_000 * (n + 1)))


def test_eviction_keeps_the_most_recently_used_within_max_bytes(ta: ToolACE, tmp_path: Path) -> None:
    _files(tmp_path, {"a": 400, "b": 300, "c": 200, "d": 100})
    PromptCache(ta.model, tmp_path, max_bytes=600).evict()
    assert sorted(p.stem for p in tmp_path.glob("*.kv")) == ["b", "c", "d"]  # 600 bytes: at the cap, kept
    PromptCache(ta.model, tmp_path, max_bytes=599).evict()
    assert sorted(p.stem for p in tmp_path.glob("*.kv")) == ["c", "d"]  # a byte over: the oldest read goes
    (tmp_path / "model-hashes.json").write_bytes(b"\0" * 10_000)  # not a state file: never counted or removed
    PromptCache(ta.model, tmp_path, max_bytes=300).evict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.kv", "d.kv", "model-hashes.json"]


def test_eviction_also_keeps_the_file_count_bound(ta: ToolACE, tmp_path: Path) -> None:
    _files(tmp_path, {f"f{n:03d}": 1 for n in range(MAX_CACHE_FILES + 2)})
    PromptCache(ta.model, tmp_path, max_bytes=10**9).evict()
    assert sorted(p.stem for p in tmp_path.glob("*.kv")) == [f"f{n:03d}" for n in range(2, MAX_CACHE_FILES + 2)]


def test_eviction_removes_what_a_killed_writer_left_and_not_a_write_in_progress(ta: ToolACE, tmp_path: Path) -> None:
    """A state file being written is a locked temporary beside it (atomic_output); `kill -9` leaves it unlocked,
    counted by nothing and removed by nothing else, so each killed write would grow the folder for good."""
    _files(tmp_path, {"a": 100})
    left = tmp_path / ".0123abcd.kv.x1y2z3.part"  # what a writer killed mid-write leaves: nobody holds its lock
    left.write_bytes(b"\0" * 5000)
    with atomic_output(tmp_path / "b.kv") as writing:  # a write in progress (another slot or process)
        writing.write_bytes(b"\0" * 50)
        PromptCache(ta.model, tmp_path, max_bytes=10**9).evict()
        assert not left.exists() and writing.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.kv", "b.kv"]


def test_store_survives_a_file_vanishing_between_listing_and_stat(smollm2_gguf: Path, tmp_path: Path) -> None:
    """A dangling link lists like a state file and fails stat() like one another slot removed in between: the call
    that stores its prompt (and evicts) still answers, and its state file is written. (Before: FileNotFoundError,
    a 500 from the server.)"""
    (tmp_path / "gone.kv").symlink_to(tmp_path / "removed-by-another-slot.kv")
    fresh = restarted(smollm2_gguf, tmp_path, max_bytes=10**9)
    assert fresh.call(QUESTION, [_weather()], max_tokens=24).raw
    (stored,) = (p for p in tmp_path.glob("*.kv") if not p.is_symlink())
    _files(tmp_path, {"old": 500})  # near miss: beside the vanished one, a real file over the cap is still evicted
    PromptCache(fresh.model, tmp_path, max_bytes=stored.stat().st_size).evict()
    assert sorted(p.name for p in tmp_path.glob("*.kv")) == sorted(["gone.kv", stored.name])


@pytest.mark.parametrize(("flag", "kept"), [(["--cache-max-bytes", "0"], 0), ([], 1)])
def test_cli_cache_max_bytes(smollm2_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             flag: list[str], kept: int) -> None:
    """`--cache-max-bytes 0` keeps no state file; the near miss, the default (sized to the model), keeps it."""
    monkeypatch.setenv("TOOLACE_HOME", str(tmp_path))
    ran = CliRunner().invoke(main, ["call", QUESTION, "--tools", str(EXAMPLES / "weather.json"), "--model",
                                    str(smollm2_gguf), "--max-tokens", "24", *flag])
    assert ran.exit_code == 0, ran.output
    assert len(list((tmp_path / "kv-cache").glob("*.kv"))) == kept


def test_default_cache_size_follows_the_model(ta: ToolACE, tmp_path: Path) -> None:
    """DEFAULT_CACHE_TOKENS of the model's KV state: SmolLM2-135M is 30 layers x (K+V of 3 heads x 64) x F16."""
    assert ta.model.kv_bytes_per_token() == 30 * 2 * 3 * 64 * 2
    assert PromptCache(ta.model, tmp_path).max_bytes == DEFAULT_CACHE_TOKENS * 30 * 2 * 3 * 64 * 2


@pytest.mark.parametrize("bad", [-1, 1.5, "4GB", True])
def test_bad_cache_max_bytes_is_one_input_error(ta: ToolACE, tmp_path: Path, bad: object) -> None:
    with pytest.raises(InputError, match=r"^cache_max_bytes must be a non-negative integer \(bytes\), got "):
        PromptCache(ta.model, tmp_path, max_bytes=bad)  # type: ignore[arg-type]
    assert PromptCache(ta.model, tmp_path, max_bytes=0).max_bytes == 0  # near miss: 0 is a valid bound


def test_a_state_from_another_llama_cpp_build_is_a_miss(smollm2_gguf: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another build's kernels round differently (the default build against BATCH_INVARIANT=1, or an upgrade): its
    states would change the answer, so the key holds the build and they are misses. (Before, a state saved by the
    other build was loaded and SmolLM2 answered the Tokyo chat with a garbled timezone.) Near miss: the same build
    hits."""
    first = restarted(smollm2_gguf, tmp_path).call(QUESTION, [_weather()], max_tokens=24)
    same = restarted(smollm2_gguf, tmp_path)
    assert same.call(QUESTION, [_weather()], max_tokens=24).raw == first.raw and same.cache.hits == 1
    monkeypatch.setattr(cache_module, "build_identity", lambda: "0.3.36|CPU : AVX2 = 1 | OPENMP = 1 |")
    other = restarted(smollm2_gguf, tmp_path)
    assert other.call(QUESTION, [_weather()], max_tokens=24).raw == first.raw and other.cache.hits == 0
    assert len(list(tmp_path.glob("*.kv"))) == 2  # each build's state under its own key
