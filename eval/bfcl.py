"""Berkeley Function-Calling Leaderboard data: loading any BFCL v4 category file and rendering ground truths.

BFCL's possible answers list the acceptable values per parameter ("" = may be omitted) and nest that form inside
dict values. Java and JavaScript categories are scored as BFCL does: every parameter is a string holding source
text in that language (BFCL rewrites their types to string before asking a model)."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from toolace.errors import InputError
from toolace.grammars.schema import Tool
from toolace.paths import toolace_home

from .defaults import DATA_ENV

# The non-live categories (the data this project ships results for); any other BFCL v4 category file in the same
# layout (live_simple, live_multiple, ...) is scored too when asked for by name.
CATEGORIES = ("simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple",
              "irrelevance")
STRING_LANGUAGES = {"simple_java": "Java", "simple_javascript": "JavaScript"}
_CATEGORY_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # a category is a file name part: no paths, no dots
HOW_TO_GET_DATA = ("BFCL data is the `bfcl_eval/data` folder of the `bfcl-eval` package (pip download bfcl-eval "
                   "--no-deps, then unzip the wheel): BFCL_v4_<category>.json files and possible_answer/. Pass it "
                   f"with --data DIR or set {DATA_ENV}.")


def default_data_dir() -> str | None:
    """TOOLACE_BFCL_DIR, else TOOLACE_HOME/bfcl if it exists; None means the user must say where the data is."""
    env = os.environ.get(DATA_ENV)
    if env:
        return env
    home = toolace_home() / "bfcl"
    return str(home) if home.is_dir() else None


def category_names(data_dir: str | Path | None, categories: str) -> tuple[str, ...]:
    """The comma-separated category names, each with its question file present in `data_dir`."""
    if data_dir is None or not Path(data_dir).is_dir():
        where = "no BFCL data folder given" if data_dir is None else f"BFCL data folder {data_dir} does not exist"
        raise InputError(f"{where}. {HOW_TO_GET_DATA}")
    cats = tuple(c.strip() for c in categories.split(",") if c.strip())
    if not cats:
        raise InputError("no categories given")
    for cat in cats:
        if not _CATEGORY_RE.match(cat):
            raise InputError(f"{cat!r} is not a BFCL category name (lower-case letters, digits and '_')")
        if not (Path(data_dir) / f"BFCL_v4_{cat}.json").is_file():
            present = sorted(p.name[len("BFCL_v4_"):-len(".json")] for p in Path(data_dir).glob("BFCL_v4_*.json"))
            raise InputError(f"no BFCL_v4_{cat}.json in {data_dir}; categories present: "
                             f"{', '.join(present) or 'none'}. {HOW_TO_GET_DATA}")
    return cats


def is_irrelevance(category: str) -> bool:
    """Categories where declining to call is the right answer (irrelevance, live_irrelevance)."""
    return "irrelevance" in category


@dataclass(frozen=True)
class Question:
    id: str
    category: str
    messages: list[dict[str, Any]]
    functions: list[dict[str, Any]]
    ground_truth: list[dict[str, dict[str, list[Any]]]] | None  # None: no possible answer (irrelevance)


def language_functions(functions: list[dict[str, Any]], category: str) -> list[dict[str, Any]]:
    """BFCL's language pre-processing: in Java/JavaScript categories every parameter becomes a string."""
    language = STRING_LANGUAGES.get(category)
    if language is None:
        return functions
    out = copy.deepcopy(functions)
    for fn in out:
        for prop in fn.get("parameters", {}).get("properties", {}).values():
            declared = prop.get("type", "any")
            prop["description"] = prop.get("description", "") + \
                f" This is {language} {declared} type parameter in string representation."
            prop.pop("items", None)
            prop["type"] = "string"
    return out


def load_questions(data_dir: str | Path, categories: tuple[str, ...] = CATEGORIES) -> Iterator[Question]:
    root = Path(data_dir)
    for cat in category_names(root, ",".join(categories)):
        qfile = root / f"BFCL_v4_{cat}.json"
        answers: dict[str, Any] = {}
        afile = root / "possible_answer" / f"BFCL_v4_{cat}.json"
        if afile.is_file():
            for line in afile.read_text().splitlines():
                entry = json.loads(line)
                answers[entry["id"]] = entry["ground_truth"]
        for line in qfile.read_text().splitlines():
            q = json.loads(line)
            yield Question(q["id"], cat, q["question"][0], language_functions(q["function"], cat),
                           answers.get(q["id"]))


def _concrete(value: Any) -> Any:
    """A possible-answer value with nested alternative lists resolved to their first entry."""
    if isinstance(value, dict):
        return {k: _first(v) for k, v in value.items() if _first(v) is not _OMIT}
    if isinstance(value, list):
        return [_concrete(v) for v in value]
    return value


_OMIT = object()


def _first(alternatives: Any) -> Any:
    if not isinstance(alternatives, list):
        return alternatives
    for alt in alternatives:
        if alt != "":
            return _concrete(alt)
    return _OMIT


def _as_language_string(value: Any) -> str:
    """Source text for a non-string answer in a string-typed (Java/JavaScript) parameter."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def ground_truth_calls(q: Question, tools: list[Tool]) -> list[dict[str, Any]] | None:
    """One concrete ground-truth call list, parameters in schema order, each value the first alternative that
    the parameter's schema accepts; None when no alternative fits the declared schema (a BFCL data quirk)."""
    if q.ground_truth is None:
        return None
    by_name = {t.name: t for t in tools}
    calls = []
    for entry in q.ground_truth:
        (name, params), = entry.items()
        tool = by_name[name]
        args: dict[str, Any] = {}
        for pname in tool.param_names:
            if pname not in params:
                continue
            schema = tool.parameters["properties"][pname]
            alts = [_concrete(a) for a in params[pname] if a != ""]
            if q.category in STRING_LANGUAGES:
                alts = [_as_language_string(a) for a in alts]
            fitting = [a for a in alts if jsonschema.Draft202012Validator(schema).is_valid(a)]
            if fitting:
                args[pname] = fitting[0]
            elif alts:
                return None
        calls.append({"name": name, "arguments": args})
    return calls
