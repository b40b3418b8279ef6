"""A small JSON Schema check for the subset the OpenAPI document uses (type, with lists and
"null", enum, properties, required, additionalProperties false, items, minLength,
minProperties, $ref to components): enough to hold real answers to the document."""

from __future__ import annotations

from typing import Any

_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool,
          "object": dict, "array": list, "null": type(None)}


def problems(value: Any, schema: dict[str, Any], document: dict[str, Any],
             where: str = "$") -> list[str]:
    if "$ref" in schema:
        name = schema["$ref"].rpartition("/")[2]
        return problems(value, document["components"]["schemas"][name], document, where)
    found: list[str] = []
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        ok = any(isinstance(value, _TYPES[k]) and not (k in ("integer", "number")
                                                      and isinstance(value, bool))
                 for k in kinds)
        if not ok:
            return [f"{where}: {value!r} is not {'/'.join(kinds)}"]
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        found.append(f"{where}: shorter than {schema['minLength']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                found.append(f"{where}: missing {key!r}")
        properties = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            found += [f"{where}: unexpected {k!r}" for k in value if k not in properties]
        for key, sub in properties.items():
            if key in value:
                found += problems(value[key], sub, document, f"{where}.{key}")
        if len(value) < schema.get("minProperties", 0):
            found.append(f"{where}: fewer than {schema['minProperties']} properties")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += problems(item, schema["items"], document, f"{where}[{index}]")
    return found
