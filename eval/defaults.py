"""The evaluation defaults the `eval` command shows in its help: their own module, so listing the commands
(`toolace --help`) does not import the evaluator, the API and llama.cpp behind them."""

from __future__ import annotations

DATA_ENV = "TOOLACE_BFCL_DIR"  # where BFCL data is, when --data is not given
DEFAULT_CATEGORIES = "simple_python,multiple,parallel,parallel_multiple,irrelevance"
TOOL_CHOICE_MODES = ("category", "auto")
# The longest BFCL ground truth (parallel_137) is 241 SmolLM2 tokens and ~200 Llama-3 tokens: 256 cuts none of them.
EVAL_MAX_TOKENS = 256
# `toolace bench quants` (eval/bench_quants.py): the list, the usual types plus Q4_K_M and the 3-bit types
# with each importance matrix (`+fc`: function calling, `+generic`: generic text); IQ2_XS cannot be made without one.
QUANTS_DEFAULT_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_K_M+fc", "Q4_K_M+generic", "IQ4_XS", "Q3_K_M",
                        "Q3_K_M+fc", "Q3_K_M+generic", "IQ3_XXS+fc", "IQ3_XXS+generic", "IQ2_XS+fc", "Q2_K")
QUANTS_DEFAULT_HELD_ASIDE = 40  # held-aside transcripts: ~1,500 call-token positions, a full-vocabulary row each
QUANTS_DEFAULT_QUESTIONS = 8  # BFCL questions per category for the call columns (5 categories: 40 per quant)
