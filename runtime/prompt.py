"""The ToolACE prompt (docs/design.md, "The model and its prompt") and chat-template rendering in jinja2's
immutable sandbox.

Rendering returns segments, not one string: template text (its control markers are parsed as special tokens)
and message content (never parsed as specials), so `<|eot_id|>` typed by a user stays plain text."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jinja2 import TemplateError as JinjaTemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from toolace.errors import TemplateError
from toolace.limits import (
    MAX_TEMPLATE_CHARS,
    MAX_TEMPLATE_INT_BITS,
    MAX_TEMPLATE_LOOP_STEPS,
    MAX_TEMPLATE_OUTPUT_CHARS,
    MAX_TEMPLATE_SECONDS,
    MAX_TEMPLATE_VALUE_LEN,
)

from ..grammars.schema import Tool

# The system prompt ToolACE-8B was trained with (model card), verbatim; {functions} is str() of the function list.
TOOLACE_SYSTEM_PROMPT = "\n".join([
    "You are an expert in composing functions. You are given a question and a set of possible functions. Based on "
    "the question, you will need to make one or more function/tool calls to achieve the purpose.",
    "If none of the function can be used, point it out. If the given question lacks the parameters required by the "
    "function, also point it out.",
    "You should only return the function call in tools call sections.",
    "",
    "If you decide to invoke any of the function(s), you MUST put it in the format of [func_name1(params_name1="
    "params_value1, params_name2=params_value2...), func_name2(params)]",
    "You SHOULD NOT include any other text in the response.",
    "Here is a list of functions in JSON format that you can invoke.",
    "{functions}",
    "",
    "",
])

# Used when a GGUF carries no chat template: the Llama-3 header format ToolACE-8B was trained on.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def system_prompt(tools: Sequence[Tool]) -> str:
    """The exact system message for these tools, in the dialect the user wrote them."""
    return TOOLACE_SYSTEM_PROMPT.format(functions=[t.original for t in tools])


@dataclass(frozen=True)
class Segment:
    text: str
    special: bool  # True: template text, parse control tokens; False: user/tool content, plain text only


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse `*`, `**` and `+` whose result would be over the template value bounds, before Python computes it:
    an integer over MAX_TEMPLATE_INT_BITS, a string or list over MAX_TEMPLATE_VALUE_LEN."""
    seq = (str, list, tuple)
    if operator == "**" and _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
        # result bits ~ right * log2|left|; an exponent over the bit bound is over it whatever the base
        if right > MAX_TEMPLATE_INT_BITS or right * math.log2(abs(left)) > MAX_TEMPLATE_INT_BITS:
            raise TemplateError(f"chat template arithmetic: a power with an exponent of {right} is over the "
                                f"{MAX_TEMPLATE_INT_BITS}-bit limit for template integers")
    elif operator == "*" and _is_int(left) and _is_int(right):
        if left.bit_length() + right.bit_length() > MAX_TEMPLATE_INT_BITS:
            raise TemplateError(f"chat template arithmetic: a product over the {MAX_TEMPLATE_INT_BITS}-bit limit "
                                f"for template integers")
    elif operator == "*" and (isinstance(left, seq) and _is_int(right) or _is_int(left) and isinstance(right, seq)):
        items, times = (left, right) if isinstance(left, seq) else (right, left)
        if len(items) * times > MAX_TEMPLATE_VALUE_LEN:
            raise TemplateError(f"chat template arithmetic: repeating a {type(items).__name__} of {len(items)} "
                                f"{times} times is over the {MAX_TEMPLATE_VALUE_LEN}-item limit for template values")
    elif operator == "+" and isinstance(left, seq) and isinstance(right, seq) and \
            len(left) + len(right) > MAX_TEMPLATE_VALUE_LEN:
        raise TemplateError(f"chat template arithmetic: joining {len(left)} and {len(right)} items is over the "
                            f"{MAX_TEMPLATE_VALUE_LEN}-item limit for template values")


class _BudgetedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus a bound on loop work and wall time (checked on every range() and call), and on
    the values arithmetic builds (`*`, `**`, `+`; intercepted operators are also never folded at compile time, so
    `{{ 3 ** 100000000 }}` cannot hang the load)."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def __init__(self) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True)
        self.deadline = 0.0
        self.steps = 0
        self.globals["range"] = self._range
        self.globals["raise_exception"] = self._raise
        self.globals["strftime_now"] = lambda fmt: datetime.now().strftime(str(fmt))
        # As Hugging Face's renderer does: templates expect tojson to keep non-ASCII text and not HTML-escape.
        self.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)

    def start(self) -> None:
        self.deadline = time.monotonic() + MAX_TEMPLATE_SECONDS
        self.steps = 0

    def tick(self, n: int = 1) -> None:
        self.steps += n
        if self.steps > MAX_TEMPLATE_LOOP_STEPS:
            raise TemplateError(f"chat template did more than {MAX_TEMPLATE_LOOP_STEPS} loop steps")
        if time.monotonic() > self.deadline:
            raise TemplateError(f"chat template ran longer than {MAX_TEMPLATE_SECONDS} s")

    def _range(self, *args: int) -> Any:
        r = range(*args)
        self.tick(len(r))
        return r

    @staticmethod
    def _raise(message: str) -> None:
        raise TemplateError(f"chat template raised: {message}")

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        self.tick()
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)


class ChatTemplate:
    """A compiled chat template that renders messages into special/plain segments."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        if len(source) > MAX_TEMPLATE_CHARS:
            raise TemplateError(f"chat template is {len(source)} characters, the limit is {MAX_TEMPLATE_CHARS}")
        self.env = _BudgetedEnvironment()
        try:
            self.template = self.env.from_string(source)
        except JinjaTemplateError as e:
            raise TemplateError(f"chat template does not compile: {e}") from None
        except (RecursionError, MemoryError) as e:  # the parser recurses per nesting level
            raise TemplateError(f"chat template does not compile: {_exhausted(e)}") from None
        self.bos_token, self.eos_token = bos_token, eos_token

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        self.env.start()
        out: list[str] = []
        size = 0
        try:
            for chunk in self.template.generate(messages=messages, add_generation_prompt=add_generation_prompt,
                                                bos_token=self.bos_token, eos_token=self.eos_token):
                size += len(chunk)
                if size > MAX_TEMPLATE_OUTPUT_CHARS:
                    raise TemplateError(f"chat template output exceeds {MAX_TEMPLATE_OUTPUT_CHARS} characters")
                self.env.tick(0)
                out.append(chunk)
        except TemplateError:
            raise
        except (JinjaTemplateError, TypeError, ValueError, KeyError, AttributeError, OverflowError) as e:
            raise TemplateError(f"chat template failed to render: {type(e).__name__}: {e}") from None
        except (RecursionError, MemoryError) as e:  # a macro that calls itself; a value too big for memory
            raise TemplateError(f"chat template failed to render: {_exhausted(e)}") from None
        return "".join(out)

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> list[Segment]:
        """Render, then split template text from message content using sentinel contents."""
        messages = [dict(m) for m in messages]
        real = self._render(messages, add_generation_prompt)
        contents = [m.get("content") for m in messages]
        marked = [dict(m, content=f"\x00toolace{i}\x00") if isinstance(c, str) and c else m
                  for i, (m, c) in enumerate(zip(messages, contents, strict=True))]
        skeleton = self._render(marked, add_generation_prompt)
        segments: list[Segment] = []
        pos = 0
        for i, content in enumerate(contents):
            marker = f"\x00toolace{i}\x00"
            if not isinstance(content, str) or not content:
                continue
            before, sep, skeleton = skeleton.partition(marker)
            if not sep or not real.startswith(before, pos):
                return self._unsplit(real, contents)
            segments.append(Segment(before, True))
            pos += len(before)
            nxt = skeleton.split("\x00toolace", 1)[0]
            if real.startswith(content + nxt, pos):  # the usual case: content inserted verbatim
                end = pos + len(content)
            else:  # the template trimmed it: content ends where the next template text starts
                end = real.find(nxt, pos) if nxt else len(real)
            if end < 0:
                return self._unsplit(real, contents)
            segments.append(Segment(real[pos:end], False))
            pos = end
        segments.append(Segment(real[pos:], True))
        return [s for s in segments if s.text]

    @staticmethod
    def _unsplit(real: str, contents: list[Any]) -> list[Segment]:
        """A template that rewrites content beyond trimming: keep it, but never let content carry control text."""
        if any(isinstance(c, str) and "<|" in c for c in contents):
            raise TemplateError("chat template transforms message content; cannot keep control tokens in it plain")
        return [Segment(real, True)]


def _exhausted(e: BaseException) -> str:
    return "it nests too deeply (RecursionError)" if isinstance(e, RecursionError) else "out of memory (MemoryError)"


def tool_messages(question_or_messages: str | Sequence[dict[str, Any]], tools: Sequence[Tool] | None,
                  system: str | None = None) -> list[dict[str, Any]]:
    """The message list for a call: ToolACE's system prompt (when tools are given), then the conversation."""
    msgs = [{"role": "user", "content": question_or_messages}] if isinstance(question_or_messages, str) \
        else [dict(m) for m in question_or_messages]
    if tools:
        sys_text = system_prompt(tools)
        if msgs and msgs[0].get("role") == "system":
            sys_text = f"{msgs[0].get('content') or ''}\n\n{sys_text}" if msgs[0].get("content") else sys_text
            msgs = msgs[1:]
        msgs = [{"role": "system", "content": sys_text}] + msgs
    elif system is not None:
        msgs = [{"role": "system", "content": system}] + msgs
    return msgs
