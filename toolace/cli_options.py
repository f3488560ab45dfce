"""Flags shared by the commands that load a model (`call`, `serve`, `run`, `chat`): a module of their own, so the
main command and the agent's commands both use them without importing each other."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from toolace.limits import BATCHING_MODES, DEFAULT_BATCHING, DEFAULT_MAX_TOKENS, DEFAULT_N_CTX
from toolace.runtime.kv_types import DEFAULT_KV_TYPE, KV_TYPE_HELP, KV_TYPES
from toolace.runtime.speculative import DEFAULT_SPECULATIVE


def model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Flags shared by every command that loads a model (they equal ToolACE.load's parameters)."""
    for opt in reversed([
        click.option("--model", "model", default="demo", show_default=True,
                     help="GGUF path, 'demo' (bundled SmolLM2), or a name from `toolace pull`."),
        click.option("--n-ctx", type=int, default=DEFAULT_N_CTX, show_default=True, help="Context size in tokens."),
        click.option("--n-gpu-layers", default="auto", show_default=True, help="'auto' offloads all layers "
                     "when llama.cpp was built with CUDA/Metal; an integer sets it."),
        click.option("--engine", type=click.Choice(["llguidance", "llama"]), default="llguidance",
                     show_default=True, help="Grammar engine."),
        click.option("--cache-max-bytes", type=click.IntRange(min=0), default=None,
                     help="Bytes the disk prompt cache may hold; least recently used state files are removed "
                          "beyond it. Default: 32,768 tokens of the model's KV state (4 GiB for an 8B model)."),
        click.option("--kv-type", type=click.Choice(list(KV_TYPES)), default=DEFAULT_KV_TYPE, show_default=True,
                     help=KV_TYPE_HELP),
        click.option("--speculative/--no-speculative", default=DEFAULT_SPECULATIVE, show_default=True,
                     help="Verify drafts (forced text, text copied from the conversation) several tokens per decode; "
                          "the same output (docs/speculative.md)."),
    ]):
        fn = opt(fn)
    return fn


def batching_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--batching", type=click.Choice(BATCHING_MODES), default=DEFAULT_BATCHING, show_default=True,
                        help="exact: each slot's greedy answer equals the same request alone; fast: one KV pool, "
                             "one decode per step, answers may differ (docs/parallel.md).")(fn)


def sampling_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--tool-choice", default="auto", show_default=True,
                     help="auto | required | none | a function name."),
        click.option("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, show_default=True),
        click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy."),
        click.option("--seed", type=int, default=None),
        click.option("--no-parallel", is_flag=True, help="At most one call per turn."),
    ]):
        fn = opt(fn)
    return fn
