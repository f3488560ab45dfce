"""The token budget and runaway values on llama.cpp (docs/budget.md): the guard of grammars/plan.py with the
model's own vocabulary. The planner is pure (grammars/plan.py) so the vLLM export's logits processor runs the same
code on the Hugging Face tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from weakref import WeakKeyDictionary

from ..errors import GenerationError
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
        self._byte_tokens: dict[int, int] | None = None

    def encode(self, data: bytes) -> list[int]:
        """Tokens whose bytes are exactly `data`. llama.cpp's tokenizer reads text and turns bytes that are not
        UTF-8 into U+FFFD; a completion can start inside a character the model began (its first bytes are
        continuation bytes), so such bytes go as single-byte tokens and the UTF-8 runs as text."""
        out: list[int] = []
        while data:
            try:
                data.decode("utf-8")
                return out + self.model.llm.tokenize(data, add_bos=False, special=False)
            except UnicodeDecodeError as e:
                if e.start:
                    out += self.model.llm.tokenize(data[:e.start], add_bos=False, special=False)
                out += [self._byte_token(b) for b in data[e.start:e.end]]
                data = data[e.end:]
        return out

    def _byte_token(self, byte: int) -> int:
        if self._byte_tokens is None:  # once per model, on the first stray byte: a scan of the vocabulary
            found: dict[int, int] = {}
            for token in range(self.model.n_vocab):
                piece = self.piece(token)
                if len(piece) == 1:
                    found.setdefault(piece[0], token)
            self._byte_tokens = found
        if byte not in self._byte_tokens:
            raise GenerationError(f"the model's vocabulary has no token for the byte {byte:#04x}")
        return self._byte_tokens[byte]

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
