"""The cost model: its formulas by hand, the calibration a run records (cached, outside every step), and the
calibration carried through a trace's JSON."""
from __future__ import annotations

import gc
import weakref

import pytest

from engines import methods
from engines.analysis import cost
from engines.analysis.theory import Calibration, best_k, expected_speedup, expected_tokens, verdict, verify_cost_at
from engines.methods import Run
from engines.trace import Trace

FLAT = ([1, 17], [1.0, 1.0])          # verifying 17 tokens costs what verifying one does
STEEP = ([1, 2, 17], [1.0, 2.0, 17.0])  # ... or 17 times as much


def test_expected_tokens_by_hand():
    assert expected_tokens(0.0, 4) == 1.0               # only the target's own token
    assert expected_tokens(1.0, 4) == 5.0               # every draft and the bonus
    assert expected_tokens(0.5, 1) == pytest.approx(1.5)
    assert expected_tokens(0.5, 3) == pytest.approx(1 + 0.5 + 0.25 + 0.125)


def test_verify_cost_interpolates_and_extrapolates():
    ns, costs = [1, 5, 9], [1.0, 2.0, 4.0]
    assert verify_cost_at(1, ns, costs) == 1.0
    assert verify_cost_at(3, ns, costs) == pytest.approx(1.5)
    assert verify_cost_at(13, ns, costs) == pytest.approx(6.0)   # along the last segment
    assert Calibration(0.01, None, None, ns, costs, "now").T(7) == pytest.approx(3.0)


def test_best_k_grows_with_alpha_and_shrinks_with_c():
    assert expected_speedup(0.8, 3, 0.0, *FLAT) == pytest.approx(expected_tokens(0.8, 3))
    assert best_k(0.95, 0.0, *FLAT)[0] == 16            # free drafts, free verify: draft all you can
    assert best_k(0.9, 0.05, *FLAT)[0] > best_k(0.6, 0.05, *FLAT)[0] > 1
    assert best_k(0.8, 0.3, *FLAT)[0] < best_k(0.8, 0.02, *FLAT)[0]


def test_no_k_wins_when_the_draft_costs_a_target_forward():
    for alpha in (0.3, 0.6, 0.9, 0.99):
        k, speedup = best_k(alpha, 1.0, *FLAT)
        assert speedup < 1, (alpha, k)
        assert verdict(alpha, 1.0, *FLAT).startswith("no k wins")
    assert best_k(0.9, 0.0, *STEEP)[1] < 1.0 + 1e-9 or best_k(0.9, 0.0, *STEEP)[0] == 1   # a costly verify too
    assert verdict(0.9, 0.05, *FLAT).startswith("the best is k = ")


def test_calibration_is_cached_and_outside_every_step(tiny_target, tiny_draft, monkeypatch):
    """A whole run completes its calibration and leaves it on disk; a second run reads it without a forward,
    and its steps count exactly one target forward per verification, as the model itself sees them."""
    settings = {"k": 3, "max_new_tokens": 10}
    first = Run("speculative", "Once upon a time", settings, target=tiny_target.source, draft=tiny_draft.source).run()
    calls = []
    hook = tiny_target.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        again = Run("speculative", "Once upon a time", settings, target=tiny_target.source, draft=tiny_draft.source)
        assert calls == []                                  # cached: no forward at all
        trace = again.run()
    finally:
        hook.remove()
    assert first.cost["complete"] and trace.cost["source"] == "disk cache" and trace.cost["c"] > 0
    assert {k: v for k, v in trace.cost.items() if k not in ("source", "at_step")} == \
        {k: v for k, v in first.cost.items() if k not in ("source", "at_step")}
    assert len(calls) == len(trace.steps) == trace.totals["target_forwards"]
    # the recorded steps are those of a run that never calibrated: only their timings may differ
    monkeypatch.setattr(methods, "COSTED", ())
    plain = Run("speculative", "Once upon a time", settings, target=tiny_target.source, draft=tiny_draft.source).run()
    assert plain.cost is None
    timings = {"wall_s", "target_forward_s", "drafting_s", "bookkeeping_s"}
    strip = lambda t: [{k: v for k, v in s.to_dict().items() if k not in timings} for s in t.steps]   # noqa: E731
    assert strip(plain) == strip(trace)


class Model:
    """Stands in for an LM: the cache reads only its identity (measure is stubbed)."""


def test_the_cache_measures_once_per_pair_keeps_no_model_alive_and_stays_small(monkeypatch):
    measured = []
    monkeypatch.setattr(cost, "measure", lambda target, draft, ids: measured.append(target) or
                        Calibration(0.01, None, None, [1], [1.0], "now"))
    monkeypatch.setattr(cost, "_CALIBRATIONS", type(cost._CALIBRATIONS)())
    a, b = Model(), Model()
    assert cost.calibrate(a, b, [1]) is cost.calibrate(a, b, [1, 2])
    assert measured == [a]
    cost.calibrate(a, None, [1])                          # another pair: measured on its own
    assert measured == [a, a]
    gone = weakref.ref(b)
    del b
    gc.collect()
    assert gone() is None                                 # the cache did not keep the draft alive
    for _ in range(cost.CACHED + 3):
        cost.calibrate(Model(), None, [1])
    assert len(cost._CALIBRATIONS) <= cost.CACHED
    # an entry whose model died cannot answer for a new object that happens to reuse its id
    fresh = Model()
    cost._CALIBRATIONS[(id(fresh), id(None))] = (weakref.ref(Model()), None, Calibration(9, None, None, [1], [1.0], ""))
    assert cost.calibrate(fresh, None, [1]).target_forward_s == 0.01


@pytest.mark.parametrize("method, settings", [("speculative", {"k": 2}), ("tree", {"tree": "chain"})])
def test_a_tiny_pair_trace_carries_its_calibration_through_json(tiny_target, tiny_draft, method, settings):
    trace = Run(method, "Once upon a time", {**settings, "max_new_tokens": 6}, target=tiny_target.source,
                draft=tiny_draft.source).run()
    cal = Calibration.from_dict(trace.cost)
    assert cal.target_forward_s > 0 and cal.c is not None and cal.c > 0
    assert cal.verify_n[0] == 1 and cal.verify_cost[0] == 1.0 and len(cal.verify_cost) == len(cal.verify_n)
    loaded = Trace.from_json(trace.to_json())
    assert loaded.cost == trace.cost
    from engines.schema import validate
    validate(trace.to_dict())
    old = trace.to_dict()
    del old["cost"]                                     # a trace recorded before runs measured the cost
    assert Trace.from_dict(old).cost is None


def test_autoregressive_runs_measure_nothing(tiny_target):
    assert Run("autoregressive", "Once upon a time", {"max_new_tokens": 2}, target=tiny_target.source).trace.cost \
        is None
