"""Speculative decoding under the grammar (docs/speculative.md): drafts from the grammar's forced tokens and from
prompt lookup, checked against the grammar, verified in one llama_decode with logits at every position.

The decoding loop (runtime/generate.py) is not changed by it: it still chooses every token from logits, one at a
time, through the grammar, the budget guard, stop strings and loop cuts. A draft only decides what the KV cache
holds ahead of the loop: when the loop then takes the drafted token, its logits are already there (no decode);
when it takes another one, the rest of the draft is removed from the KV cache and the token is decoded as usual.
The grammar matcher only ever sees the tokens the loop took. So greedy output is the output without speculation
wherever a row of a batched decode equals a one-token decode (docs/speculative.md, "Why identical"), and sampling
draws the same numbers from the same distributions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol
from weakref import WeakKeyDictionary

import numpy as np

from toolace.limits import SPEC_MAX_DRAFT_TOKENS

if TYPE_CHECKING:  # typing only: the CLI reads DEFAULT_SPECULATIVE without loading llama.cpp
    from .constraints import Constraint
    from .model import Model

DEFAULT_SPECULATIVE = False  # docs/speculative.md, "Default": on once greedy equality is shown on the full BFCL run

# Tuning (not limits): the lookup's draft length K adapts to how much of its drafts the model takes.
LOOKUP_MAX_NGRAM = 4  # the longest suffix of the output looked up in the context (longer matches are preferred)
# A one-token match (a comma, a space, " the") predicts little: a draft needs the last LOOKUP_MIN_NGRAM tokens to
# have occurred together before.
LOOKUP_MIN_NGRAM = 2
START_K = 4  # lookup tokens drafted at first; a fully taken draft grows K by one, up to SPEC_MAX_DRAFT_TOKENS
ACCEPT_WEIGHT = 0.3  # weight of the newest verification in the moving acceptance rate
# Below this acceptance rate the lookup pauses: a rejected lookup token costs a row of a decode and gains nothing.
# A row with logits costs about half a one-token decode (SmolLM2 on 2 CPU cores: 16 ms for 1 token, +8.4 ms a row),
# and a taken one saves a decode: drafting pays from about half its tokens taken.
# On prose the rate falls below it after a few tries; each pause is longer than the last (PAUSE_START, doubling, up
# to PAUSE_MAX tokens), so text that copies nothing is decoded nearly as without speculation.
MIN_ACCEPT_RATE = 0.5
PAUSE_START = 8
PAUSE_MAX = 256


# The rows-equal-single-decodes probe (docs/speculative.md, "Why identical"): a fixed text, its last PROBE_ROWS tokens
# decoded one at a time and then in one decode with logits at each; speculation runs only where they are bit-equal.
PROBE_TEXT = "Find the user named Alice Smith, then list the orders of user 4217 placed since 2024-01-01."
PROBE_ROWS = SPEC_MAX_DRAFT_TOKENS + 1  # a verification's rows: the loop's last token and a full draft
_PROBED: WeakKeyDictionary[Any, dict[str, bool]] = WeakKeyDictionary()


def rows_equal_single_decodes(model: Model) -> bool:
    """Whether this model's batched rows are bit-equal to one-token decodes (checked once per model and context
    kind; it empties the sequence's KV cache, so call it before a prefill). Where they are not, a kernel chosen by
    batch size (llama.cpp's tinyBLAS, the CPU repack or tiled matmuls, GPU kernels) rounds differently, and a
    verified draft would change later tokens: speculation stays off there."""
    base = getattr(model, "base", model)
    verdicts = _PROBED.setdefault(base, {})
    kind = model.STATE_KIND
    if kind not in verdicts:
        tokens = model.tokenize(PROBE_TEXT, special=False)
        head, tail = tokens[: len(tokens) - PROBE_ROWS], tokens[len(tokens) - PROBE_ROWS:]
        model.reset()
        model.eval(head)
        singles = []
        for t in tail:
            model.eval([t])
            singles.append(np.array(model.logits(), copy=True))
        model.truncate(len(head))
        rows = model.eval_rows(tail, [True] * len(tail))
        verdicts[kind] = all(np.array_equal(a, b) for a, b in zip(singles, rows, strict=True))
        model.reset()
    return verdicts[kind]


class Drafter(Protocol):
    def propose(self, context: Sequence[int], k: int) -> list[int]: ...


class PromptLookup:
    """Proposes the tokens that followed the latest earlier occurrence of the context's longest repeated suffix
    (up to LOOKUP_MAX_NGRAM tokens): a name, a city or a date the question or a tool result already holds."""

    def propose(self, context: Sequence[int], k: int) -> list[int]:
        n = len(context)
        if n < LOOKUP_MIN_NGRAM or k <= 0:
            return []
        arr = np.asarray(context, dtype=np.int64)
        ends = np.flatnonzero(arr[:-1] == arr[-1])  # earlier occurrences of the last token
        if ends.size == 0:
            return []
        # Match lengths of every occurrence at once (a frequent token has hundreds: a Python loop cost ~0.5 ms a
        # token on prose); an occurrence extends only while each earlier token matches too.
        length = np.ones(ends.size, dtype=np.int64)
        alive = np.ones(ends.size, dtype=bool)
        for back in range(1, LOOKUP_MAX_NGRAM):
            alive &= ends >= back
            alive[alive] = arr[ends[alive] - back] == arr[n - 1 - back]
            length += alive
        best_len = int(length.max())
        if best_len < LOOKUP_MIN_NGRAM:
            return []
        best = int(ends[np.flatnonzero(length == best_len)[-1]])  # ties go to the most recent occurrence
        return [int(t) for t in arr[best + 1: best + 1 + k]]


class Speculator:
    """The KV cache ahead of the decoding loop: drafted tokens evaluated (with logits at each) and not yet taken.

    `evaluate` replaces the model's `eval` for the loop's tokens, `logits` its `logits`, `truncate` its
    `truncate`; `tokens` counts only the tokens the loop took. `close` removes what is left of a draft."""

    def __init__(self, model: Model, constraint: Constraint | None, prompt: Sequence[int], eog_ids: frozenset[int],
                 drafter: Drafter | None = None, fast_forward: bool = True) -> None:
        self.model, self.constraint, self.eog_ids = model, constraint, eog_ids
        # With fast-forward the loop appends a forced run without reading logits inside it: those rows skip the
        # output layer. Without it, the loop samples every token, forced ones too.
        self.fast_forward = fast_forward
        self.drafter: Drafter = drafter if drafter is not None else PromptLookup()
        self.context: list[int] = list(prompt)  # prompt + taken tokens: what lookup searches
        self.pending: list[int] = []  # drafted tokens in the KV cache after `context`, not yet taken
        self.rows: list[np.ndarray | None] = []  # logits after each pending token (None: not computed)
        self.current: np.ndarray | None = None  # logits after the last taken token when it came from a row
        self.stale = False  # the last taken token's row was decoded without logits: decode it again if asked
        self.lookup_left = 0  # pending tokens at the end that came from lookup (the rest were forced)
        self.lookup_drafted = 0  # lookup tokens of the current draft
        self.k, self.rate, self.pause, self.next_pause = START_K, 1.0, 0, PAUSE_START
        self.decodes = self.verify_decodes = self.drafted = self.accepted = 0

    @property
    def held(self) -> int:
        """Tokens the loop took (prompt included): the KV cache minus the pending draft."""
        return len(self.context)

    def logits(self) -> np.ndarray:
        if self.stale:
            self._decode_last_again()
        return self.model.logits() if self.current is None else self.current

    def _decode_last_again(self) -> None:
        """The loop reads logits where the draft's row skipped them (it stopped inside a forced run): drop the
        rest of the draft and the last token, and decode that token alone, as decoding without speculation does."""
        self._reject()
        self.model.truncate(len(self.context) - 1)
        self.model.eval(self.context[-1:])
        self.current, self.stale = None, False
        self.decodes += 1

    def evaluate(self, tokens: Sequence[int], room: int) -> None:
        """The loop takes `tokens` (the grammar matcher has accepted them); `room`: tokens the budget allows after
        them. Taken from the pending draft where they match it, else decoded with a new draft after them."""
        tokens = list(tokens)
        same = 0
        while same < min(len(tokens), len(self.pending)) and tokens[same] == self.pending[same]:
            same += 1
        if same:
            self._take(same)
            tokens = tokens[same:]
        if not tokens:
            return
        self._reject()
        self.context += tokens
        draft, forced = self._draft(room)
        seq = tokens + draft
        if draft:
            rows = self.model.eval_rows(seq, self._want(len(tokens), len(draft), forced))
            self.verify_decodes += 1
            self.drafted += len(draft)
            self.current, self.rows, self.pending = rows[len(tokens) - 1], rows[len(tokens):], draft
            self.stale = self.current is None
        else:
            self.model.eval(seq)
            self.current, self.stale = None, False
        self.decodes += 1

    def _want(self, n_taken: int, n_draft: int, forced: int) -> list[bool]:
        """Rows whose logits the loop can read: after its last token and after every draft token, except (with
        fast-forward) inside the forced run, which the loop appends whole."""
        want = [False] * (n_taken - 1) + [True] * (n_draft + 1)
        if self.fast_forward and forced:
            for i in range(n_taken - 1, n_taken - 1 + forced):
                want[i] = False
        return want

    def _take(self, n: int) -> None:
        self.context += self.pending[:n]
        self.current = self.rows[n - 1]
        self.stale = self.current is None
        taken_lookup = max(0, n - (len(self.pending) - self.lookup_left))
        self.lookup_left -= taken_lookup
        self.accepted += n
        del self.pending[:n], self.rows[:n]
        if not self.pending:
            self._settle()

    def _reject(self) -> None:
        """Remove what is left of the draft from the KV cache; the matcher never saw it."""
        if self.pending:
            self.model.truncate(len(self.context))
            self.pending, self.rows = [], []
            self._settle()

    def _settle(self) -> None:
        """A draft is resolved: adapt K and the pause to how much of its lookup part was taken."""
        if self.lookup_drafted:
            taken = self.lookup_drafted - self.lookup_left
            self.rate += ACCEPT_WEIGHT * (taken / self.lookup_drafted - self.rate)
            self.k = min(SPEC_MAX_DRAFT_TOKENS, self.k + 1) if taken == self.lookup_drafted else max(1, taken)
            if self.rate < MIN_ACCEPT_RATE:
                self.pause, self.next_pause = self.next_pause, min(PAUSE_MAX, self.next_pause * 2)
                self.rate = MIN_ACCEPT_RATE  # after the pause, one more chance at the threshold
            elif taken:
                self.next_pause = PAUSE_START
        self.lookup_left = self.lookup_drafted = 0

    def _draft(self, room: int) -> tuple[list[int], int]:
        """Forced tokens, then lookup, cut where the grammar rejects (or at an end of turn) and to the budget;
        returns the draft and how many of its first tokens are forced."""
        cap = min(room, SPEC_MAX_DRAFT_TOKENS)
        if cap <= 0:
            return [], 0
        forced: list[int] = []
        if self.constraint is not None:
            forced = self.constraint.forced_tokens()[:cap]
        look: list[int] = []
        if self.pause > 0:
            self.pause -= 1
        elif len(forced) < cap:
            look = self.drafter.propose(self.context + forced, min(self.k, cap - len(forced)))
        draft = forced + look
        cut = next((i for i, t in enumerate(draft) if t in self.eog_ids), len(draft))
        draft = draft[:cut]
        if self.constraint is not None and draft:
            draft = draft[: self.constraint.allowed_prefix(draft)]
        self.lookup_drafted = self.lookup_left = max(0, len(draft) - len(forced))
        return draft, min(len(forced), len(draft))

    def truncate(self, n: int) -> None:
        """Keep the first n taken tokens (prompt included): a runaway value cut back."""
        if self.stale:  # the logits after the last taken token stay readable after the cut, as without speculation
            self._decode_last_again()
        self._reject()
        del self.context[n:]
        self.model.truncate(n)  # the logits stay those of the last decode, as the model's own do after a truncate

    def close(self) -> None:
        """The generation ended: the KV cache holds exactly the taken tokens again."""
        self._reject()
