"""Click commands for the engine's model-file verbs: `convert`, `quantize`, `info` (the store's `pull`, `list`,
`show` and `rm` are in cli_models.py). Thin on purpose: each passes its flags, named as the library function's
parameters, straight through, and turns a ToolaceError into one line and the error's exit code. They live here, not
in convert/, because the engine never imports the CLI edge; toolace/cli.py loads them by name (VERB_MODULES)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from toolace.convert.gguf_files import DEFAULT_QUANT, DEFAULT_QUANT_WHY
from toolace.edge import edge


def _call(fn: Callable[..., Any], **kwargs: Any) -> Any:
    return edge(fn)(**kwargs)


@click.command("convert")
@click.argument("src")
@click.option("-o", "--outfile", required=True, type=click.Path(dir_okay=False), help="GGUF file to write.")
@click.option("--outtype", default="f16", show_default=True,
              help="f32, f16, bf16, or a llama.cpp quantization type (Q8_0, Q4_K_M, ...).")
@click.option("--revision", default=None, help="Hub branch, tag or commit (hub repo ids only).")
def convert_cmd(**kwargs: Any) -> None:
    """Convert a Hugging Face checkpoint (local folder or hub repo id) to GGUF."""
    from toolace.convert.convert import convert

    click.echo(_call(convert, **kwargs))


@click.command("quantize")
@click.argument("infile", type=click.Path(dir_okay=False))
@click.argument("outfile", type=click.Path(dir_okay=False))
@click.option("--type", "type", default=None,
              help=f"llama.cpp quantization type (default {DEFAULT_QUANT}: {DEFAULT_QUANT_WHY}).")
@click.option("--imatrix", default=None, type=click.Path(dir_okay=False),
              help="Importance matrix (llama-imatrix output, GGUF or legacy .dat).")
@click.option("--output-tensor-type", default=None, help="Pin output.weight to this ggml type (e.g. Q8_0).")
@click.option("--token-embedding-type", default=None, help="Pin token_embd.weight to this ggml type.")
@click.option("--allow-requantize", is_flag=True, help="Accept an already quantized input (both roundings add up).")
def quantize_cmd(**kwargs: Any) -> None:
    """Quantize a GGUF file with llama.cpp's quantizer."""
    from toolace.convert.quantize import quantize

    if kwargs["type"] is None:
        kwargs["type"] = DEFAULT_QUANT
        click.echo(f"{DEFAULT_QUANT}: the default quant ({DEFAULT_QUANT_WHY}); choose another with --type",
                   err=True)
    click.echo(_call(quantize, **kwargs))


@click.command("info")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info_cmd(file: str, as_json: bool) -> None:
    """Inspect a GGUF file (its header only; the file is checked before anything trusts it)."""
    from toolace.convert.info import format_info, info

    summary = _call(info, file=file)
    click.echo(json.dumps(summary, indent=2) if as_json else format_info(summary))


COMMANDS = (convert_cmd, quantize_cmd, info_cmd)
