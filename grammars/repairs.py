"""Repairs of sloppy tool schemas that have one obvious reading (docs/budget.md, "Sloppy schemas").

Each repair is recorded as "/pointer: what was done"; the tool's name is prefixed by the caller and
`toolace grammar` prints them as `# repaired: ...`. A contradiction with no obvious reading raises SchemaError,
and the caller leaves that one tool out of the grammar with a warning."""

from __future__ import annotations

from typing import Any

import jsonschema

from toolace.errors import SchemaError


def _fits(value: Any, schema: Any) -> bool:
    """Does `value` satisfy `schema`? A schema jsonschema cannot evaluate on its own ($ref into the parameters)
    counts as not fitting: no reading is then obvious."""
    try:
        return bool(jsonschema.Draft202012Validator(schema).is_valid(value))
    except (jsonschema.exceptions.RefResolutionError, jsonschema.exceptions.SchemaError,  # type: ignore[attr-defined]
            jsonschema.exceptions.UnknownType):
        return False


def repair_node(out: dict[str, Any], pointer: str, repairs: list[str]) -> None:
    """Repair one normalised schema node in place.

    - An array-level enum of item values (not lists) moves to `items` when every value fits the items' schema;
      if some do not, no reading is obvious.
    - enum/const values that contradict `type` win over it: `type` is dropped and the values stand as written."""
    at = pointer or "/"
    if "type" not in out or not ("enum" in out or "const" in out):
        return
    values = [out["const"]] if "const" in out else list(out["enum"])
    if out["type"] == "array" and "enum" in out and not any(isinstance(v, list) for v in values):
        items = out.get("items", {})
        if not isinstance(items, dict) or "enum" in items or "const" in items:
            raise SchemaError(f"{at}: array enum {values!r} holds item values, but the items already have an enum")
        misfits = [v for v in values if not _fits(v, items)]
        if misfits:
            raise SchemaError(f"{at}: array enum {values!r} holds item values, but {misfits[0]!r} does not fit the "
                              "items' schema")
        out["items"] = {**items, "enum": out.pop("enum")}
        repairs.append(f"{at}: enum moved to items (its values are item values, not arrays)")
        return
    type_only = {"type": out["type"]}
    misfits = [v for v in values if not _fits(v, type_only)]
    if misfits:
        dropped = out.pop("type")
        repairs.append(f"{at}: type {dropped!r} dropped: the {'const' if 'const' in out else 'enum'} value "
                       f"{misfits[0]!r} contradicts it, and the values win as written")


def repair_defaults(params: dict[str, Any], repairs: list[str]) -> None:
    """An optional parameter also accepts its declared `default` literally (None included) when the schema
    refuses it: a model that passes the default meant exactly what the tool's author declared."""
    required = set(params.get("required", []))
    for name, sub in list(params.get("properties", {}).items()):
        if name in required or not isinstance(sub, dict) or "default" not in sub:
            continue
        default = sub["default"]
        check = {**params, "properties": {name: sub}, "required": []}
        if _fits({name: default}, check):
            continue
        params["properties"][name] = {"anyOf": [sub, {"const": default}]}
        repairs.append(f"/properties/{name}: also accepts its declared default {default!r} as written")
