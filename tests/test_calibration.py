"""The cost model's calibration without waiting for it: a disk cache per machine and model pair, and a run that
measures as it goes (its own verify forwards, the sweep between steps, never before the first step); each step's
time split into the target's forward, the drafting and the bookkeeping."""
from __future__ import annotations

import json
import os

import pytest

from engines.analysis import calibration, cost
from engines.analysis.theory import DISK, SOURCES, Calibration
from engines.methods import Run
from engines.schema import validate
from engines.trace import Trace
from explorer.figures import speculative_words as speculative_view
from explorer.figures import tree as tree_view


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(calibration.ENV_DIR, str(tmp_path))
    return tmp_path


def test_the_first_step_does_not_sweep_and_the_run_records_where_its_calibration_came_from(
        tiny_target, tiny_draft, empty_cache, monkeypatch):
    def no_sweep(*args, **kwargs):
        raise AssertionError("the calibration sweep ran")
    monkeypatch.setattr(cost, "measure", no_sweep)
    timed = []
    real = cost.forward_seconds
    monkeypatch.setattr(cost, "forward_seconds", lambda *a: timed.append(a[2]) or real(*a))
    run = Run("speculative", "Once upon a time", {"k": 2, "max_new_tokens": 12}, target=tiny_target.source,
              draft=tiny_draft.source)
    assert run.trace.cost is None and timed == []          # nothing on disk, nothing measured before the start
    run.step()
    assert timed == []                                      # the first step timed no forward of its own
    assert run.trace.cost["complete"] is False and run.trace.cost["source"] in SOURCES
    assert "measuring" in speculative_view.cost_words(run.trace, 0)
    while run.step() is not None:
        assert run.trace.cost["source"] in SOURCES and run.trace.cost["at_step"] == run.trace.steps[-1].index
    assert timed and timed[0] == 1                         # the unit first, between steps
    run.finish_calibration()
    cal = Calibration.from_dict(run.trace.cost)
    assert cal.complete and cal.verify_n[0] == 1 and cal.c > 0 and "this run's forwards" in cal.source
    assert 3 in cal.verify_n                                # k + 1 = 3 tokens, the size the run fed itself
    validate(run.trace.to_dict())
    # the next run of the pair on this machine reads it from disk, before its first step
    again = Run("speculative", "Once upon a time", {"k": 2, "max_new_tokens": 4}, target=tiny_target.source,
                draft=tiny_draft.source)
    assert again.trace.cost["source"] == DISK and again.trace.cost["verify_cost"] == run.trace.cost["verify_cost"]


def test_the_disk_cache_round_trips_and_misses_another_model_or_device(tiny_target, tiny_draft, empty_cache,
                                                                        monkeypatch):
    cal = Calibration(0.02, 0.005, 0.25, [1, 2, 5], [1.0, 1.1, 1.6], "2026-01-01T00:00:00Z", "sweep", True, None)
    assert calibration.load_cached(tiny_target, tiny_draft) is None
    calibration.save(tiny_target, tiny_draft, cal)
    assert [p.name for p in empty_cache.iterdir() if not p.name.endswith(".json") or p.name.startswith(".")] == []
    found = calibration.load_cached(tiny_target, tiny_draft)
    assert found.source == DISK and found.at_step is None
    assert (found.target_forward_s, found.c, found.verify_n, found.verify_cost, found.measured_at) == \
        (cal.target_forward_s, cal.c, cal.verify_n, cal.verify_cost, cal.measured_at)
    assert calibration.load_cached(tiny_target, None) is None          # another pair
    assert calibration.load_cached(tiny_draft, tiny_target) is None    # the roles swapped
    key = calibration.machine_key
    for field, other in (("device", "cuda:0"), ("dtype", "bfloat16"), ("torch", "0.0"), ("processor", "another")):
        monkeypatch.setattr(calibration, "machine_key", lambda t, d, f=field, o=other: {**key(t, d), f: o})
        assert calibration.load_cached(tiny_target, tiny_draft) is None, field
    monkeypatch.setattr(calibration, "machine_key", key)
    # an incomplete or unreadable file is no calibration
    path = calibration.cache_path(key(tiny_target, tiny_draft))
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "calibration": {**saved["calibration"], "complete": False}}))
    assert calibration.load_cached(tiny_target, tiny_draft) is None
    path.write_text("{not json")
    assert calibration.load_cached(tiny_target, tiny_draft) is None
    assert os.environ[calibration.ENV_DIR] == str(empty_cache)


@pytest.mark.parametrize("method, settings", [
    ("speculative", {"k": 3}), ("speculative", {"k": 3, "drafter": "ngram"}), ("tree", {"tree": "balanced"}),
    ("tree", {"tree": "dynamic"}), ("autoregressive", {})])
def test_each_step_splits_its_time_into_parts_that_fit_its_wall_time(tiny_target, tiny_draft, method, settings):
    trace = Run(method, "Once upon a time", {**settings, "max_new_tokens": 8}, target=tiny_target.source,
                draft=tiny_draft.source).run()
    for step in trace.steps:
        parts = [step.detail[f] for f in ("target_forward_s", "drafting_s", "bookkeeping_s") if f in step.detail]
        assert len(parts) == (2 if method == "autoregressive" else 3)
        assert all(p >= 0 for p in parts) and sum(parts) <= step.wall_s + 1e-9
        assert step.detail["target_forward_s"] > 0
    validate(trace.to_dict())
    assert Trace.from_json(trace.to_json()).steps[-1].detail["bookkeeping_s"] == trace.steps[-1].detail["bookkeeping_s"]


@pytest.mark.parametrize("method, view, settings", [("speculative", speculative_view, {"k": 2}),
                                                     ("tree", tree_view, {"tree": "chain"})])
def test_the_words_say_where_the_time_went_and_where_the_cost_came_from(tiny_target, tiny_draft, method, view,
                                                                        settings):
    trace = Run(method, "Once upon a time", {**settings, "max_new_tokens": 6}, target=tiny_target.source,
                draft=tiny_draft.source).run()
    d = trace.steps[-1].detail
    said = view.words(trace, len(trace.steps) - 1)
    for part, field in (("target forward", "target_forward_s"), ("drafting", "drafting_s"),
                        ("bookkeeping", "bookkeeping_s")):
        assert f"{part} {d[field] * 1000:.1f} ms" in said
    assert trace.cost["source"] in said or "disk cache" in said
    old = trace.to_dict()                        # a trace recorded before steps were split: no sentence, no error
    for s in old["steps"]:
        for f in ("target_forward_s", "drafting_s", "bookkeeping_s"):
            s.pop(f)
    assert "bookkeeping" not in view.words(Trace.from_dict(old), len(trace.steps) - 1)
