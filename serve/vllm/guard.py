"""toolace's budget guard and runaway cut inside vLLM 0.32: a logits processor (`--logits-processors
toolace_vllm_guard:ToolaceGuard`, set by serve.sh) that runs grammars/plan.py, the code `toolace serve` decodes with,
on every request whose structured-output grammar it can plan on (docs/scale-out.md, "The guarantee inside vLLM").

Why a logits processor: it is vLLM's supported per-request extension point on both of its model runners (V1's
`vllm.v1.sample.logits_processor.LogitsProcessor` and V2's `vllm.v1.worker.gpu.sample.logits_processor`; this class
is both), it is configured by the server, not the request, so no request can switch it off, and it sees the logits
after the grammar mask, so it can check the token the model would take, as toolace's decoder does. The structured
output backend has no hook for a plan that depends on the budget left.

While a call list or a JSON answer is open, the guard picks each token itself: the model's choice (greedy, or sampled
with the request's temperature, top_k, top_p, min_p and seed), taken if the shortest completion after it still fits
the budget, else the next token of the planned completion; vLLM's sampler then takes that one token. A token cycle
repeating inside one value is closed at once. vLLM cannot take back tokens it has produced, so a runaway value keeps
the LOOP_MIN_REPEATS copies that revealed it (`toolace serve` rolls them back).

What the request is comes from `extra_args["toolace"]` (JSON, written by the export's middleware and tool parser;
a client's own value is replaced by the middleware): the tool names, whether the output is calls from its first
token, whether it may be JSON, and a nonce. When the guard changed the output it writes a note named by the nonce
into $TOOLACE_VLLM_NOTES, which the middleware reads to report `finish_reason` "length" and `toolace.truncated`."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor

from toolace.errors import ToolaceError
from toolace.grammars.loops import find_loop
from toolace.grammars.plan import Guard, Vocab
from toolace.limits import MAX_LOOP_CUTS
from toolace.serve.vllm.meta import GuardClock, hf_vocab, read_meta, write_note

log = logging.getLogger("toolace.vllm.guard")
GREEDY_BELOW = 1e-5  # temperatures below this are greedy, as vLLM's own sampler treats them


def request_meta(params: Any) -> dict[str, Any] | None:
    """What the guard needs about a request, or None when it has no GBNF grammar to plan on."""
    so = getattr(params, "structured_outputs", None)
    if so is None or not isinstance(so.grammar, str):
        return None  # unconstrained, or a JSON schema / regex vLLM compiles itself (the middleware rewrites ours)
    meta: dict[str, Any] = {"names": [], "calls_only": True, "json": False, "nonce": None}  # a grammar of its own
    given = read_meta(params.extra_args)
    meta.update({k: given[k] for k in meta if k in given})
    return meta


class RequestGuard:
    """One request: follows its committed tokens and, while a guarded value is open, picks its next token."""

    def __init__(self, vocab: Vocab, eos: int, params: Any, meta: dict[str, Any]) -> None:
        budget = int(params.max_tokens or 0)
        self.guard = Guard(vocab, params.structured_outputs.grammar, meta["names"], bool(meta["calls_only"]),
                           budget, budget, bool(meta["json"]))
        self.budget, self.eos, self.nonce = budget, eos, meta["nonce"]
        self.stops = set(params.all_stop_token_ids) | {eos}
        self.temperature, self.top_k, self.top_p, self.min_p = \
            params.temperature, params.top_k, params.top_p, params.min_p
        # Greedy, and nothing after this processor (penalties, biases, bans) can move the argmax: the model's own
        # token needs no forcing (the row is left alone, ~0.1 ms a row saved).
        self.plain_greedy = params.temperature < GREEDY_BELOW and params.repetition_penalty == 1.0 \
            and not (params.presence_penalty or params.frequency_penalty or params.logit_bias or params.min_tokens
                     or params.bad_words or params.allowed_token_ids)
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed)
        self.out: list[int] = []  # committed output tokens
        self.pending: int | None = None  # the token chosen at the last step, already fed to the guard
        self.planned = False  # ... and whether it was the guard's (a loop is only looked for after the model's)
        self.cuts = 0
        self.crossing: tuple[int, int] | None = None  # a cycle known to span several values (as runtime/generate)
        self.noted = False

    def sync(self, committed: Sequence[int]) -> None:
        """Catch up with the tokens vLLM committed since the last step."""
        new = list(committed[len(self.out):])
        if not new:
            return
        unfed = new
        if self.pending is not None:
            if new[0] == self.pending:
                unfed = new[1:]  # fed when it was chosen
            else:  # another stage overrode the choice
                self.guard.rollback([self.pending])
            self.pending = None
        if unfed:
            self.guard.feed([t for t in unfed if t not in self.stops])
        self.out += new

    def _sample(self, row: torch.Tensor) -> int:
        if self.temperature < GREEDY_BELOW:
            return int(torch.argmax(row))
        logits = row / self.temperature
        if self.top_k and 0 < self.top_k < logits.numel():
            kth = torch.topk(logits, self.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if self.min_p and self.min_p > 0:
            probs = probs.masked_fill(probs < self.min_p * probs.max(), 0.0)
        if self.top_p and self.top_p < 1.0:
            ordered, order = torch.sort(probs, descending=True)
            drop = torch.cumsum(ordered, dim=-1) - ordered > self.top_p
            probs = probs.clone()
            probs[order[drop]] = 0.0
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def _loop_close(self) -> list[int] | None | bool:
        """False when the output does not end in a runaway value; else the guard's next token, which closes it
        (None: the grammar accepts here, the turn ends)."""
        if self.planned or self.cuts >= MAX_LOOP_CUTS or not self.guard.active:
            return False
        found = find_loop(self.out)
        if found is None:
            return False
        period, repeats = found
        first = len(self.out) - period * repeats
        if self.crossing == (period, first):
            return False
        text = bytes(self.guard.text).decode("latin-1")  # one char per byte: structure chars are ASCII
        start = sum(len(self.guard.vocab.piece(t)) for t in self.out[:first])
        if min(self.guard.depths(text)[start:], default=0) < 1:
            self.crossing = (period, first)
            return False  # the repeats cross an argument boundary: not one value (the budget still bounds it)
        self.cuts += 1
        return self.guard.close_value()

    def choose(self, row: torch.Tensor) -> None:
        """Decide this step's token (the row is left alone when the guard has nothing to do)."""
        guard = self.guard
        room = self.budget - len(self.out)
        if not guard.enabled or guard.mode == "text" or room <= 0:
            return
        try:
            token, planned = self._decide(row, room)
        except ToolaceError as e:  # no plan within the planner's limit: as without a guard
            log.warning("toolace: guard stopped: %s", e)
            guard.enabled = False
            return
        if planned:
            self._noted()
        if planned or not self.plain_greedy:
            if token != self.eos and float(row[token]) == float("-inf"):  # never force what vLLM's grammar refuses
                log.warning("toolace: the served grammar refuses token %d; request left unguarded", token)
                if guard.active:
                    guard.rollback([token])
                guard.enabled = False
                return
            row.fill_(float("-inf"))
            row[token] = 0.0
        self.pending = token if guard.active and token not in self.stops else None
        self.planned = planned

    def _decide(self, row: torch.Tensor, room: int) -> tuple[int, bool]:
        """(token, whether it is the guard's rather than the model's); the guard has fed it when active."""
        cut = self._loop_close()
        if cut is not False:
            return (self.eos, True) if not cut else (cut[0], True)
        model = self._sample(row)  # forced even when the guard takes it, so a sampled choice is the one checked
        if model in self.stops:
            return model, False
        verdict = self.guard.check([model], room - 1)
        if verdict.tokens is None:  # the plan ends the turn here (the grammar accepts)
            return self.eos, True
        return verdict.tokens[0], verdict.cut

    def _noted(self) -> None:
        if not self.noted:
            self.noted = True
            try:
                write_note(self.nonce)
            except OSError as e:  # the calls are still complete; only the report is lost
                log.warning("toolace: cannot write the truncation note: %s", e)


class ToolaceGuard(V1LogitsProcessor, V2LogitsProcessor):
    """The guard for every request of a vLLM server, on either model runner (the constructor and `apply` tell them
    apart by their arguments)."""

    def __init__(self, vllm_config: Any, *args: Any) -> None:
        from vllm.tokenizers import cached_tokenizer_from_config

        tokenizer = cached_tokenizer_from_config(vllm_config.model_config)  # the one vLLM's grammar backend uses
        self.vocab = hf_vocab(tokenizer, vllm_config.model_config.get_vocab_size())
        self.eos = int(tokenizer.eos_token_id)
        self.v1: dict[int, tuple[RequestGuard, list[int]]] = {}  # batch index -> guard, live output tokens
        self.v2: dict[int, RequestGuard | None] = {}  # request slot -> guard
        self.req_states = args[0] if len(args) == 1 else None  # V2's LogitsProcRequestState
        self.clock = GuardClock()

    def _new(self, params: Any) -> RequestGuard | None:
        meta = request_meta(params)
        if meta is None or not params.max_tokens:
            return None
        start = time.perf_counter()
        try:
            return RequestGuard(self.vocab, self.eos, params, meta)
        except ToolaceError as e:  # below the minimum (the tool parser refuses those first), or no plan
            log.warning("toolace: request not guarded: %s", e)
            return None
        finally:
            self.clock.add(time.perf_counter() - start, requests=1)

    def is_argmax_invariant(self) -> bool:
        return False  # it replaces the model's token near the budget and at runaway values

    # --- V1 model runner --------------------------------------------------------------------------------------------
    def update_state(self, batch_update: Any) -> None:
        def new(params: Any, _prompt: list[int] | None, output: list[int]) -> tuple[RequestGuard, list[int]] | None:
            guard = self._new(params)
            return None if guard is None else (guard, output)

        process_dict_updates(self.v1, batch_update, new)

    # --- V2 model runner --------------------------------------------------------------------------------------------
    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        self.v2[req_idx] = self._new(sampling_params)
        return self.v2[req_idx] is not None

    def apply(self, logits: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        if ctx is None:
            if self.v1:
                start = time.perf_counter()
                for index, (guard, output) in self.v1.items():
                    guard.sync(output)
                    guard.choose(logits[index])
                self.clock.add(time.perf_counter() - start, steps=1, rows=len(self.v1))
            return logits
        slots = ctx.idx_mapping_np
        if logits.shape[0] != len(slots) or not any(self.v2.get(int(s)) for s in slots):
            return logits  # speculative decoding (several rows a request) is not guarded; or nothing to guard
        start, rows = time.perf_counter(), 0
        positions, fed = ctx.pos.tolist(), ctx.input_ids.tolist()
        for row, slot in enumerate(slots.tolist()):
            guard = self.v2.get(slot)
            if guard is not None and self._sync_v2(guard, slot, positions[row], fed[row]):
                guard.choose(logits[row])
                rows += 1
        self.clock.add(time.perf_counter() - start, steps=1, rows=rows)
        return logits

    def _sync_v2(self, guard: RequestGuard, slot: int, pos: int, token: int) -> bool:
        """Follow V2's committed tokens: the row's input is the newest one. False while the prompt still fills."""
        assert self.req_states is not None
        prompt = int(self.req_states.prompt_len.np[slot])
        n_out = pos + 1 - prompt
        if n_out < 0:
            return False  # a chunk of the prompt: this row's token is thrown away
        if n_out == len(guard.out) + 1:
            guard.sync([*guard.out, token])
        elif n_out != len(guard.out):  # resumed after preemption: read the committed tokens back
            guard.sync(self.req_states.all_token_ids.gpu[slot, prompt: pos + 1].tolist())
        return True

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        return None  # every request is accepted; the guard only acts on grammars it can plan on
