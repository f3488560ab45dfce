"""jsonschema validation of parsed calls against the normalised schemas; errors name the JSON pointer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jsonschema

from .parser import Call
from .schema import Tool


class CallValidator:
    """One Draft 2020-12 validator per tool, built once."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        self._validators = {
            t.name: jsonschema.Draft202012Validator(
                t.parameters, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
            )
            for t in tools
        }

    def errors(self, calls: Iterable[Call]) -> list[str]:
        """Every schema violation, as 'call N name: /arguments/pointer: message'."""
        out: list[str] = []
        for n, call in enumerate(calls):
            if call.name not in self._validators:
                out.append(f"call {n} {call.name}: unknown function")
            out += [f"call {n} {call.name}: {pointer}: {message}"
                    for pointer, message, _ in self._violations(call.name, call.arguments)]
        return out

    def call_errors(self, name: str, arguments: Any) -> list[str]:
        """One call's violations, as '/arguments/pointer: message (keyword)': the keyword names the constraint
        broken (pattern, format, multipleOf, ...) for a reader that gets only this text (the model, in a loop)."""
        if name not in self._validators:
            return [f"no function named {name!r}"]
        return [f"{pointer}: {message} ({keyword})" for pointer, message, keyword in self._violations(name, arguments)]

    def _violations(self, name: str, arguments: Any) -> list[tuple[str, str, str]]:
        validator = self._validators.get(name)
        if validator is None:
            return []
        errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
        return [("/arguments" + "".join(f"/{p}" for p in e.absolute_path), e.message, str(e.validator))
                for e in errors]
