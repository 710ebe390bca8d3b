"""The Jacobi view's convergence figure (explorer/figures/jacobi.py): this run's settled count per iteration, and
for a CLLM target the base's mean measured on the task suite, drawn as a labelled reference with its source."""
from __future__ import annotations

import random

from explorer.figures import jacobi
from tests import synthetic as syn

REFERENCE = {"model": "smollm2-135m-instruct", "tokens_per_forward": 1.01, "block": 8,
             "source": "held-out task suite abc123, 12 prompts"}


def jacobi_trace(settled: list[int], target: str = "synthetic"):
    rnd = random.Random(3)
    steps, made = [], 0
    for i, k in enumerate(settled):
        steps.append(syn.jacobi_step(rnd, i, block=8, settled=k, produced=made, max_new_tokens=64))
        made += len(steps[-1].committed_ids)
    trace = syn.trace_of("jacobi", steps, syn.jacobi_config(block=8, max_new_tokens=64))
    trace.models["target"] = target
    return trace


def traces(fig) -> list[dict]:
    return fig.to_plotly_json()["data"]


def test_the_bars_are_this_runs_settled_count_per_iteration():
    trace = jacobi_trace([0, 3, 7, 1])
    bars = traces(jacobi.convergence_figure(trace, 3))[0]
    assert list(bars["y"]) == [1, 4, 8, 2] and list(bars["x"]) == [1, 2, 3, 4]


def test_a_reference_line_is_drawn_only_when_given_at_its_measured_height_with_its_source():
    trace = jacobi_trace([2, 5, 1])
    plain = traces(jacobi.convergence_figure(trace, 2))
    assert not any("measured" in (t.get("name") or "") for t in plain)
    drawn = traces(jacobi.convergence_figure(trace, 2, reference=REFERENCE))
    assert len(drawn) == len(plain) + 1
    line = drawn[-1]
    assert list(line["y"]) == [1.01, 1.01] and list(line["x"]) == [0.5, 3.5]   # across every iteration shown
    assert "smollm2-135m-instruct" in line["name"] and "measured" in line["name"] and "block 8" in line["name"]
    assert REFERENCE["source"] in line["hovertemplate"]


def test_the_view_looks_the_reference_up_by_target():
    """Only a CLLM's folder holds a reference: a synthetic or plain target gets none."""
    assert jacobi.presets.jacobi_reference("synthetic") is None
    assert jacobi.presets.jacobi_reference("smollm2-135m-instruct") is None
    assert not any("measured" in (t.get("name") or "") for t in traces(jacobi.convergence(jacobi_trace([1]), 0)))
