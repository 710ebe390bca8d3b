"""A tree sized to the machine (tree budget auto): the expected-tokens-per-second rule, its record, its words."""
import json
import math
import random

import pytest

from engines.decoding.tree_size import UNMEASURED_BUDGET, DepthAcceptance, chances, fit, next_depth
from engines.decoding.trees import Node
from engines.methods import Run
from explorer.figures import tree_words
from tests import synthetic as syn
from tests.conftest import greedy_reference


def candidates(rnd: random.Random, depth: int = 4, topk: int = 3) -> list[Node]:
    """A full top-k tree of the given depth with random draft probabilities (siblings summing below 1)."""
    out, level = [], [((), 0.0)]
    for _ in range(depth):
        nxt = []
        for path, logq in level:
            qs = sorted((rnd.random() for _ in range(topk)), reverse=True)
            qs = [q / (sum(qs) + rnd.random()) for q in qs]
            for r, q in enumerate(qs):
                node = Node(path + (r,), rnd.randrange(1000), q, logq + math.log(q))
                out.append(node)
                nxt.append((node.path, node.logq))
        level = nxt
    return out


def linear(one: float, slope: float):
    return lambda n: one + slope * n


def test_each_chance_is_its_parents_times_a_calibrated_q_and_siblings_never_sum_above_their_parent():
    rnd = random.Random(0)
    nodes = candidates(rnd)
    seen = DepthAcceptance()
    seen.note(nodes[:3], [True, True, True], [0])    # depth 1: one of q-sum offered was accepted
    a = chances(nodes, seen)
    for n in nodes:
        parent = a.get(n.path[:-1], 1.0)
        assert a[n.path] <= parent + 1e-12
        sibs = [m for m in nodes if m.path[:-1] == n.path[:-1]]
        assert sum(a[m.path] for m in sibs) <= parent + 1e-9
    # with nothing observed at a depth, r = 1: the chance is the product of the draft's q along the path
    fresh = chances(nodes, DepthAcceptance())
    for n in nodes:
        assert fresh[n.path] == pytest.approx(math.exp(n.logq), rel=1e-9)


def test_the_budget_is_the_size_with_the_most_expected_tokens_per_second_and_every_prefix_is_a_tree():
    rnd = random.Random(1)
    nodes = candidates(rnd)
    for one, slope in ((0.1, 0.0), (0.1, 0.001), (0.1, 0.02), (0.1, 1.0)):
        kept, z = fit(nodes, 1, 0.01, linear(one, slope), DepthAcceptance(), 4, 64)
        rates = [e / t for e, t in zip(z["expected_tokens"], z["seconds"])]
        assert z["budget"] == len(kept) and rates[z["budget"]] == max(rates)
        paths = {n.path for n in kept}
        assert all(len(p) == 1 or p[:-1] in paths for p in paths)
        assert z["seconds"] == [round(0.01 + one + slope * (1 + n), 6) for n in range(z["candidates"] + 1)]
    free = fit(nodes, 1, 0.01, linear(0.1, 0.0), DepthAcceptance(), 4, 64)[1]["budget"]
    dear = fit(nodes, 1, 0.01, linear(0.1, 1.0), DepthAcceptance(), 4, 64)[1]["budget"]
    assert free == min(len(nodes), 64) and dear == 0   # a free node always pays; one dearer than a forward never


def test_a_depth_the_target_agrees_with_more_than_q_says_earns_more_nodes():
    rnd = random.Random(2)
    nodes = candidates(rnd)
    cautious, trusting = DepthAcceptance(), DepthAcceptance()
    for d in range(1, 5):
        cautious.offered[d], cautious.accepted[d] = 50.0, 5.0
        trusting.offered[d], trusting.accepted[d] = 5.0, 50.0
    cost = linear(0.1, 0.004)
    assert fit(nodes, 1, 0.0, cost, trusting, 4, 64)[1]["budget"] > fit(nodes, 1, 0.0, cost, cautious, 4, 64)[1]["budget"]


def test_without_a_measured_forward_it_keeps_the_fixed_default():
    nodes = candidates(random.Random(3))
    kept, z = fit(nodes, 1, 0.0, lambda n: None, DepthAcceptance(), 4, 64)
    assert not z["measured"] and len(kept) == z["budget"] == UNMEASURED_BUDGET and z["seconds"] == []


def test_it_drafts_one_level_past_the_deepest_node_kept():
    nodes = candidates(random.Random(4))
    assert next_depth([n for n in nodes if len(n.path) <= 2], 6) == 3
    assert next_depth([], 6) == 1 and next_depth(nodes, 3) == 3


def test_an_auto_tree_equals_generate_and_records_why_each_size(tiny_target, tiny_draft):
    prompt = "Once upon a time there was a"
    run = Run("tree", prompt, {"max_new_tokens": 24, "tree_budget": 0, "tree_depth": 4, "tree_topk": 3},
              target=tiny_target.source, draft=tiny_draft.source)
    trace = run.run()
    assert trace.output_ids == greedy_reference(tiny_target, trace.prompt_ids, 24)
    sized = [s.detail["sizing"] for s in trace.steps]
    assert all(z["budget"] == len(s.detail["nodes"]) for z, s in zip(sized, trace.steps))
    assert any(z["measured"] for z in sized)   # the run's own forwards and its sweep measure T(n) as it goes
    assert all(z["draft_depth"] <= 4 for z in sized)
    json.loads(json.dumps(trace.to_dict()))


def test_the_tree_view_says_what_one_more_node_would_cost_and_earn():
    rnd = random.Random(5)
    step = syn.tree_step(rnd, 1, shape="dynamic", budget=0, depth=4, topk=3, room=8, greedy=True)
    z = step.detail["sizing"]
    z.update(measured=True, seconds=[0.1 + 0.01 * n for n in range(z["candidates"] + 1)])
    trace = syn.trace_of("tree", [syn.tree_step(rnd, 0, shape="dynamic", budget=16, depth=4, topk=3, room=8,
                                                greedy=True), step],
                         syn.tree_config(shape="dynamic", budget=0, depth=4, topk=3, greedy=True, max_new_tokens=64))
    text = tree_words.words(trace, 1)
    if z["budget"] < z["candidates"]:
        assert "One more node would cost 10.0 ms" in text
    if z["budget"]:
        assert f"Tree budget auto kept {z['budget']} of {z['candidates']} candidates" in text
    else:
        assert "Tree budget auto verified none" in text
