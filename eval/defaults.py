"""The evaluation defaults the `eval` command shows in its help: their own module, so listing the commands
(`toolace --help`) does not import the evaluator, the API and llama.cpp behind them."""

from __future__ import annotations

DATA_ENV = "TOOLACE_BFCL_DIR"  # where BFCL data is, when --data is not given
DEFAULT_CATEGORIES = "simple_python,multiple,parallel,parallel_multiple,irrelevance"
TOOL_CHOICE_MODES = ("category", "auto")
# The longest BFCL ground truth (parallel_137) is 241 SmolLM2 tokens and ~200 Llama-3 tokens: 256 cuts none of them.
EVAL_MAX_TOKENS = 256
