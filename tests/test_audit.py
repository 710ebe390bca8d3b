"""The losslessness auditor: no divergence on a lossless method, a planted one found where it was planted,
and the near-tie / bug verdict."""
import dataclasses

import pytest

from engines.analysis.audit import Top2, audit, audit_traces, classify
from engines.methods import Run
from engines.models import store

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def traces(tiny_target, tiny_draft):
    settings = {"max_new_tokens": 12, "temperature": 0.0}
    ref = Run("autoregressive", PROMPT, settings, target=tiny_target.source).run()
    spec = Run("speculative", PROMPT, {**settings, "k": 4}, target=tiny_target.source,
               draft=tiny_draft.source).run()
    return ref, spec


def test_a_lossless_method_has_no_divergence(tiny_target, tiny_draft):
    a = audit(PROMPT, "tree", 12, target=tiny_target.source, draft=tiny_draft.source, float64=False)
    assert a.equal and a.divergence is None and "equals greedy" in a.words


def test_a_planted_divergence_is_found_where_it_was_planted_and_called_a_bug(traces, tiny_target):
    ref, spec = traces
    step = next(s for s in spec.steps if len(s.committed_ids) > 1 and s.index > 0)
    at = sum(len(s.committed_ids) for s in spec.steps[:step.index]) + 1   # its second token
    planted = list(step.committed_ids)
    planted[1] = (planted[1] + 1) % tiny_target.model.config.vocab_size
    broken = dataclasses.replace(spec, steps=[dataclasses.replace(s, committed_ids=tuple(planted))
                                              if s is step else s for s in spec.steps])
    a = audit_traces(ref, broken, tiny_target, store.load(tiny_target.source, None, "float64"))
    d = a.divergence
    assert not a.equal and d.position == at and d.step == step.index
    assert d.reference_token == ref.output_ids[at] and d.method_token == planted[1]
    assert d.verdict == "bug" and d.method.ids[0] == d.reference_token
    assert d.reference64 is not None and d.disagreement < 1e-3
    assert f"new token {at}" in a.words and "Bug" in a.words
    from explorer.compare import audit_markdown
    page = audit_markdown(a)
    assert "Verdict: bug" in page and page.count("float64 |") == 2 and page.count("float32 |") == 2


def test_near_tie_and_bug_verdicts():
    def top(first: int, second: int, margin: float) -> Top2:
        return Top2("method, float32", (first, second), (10.0, 10.0 - margin), margin, {})
    # the method's own forward ranks its token first by a hair, and float64 puts the two closer than the two
    # float32 computations disagree: a near tie flipped by rounding
    assert classify(7, top(7, 5, 2e-6), disagreement=8e-6, margin64=-1e-6) == "numerical near tie"
    # the same, but float64 separates them by far more than rounding: the computations differ
    assert classify(7, top(7, 5, 0.4), disagreement=8e-6, margin64=0.4) == "bug"
    # the method emitted a token its own forward does not rank first
    assert classify(7, top(5, 7, 1.0), disagreement=8e-6, margin64=None) == "bug"
    assert classify(7, top(7, 5, 1e-6), disagreement=8e-6, margin64=None) == "unknown"


def test_a_masked_method_is_refused_in_one_sentence():
    with pytest.raises(ValueError, match="audit a causal method"):
        audit(PROMPT, "mask-predict", 8)
