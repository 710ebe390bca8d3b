"""The trace format as a versioned JSON Schema, generated from the step records the engines declare.

Each method declares its step record beside its engine as a TypedDict, one commented line per field:
`AutoregressiveDetail` (engines/decoding/autoregressive.py), `SpeculativeDetail`, `TreeDetail`, `JacobiDetail`,
`LookaheadDetail` and `MaskPredictDetail`, with nested TypedDicts for list items (a drafted position, a tree node,
a span, a quality-curve point) and for shared parts (`HeadsRecord`, `SuffixMatch` in engines/drafting/). Each
engine builds its Step's `detail` through its type, so a type checker sees every key it writes.

`trace_schema()` is the published document (JSON Schema 2020-12; `python -m engines.schema` prints it): the
trace's own fields (TRACE_FIELDS, and TRACE_OPTIONAL for those a trace may leave out), the counters every step
carries (the fields of trace.Step), and each method's step record, typed from the annotations (int, float, str,
bool, None, Literal, list, tuple, unions, nested TypedDicts under $defs) and described by the fields' comments. A
field is required unless it is declared NotRequired[...] (present only in some settings, as typical acceptance's
threshold). Fields not declared are allowed, so a reader ignores what it does not know and adding an optional
field stays compatible; the tests check that the engines emit declared fields only.

Bump SCHEMA_VERSION when a declared field changes meaning, type or name. Traces carry it, and one of another
version is refused in one sentence (check_version) before anything reads it. Version 1 was first written down by
hand; the typed records describe the same fields under the same names and types, so it stays 1: a version-1 trace
recorded since typical acceptance and the head drafters existed validates, and an older one that lacks a field
they added is refused in one sentence naming that field.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import re
import types
from typing import (
    Any,
    Literal,
    NotRequired,
    Required,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

from engines.trace import SCHEMA_VERSION, check_version

SCHEMA_ID = "https://parallel-decoding-explorer/trace.schema.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"

# the trace's own fields (Trace.to_dict): name -> JSON type, "ids" for a list of token ids, "|null" where the
# trace may leave it empty. A new trace-level field is one more entry here, or in TRACE_OPTIONAL.
TRACE_FIELDS = {"schema_version": "integer", "method": "string", "config": "object", "models": "object",
                "prompt": "string", "prompt_ids": "ids", "output_ids": "ids", "output_text": "string",
                "steps": "array", "totals": "object", "finished": "boolean", "token_texts": "object"}
# trace fields a trace may leave out (older traces do): the cost model's calibration (engines/analysis/theory.py);
# whether the prompt ids are in the target's chat template (absent: they are not), and the conversation where the
# prompt was a list of messages (engines/models/chat.py)
TRACE_OPTIONAL = {"cost": "object|null", "chat": "boolean", "messages": "array|null"}


def step_records() -> dict[str, type]:
    """Each method's step record, from the methods table: the TypedDict its engine builds a Step's detail through."""
    from engines.methods import METHODS  # here, not above: the methods table sits above the engines and this
    return {name: m.record for name, m in METHODS.items()}


# ----------------------------------------------------------------------------- annotations -> JSON Schema

JSON_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}


def type_schema(spec: str) -> dict[str, Any]:
    """A TRACE_FIELDS entry ('integer', 'ids', 'number|null', ...) -> a JSON Schema."""
    kinds = spec.split("|")
    if "ids" in kinds:
        ids = {"type": "array", "items": {"type": "integer"}}
        return ids if kinds == ["ids"] else {"anyOf": [ids, {"type": "null"}]}
    return {"type": kinds[0] if len(kinds) == 1 else kinds}


def annotation_schema(annotation: Any, defs: dict[str, Any]) -> dict[str, Any]:
    """A field's annotation as JSON Schema. A nested TypedDict is written once into `defs` under its name and
    referenced from every field that holds it."""
    if annotation in JSON_NAMES:
        return {"type": JSON_NAMES[annotation]}
    if annotation is Any:
        return {}
    if is_typeddict(annotation):
        name = annotation.__name__
        if name not in defs:
            defs[name] = {}   # taken before it is filled: a record that holds itself refers to itself
            defs[name] = record_schema(annotation, defs)
        return {"$ref": f"#/$defs/{name}"}
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (Union, types.UnionType):
        options = [annotation_schema(a, defs) for a in args]
        if all(option.keys() == {"type"} for option in options):   # int | None -> {"type": ["integer", "null"]}
            return {"type": [t for option in options for t in _as_list(option["type"])]}
        return {"anyOf": options}
    if origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        return {"type": "array", "items": annotation_schema(args[0], defs)}
    if origin is tuple:   # a fixed pair or triple, as (token id, probability)
        return {"type": "array", "prefixItems": [annotation_schema(a, defs) for a in args],
                "minItems": len(args), "maxItems": len(args)}
    if origin is dict and args and args[0] is str:
        return {"type": "object", "additionalProperties": annotation_schema(args[1], defs)}
    raise TypeError(f"The trace schema has no JSON form for the annotation {annotation!r}.")


def _as_list(kind: str | list[str]) -> list[str]:
    return kind if isinstance(kind, list) else [kind]


def declared_fields(record: type) -> dict[str, tuple[Any, bool]]:
    """A TypedDict's fields -> (annotation, required), in declaration order. Read from the annotations, not from
    `__required_keys__`: under `from __future__ import annotations` Python 3.11 cannot see NotRequired[...]
    when the class is made, and counts every field as required."""
    fields = {}
    for name, annotation in get_type_hints(record, include_extras=True).items():
        required = record.__total__
        if get_origin(annotation) in (NotRequired, Required):
            required = get_origin(annotation) is Required
            annotation = get_args(annotation)[0]
        fields[name] = (annotation, required)
    return fields


def required_keys(record: type) -> frozenset[str]:
    return frozenset(name for name, (_, required) in declared_fields(record).items() if required)


FIELD_NOTE = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+?)\s*$")   # "    name: annotation   # what it is"


def field_notes(cls: type) -> dict[str, str]:
    """Each field's one-line comment in the source of `cls`, the description the schema gives the field. A
    TypedDict does not keep its bases, so fields it inherits are looked up in the records of its module whose
    fields it all has."""
    names = cls.__annotations__.keys()
    module = inspect.getmodule(cls)
    bases = [c for c in vars(module).values() if is_typeddict(c) and c is not cls and c.__annotations__.keys() <= names]
    notes: dict[str, str] = {}
    for source in (cls, *bases):
        try:
            lines = inspect.getsource(source).splitlines()
        except (OSError, TypeError):   # no source (a frozen build): the schema goes without descriptions
            continue
        for line in lines:
            if (m := FIELD_NOTE.match(line)) and m[1] in names:
                notes.setdefault(m[1], m[2])
    return notes


def record_schema(record: type, defs: dict[str, Any]) -> dict[str, Any]:
    """A TypedDict as an object schema: a property per field, its comment as the description."""
    notes = field_notes(record)
    properties, required = {}, []
    for name, (annotation, needed) in declared_fields(record).items():
        properties[name] = {**({"description": notes[name]} if name in notes else {}),
                            **annotation_schema(annotation, defs)}
        if needed:
            required.append(name)
    doc = inspect.getdoc(record)
    return {"title": record.__name__, **({"description": doc.splitlines()[0]} if doc else {}),
            "type": "object", "required": required, "properties": properties}


def step_schema_from(record: type, defs: dict[str, Any]) -> dict[str, Any]:
    """One method's step as JSON: the common counters of trace.Step beside the method's record."""
    from engines.trace import Step  # see step_records
    hints, notes = get_type_hints(Step), field_notes(Step)
    common = [f.name for f in dataclasses.fields(Step) if f.name != "detail"]
    detail = record_schema(record, defs)
    properties = {name: {**({"description": notes[name]} if name in notes else {}),
                         **annotation_schema(hints[name], defs)} for name in common}
    return {**detail, "required": common + detail["required"], "properties": {**properties, **detail["properties"]}}


@functools.cache
def _document() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    steps = {method: step_schema_from(record, defs) for method, record in step_records().items()}
    properties = {name: type_schema(spec) for name, spec in {**TRACE_FIELDS, **TRACE_OPTIONAL}.items()}
    properties["schema_version"] = {"const": SCHEMA_VERSION}
    properties["method"] = {"enum": sorted(steps)}
    return {
        "$schema": DIALECT, "$id": SCHEMA_ID, "title": f"Parallel Decoding Explorer trace, version {SCHEMA_VERSION}",
        "type": "object", "required": sorted(TRACE_FIELDS), "properties": properties,
        "$defs": {**{f"step-{m}": s for m, s in steps.items()}, **dict(sorted(defs.items()))},
        "allOf": [{"if": {"properties": {"method": {"const": m}}},
                   "then": {"properties": {"steps": {"items": {"$ref": f"#/$defs/step-{m}"}}}}} for m in steps],
    }


def trace_schema() -> dict[str, Any]:
    """The published document: the trace, and for each method the schema its steps follow."""
    return copy.deepcopy(_document())


def step_schema(method: str) -> dict[str, Any]:
    """The schema one method's steps follow (its nested records are under trace_schema()'s $defs)."""
    return copy.deepcopy(_document()["$defs"][f"step-{method}"])


# ----------------------------------------------------------------------------- checking

JSON_TYPES = {"integer": (int,), "number": (int, float), "string": (str,), "boolean": (bool,),
              "array": (list, tuple), "object": (dict,), "null": (type(None),)}


def mismatch(value: Any, schema: dict[str, Any], where: str, defs: dict[str, Any] | None = None) -> str | None:
    """The first place where value breaks schema, in words; None when it follows it. Covers the keywords this
    module's schemas use (type, const, enum, anyOf, $ref into defs, required, properties, items, prefixItems,
    minItems, maxItems)."""
    defs = _document()["$defs"] if defs is None else defs
    if "$ref" in schema:
        found = mismatch(value, defs[schema["$ref"].removeprefix("#/$defs/")], where, defs)
        if found:
            return found
    if "const" in schema and value != schema["const"]:
        return f"{where} is {value!r}, not {schema['const']!r}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where} is {value!r}, not one of {', '.join(map(str, schema['enum']))}"
    if "anyOf" in schema:
        if all(mismatch(value, s, where, defs) for s in schema["anyOf"]):
            return mismatch(value, schema["anyOf"][0], where, defs)
        return None
    if "type" in schema:
        kinds = _as_list(schema["type"])
        # JSON has no separate boolean-as-number, and Python's bool is an int: keep them apart
        if not any(isinstance(value, JSON_TYPES[k]) and not (isinstance(value, bool) and k in ("integer", "number"))
                   for k in kinds):
            return f"{where} should be {' or '.join(kinds)}, not {type(value).__name__}"
    if isinstance(value, dict):
        for name in schema.get("required", ()):
            if name not in value:
                return f"{where} has no field '{name}'"
        for name, sub in schema.get("properties", {}).items():
            if name in value and (found := mismatch(value[name], sub, f"{where}.{name}", defs)):
                return found
    if isinstance(value, (list, tuple)):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            return f"{where} has {len(value)} items, not {schema['minItems']}"
        fixed = schema.get("prefixItems", [])
        for i, item in enumerate(value):
            sub = fixed[i] if i < len(fixed) else schema.get("items")
            if sub is not None and (found := mismatch(item, sub, f"{where}[{i}]", defs)):
                return found
    return None


def validate(data: Any) -> None:
    """Raise ValueError with one sentence unless data is a trace of this schema version."""
    if not isinstance(data, dict):
        raise ValueError("This is not a trace: a trace is one JSON object with method, config and steps.")
    check_version(data)
    top = _document()
    found = mismatch(data, {k: top[k] for k in ("type", "required", "properties")}, "trace")
    if found is None:
        step = top["$defs"][f"step-{data['method']}"]
        for i, record in enumerate(data["steps"]):
            if found := mismatch(record, step, f"trace.steps[{i}]"):
                break
    if found:
        raise ValueError(f"This trace does not follow the trace schema (version {SCHEMA_VERSION}): {found}.")


if __name__ == "__main__":   # python -m engines.schema > trace.schema.json
    import json
    print(json.dumps(trace_schema(), indent=1, ensure_ascii=False))
