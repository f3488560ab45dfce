"""`toolace pull REPO[:QUANT]` of ready GGUF files against the fake hub (tests/helpers/fake_hub.py): a real
huggingface_hub client talks HTTP to a local server that serves real GGUF files built on the fly. What is asserted
is work done: the bytes in the store, the registry, and the requests and bytes in the server's log."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.helpers.fake_hub import CHUNK, COMMIT, FakeHub, sha256_hex
from tests.helpers.gguf_repos import BIG, BIG_FILES, BIG_PARTS, TINY, TINY_FILES, resolve_gets, store_files
from toolace import models, probes
from toolace.convert import store
from toolace.convert.gguf_files import choose_gguf, quant_tag, split_part
from toolace.errors import DownloadCancelled, DownloadError, InputError, ResourceError


@pytest.mark.parametrize(("name", "tag"), [
    ("ToolACE-8B.Q4_K_M.gguf", "Q4_K_M"), ("toolace-8b-q4_k_m.gguf", "Q4_K_M"),
    ("Llama-3.1-8B-IQ4_XS.gguf", "IQ4_XS"), ("m-UD-Q4_K_XL.gguf", "Q4_K_XL"), ("m.BF16-00002-of-00004.gguf", "BF16"),
    ("Q8_0/m-Q8_0-00001-of-00002.gguf", "Q8_0"),
    ("model.gguf", None), ("mmproj-model-f16.gguf", None), ("m.Q4_K_M.bin", None), ("8B.gguf", None),
])
def test_quant_tag_table(name: str, tag: str | None) -> None:
    assert quant_tag(name) == tag


def test_split_names() -> None:
    assert split_part("x/big-Q4_K_M-00002-of-00003.gguf") == ("big-Q4_K_M", 2, 3)
    assert split_part("big-Q4_K_M.gguf") is None
    with pytest.raises(Exception, match=r"split model parts \[1, 3\] do not make a whole 1\.\.3 set"):
        choose_gguf("r/x", [BIG_PARTS[0], BIG_PARTS[2]], "q4_k_m")


def test_default_pick_then_tag_pick(hub_home: Path, hub: FakeHub) -> None:
    entry = models.pull(TINY)
    assert (entry["name"], entry["quant"], entry["source"], entry["revision"]) == ("tiny-gguf", "Q4_K_M", TINY, COMMIT)
    assert store_files(hub_home) == {"tiny-gguf/tiny.Q4_K_M.gguf": TINY_FILES["tiny.Q4_K_M.gguf"]}
    assert entry["sha256"] == sha256_hex(TINY_FILES["tiny.Q4_K_M.gguf"])
    assert resolve_gets(hub) == [("tiny.Q4_K_M.gguf", None)]  # only the chosen file was fetched
    hub.requests.clear()
    entry = models.pull(f"hf.co/{TINY}:q8_0", name="tiny-q8")  # the tag is case-insensitive
    assert entry["quant"] == "Q8_0" and resolve_gets(hub) == [("tiny.Q8_0.gguf", None)]
    assert store_files(hub_home)["tiny-q8/tiny.Q8_0.gguf"] == TINY_FILES["tiny.Q8_0.gguf"]
    assert [m["name"] for m in models.list()] == ["tiny-gguf", "tiny-q8"]
    assert not (hub_home / "models" / ".pulls").exists() or list((hub_home / "models" / ".pulls").iterdir()) == []


def test_missing_tag_lists_the_quants(hub_home: Path, hub: FakeHub) -> None:
    with pytest.raises(InputError, match=rf"^{TINY} has no Q2_K GGUF; it has: IQ4_XS, Q4_K_M, Q8_0\. "
                                         rf"Pick one with {TINY}:QUANT$"):
        models.pull(f"{TINY}:Q2_K")
    with pytest.raises(InputError, match=r"asks for Q8_0 but --quant says Q4_K_M"):
        models.pull(f"{TINY}:Q8_0", quant="Q4_K_M")
    assert resolve_gets(hub) == [] and store_files(hub_home) == {} and models.list() == []


def test_split_gguf(hub_home: Path, hub: FakeHub) -> None:
    entry = models.pull(BIG)
    names = [Path(p).name for p in BIG_PARTS]
    assert entry["path"] == str(hub_home / "models" / "big-gguf" / names[0])
    assert store_files(hub_home) == {f"big-gguf/{n}": BIG_FILES[p] for n, p in zip(names, BIG_PARTS, strict=True)}
    assert entry["size"] == sum(len(b) for b in BIG_FILES.values())
    assert [f for f, _ in resolve_gets(hub)] == BIG_PARTS
    shown = models.show("big-gguf")
    assert shown["files"] == [str(hub_home / "models" / "big-gguf" / n) for n in names]
    hub.repos[BIG].pop(BIG_PARTS[1])  # near miss: a part missing on the hub is refused before any download
    hub.requests.clear()
    with pytest.raises(Exception, match=r"split model parts \[1, 3\] do not make a whole"):
        models.pull(BIG, name="big-2")
    assert resolve_gets(hub) == []


def test_dropped_connection_resumes_without_refetching(hub_home: Path, hub: FakeHub) -> None:
    name = "tiny.Q4_K_M.gguf"
    hub.drop_after = {name: 2 * CHUNK + 1000}
    entry = models.pull(TINY)
    assert Path(entry["path"]).read_bytes() == TINY_FILES[name]
    # The retry asked for the bytes after the two whole chunks it had written; in all the server sent the file
    # once plus the 1000 bytes of the chunk that never completed.
    assert resolve_gets(hub) == [(name, None), (name, f"bytes={2 * CHUNK}-")]
    assert hub.bytes_sent(name) == len(TINY_FILES[name]) + 1000


def test_cancel_keeps_a_partial_that_the_next_pull_resumes(hub_home: Path, hub: FakeHub) -> None:
    name, cancel = "tiny.Q4_K_M.gguf", threading.Event()
    seen = []

    def progress(p: models.PullProgress) -> None:
        seen.append((p.file, p.done, p.total))
        if p.done >= CHUNK:
            cancel.set()

    with pytest.raises(DownloadCancelled, match=rf"{TINY}:Q4_K_M: interrupted; {CHUNK:,} of "
                                                rf"{len(TINY_FILES[name]):,} bytes are kept in "):
        models.pull(TINY, progress=progress, cancel=cancel)
    assert seen == [(name, CHUNK, len(TINY_FILES[name]))]
    assert models.list(partials=False) == [] and store.entry("tiny-gguf") is None
    [partial] = models.list()
    assert (partial["state"], partial["name"], partial["downloaded"], partial["in_use"]) == \
        ("partial", "tiny-gguf", CHUNK, False)
    entry = models.pull(TINY)  # resumes: the second GET starts where the kept bytes end
    assert Path(entry["path"]).read_bytes() == TINY_FILES[name]
    assert resolve_gets(hub)[-1] == (name, f"bytes={CHUNK}-")
    assert [m["state"] for m in models.list()] == ["ready"]


def test_sha256_mismatch_registers_nothing(hub_home: Path, hub: FakeHub) -> None:
    claimed = sha256_hex(b"something else")
    hub.advertised = {"tiny.Q4_K_M.gguf": claimed}
    with pytest.raises(DownloadError, match=rf"^{TINY}/tiny\.Q4_K_M\.gguf: sha256 "
                                            rf"{sha256_hex(TINY_FILES['tiny.Q4_K_M.gguf'])} does not match the "
                                            rf"hub's {claimed}; removed the download, nothing was registered"):
        models.pull(TINY)
    assert store_files(hub_home) == {} and models.list() == []
    hub.advertised = {}  # near miss: the honest hub
    assert models.pull(TINY)["sha256"] == sha256_hex(TINY_FILES["tiny.Q4_K_M.gguf"])


def test_not_enough_space_refused_before_download(hub_home: Path, hub: FakeHub,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    size = len(TINY_FILES["tiny.Q4_K_M.gguf"])
    from toolace.limits import PULL_FREE_SPACE_MARGIN_BYTES as MARGIN

    monkeypatch.setattr(probes, "free_disk_bytes", lambda path: size + MARGIN - 1)
    with pytest.raises(ResourceError, match=r": not enough disk space in .*: 0\.00 GB to download \+ 0\.54 GB margin, "
                                            r"0\.54 GB free; free some space"):
        models.pull(TINY)
    assert resolve_gets(hub) == [] and models.list(partials=False) == []
    monkeypatch.setattr(probes, "free_disk_bytes", lambda path: size + MARGIN)  # near miss: exactly enough
    assert models.pull(TINY)["size"] == size


def test_name_collisions_and_long_names_refused_before_download(hub_home: Path, hub: FakeHub) -> None:
    hub.repos |= {"org1/Model": dict(TINY_FILES), "org2/model": dict(TINY_FILES)}
    assert models.pull("org1/Model")["name"] == "model"
    hub.requests.clear()
    with pytest.raises(InputError, match=r"^model name 'model' is taken by org1/Model \(Q4_K_M\); pull with "
                                         r"--name NAME to keep both, or `toolace rm model` first$"):
        models.pull("org2/model")
    assert resolve_gets(hub) == []
    with pytest.raises(InputError, match=r"is taken by org1/Model \(Q4_K_M\)"):  # another quant of the same repo
        models.pull("org1/Model:Q8_0")
    assert models.pull("ORG1/model")["name"] == "model"  # the same model again (hub ids ignore case): a refresh
    assert models.pull("org2/model", name="model-2")["source"] == "org2/model"
    long_repo = "org/" + "a" * 80
    hub.requests.clear()
    with pytest.raises(InputError, match=r"is 80 characters, over the 64 a store name may have; choose a shorter "
                                         r"one with --name NAME"):
        models.pull(long_repo)
    assert hub.requests == []  # not even the listing was asked for


def test_template_that_does_not_render_is_refused(hub_home: Path, hub: FakeHub) -> None:
    from tests.helpers.gguf_bytes import model_gguf
    from toolace.errors import ModelFileError

    hub.repos["Team-ACE/Broken-GGUF"] = {"broken.Q4_K_M.gguf": model_gguf(15, template="{% for m in messages %}")}
    with pytest.raises(ModelFileError, match=r"^Team-ACE/Broken-GGUF:Q4_K_M: chat template does not compile: .*; "
                                             r"not registered$"):
        models.pull("Team-ACE/Broken-GGUF")
    assert store_files(hub_home) == {} and models.list(partials=False) == []
    assert models.list() == []  # the refused bytes are gone, not left as a partial download
    hub.repos["Team-ACE/Broken-GGUF"] = {"broken.Q4_K_M.gguf": model_gguf(15, template=None)}  # near miss: none
    entry = models.pull("Team-ACE/Broken-GGUF")
    assert entry["template"]["present"] is False and entry["state"] == "ready"


def test_safetensors_repo_goes_the_convert_path(hub_home: Path, hub: FakeHub, tiny_llama_dir: Path) -> None:
    """No GGUF in the repo: the checkpoint is downloaded, converted and quantized here, and registered with the
    repo, the commit and the quant it was pulled as."""
    hub.repos["Team-ACE/Tiny-HF"] = {p.name: p.read_bytes() for p in tiny_llama_dir.iterdir() if p.is_file()}
    entry = models.pull("Team-ACE/Tiny-HF:q8_0")
    assert (entry["name"], entry["source"], entry["revision"], entry["quant"], entry["kind"]) == \
        ("tiny-hf", "Team-ACE/Tiny-HF", COMMIT, "Q8_0", "converted")
    assert entry["path"] == str(hub_home / "models" / "tiny-hf-Q8_0.gguf")
    assert entry["sha256"] == sha256_hex(Path(entry["path"]).read_bytes())
    assert models.show("tiny-hf")["quant"] == "Q8_0"
    assert {f for f, _ in resolve_gets(hub)} == {p.name for p in tiny_llama_dir.iterdir() if p.is_file()}
