"""The trace format as a versioned JSON Schema, and the check that refuses a trace that does not follow it.

`trace_schema()` is the published document (JSON Schema 2020-12): the trace's own fields, the counters
every step carries, and each method's step record. The step fields are those the engines emit today
(engines/<method>.py, the `detail` of each Step); the engines do not declare typed records of their
own yet, so this file is where their shape is written down. Fields an engine adds later are allowed
(additional properties), fields listed here are required, so a renamed or missing field is caught.

Bump SCHEMA_VERSION when a listed field changes meaning, type or name; traces carry it and a trace
of another version is refused in one sentence.
"""
from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1
SCHEMA_ID = "https://parallel-decoding-explorer/trace.schema.json"

# every step, whatever the method: what it committed and what it cost
STEP_COMMON = {"index": "integer", "committed_ids": "ids", "target_forwards": "integer",
               "draft_forwards": "integer", "tokens_fed": "integer", "wall_s": "number", "final": "boolean"}

# each method's step record: field -> JSON type ("|null" where the engine may leave it empty)
STEP_FIELDS: dict[str, dict[str, str]] = {
    "autoregressive": {"chosen": "integer", "p_chosen": "number", "raw_p_chosen": "number", "top": "array",
                       "raw_top": "array", "cache_len": "integer"},
    "speculative": {"draft_tokens": "ids", "accepted": "integer", "positions": "array", "bonus_p_top": "array",
                    "bonus_p_raw_top": "array", "lookup": "object|null", "next_token": "integer|null",
                    "next_kind": "string|null", "next_p": "number|null", "next_top": "array|null",
                    "drafter": "string", "k": "integer", "k_next": "integer", "schedule": "string",
                    "ended": "boolean", "target_cache": "ids", "draft_cache": "ids|null"},
    "tree": {"tree": "string", "root_token": "integer", "pending_ids": "ids", "nodes": "array", "dropped": "integer",
             "mask": "array", "positions": "ids", "accepted_path": "ids", "accepted_length": "integer",
             "stop_node": "integer", "final_token": "integer", "final_kind": "string", "final_p": "number",
             "final_p_raw": "number", "stop_top": "array", "stop_raw_top": "array", "eos_cut": "boolean",
             "cache_len": "integer"},
    "jacobi": {"block_start": "integer", "block_before_ids": "ids", "block_after_ids": "ids",
               "beyond_token": "integer", "p_new": "array", "changed": "ids", "fixed": "ids", "settled": "integer",
               "fresh_ids": "ids", "cache_len": "integer"},
    "lookahead": {"input_token": "integer", "window": "array", "new_level_ids": "ids", "fed_ids": "ids",
                  "parents": "ids", "candidates": "array", "matched": "ids", "accepted": "integer",
                  "accepted_len": "integer", "draws": "array", "p_committed": "array", "raw_p_committed": "array",
                  "harvested": "array", "added": "array", "pool": "array", "pool_size": "integer",
                  "pool_keys": "integer", "warming_up": "boolean", "shift": "integer", "cache_len": "integer"},
    "mask-predict": {"iteration": "integer", "iterations": "integer", "strategy": "string", "lengths": "ids",
                     "best": "integer", "spans": "array", "quality_curve": "array|null"},
}

TRACE_FIELDS = {"schema_version": "integer", "method": "string", "config": "object", "models": "object",
                "prompt": "string", "prompt_ids": "ids", "output_ids": "ids", "output_text": "string",
                "steps": "array", "totals": "object", "finished": "boolean", "token_texts": "object"}
# trace fields a trace may leave out (older traces do): the cost model's calibration (engines/cost.py)
TRACE_OPTIONAL = {"cost": "object|null"}


def type_schema(spec: str) -> dict[str, Any]:
    """'integer', 'ids' (a list of token ids), 'number|null', ... -> a JSON Schema."""
    kinds = spec.split("|")
    if "ids" in kinds:
        ids = {"type": "array", "items": {"type": "integer"}}
        return ids if kinds == ["ids"] else {"anyOf": [ids, {"type": "null"}]}
    return {"type": kinds[0] if len(kinds) == 1 else kinds}


def object_schema(fields: dict[str, str]) -> dict[str, Any]:
    return {"type": "object", "required": sorted(fields),
            "properties": {name: type_schema(spec) for name, spec in fields.items()}}


def step_schema(method: str) -> dict[str, Any]:
    return object_schema({**STEP_COMMON, **STEP_FIELDS[method]})


def trace_schema() -> dict[str, Any]:
    """The published document: the trace, and for each method the schema its steps follow."""
    top = object_schema(TRACE_FIELDS)
    top["properties"].update({name: type_schema(spec) for name, spec in TRACE_OPTIONAL.items()})
    top["properties"]["schema_version"] = {"const": SCHEMA_VERSION}
    top["properties"]["method"] = {"enum": sorted(STEP_FIELDS)}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
        "title": f"Parallel Decoding Explorer trace, version {SCHEMA_VERSION}", **top,
        "$defs": {f"step-{m}": step_schema(m) for m in STEP_FIELDS},
        "allOf": [{"if": {"properties": {"method": {"const": m}}},
                   "then": {"properties": {"steps": {"items": {"$ref": f"#/$defs/step-{m}"}}}}}
                  for m in STEP_FIELDS],
    }


# ----------------------------------------------------------------------------- checking

JSON_TYPES = {"integer": (int,), "number": (int, float), "string": (str,), "boolean": (bool,), "array": (list,),
              "object": (dict,), "null": (type(None),)}


def mismatch(value: Any, schema: dict[str, Any], where: str) -> str | None:
    """The first place where value breaks schema, in words; None when it follows it. Covers the keywords
    this module's schemas use (type, const, enum, anyOf, required, properties, items)."""
    if "const" in schema and value != schema["const"]:
        return f"{where} is {value!r}, not {schema['const']!r}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where} is {value!r}, not one of {', '.join(map(str, schema['enum']))}"
    if "anyOf" in schema:
        if all(mismatch(value, s, where) for s in schema["anyOf"]):
            return mismatch(value, schema["anyOf"][0], where)
        return None
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        # JSON has no separate boolean-as-number, and Python's bool is an int: keep them apart
        if not any(isinstance(value, JSON_TYPES[k]) and not (isinstance(value, bool) and k in ("integer", "number"))
                   for k in kinds):
            return f"{where} should be {' or '.join(kinds)}, not {type(value).__name__}"
    if isinstance(value, dict):
        for name in schema.get("required", ()):
            if name not in value:
                return f"{where} has no field '{name}'"
        for name, sub in schema.get("properties", {}).items():
            if name in value and (found := mismatch(value[name], sub, f"{where}.{name}")):
                return found
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            if found := mismatch(item, schema["items"], f"{where}[{i}]"):
                return found
    return None


def check_version(data: dict[str, Any]) -> None:
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        said = "no schema version (it predates the versioned format)" if version is None else f"version {version!r}"
        raise ValueError(f"This trace has {said}; this app reads trace schema version {SCHEMA_VERSION} only, so "
                         f"record it again with this version.")


def validate(data: Any) -> None:
    """Raise ValueError with one sentence unless data is a trace of this schema version."""
    if not isinstance(data, dict):
        raise ValueError("This is not a trace: a trace is one JSON object with method, config and steps.")
    check_version(data)
    top = trace_schema()
    found = mismatch(data, {k: top[k] for k in ("type", "required", "properties")}, "trace")
    if found is None:
        for i, step in enumerate(data["steps"]):
            if found := mismatch(step, step_schema(data["method"]), f"trace.steps[{i}]"):
                break
    if found:
        raise ValueError(f"This trace does not follow the trace schema (version {SCHEMA_VERSION}): {found}.")
