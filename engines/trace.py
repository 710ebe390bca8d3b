"""Step records and the Trace: plain data, JSON in and out.

A Step is what one iteration of a method really computed. Its common fields are
counters; `detail` holds the method's internals (drafts, probabilities, coin flips,
trees, blocks) as ints, floats, strings and lists. In JSON the detail keys sit
beside the common ones, so one step reads as one flat object.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

# Bump when a recorded field changes meaning, type or name (engines/schema.py describes every field).
SCHEMA_VERSION = 1


def check_version(data: dict[str, Any]) -> None:
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        said = "no schema version (it predates the versioned format)" if version is None else f"version {version!r}"
        raise ValueError(f"This trace has {said}; this app reads trace schema version {SCHEMA_VERSION} only, so "
                         f"record it again with this version.")


COUNTERS = ("target_forwards", "draft_forwards", "tokens_fed", "wall_s")


@dataclass(frozen=True)
class Step:
    index: int                        # the iteration, from 0
    committed_ids: tuple[int, ...]    # the tokens this iteration added to the text (mask-predict: at its last only)
    target_forwards: int = 0          # forwards of the target (or the masked LM) this iteration
    draft_forwards: int = 0           # forwards of the drafter (draft model or heads); 0 for model-free drafts
    tokens_fed: int = 0               # tokens the target read in this step's forward(s)
    wall_s: float = 0.0               # seconds this iteration took
    final: bool = False               # the method stopped here (end of text, the token budget, the last iteration)
    detail: Mapping[str, Any] = field(default_factory=dict)   # the method's typed record, declared beside its engine

    def to_dict(self) -> dict[str, Any]:
        common = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "detail"}
        common["committed_ids"] = list(self.committed_ids)
        clash = common.keys() & self.detail.keys()
        if clash:
            raise ValueError(f"step detail may not reuse the names {sorted(clash)}")
        return {**common, **self.detail}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Step":
        names = {f.name for f in dataclasses.fields(cls)} - {"detail"}
        common = {k: v for k, v in d.items() if k in names}
        common["committed_ids"] = tuple(common.get("committed_ids", ()))
        return cls(**common, detail={k: v for k, v in d.items() if k not in names})


@dataclass
class Trace:
    """A whole run: what was asked, every step, and what came out."""
    method: str
    config: dict[str, Any]
    models: dict[str, str]
    prompt: str
    prompt_ids: list[int]
    steps: list[Step] = field(default_factory=list)
    output_text: str = ""
    token_texts: dict[int, str] = field(default_factory=dict)   # every id in the trace -> its text
    finished: bool = False
    # the cost model's calibration measured when the run started (engines.analysis.theory.Calibration as a dict): outside
    # every step, so no step counts its forwards; None where nothing was measured (an older trace, a method
    # without drafts)
    cost: dict[str, Any] | None = None
    # whether prompt_ids are the prompt in the target's chat template (engines/models/chat.py); False in a trace
    # recorded before the template was applied, which fed the bare prompt
    chat: bool = False
    # the conversation, where the prompt was a list of messages (`prompt` then holds the last user message)
    messages: list[dict[str, str]] | None = None

    @property
    def output_ids(self) -> list[int]:
        return [t for s in self.steps for t in s.committed_ids]

    @property
    def totals(self) -> dict[str, Any]:
        return totals(self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "method": self.method, "config": self.config, "models": self.models,
            "prompt": self.prompt, "prompt_ids": list(self.prompt_ids),
            "output_ids": self.output_ids, "output_text": self.output_text,
            "steps": [s.to_dict() for s in self.steps], "totals": self.totals,
            "finished": self.finished,
            "token_texts": {str(k): v for k, v in sorted(self.token_texts.items())},
            "cost": self.cost, "chat": self.chat, "messages": self.messages,
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trace":
        if "method" in d and "steps" in d:   # a trace of another format version: one sentence, before anything
            check_version(d)
        missing = [name for name in TRACE_FIELDS if name not in d]
        if missing:
            raise ValueError(f"This JSON file is not a trace saved by this app or its CLI: it has no "
                             f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}.")
        try:
            trace = cls(method=str(d["method"]), config=dict(d["config"]), models=dict(d["models"]),
                        prompt=str(d["prompt"]), prompt_ids=[int(i) for i in d["prompt_ids"]],
                        steps=[Step.from_dict(s) for s in d["steps"]],
                        output_text=str(d.get("output_text", "")),
                        token_texts={int(k): v for k, v in d.get("token_texts", {}).items()},
                        finished=bool(d.get("finished", True)),
                        cost=dict(d["cost"]) if d.get("cost") is not None else None,
                        chat=bool(d.get("chat", False)),
                        messages=[dict(m) for m in d["messages"]] if d.get("messages") is not None else None)
        except KeyError as e:   # a step without one of its fields: named in words, not as the exception
            raise ValueError(f"This is not a trace file of this app: a step has no {str(e.args[0])[:40]!r} "
                             f"field.") from e
        except (TypeError, ValueError, AttributeError) as e:
            raise ValueError("This is not a trace file of this app: one of its fields holds the wrong kind of "
                             "value.") from e
        if "output_ids" in d and list(d["output_ids"]) != trace.output_ids:
            raise ValueError("This trace is inconsistent: its output_ids differ from its steps' committed tokens.")
        return trace

    @classmethod
    def from_json(cls, text: str) -> "Trace":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"This file is not JSON ({e.msg} at line {e.lineno}).") from e
        if not isinstance(data, dict):
            raise ValueError("This file is JSON but not a trace: a trace is one object with method, config and steps.")
        return cls.from_dict(data)


# what every trace file holds, whatever its method
TRACE_FIELDS = ("method", "config", "models", "prompt", "prompt_ids", "steps")


def totals(steps: Iterable[Step]) -> dict[str, Any]:
    steps = list(steps)
    out: dict[str, Any] = {"steps": len(steps), "new_tokens": sum(len(s.committed_ids) for s in steps)}
    for name in COUNTERS:
        out[name] = sum(getattr(s, name) for s in steps)
    out["wall_s"] = round(out["wall_s"], 6)
    f = out["target_forwards"]
    out["tokens_per_target_forward"] = round(out["new_tokens"] / f, 4) if f else None
    return out
