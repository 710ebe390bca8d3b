"""Trace diff: the first step where two traces of the same method and prompt part ways.

    python -m engines diff A.json B.json [--tolerance 1e-4]

Both files must follow the trace schema (engines/schema.py). Within a step, fields are compared leaf by
leaf (floats within the tolerance, timings ignored) and the difference reported is the most upstream
one: what was drafted, then the probabilities, then the decisions taken on them, then the tokens
committed. Another implementation that writes our format can be checked against ours this way.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from engines.schema import validate
from engines.trace import Trace

TOLERANCE = 1e-4
IGNORED = {"wall_s"}   # timings differ on every run and say nothing about what was computed
KINDS = ("drafts", "probabilities", "decisions", "committed tokens")   # upstream first
DRAFT_FIELDS = {"draft_tokens", "token", "block_before_ids", "candidates", "fed_ids", "pending_ids", "window",
                "new_level_ids", "lookup", "nodes", "fresh_ids", "parents", "mask", "positions", "depth", "rank"}
PROBABILITY_FIELDS = {"p", "q", "p_raw", "q_raw", "ratio", "logq"}
DECISION_FIELDS = {"status", "u", "accepted", "expanded"}
COMMITTED_FIELDS = {"committed_ids", "next_token", "final_token", "chosen", "beyond_token", "final"}


@dataclass
class Difference:
    step: int                  # index of the first step that differs
    kind: str                  # one of KINDS, or "length" when one trace has more steps
    field: str                 # where in the step, e.g. positions[2].p
    a: Any
    b: Any
    fields_differing: int      # how many fields of that step differ in all
    words: str


@dataclass
class TraceDiff:
    method: str
    steps: tuple[int, int]
    config_changes: list[str] = field(default_factory=list)
    difference: Difference | None = None
    words: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load(path: str | Path) -> Trace:
    """A trace file, checked against the schema; anything else is refused in one sentence."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"The file {Path(path).name} could not be read as text.") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"The file {Path(path).name} is not JSON ({e.msg} at line {e.lineno}).") from e
    return checked(data)


def checked(data: Any) -> Trace:
    validate(data)
    return Trace.from_dict(data)


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, value) of every scalar in a step record; a list's length is a leaf of its own."""
    if isinstance(value, dict):
        for k in sorted(value):
            if k not in IGNORED:
                yield from leaves(value[k], f"{path}.{k}" if path else k)
    elif isinstance(value, (list, tuple)):
        yield f"{path}#len", len(value)
        for i, v in enumerate(value):
            yield from leaves(v, f"{path}[{i}]")
    else:
        yield path, value


def same(a: Any, b: Any, tolerance: float) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            return math.isclose(a, b, rel_tol=0, abs_tol=tolerance) or (math.isnan(a) and math.isnan(b))
    return a == b


def kind_of(path: str, value: Any) -> str:
    """Which part of the computation a field belongs to, by its names (the schema's field names)."""
    names = [part.split("[")[0].split("#")[0] for part in path.split(".")]
    if any("top" in n or n in PROBABILITY_FIELDS or n.startswith(("p_", "raw_p", "next_p", "final_p")) for n in names):
        return "probabilities"
    if names[0] in COMMITTED_FIELDS:
        return "committed tokens"
    if names[-1] in DECISION_FIELDS:
        return "decisions"
    if any(n in DRAFT_FIELDS for n in names):
        return "drafts"
    return "probabilities" if isinstance(value, float) else "decisions"


def diff(a: Trace, b: Trace, tolerance: float = TOLERANCE) -> TraceDiff:
    """The first step where a and b differ, and the most upstream field that differs there."""
    if a.method != b.method:
        raise ValueError(f"These traces are of different methods ({a.method} and {b.method}); diff two traces "
                         f"of the same method.")
    if a.prompt_ids != b.prompt_ids:
        raise ValueError("These traces start from different prompts; diff two traces of the same prompt.")
    result = TraceDiff(a.method, (len(a.steps), len(b.steps)))
    result.config_changes = [f"{k}: {a.config.get(k)!r} vs {b.config.get(k)!r}"
                             for k in sorted(a.config.keys() | b.config.keys()) if a.config.get(k) != b.config.get(k)]
    for sa, sb in zip(a.steps, b.steps):
        la, lb = dict(leaves(sa.to_dict())), dict(leaves(sb.to_dict()))
        found = [(p, la.get(p), lb.get(p)) for p in sorted(la.keys() | lb.keys(), key=lambda p: (p not in la, p))
                 if not same(la.get(p), lb.get(p), tolerance)]
        if found:
            path, va, vb = min(found, key=lambda f: KINDS.index(kind_of(f[0], f[1] if f[1] is not None else f[2])))
            kind = kind_of(path, va if va is not None else vb)
            result.difference = Difference(sa.index, kind, path, va, vb, len(found),
                                           f"Step {sa.index} is the first that differs: {kind} first, at "
                                           f"{path.replace('#len', ' (its length)')} ({va!r} vs {vb!r}); "
                                           f"{len(found)} field(s) of that step differ.")
            break
    else:
        if len(a.steps) != len(b.steps):
            n = min(len(a.steps), len(b.steps))
            result.difference = Difference(n, "length", "steps", len(a.steps), len(b.steps), 1,
                                           f"The first {n} steps agree; then one trace stops ({len(a.steps)} vs "
                                           f"{len(b.steps)} steps).")
    same_words = (f"The two {a.method} traces agree at every one of their {len(a.steps)} steps "
                  f"(floats within {tolerance:g}, timings ignored).")
    result.words = result.difference.words if result.difference else same_words
    if result.config_changes:
        result.words += " Their settings differ: " + "; ".join(result.config_changes) + "."
    return result
