"""The one error hierarchy. Library code raises these; the CLI and server turn them into one line and an exit
code or a 4xx. Anything else escaping is a bug."""

from __future__ import annotations


class ToolaceError(Exception):
    """Base of every error toolace raises on purpose."""

    exit_code = 1


class InputError(ToolaceError):
    """The user's input is wrong (tools file, flag, request). Exit code 2, HTTP 400."""

    exit_code = 2


class SchemaError(InputError):
    """A tool schema cannot be normalised or compiled into a grammar."""


class ModelFileError(InputError):
    """A GGUF or checkpoint file is malformed, truncated or unsupported."""


class TemplateError(ToolaceError):
    """A chat template failed to render, ran too long, or produced too much."""


class GenerationError(ToolaceError):
    """Decoding failed: the grammar allowed no token, llama.cpp refused a batch or a state file."""


class ContextLengthError(GenerationError):
    """The prompt (plus what must be generated) does not fit the context window. HTTP 400
    `context_length_exceeded` when raised before any token was produced."""


class ValidationFailure(ToolaceError):
    """Model output that parses but breaks the schema in a way the grammar could not enforce."""


class OutputError(ToolaceError):
    """An output could not be written (disk full, file too large, read-only); nothing partial is left behind."""


class DownloadError(ToolaceError):
    """A download failed, was refused (path tricks, pickles) or did not match its hash."""


class DownloadCancelled(DownloadError):
    """A download stopped by its caller (a cancel event, Ctrl-C); the partial file is kept, the next pull resumes it.
    Exit code 130, as for any command stopped by SIGINT."""

    exit_code = 130


class ResourceError(ToolaceError):
    """The machine lacks the room a job needs (RAM for a model at its context, disk space for a download); refused
    before any of it is used, with the numbers and the ways out."""


class ToolServerError(ToolaceError):
    """An MCP tool server could not be started, or did not answer initialize in time."""
