"""GGUF file names as the hub publishes them: which quantization a file is, which files form one split model.

Pure name logic, no I/O: `toolace pull REPO:QUANT` picks files with it, the loader finds a split model's parts with
it. Names follow llama.cpp's conventions: the quant tag is a dot- or dash-separated word of the file name
(`ToolACE-8B.Q4_K_M.gguf`, `toolace-8b-q4_k_m.gguf`), and a split model is `NAME-00001-of-00003.gguf` and its
siblings (llama.cpp's gguf-split naming, which its loader follows from the first part)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from toolace.errors import InputError, ModelFileError
from toolace.limits import MAX_GGUF_PARTS

GGUF_SUFFIX = ".gguf"
DEFAULT_QUANT = "Q4_K_M"
# Why, in one line (`pull` and `quantize` say it; the evidence is docs/quantize.md, "Which quant").
DEFAULT_QUANT_WHY = "the usual balance of size and loss: about 30% of F16's bytes, KL ~0.03 on Llama-3-8B"
# A quantization word: llama.cpp's k-quants, i-quants, legacy and ternary types, floats (Q4_K_M, IQ4_XS, Q8_0,
# TQ1_0, BF16, F16, F32, MXFP4_MOE) and the vendor variants built on them (Q4_K_XL). Matched case-insensitively.
QUANT_WORD_RE = re.compile(r"^(?:I?Q\d+(?:_[0-9A-Z]+)*|TQ\d_\d|BF16|F16|F32|MXFP4(?:_MOE)?)$", re.IGNORECASE)
SPLIT_RE = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
# Files that end in .gguf but are not a language model: vision projectors, importance matrices.
NOT_A_MODEL_RE = re.compile(r"(^|[-._/])(mmproj|imatrix)([-._/]|$)", re.IGNORECASE)


def split_part(filename: str) -> tuple[str, int, int] | None:
    """(name without the split suffix, part number, part count) for a split file name, else None."""
    m = SPLIT_RE.fullmatch(PurePosixPath(filename).name)
    if not m:
        return None
    return m["stem"], int(m["part"]), int(m["count"])


def quant_tag(filename: str) -> str | None:
    """The quantization a GGUF file name carries (upper-cased), or None; the last quant-like word wins."""
    name = PurePosixPath(filename).name
    if not name.lower().endswith(GGUF_SUFFIX) or NOT_A_MODEL_RE.search(name):
        return None
    split = split_part(name)
    stem = split[0] if split else name[: -len(GGUF_SUFFIX)]
    words = [w for w in re.split(r"[-.]", stem) if QUANT_WORD_RE.fullmatch(w)]
    return words[-1].upper() if words else None


@dataclass(frozen=True)
class GGUFChoice:
    """The file(s) of one quantization in a repo: one name, or every part of a split model in order."""

    quant: str
    files: tuple[str, ...]

    @property
    def first(self) -> str:
        return self.files[0]


def _group(files: list[str]) -> dict[tuple[str, str], list[str]]:
    """Model files keyed by (folder + name without split suffix, quant): a split model's parts form one group."""
    groups: dict[tuple[str, str], list[str]] = {}
    for f in files:
        tag = quant_tag(f)
        if tag is None:
            continue
        split = split_part(f)
        parent = str(PurePosixPath(f).parent)
        key = (f"{parent}/{split[0]}" if split else f, tag)
        groups.setdefault(key, []).append(f)
    return groups


def available_quants(files: list[str]) -> list[str]:
    """Every quant tag the repo's GGUF files carry, sorted."""
    return sorted({tag for _, tag in _group(files)})


def choose_gguf(repo_id: str, files: list[str], quant: str) -> GGUFChoice:
    """The file(s) for `quant` (case-insensitive) among a repo's file names; one clear error when there is none,
    more than one, or a split model with parts missing."""
    want = quant.upper()
    groups = [(key, members) for key, members in _group(files).items() if key[1] == want]
    if not groups:
        have = available_quants(files)
        listing = ", ".join(have) if have else "none (no GGUF file names a quantization)"
        raise InputError(f"{repo_id} has no {want} GGUF; it has: {listing}. Pick one with {repo_id}:QUANT")
    if len(groups) > 1:
        names = ", ".join(sorted(members[0] for _, members in groups))
        raise InputError(f"{repo_id}: several {want} GGUF files ({names}); toolace cannot tell which one you mean")
    members = sorted(groups[0][1])
    if len(members) == 1 and split_part(members[0]) is None:
        return GGUFChoice(want, (members[0],))
    return GGUFChoice(want, tuple(_complete_split(repo_id, members)))


def _complete_split(where: str, members: list[str]) -> list[str]:
    parts = [split_part(m) for m in members]
    if any(p is None for p in parts):
        raise InputError(f"{where}: {', '.join(members)} mix split and unsplit files of one model")
    counts = {p[2] for p in parts if p}
    count = counts.pop() if len(counts) == 1 else 0
    numbers = sorted(p[1] for p in parts if p)
    if not 1 <= count <= MAX_GGUF_PARTS or numbers != list(range(1, count + 1)):
        raise ModelFileError(f"{where}: split model parts {numbers} do not make a whole 1..{count or '?'} set "
                             f"(at most {MAX_GGUF_PARTS} parts)")
    return members


def local_parts(first: Path) -> list[Path]:
    """A GGUF's files on disk: itself, or every part of the split model whose first part it is (all must exist)."""
    split = split_part(first.name)
    if split is None:
        return [first]
    stem, number, count = split
    if number != 1:
        raise ModelFileError(f"{first}: part {number} of a split model; load the first part (-00001-of-{count:05d})")
    if count > MAX_GGUF_PARTS:
        raise ModelFileError(f"{first}: {count} parts is more than the {MAX_GGUF_PARTS} toolace accepts")
    parts = [first.with_name(f"{stem}-{i:05d}-of-{count:05d}{first.suffix}") for i in range(1, count + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise ModelFileError(f"{first}: split model is missing {', '.join(missing)}")
    return parts
