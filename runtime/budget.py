"""The token budget and runaway values on llama.cpp (docs/budget.md): the guard of grammars/plan.py with the
model's own vocabulary. The planner is pure (grammars/plan.py) so the vLLM export's logits processor runs the same
code on the Hugging Face tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from weakref import WeakKeyDictionary

from ..grammars.loops import (  # noqa: F401 - re-exported
    find_loop,
    json_value_depths,
    prose_loop,
    prose_phrase_loop,
    value_depths,
)
from ..grammars.plan import Guard, Lex, Verdict, shortest_completion, start_plan  # noqa: F401 - re-exported
from .model import Model


class ModelVocab:
    """llama.cpp's tokenizer as a grammars.plan.Vocab: canonical tokens without BOS, token bytes without specials."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def encode(self, data: bytes) -> list[int]:
        return self.model.llm.tokenize(data, add_bos=False, special=False) if data else []

    def piece(self, token: int) -> bytes:
        return self.model.token_text(token, special=False)


_VOCABS: WeakKeyDictionary[Model, ModelVocab] = WeakKeyDictionary()


def model_vocab(model: Model) -> ModelVocab:
    """One vocabulary per model (a parallel slot's is its model's), so its start plans stay cached while the model
    lives."""
    base = getattr(model, "base", model)
    vocab = _VOCABS.get(base)
    if vocab is None:
        vocab = _VOCABS[base] = ModelVocab(base)
    return vocab


def minimum_tokens(model: Model, gbnf: str, names: Sequence[str]) -> int | None:
    """Tokens of the shortest complete call list this grammar allows (None: no call list within the walk limit)."""
    plan = start_plan(model_vocab(model), gbnf, tuple(names))
    return None if plan is None else len(plan)


class BudgetGuard(Guard):
    """grammars.plan.Guard on a loaded model's vocabulary."""

    def __init__(self, model: Model, gbnf: str, names: Sequence[str], calls_only: bool, max_tokens: int,
                 context_room: int, json: bool = False) -> None:
        self.model = model
        super().__init__(model_vocab(model), gbnf, names, calls_only, max_tokens, context_room, json)
