"""The losslessness auditor: does a method's greedy output equal greedy autoregressive decoding, and if
not, was the first divergence a numerical near tie or a bug?

Greedy autoregressive decoding is the reference. At the first output token where the method differs,
the target's logits there are recomputed two ways:
  - the reference computation: one token per forward, exactly as autoregressive decoding fed them;
  - the method's computation: the verifying forward of the step that emitted the token, with the
    tokens that step fed after its pending token (the drafts, the Jacobi block, or, for methods whose
    forward is a tree, the step's committed tokens as a chain, an approximation of its batch shape).
Then both again with the target in float64. Different batch shapes sum in a different order, so float32
logits differ in the last bits; that flips the argmax only where the top two are nearly tied.

Verdict: a method that emitted a token its own forward does not rank first is a bug; two computations
whose argmaxes differ are a numerical near tie when float64 puts the two tokens closer than the two
float32 computations disagree with each other, and a bug otherwise.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from engines.analysis.race import first_difference
from engines.methods import Run, method
from engines.models import store
from engines.models.adapter import LM
from engines.trace import Step, Trace

TIE_FACTOR = 4.0        # float64 margin within this many float32 disagreements counts as a tie
TIE_FLOOR = 1e-4        # ... or within this many logits, whatever the disagreement


@dataclass
class Top2:
    """The target's two best tokens at one position under one computation."""
    computation: str
    ids: tuple[int, int]
    logits: tuple[float, float]
    margin: float
    logit_of: dict[int, float]   # the reference's and the method's tokens, by id


@dataclass
class Divergence:
    position: int                 # index of the first differing new token
    step: int                     # the method's step that emitted it
    reference_token: int
    method_token: int
    reference: Top2               # float32, one token per forward
    method: Top2                  # float32, the method's verifying forward
    disagreement: float           # max |logit difference| of the two float32 computations over the vocabulary
    reference64: Top2 | None
    method64: Top2 | None
    margin64: float | None        # float64 logit of the reference's token minus the method's
    verdict: str                  # "numerical near tie", "bug", or "unknown" without the float64 re-run


@dataclass
class Audit:
    method: str
    prompt: str
    target: str
    new_tokens: int
    equal: bool
    divergence: Divergence | None
    words: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def audit(prompt: str, method_name: str, max_new_tokens: int, target: str | None = None, draft: str | None = None,
          settings: dict[str, Any] | None = None, float64: bool = True, device: str | None = None) -> Audit:
    """Run greedy autoregressive and the method greedily, and audit the method's output against it."""
    m = method(method_name)
    if m.model_kind != "causal":
        raise ValueError(f"{m.title} has no greedy autoregressive output to equal; audit a causal method.")
    common = {"max_new_tokens": max_new_tokens, "temperature": 0.0}
    ref_run = Run("autoregressive", prompt, common, target=target, device=device)
    reference = ref_run.run()
    candidate = Run(method_name, prompt, {**(settings or {}), **common}, target=target, draft=draft,
                    device=device).run()
    model = ref_run.target
    return audit_traces(reference, candidate, model, store.load(model.name, device, "float64") if float64 else None)


def audit_traces(reference: Trace, candidate: Trace, target: LM, target64: LM | None = None) -> Audit:
    """Compare a candidate trace with the greedy autoregressive reference; explain the first divergence."""
    if reference.prompt_ids != candidate.prompt_ids:
        raise ValueError("The two traces start from different prompts, so their outputs cannot be compared.")
    ref, out = reference.output_ids, candidate.output_ids
    at = first_difference(out, ref)
    n = len(out)
    if at is None:
        return Audit(candidate.method, candidate.prompt, target.name, n, True, None,
                     f"{candidate.method} equals greedy autoregressive decoding for all {n} new tokens.")
    if at >= len(ref) or at >= len(out):
        shorter = "the method" if len(out) < len(ref) else "the reference"
        return Audit(candidate.method, candidate.prompt, target.name, n, False, None,
                     f"The outputs agree for {at} tokens, then {shorter} stops: they end at different lengths.")
    d = divergence(reference.prompt_ids, ref, out, candidate.steps, at, target, target64)
    return Audit(candidate.method, candidate.prompt, target.name, n, False, d, explain(candidate.method, d))


# ----------------------------------------------------------------------------- the two computations

def step_at(steps: Sequence[Step], position: int) -> tuple[int, int]:
    """The step that committed new token `position`, and the position its first token has."""
    start = 0
    for s in steps:
        if position < start + len(s.committed_ids):
            return s.index, start
        start += len(s.committed_ids)
    raise ValueError(f"no step committed token {position}")


def fed_after_pending(step: Step) -> list[int]:
    """What the step's verifying forward read after its pending token, as far as the record says."""
    d = step.detail
    if "draft_tokens" in d:
        return list(d["draft_tokens"])
    if "block_before_ids" in d:
        return list(d["block_before_ids"])
    return list(step.committed_ids[:-1])   # a tree or lookahead forward, approximated by its accepted chain


def reference_logits(target: LM, prompt_ids: Sequence[int], ids: Sequence[int], position: int) -> torch.Tensor:
    """Logits for new token `position`, fed as autoregressive decoding feeds them: the prompt, then one by one."""
    kv = target.new_kv()
    logits = target.forward(kv, prompt_ids)[-1]
    for t in ids[:position]:
        logits = target.forward(kv, [t])[-1]
    return logits


def method_logits(target: LM, prompt_ids: Sequence[int], ids: Sequence[int], position: int, start: int,
                  fed: Sequence[int]) -> torch.Tensor:
    """Logits for new token `position` from one forward shaped like the step's: the text before the step
    cached (minus its last token), then the pending token(s) and what the step fed after them."""
    text = list(prompt_ids) + list(ids[:start])
    kv = target.new_kv()
    pending = text if start == 0 else text[-1:]   # the first step reads the whole prompt in its forward
    if start > 0:
        target.forward(kv, text[:-1])
    logits = target.forward(kv, pending + list(fed))
    return logits[len(pending) - 1 + position - start]


def top2(computation: str, logits: torch.Tensor, tokens: Sequence[int]) -> Top2:
    values, ids = logits.double().topk(2)
    return Top2(computation, (int(ids[0]), int(ids[1])), (float(values[0]), float(values[1])),
                float(values[0] - values[1]), {int(t): float(logits[t]) for t in tokens})


def divergence(prompt_ids: Sequence[int], ref: Sequence[int], out: Sequence[int], steps: Sequence[Step], at: int,
               target: LM, target64: LM | None) -> Divergence:
    index, start = step_at(steps, at)
    fed = fed_after_pending(steps[index])
    pair = (ref[at], out[at])
    r32 = reference_logits(target, prompt_ids, ref, at)
    m32 = method_logits(target, prompt_ids, out, at, start, fed)
    disagreement = float((r32 - m32).abs().max())
    r64 = m64 = None
    margin64 = None
    if target64 is not None:
        r64 = top2("reference, float64", reference_logits(target64, prompt_ids, ref, at), pair)
        m64 = top2("method, float64", method_logits(target64, prompt_ids, out, at, start, fed), pair)
        margin64 = r64.logit_of[ref[at]] - r64.logit_of[out[at]]
    r, m = top2("reference, float32", r32, pair), top2("method, float32", m32, pair)
    return Divergence(at, index, ref[at], out[at], r, m, disagreement, r64, m64, margin64,
                      classify(out[at], m, disagreement, margin64))


def classify(method_token: int, method32: Top2, disagreement: float, margin64: float | None) -> str:
    """Numerical near tie or bug (see the module's docstring)."""
    if method32.ids[0] != method_token:
        return "bug"          # the method emitted a token that its own forward does not rank first
    if margin64 is None:
        return "unknown"
    return "numerical near tie" if abs(margin64) <= max(TIE_FLOOR, TIE_FACTOR * disagreement) else "bug"


def explain(method_name: str, d: Divergence) -> str:
    r, m = d.reference, d.method
    parts = [f"{method_name} first differs from greedy autoregressive at new token {d.position} (step {d.step}): "
             f"the reference emitted id {d.reference_token}, the method id {d.method_token}.",
             f"Target's top-2 logits there, one token per forward: {r.logits[0]:.4f} (id {r.ids[0]}) vs "
             f"{r.logits[1]:.4f} (id {r.ids[1]}), margin {r.margin:.4f}; in the method's forward: "
             f"{m.logits[0]:.4f} (id {m.ids[0]}) vs {m.logits[1]:.4f} (id {m.ids[1]}), margin {m.margin:.4f}. "
             f"The two float32 computations disagree by up to {d.disagreement:.2e} in any logit."]
    if d.verdict == "bug" and m.ids[0] != d.method_token:
        parts.append(f"Bug: the method emitted id {d.method_token}, but its own forward ranks id {m.ids[0]} first "
                     f"by {m.margin:.4f}, far more than rounding could move.")
    elif d.margin64 is not None:
        winner = d.reference_token if d.margin64 > 0 else d.method_token
        if d.verdict == "numerical near tie":
            parts.append(f"Float64 re-run: the two tokens are {abs(d.margin64):.2e} apart (float64 picks id {winner}), "
                         f"within the float32 disagreement: a numerical near tie flipped by a different batch shape, "
                         f"not a bug.")
        else:
            parts.append(f"Float64 re-run: the two tokens are {abs(d.margin64):.4f} apart (float64 picks id "
                         f"{winner}), far beyond float32 rounding: the computations differ, a bug.")
    else:
        parts.append("Re-run in float64 to tell a numerical near tie from a bug.")
    return " ".join(parts)
