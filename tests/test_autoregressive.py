"""The baseline engine and the trace it produces, through the same Run the CLI and UI use."""
import json

import pytest

from engines.methods import Run
from engines.trace import Trace
from tests.conftest import PROMPTS, greedy_reference, untimed


@pytest.mark.parametrize("which", ["tiny_target", "smollm2"])
def test_greedy_equals_generate(which, request):
    model = request.getfixturevalue(which)
    for prompt in PROMPTS[:2]:
        run = Run("autoregressive", prompt, {"max_new_tokens": 20}, target=model.source)
        trace = run.run()
        assert trace.output_ids == greedy_reference(model, trace.prompt_ids, 20)
        assert trace.totals["target_forwards"] == len(trace.output_ids)


def test_same_seed_same_sampled_trace_and_another_seed_differs(tiny_target):
    settings = {"max_new_tokens": 12, "temperature": 1.0, "top_p": 0.95}
    a = Run("autoregressive", PROMPTS[0], settings, target=tiny_target.source, seed=7).run()
    b = Run("autoregressive", PROMPTS[0], settings, target=tiny_target.source, seed=7).run()
    c = Run("autoregressive", PROMPTS[0], settings, target=tiny_target.source, seed=8).run()
    strip = lambda t: [untimed(s.to_dict()) for s in t.steps]
    assert strip(a) == strip(b)
    assert a.output_ids != c.output_ids


def test_recorded_probabilities_are_the_processed_distribution(tiny_target):
    trace = Run("autoregressive", PROMPTS[2], {"max_new_tokens": 5, "temperature": 0.7, "top_k": 3},
                target=tiny_target.source, seed=1).run()
    for s in trace.steps:
        assert len(s.detail["top"]) <= 3                      # top-k removed the rest
        assert abs(sum(p for _, p in s.detail["top"]) - 1) < 1e-4
        assert s.detail["chosen"] in dict(s.detail["top"])


def test_stops_at_eos_and_keeps_it(tiny_target):
    import dataclasses

    import torch

    from engines.decoding.autoregressive import AutoregressiveConfig, autoregressive
    ids = tiny_target.encode(PROMPTS[0])
    first = greedy_reference(tiny_target, ids, 3)
    as_eos = dataclasses.replace(tiny_target, eos_ids=frozenset({first[1]}))  # the 2nd token ends the text
    steps = list(autoregressive(as_eos, ids, AutoregressiveConfig(max_new_tokens=10), torch.Generator()))
    assert [t for s in steps for t in s.committed_ids] == first[:first.index(first[1]) + 1]


def test_trace_round_trips_through_json(tiny_target):
    trace = Run("autoregressive", PROMPTS[0], {"max_new_tokens": 4}, target=tiny_target.source).run()
    text = trace.to_json()
    again = Trace.from_json(text)
    assert again.to_json() == text
    d = json.loads(text)
    assert set(d) >= {"method", "config", "models", "prompt", "prompt_ids", "output_ids", "output_text",
                      "steps", "totals"}
    assert set(d["totals"]) >= {"new_tokens", "target_forwards", "draft_forwards", "wall_s"}
    assert all({"index", "committed_ids"} <= set(s) for s in d["steps"])


@pytest.mark.parametrize("text", ["", "[1, 2]", "{\"method\": 3}", "not json"])
def test_bad_trace_files_are_refused_in_one_sentence(text):
    with pytest.raises(ValueError, match="trace|JSON"):
        Trace.from_json(text)
