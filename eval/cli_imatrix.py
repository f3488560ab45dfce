"""Click command for `toolace imatrix`. Thin: its flags are eval/imatrix.py `imatrix`'s parameters, passed
straight through; toolace/cli.py loads this module by name (VERB_MODULES) when the verb runs."""

from __future__ import annotations

from typing import Any

import click

from toolace.edge import edge
from toolace.limits import IMATRIX_DEFAULT_LIMIT

from .defaults import DATA_ENV


@click.command("imatrix")
@click.argument("model")
@click.option("-o", "--outfile", required=True, type=click.Path(dir_okay=False),
              help="Importance matrix to write (llama.cpp's GGUF layout; its legacy one for a .dat name).")
@click.option("--data", default=None, type=click.Path(file_okay=False),
              help=f"BFCL data folder (default: ${DATA_ENV}, else TOOLACE_HOME/bfcl).")
@click.option("--limit", default=IMATRIX_DEFAULT_LIMIT, show_default=True, type=int,
              help="Function-calling transcripts to calibrate on.")
@edge
def imatrix_cmd(**kwargs: Any) -> None:
    """Measure an importance matrix for MODEL (GGUF path, 'demo', or a pulled name) on function-calling
    transcripts in its own prompt format, for `toolace quantize --imatrix` (docs/quantize.md)."""
    from .imatrix import imatrix

    click.echo(imatrix(**kwargs))


COMMANDS = (imatrix_cmd,)
