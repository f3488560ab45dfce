"""Model references: a GGUF path, `demo` (the bundled SmolLM2 fixture), or a name in the local model store."""

from __future__ import annotations

from pathlib import Path

from toolace.errors import ModelFileError
from toolace.fixtures import SMOLLM2_GGUF, fixture_path

DEMO = "demo"


def resolve_model(ref: str | Path, use: bool = True) -> Path:
    """The GGUF file `ref` names. `use`: the caller is about to load it, so a store name's last-used time is
    updated (`toolace list`); inspecting a model (`toolace show`) passes False."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if str(ref) == DEMO:
        demo = fixture_path(SMOLLM2_GGUF)
        if not demo.is_file():
            raise ModelFileError(f"the demo model is not fetched yet ({demo}); run `make fixtures`")
        return demo
    from ..convert.store import lookup, touch

    found = lookup(str(ref))
    if found is not None:
        if use:
            touch(str(ref))
        return found
    raise ModelFileError(f"no model {str(ref)!r}: not a file, not 'demo', not in the model store "
                         "(`toolace pull REPO[:QUANT]` adds one, `toolace list` shows them)")
