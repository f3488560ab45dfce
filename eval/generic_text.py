"""Generic text for a comparison imatrix (`toolace bench quants`' "+generic" quants): what people calibrate on when
they do not calibrate on function calls. Wikitext is not on an offline machine; every Python installation carries
its standard library's docstrings, English prose about many subjects, read here from the sources with `ast` (no
module is imported, so nothing runs). Deterministic for one Python version; `--generic-text FILE` takes any text."""

from __future__ import annotations

import ast
import os
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

from toolace.errors import InputError

MIN_DOCSTRING_CHARS = 200  # shorter docstrings are signatures and one-liners, not prose


def stdlib_docstrings() -> Iterator[str]:
    """Module, class and function docstrings of the standard library's own .py files, in path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if rel[0] in ("site-packages", "dist-packages", "test", "idlelib") or "tests" in rel:
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= MIN_DOCSTRING_CHARS:
                    yield doc


def generic_text(path: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """The generic corpus in pieces: the file at `path` (split at blank lines), else the stdlib's docstrings."""
    if path is None:
        yield from stdlib_docstrings()
        return
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--generic-text {path}: cannot read it as UTF-8 text: {e}") from None
    pieces = [p.strip() for p in text.split("\n\n") if p.strip()]
    if not pieces:
        raise InputError(f"--generic-text {path}: the file holds no text")
    yield from pieces


def generic_chunks(tokenize: Callable[[str], list[int]], bos: int | None, total: int, chunk: int,
                   path: str | os.PathLike[str] | None = None) -> list[list[int]]:
    """`total` tokens of generic text in chunks of at most `chunk` tokens (llama.cpp's imatrix chunks), each
    starting with `bos` (when the model has one) then running text. InputError when the corpus is too short."""
    head = [bos] if bos is not None else []
    chunks: list[list[int]] = []
    stream: list[int] = []
    have = 0
    for piece in generic_text(path):
        stream += tokenize(piece + "\n\n")
        while have < total and len(stream) >= min(chunk, total - have) - len(head):
            take = min(chunk, total - have) - len(head)
            chunks.append(head + stream[:take])
            have += len(head) + take
            del stream[:take]
        if have >= total:
            return chunks
    raise InputError(f"the generic text has {have} tokens, fewer than the {total} to match "
                     "(give a longer --generic-text FILE)")
