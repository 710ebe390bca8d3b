"""Typical acceptance (Medusa-2): the pure rule on toy distributions, and the engines that use it.

The rule keeps a drafted x when p(x) > min(epsilon, delta * exp(-H(p))). It is lossy by design (the sampling
check measures how far off it is, tests/test_sampling_check.py); under greedy it is greedy verification.
"""
import math

import pytest
import torch

from engines.decoding.acceptance import entropy, typical_accept, typical_threshold
from engines.methods import Run
from tests.conftest import greedy_reference


def test_entropy_in_nats():
    assert float(entropy(torch.tensor([0.5, 0.5, 0.0]))) == pytest.approx(math.log(2))
    assert float(entropy(torch.tensor([1.0, 0.0]))) == 0.0


def test_threshold_is_the_smaller_of_epsilon_and_the_entropy_term():
    flat = torch.full((100,), 0.01)                      # H = log 100: delta * exp(-H) = delta / 100
    assert float(typical_threshold(flat, 0.09, 0.3)) == pytest.approx(0.003)
    peaked = torch.tensor([0.97, 0.01, 0.01, 0.01])      # H small: the ceiling epsilon applies
    assert float(typical_threshold(peaked, 0.09, 0.3)) == pytest.approx(0.09)


def test_accepts_above_the_threshold_only():
    p = torch.tensor([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]])
    h = -(0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1))
    thr = min(0.5, 0.9 * math.exp(-h))                   # 0.36...: 0.3 fails, 0.6 passes
    assert thr == pytest.approx(float(typical_threshold(p[0], 0.5, 0.9)))
    assert typical_accept(p, torch.tensor([0, 1]), 0.5, 0.9).tolist() == [True, False]


def test_under_a_one_hot_p_only_the_argmax_passes():
    p = torch.nn.functional.one_hot(torch.tensor(2), 5).float()
    assert [bool(typical_accept(p, torch.tensor(x), 0.99, 0.99)) for x in range(5)] == [False, False, True, False,
                                                                                          False]


@pytest.mark.parametrize("method, settings", [("speculative", {"k": 4}), ("tree", {}), ("tree", {"tree": "sparse"})])
def test_greedy_typical_equals_greedy_generate(tiny_target, tiny_draft, method, settings):
    run = Run(method, "Alice was beginning to get very tired of",
              {**settings, "max_new_tokens": 16, "acceptance": "typical"}, target=tiny_target.source,
              draft=tiny_draft.source)
    trace = run.run()
    assert trace.output_ids == greedy_reference(tiny_target, trace.prompt_ids, 16)
    assert all(s.detail["acceptance"] == "typical" for s in trace.steps)


def test_sampled_speculative_records_threshold_and_entropy(tiny_target, tiny_draft):
    trace = Run("speculative", "Once upon a time", {"k": 4, "max_new_tokens": 12, "temperature": 1.0,
                                                      "acceptance": "typical", "typical_epsilon": 0.2,
                                                      "typical_delta": 0.5},
                target=tiny_target.source, draft=tiny_draft.source, seed=1).run()
    seen = 0
    for s in trace.steps:
        for pos in s.detail["positions"]:
            if pos["status"] == "not_reached":
                continue
            seen += 1
            assert pos["u"] is None and pos["threshold"] == pytest.approx(
                min(0.2, 0.5 * math.exp(-pos["entropy"])), rel=1e-5)
            assert (pos["p"] > pos["threshold"]) == (pos["status"] == "accepted")
    assert seen


def test_sampled_tree_keeps_the_deepest_passing_path(tiny_target, tiny_draft):
    trace = Run("tree", "Once upon a time", {"max_new_tokens": 12, "temperature": 1.0, "acceptance": "typical"},
                target=tiny_target.source, draft=tiny_draft.source, seed=2).run()
    for s in trace.steps:
        nodes = s.detail["nodes"]
        passing = {n["id"] for n in nodes if n["p"] > n["threshold"]}
        path = s.detail["accepted_path"]
        assert set(path) <= passing and all("u" not in n for n in nodes)
        whole = [n for n in nodes if n["id"] in passing and all(a in passing for a in ancestors(nodes, n["id"]))]
        assert len(path) == max((n["depth"] for n in whole), default=0)


def ancestors(nodes, i):
    out = []
    while nodes[i]["parent"] >= 0:
        i = nodes[i]["parent"]
        out.append(i)
    return out


@pytest.mark.parametrize("method", ["speculative", "tree"])
def test_views_say_typical_is_lossy_and_show_the_threshold(tiny_target, tiny_draft, method):
    from explorer.figures import VIEWS
    from explorer.render import check_trace
    trace = check_trace(Run(method, "Once upon a time", {"max_new_tokens": 8, "temperature": 1.0,
                                                         "acceptance": "typical"},
                            target=tiny_target.source, draft=tiny_draft.source, seed=4).run())
    view = VIEWS[method]
    text = " ".join(view.words(trace, i) for i in range(len(trace.steps)))
    assert "ypical" in text and "residual" not in text.replace("no residual", "")
    if method == "speculative":
        assert "lossy" in text and "threshold" in str(view.main(trace, 0).to_plotly_json())


def test_of_paths_accepted_to_one_depth_the_likeliest_under_p_is_kept():
    """Medusa's evaluate_posterior: among candidates accepted to the longest length, the highest sum of log p.
    Two depth-2 paths pass here; the one later in breadth-first order is far likelier, so keeping the first (the
    rule before) would commit the wrong continuation."""
    from engines.decoding.sampling import Sampling
    from engines.decoding.verify_tree import verify_typical
    parent_of, tokens = [-1, -1, 0, 1], [0, 1, 2, 3]
    p = torch.tensor([[0.45, 0.45, 0.05, 0.05],    # the root: both children pass
                      [0.05, 0.05, 0.20, 0.70],    # after node 0: its child (token 2) passes at 0.20
                      [0.03, 0.03, 0.04, 0.90],    # after node 1: its child (token 3) passes at 0.90
                      [0.25, 0.25, 0.25, 0.25],
                      [0.25, 0.25, 0.25, 0.25]])
    out = verify_typical(parent_of, tokens, p, (0.1, 0.1), Sampling(temperature=1.0), torch.Generator().manual_seed(0))
    assert out.path == [1, 3]
    # the same two paths with their likelihoods swapped: now the first in order is the likelier, and wins
    swapped = verify_typical(parent_of, [0, 1, 3, 2], torch.stack([p[0], p[2], p[1], p[3], p[4]]), (0.1, 0.1),
                             Sampling(temperature=1.0), torch.Generator().manual_seed(0))
    assert swapped.path == [0, 2]
