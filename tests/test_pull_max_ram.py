"""`toolace pull REPO --max-ram SIZE` against the fake hub: the least lossy quant whose memory estimate fits, chosen
from one Range read of a GGUF header before any download; sizes parsed as people write them. What is asserted is
work done: the quant in the store, the requests in the server's log (the header read, then one file), the message."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.helpers.fake_hub import FakeHub
from tests.helpers.gguf_bytes import model_gguf
from tests.helpers.gguf_repos import resolve_gets, store_files
from toolace import models
from toolace.cli import main
from toolace.convert.pick_quant import QUANT_PREFERENCE, parse_size
from toolace.errors import InputError
from toolace.limits import GGUF_HEADER_PROBE_BYTES
from toolace.runtime.memory import estimate_memory, shape_of_file

SIZES = "Team-ACE/Sizes-GGUF"
# file_type ids as llama.cpp numbers them; more values, more bytes: Q8_0 > Q5_K_M > Q4_K_M > Q2_K
SIZES_FILES = {
    "m.Q8_0.gguf": model_gguf(7, fill=1, n_values=400_000),
    "m.Q5_K_M.gguf": model_gguf(17, fill=2, n_values=250_000),
    "m.Q4_K_M.gguf": model_gguf(15, fill=3, n_values=200_000),
    "m.Q2_K.gguf": model_gguf(10, fill=4, n_values=100_000),
}


@pytest.fixture
def sizes_home(hub_home: Path, hub: FakeHub) -> Path:
    hub.repos[SIZES] = dict(SIZES_FILES)
    return hub_home


def _need(tmp_path: Path, name: str, n_ctx: int = 8192) -> int:
    """The runtime's own estimate for one file of the repo, measured on a local copy."""
    p = tmp_path / name
    p.write_bytes(SIZES_FILES[name])
    return estimate_memory(shape_of_file(p), n_ctx).total


@pytest.mark.parametrize(("text", "expected"), [
    ("8GB", 8_000_000_000), ("7.5G", 7_500_000_000), ("6GiB", 6 * 2**30), ("512M", 512_000_000),
    ("512 MiB", 512 * 2**20), ("1024", 1024), ("2kb", 2000), (4096, 4096),
])
def test_sizes_as_people_write_them(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(("text", "near_miss"), [("8 gigs", "8G"), ("0GB", "1GB"), ("-1G", "1G"), ("GB", "1GB"),
                                                 ("8XB", "8GB"), (True, 1)])
def test_bad_sizes_with_near_misses(text: str | int, near_miss: str | int) -> None:
    with pytest.raises(InputError, match="--max-ram"):
        parse_size(text)
    assert parse_size(near_miss) > 0


def test_the_least_lossy_quant_that_fits(sizes_home: Path, hub: FakeHub, tmp_path: Path) -> None:
    q8, q5 = _need(tmp_path, "m.Q8_0.gguf"), _need(tmp_path, "m.Q5_K_M.gguf")
    lines: list[str] = []
    entry = models.pull(SIZES, max_ram=q8 - 1, note=lines.append)  # Q8_0 misses by one byte
    assert entry["quant"] == "Q5_K_M" and q5 <= q8 - 1
    assert store_files(sizes_home) == {"sizes-gguf/m.Q5_K_M.gguf": SIZES_FILES["m.Q5_K_M.gguf"]}
    probe = f"bytes=0-{min(len(SIZES_FILES['m.Q2_K.gguf']), GGUF_HEADER_PROBE_BYTES) - 1}"
    assert resolve_gets(hub) == [("m.Q2_K.gguf", probe), ("m.Q5_K_M.gguf", None)]  # a header read, then one file
    assert len(lines) == 1 and lines[0].startswith("Q5_K_M: the least lossy quant") and "Q8_0 would not fit" in lines[0]
    hub.requests.clear()
    entry = models.pull(SIZES, name="exact", max_ram=q8)  # near miss: exactly enough is enough
    assert entry["quant"] == "Q8_0" and resolve_gets(hub)[-1] == ("m.Q8_0.gguf", None)


def test_nothing_fits_one_error_nothing_downloaded(sizes_home: Path, hub: FakeHub, tmp_path: Path) -> None:
    q2 = _need(tmp_path, "m.Q2_K.gguf")
    with pytest.raises(InputError, match=r"no quant fits .* the smallest, Q2_K, needs .*Raise --max-ram or lower"):
        models.pull(SIZES, max_ram=q2 - 1)
    assert [rng is not None for _, rng in resolve_gets(hub)] == [True]  # the header read only
    assert store_files(sizes_home) == {} and models.list() == []
    assert models.pull(SIZES, max_ram=q2)["quant"] == "Q2_K"  # near miss


def test_a_smaller_context_fits_a_better_quant(sizes_home: Path, tmp_path: Path) -> None:
    ram = _need(tmp_path, "m.Q8_0.gguf", n_ctx=512)
    assert ram < _need(tmp_path, "m.Q8_0.gguf")
    assert models.pull(SIZES, max_ram=ram, n_ctx=512)["quant"] == "Q8_0"


def test_max_ram_with_a_quant_is_refused(sizes_home: Path, hub: FakeHub) -> None:
    with pytest.raises(InputError, match=r"give a quant \(Q4_K_M\) or --max-ram, not both"):
        models.pull(f"{SIZES}:Q4_K_M", max_ram="8GB")
    assert resolve_gets(hub) == []


def test_cli_says_which_quant_and_why(sizes_home: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["pull", SIZES, "--max-ram", "1GB", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "Q8_0: the least lossy quant Team-ACE/Sizes-GGUF offers that fits" in res.output
    res = CliRunner().invoke(main, ["pull", SIZES, "--name", "dflt", "--quiet"])
    assert res.exit_code == 0 and "Q4_K_M: the default quant (" in res.output
    res = CliRunner().invoke(main, ["pull", SIZES, "--max-ram", "lots"])
    assert res.exit_code == 2 and "--max-ram 'lots': write a size such as 8GB" in res.output


def test_every_quant_the_quantizer_makes_is_ranked() -> None:
    from toolace.convert.quantize import _TABLE

    assert sorted(QUANT_PREFERENCE) == sorted(name for name, *_ in _TABLE if name != "COPY")  # COPY: no type


def test_quantize_names_the_default_and_why(tmp_path: Path, tiny_llama_gguf: Path) -> None:
    from toolace.convert.gguf_files import DEFAULT_QUANT_WHY
    from toolace.convert.info import info

    out = tmp_path / "tiny.gguf"
    res = CliRunner().invoke(main, ["quantize", str(tiny_llama_gguf), str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0] == f"Q4_K_M: the default quant ({DEFAULT_QUANT_WHY}); choose another with --type"
    assert info(out)["file_type"] == "Q4_K_M"
    res = CliRunner().invoke(main, ["quantize", str(tiny_llama_gguf), str(tmp_path / "q8.gguf"), "--type", "Q8_0"])
    assert res.exit_code == 0 and "default" not in res.output  # near miss: a type named, nothing to explain
