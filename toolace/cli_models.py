"""Click commands for the model store: `pull`, `list`, `show`, `rm`. Thin: flags equal the parameters of
toolace.models' functions, which do the work; here they become tables, key/value lines or JSON (`--json`). Nothing
imported at module level loads llama.cpp, numpy or huggingface_hub: listing models starts as fast as Python does."""

from __future__ import annotations

import json
from typing import Any

import click

from toolace.edge import edge
from toolace.limits import DEFAULT_N_CTX
from toolace.runtime.kv_types import DEFAULT_KV_TYPE, KV_TYPES

SHA_SHOWN = 12  # hex digits of a sha256 in `toolace list`, as git shows commit ids
REVISION_SHOWN = 7


def human_bytes(n: int) -> str:
    """Decimal units, as the hub and disk tools print sizes."""
    for unit, scale, digits in (("GB", 1e9, 2), ("MB", 1e6, 1), ("kB", 1e3, 0)):
        if n >= scale:
            return f"{n / scale:.{digits}f} {unit}"
    return f"{n} B"


def _source(m: dict[str, Any]) -> str:
    if not m.get("source"):
        return "-"
    return f"{m['source']}@{str(m.get('revision') or '?')[:REVISION_SHOWN]}"


def _row(m: dict[str, Any]) -> list[str]:
    if m["state"] == "partial":
        size = f"{human_bytes(m['downloaded'])} of {human_bytes(int(m.get('size') or 0))}"
        return [str(m.get("name") or "-"), _source(m), str(m.get("quant") or "-"), size,
                "partial (pulling)" if m.get("in_use") else "partial", "-"]
    size = human_bytes(m["size"]) if m["size"] is not None else "file missing"
    return [m["name"], _source(m), str(m.get("quant") or "-"), size, str(m.get("sha256") or "-")[:SHA_SHOWN],
            str(m.get("last_used") or "never")]


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows])


@click.command("pull")
@click.argument("ref")
@click.option("-q", "--quant", default=None, help="Quant tag when REF has none (REPO:QUANT); default Q4_K_M.")
@click.option("--name", default=None, help="Store name (default: the repo's name, lower-cased).")
@click.option("--revision", default=None, help="Hub branch, tag or commit.")
@click.option("--quiet", is_flag=True, help="No progress bar (there is none without a terminal either).")
@click.option("--max-ram", default=None,
              help="Instead of a quant: the least lossy GGUF quant the repo offers that fits this memory (8GB, 6GiB).")
@click.option("--n-ctx", type=int, default=DEFAULT_N_CTX, show_default=True, help="Context --max-ram sizes for.")
@click.option("--kv-type", type=click.Choice(list(KV_TYPES)), default=DEFAULT_KV_TYPE, show_default=True,
              help="K/V cache type --max-ram sizes for.")
@click.option("--json", "as_json", is_flag=True, help="Print the store entry as JSON.")
@edge
def pull_cmd(ref: str, quant: str | None, name: str | None, revision: str | None, quiet: bool,
             max_ram: str | None, n_ctx: int, kv_type: str, as_json: bool) -> None:
    """Pull REF (REPO, REPO:QUANT or hf.co/REPO:QUANT) into the model store: a ready GGUF of that quant when the
    repo has one, else the checkpoint converted and quantized. Interrupted pulls resume."""
    from toolace.models import pull

    entry = pull(ref, quant=quant, name=name, revision=revision, quiet=quiet, max_ram=max_ram, n_ctx=n_ctx,
                 kv_type=kv_type, note=lambda line: click.echo(line, err=True))
    click.echo(json.dumps(entry, indent=2) if as_json else entry["path"])


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@edge
def list_cmd(as_json: bool) -> None:
    """Models in the store (name, source repo@revision, quant, size, sha256, last used) and unfinished pulls."""
    from toolace.models import list as list_models

    models = list_models()
    if as_json:
        click.echo(json.dumps(models, indent=2))
    elif not models:
        click.echo("no models yet: `toolace pull REPO[:QUANT]` adds one")
    else:
        click.echo(table(["NAME", "SOURCE", "QUANT", "SIZE", "SHA256", "LAST USED"], [_row(m) for m in models]))


def format_show(s: dict[str, Any]) -> str:
    """`toolace show`'s lines: what the model is, then what it needs at the asked context."""
    from toolace.runtime.memory import gib

    t, mem = s["template"], s["memory"]
    template = f"{t['family']}, {t['chars']:,} characters" if t["present"] else t["family"]
    tools = f"yes (tool results as {t['tool_role']})" if t["tool_calling"] else "no (toolace adds the tools itself)"
    rows = [("name", s["name"]), ("path", s["path"]), ("source", _source(s) if s.get("source") else "-"),
            ("sha256", s.get("sha256") or "-"), ("architecture", s["architecture"]),
            ("parameters", f"{s['parameters']:,}"), ("quant", s["quant"] or "-"),
            ("size", human_bytes(s["size"]) + (f" in {len(s['files'])} files" if len(s["files"]) > 1 else "")),
            ("context", f"{s['context_length']:,} tokens (trained)"), ("chat template", template),
            ("tool calling", tools),
            (f"memory at {mem['n_ctx']:,}", f"{gib(mem['total'])} (weights {gib(mem['weights'])} + KV cache "
                                            f"{gib(mem['kv_cache'])} {mem['kv_type']} + compute {gib(mem['compute'])}"
                                            f" + tokenizer {gib(mem['tokenizer'])})"),
            ("available", gib(mem["available"]))]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in rows)


@click.command("show")
@click.argument("name")
@click.option("--n-ctx", type=int, default=DEFAULT_N_CTX, show_default=True, help="Context for the memory estimate.")
@click.option("--kv-type", type=click.Choice(["f16", "q8_0", "q4_0"]), default="f16", show_default=True,
              help="K/V cache type for the estimate (see `toolace call --help`).")
@click.option("--parallel", type=int, default=1, show_default=True, help="Slots of --n-ctx tokens each.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@edge
def show_cmd(name: str, n_ctx: int, kv_type: str, parallel: int, as_json: bool) -> None:
    """What NAME is (a pulled name, a GGUF path, or 'demo') and the memory it needs at --n-ctx."""
    from toolace.models import show

    summary = show(name, n_ctx=n_ctx, kv_type=kv_type, parallel=parallel)
    click.echo(json.dumps(summary, indent=2) if as_json else format_show(summary))


@click.command("rm")
@click.argument("name", required=False)
@click.option("--partials", is_flag=True, help="Also remove unfinished downloads and conversion leftovers that no "
              "running toolace is writing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@edge
def rm_cmd(name: str | None, partials: bool, as_json: bool) -> None:
    """Remove NAME from the store and free its bytes; --partials sweeps unfinished downloads."""
    from toolace.models import remove

    report = remove(name, partials=partials)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for r in report["removed"]:
        what = {"model": f"{r.get('name')}", "download": f"partial download of {r.get('name')} ({r.get('source')})",
                "conversion": f"conversion leftover {r['path']}"}[r["kind"]]
        click.echo(f"removed {what}: freed {human_bytes(r['bytes'])}")
        for kept in r.get("kept") or []:
            click.echo(f"kept {kept}: registered from outside the store, not deleted")
    if not report["removed"]:
        click.echo("nothing to remove")


COMMANDS = (pull_cmd, list_cmd, show_cmd, rm_cmd)
