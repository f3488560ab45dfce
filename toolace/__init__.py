"""toolace: ToolACE-8B on a laptop, offline, with every function call guaranteed valid.

The heavy API (the llama.cpp engine) is imported lazily so `toolace.grammars` and the CLI's fast paths do not
load llama.cpp."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from toolace.errors import (
    ContextLengthError,
    DownloadError,
    GenerationError,
    InputError,
    ModelFileError,
    SchemaError,
    TemplateError,
    ToolaceError,
    ValidationFailure,
)

if TYPE_CHECKING:
    from toolace.agent.loop import RunResult
    from toolace.api import CallResult, ToolACE

__all__ = [
    "CallResult",
    "ContextLengthError",
    "DownloadError",
    "GenerationError",
    "InputError",
    "ModelFileError",
    "RunResult",
    "SchemaError",
    "TemplateError",
    "ToolACE",
    "ToolaceError",
    "ValidationFailure",
]
__version__ = "0.1.0"

_LAZY = {"ToolACE": "toolace.api", "CallResult": "toolace.api", "RunResult": "toolace.agent.loop"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'toolace' has no attribute {name!r}")
