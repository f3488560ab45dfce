"""jsonschema validation of parsed calls against the normalised schemas; errors name the JSON pointer."""

from __future__ import annotations

from collections.abc import Iterable

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
            validator = self._validators.get(call.name)
            if validator is None:
                out.append(f"call {n} {call.name}: unknown function")
                continue
            for err in sorted(validator.iter_errors(call.arguments), key=lambda e: list(e.absolute_path)):
                pointer = "/arguments" + "".join(f"/{p}" for p in err.absolute_path)
                out.append(f"call {n} {call.name}: {pointer}: {err.message}")
        return out
