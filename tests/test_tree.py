"""Tree speculative decoding: exact under greedy, lossless under sampling, one target forward per step."""
import dataclasses
import json
import math

import plotly.graph_objects as go
import pytest
import torch

from engines.__main__ import main as cli
from engines.decoding import trees
from engines.decoding.tree import TreeConfig, tree, verify_forward
from engines.decoding.verify_tree import verify_sampled
from engines.drafting.growth import grow_static
from engines.drafting.model import Drafting
from engines.methods import Run
from engines.trace import Step, Trace
from explorer.figures import tree as figures
from tests.conftest import PROMPTS, greedy_reference, untimed

SHAPES = ["dynamic", *trees.SHAPES]


def full_logits(model, ids):
    return model.forward(model.new_kv(), ids)


def run(target, draft, prompt_ids, seed=0, **settings):
    steps = list(tree(target, draft, prompt_ids, TreeConfig(**settings), torch.Generator().manual_seed(seed)))
    return steps, [t for s in steps for t in s.committed_ids]


# ----------------------------------------------------------------------------- greedy equals generate

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("self_draft", [False, True], ids=["tiny-draft", "target-as-draft"])
def test_greedy_equals_generate_on_the_tiny_pair(shape, self_draft, tiny_target, tiny_draft):
    draft = tiny_target if self_draft else tiny_draft    # the target as its own draft accepts long paths
    ids = tiny_target.encode(PROMPTS[SHAPES.index(shape)])
    steps, out = run(tiny_target, draft, ids, tree=shape, max_new_tokens=16)
    assert out == greedy_reference(tiny_target, ids, 16)
    assert all(s.target_forwards == 1 for s in steps)
    if self_draft:
        assert len(steps) < 16 and max(s.detail["accepted_length"] for s in steps) >= 2


@pytest.fixture(scope="module")
def smollm2_reference(smollm2):
    ids = smollm2.encode(PROMPTS[2])
    return ids, greedy_reference(smollm2, ids, 4)


@pytest.mark.parametrize("shape", SHAPES)
def test_greedy_equals_generate_on_smollm2_with_the_tiny_draft(shape, smollm2, tiny_draft, smollm2_reference):
    ids, reference = smollm2_reference
    _, out = run(smollm2, tiny_draft, ids, tree=shape, max_new_tokens=4)
    assert out == reference


def test_greedy_equals_generate_on_smollm2_drafting_for_itself(smollm2):
    ids = smollm2.encode(PROMPTS[0])
    steps, out = run(smollm2, smollm2, ids, tree="dynamic", tree_budget=4, tree_depth=3, tree_topk=2,
                     max_new_tokens=6)
    assert out == greedy_reference(smollm2, ids, 6)
    assert len(steps) <= 3                 # paths of several tokens were accepted and kept in the caches


@pytest.mark.parametrize("n", [1, 2, 7])
def test_stops_exactly_at_max_new_tokens(n, tiny_target):
    ids = tiny_target.encode(PROMPTS[1])
    steps, out = run(tiny_target, tiny_target, ids, tree="chain", max_new_tokens=n)
    assert out == greedy_reference(tiny_target, ids, n)
    assert max(s.detail["nodes"][-1]["depth"] if s.detail["nodes"] else 0 for s in steps) <= n - 1


def test_stops_at_an_eos_inside_the_accepted_path(tiny_target):
    ids = tiny_target.encode(PROMPTS[3])
    ref = greedy_reference(tiny_target, ids, 12)
    eos = next((t for t in ref[2:] if ref.index(t) >= 2), ref[2])       # first seen at index >= 2 if possible
    as_eos = dataclasses.replace(tiny_target, eos_ids=frozenset({eos}))
    steps, out = run(as_eos, tiny_target, ids, tree="chain", max_new_tokens=12)
    assert out == ref[:ref.index(eos) + 1]
    assert out[-1] == eos and steps[-1].committed_ids[-1] == eos


# ----------------------------------------------------------------------------- one forward, exact logits

@pytest.mark.parametrize("which, paths", [("tiny_target", list(trees.SHAPES["sparse"])),
                                          ("smollm2", [(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)])])
def test_tree_forward_logits_equal_each_path_alone(which, paths, request):
    model = request.getfixturevalue(which)
    prompt = model.encode(PROMPTS[1])
    cached, pending = prompt[:-3], prompt[-3:]          # three pending tokens, as after a prompt prefill
    tokens = [100 + 37 * i for i in range(len(paths))]
    kv = model.new_kv()
    model.forward(kv, cached)
    fed, _ = verify_forward(model, kv, pending, paths, tokens)
    rows = fed[len(pending) - 1:]
    parent_of = trees.parents(paths)
    assert torch.allclose(rows[0], full_logits(model, prompt)[-1], atol=1e-4)
    for i in range(len(paths)):
        chain, node = [], i
        while node != trees.ROOT:
            chain.append(tokens[node])
            node = parent_of[node]
        alone = full_logits(model, prompt + chain[::-1])[-1]
        assert torch.allclose(rows[i + 1], alone, atol=1e-4), paths[i]


def test_draft_tree_levels_equal_each_path_alone(tiny_target):
    model = tiny_target
    prompt = model.encode(PROMPTS[0])
    kv = model.new_kv()
    model.forward(kv, prompt)
    level1, level2 = [(0,), (1,)], [(0, 0), (0, 1), (1, 0)]
    token = {(0,): 11, (1,): 22, (0, 0): 33, (0, 1): 44, (1, 0): 55}
    model.forward_tree_level(kv, [token[p] for p in level1], start=len(prompt), depths=[0, 0],
                             attend=trees.attend(level1))
    out = model.forward_tree_level(kv, [token[p] for p in level2], start=len(prompt), depths=[1, 1, 1],
                                   attend=trees.attend(level2, level1 + level2))
    for row, p in zip(out, level2):
        alone = full_logits(model, prompt + [token[p[:1]], token[p]])[-1]
        assert torch.allclose(row, alone, atol=1e-4), p
    with pytest.raises(ValueError, match="attend matrix"):
        model.forward_tree_level(kv, [1], start=len(prompt), depths=[2], attend=torch.ones(1, 1, dtype=torch.bool))


def test_static_tree_holds_the_drafts_ranked_choices(tiny_draft):
    ids = tiny_draft.encode(PROMPTS[2])
    drafting = Drafting(tiny_draft, tiny_draft.new_kv(), len(ids))
    nodes = grow_static(drafting, ids, trees.SHAPES["balanced"])
    assert [n.path for n in sorted(nodes, key=lambda n: (len(n.path), n.path))] == list(trees.SHAPES["balanced"])
    assert drafting.forwards == 3                                # the root, then one forward per inner level
    by_path = {n.path: n for n in nodes}
    for n in nodes:
        before = [by_path[n.path[:d]].token for d in range(1, len(n.path))]
        probs = full_logits(tiny_draft, ids + before)[-1].softmax(-1)
        assert abs(probs[n.token] - probs.topk(n.path[-1] + 1).values[-1]) < 1e-5     # the rank it claims
        assert math.isclose(n.q, float(probs[n.token]), abs_tol=1e-5)


def test_dynamic_tree_keeps_the_most_confident_nodes_within_budget(tiny_target):
    ids = tiny_target.encode(PROMPTS[0])
    steps, _ = run(tiny_target, tiny_target, ids, tree_budget=6, tree_depth=3, tree_topk=2, max_new_tokens=8)
    for s in steps:
        nodes = s.detail["nodes"]
        assert len(nodes) <= 6 and len(nodes) + s.detail["dropped"] in (0, 2, 2 + 4, 2 + 4 + 4)   # drafted: 2, then 4 a level
        for n in nodes:
            parent = nodes[n["parent"]]["logq"] if n["parent"] != trees.ROOT else 0.0
            assert abs(math.exp(n["logq"] - parent) - n["q"]) < 1e-4 * max(n["q"], 1e-2)   # logq = sum of log q
        for depth in {n["depth"] for n in nodes}:
            assert sum(n["expanded"] for n in nodes if n["depth"] == depth) <= 2   # top-k of a level expanded
        expanded_levels = len({n["depth"] for n in nodes if n["expanded"]})
        assert s.draft_forwards >= 1 + expanded_levels


def test_counters_and_records_of_a_step(tiny_target, tiny_draft):
    ids = tiny_target.encode(PROMPTS[1])
    steps, _ = run(tiny_target, tiny_draft, ids, tree="sparse", max_new_tokens=12)
    for s in steps:
        d = s.detail
        assert s.tokens_fed == len(d["pending_ids"]) + len(d["nodes"])
        assert s.draft_forwards == (1 + len({n["depth"] for n in d["nodes"] if n["expanded"]}) if d["nodes"] else 0)
        path_tokens = [d["nodes"][i]["token"] for i in d["accepted_path"]]
        assert list(s.committed_ids) == (path_tokens + [d["final_token"]])[:len(s.committed_ids)]
        assert len(d["mask"]) == len(d["nodes"]) + 1 == len(d["positions"])
        assert d["positions"][1:] == [d["positions"][0] + n["depth"] for n in d["nodes"]]
    assert steps[0].detail["pending_ids"] == ids and steps[1].detail["pending_ids"] == [steps[0].committed_ids[-1]]


# ----------------------------------------------------------------------------- sampling is lossless

VOCAB = 5
P_FIRST = torch.tensor([0.35, 0.25, 0.2, 0.15, 0.05])
P_NEXT = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0],      # p(second | first), one row per first token
                       [0.5, 0.0, 0.0, 0.25, 0.25],
                       [0.05, 0.6, 0.05, 0.1, 0.2],
                       [0.2, 0.2, 0.2, 0.2, 0.2],
                       [0.0, 0.0, 1.0, 0.0, 0.0]])
# a draft that ranks 2 then 0 first, 1 then 4 after 2, and 3 after 0: nodes (0,)=2 (1,)=0 (0,0)=1 (0,1)=4 (1,0)=3
TOY_PATHS = [(0,), (1,), (0, 0), (0, 1), (1, 0)]
TOY_TOKENS = [2, 0, 1, 4, 3]
Q_DRAFT = torch.tensor([[0.3, 0.1, 0.5, 0.05, 0.05],   # the draft's own distribution at the root and after 2, 0
                        [0.1, 0.5, 0.1, 0.1, 0.2],
                        [0.1, 0.1, 0.1, 0.6, 0.1]])


def toy_p() -> torch.Tensor:
    """p at the root and at every node: the second token's distribution depends on the first."""
    third = torch.full((VOCAB,), 1 / VOCAB)
    return torch.stack([P_FIRST, P_NEXT[2], P_NEXT[0], third, third, third])


def two_tokens(q=None, draws=200_000, seed=0) -> torch.Tensor:
    """The first two output tokens of `draws` runs; when a run yields one token, the next iteration's
    plain target sample supplies the second."""
    rng = torch.Generator().manual_seed(seed)
    parent_of = trees.parents(TOY_PATHS)
    v = verify_sampled(parent_of, TOY_TOKENS, toy_p(), rng, draws=draws, q=q)
    tokens = torch.tensor(TOY_TOKENS + [-1])          # index -1 (ROOT) reads the sentinel
    depth = torch.tensor([1, 1, 2, 2, 2, 0])
    first_node = torch.tensor([0, 1, 0, 0, 1, -1])
    d = depth[v.last]
    first = torch.where(d == 0, v.final, tokens[first_node[v.last]])
    later = torch.multinomial(P_NEXT[first.clamp(min=0)], 1, generator=rng).squeeze(1)
    second = torch.where(d == 2, tokens[v.last], torch.where(d == 1, v.final, later))
    return first * VOCAB + second


def total_variation(pairs: torch.Tensor) -> float:
    empirical = torch.bincount(pairs, minlength=VOCAB * VOCAB).float() / len(pairs)
    exact = (P_FIRST[:, None] * P_NEXT).flatten()
    return 0.5 * float((empirical - exact).abs().sum())


def test_recursive_rejection_over_siblings_is_lossless():
    assert total_variation(two_tokens()) < 0.01


def test_using_the_drafts_soft_q_for_top_k_children_is_measurably_wrong():
    # The children were picked deterministically (top-k), so their q is one-hot; plugging in the draft's
    # probabilities instead over-accepts confident children.
    soft = torch.stack([Q_DRAFT[0], Q_DRAFT[0], Q_DRAFT[1], Q_DRAFT[1], Q_DRAFT[2]])
    assert total_variation(two_tokens(q=soft)) > 0.05


def test_sampling_records_every_uniform_in_sibling_order():
    rng = torch.Generator().manual_seed(3)
    v = verify_sampled(trees.parents(TOY_PATHS), TOY_TOKENS, toy_p(), rng, draws=2000)
    tested = ~v.u.isnan()
    accepted = tested & (v.u <= v.ratio)
    # the 2nd sibling is tested only after the 1st was rejected; a child only after its parent was accepted
    assert not (tested[:, 1] & accepted[:, 0]).any() and not (tested[:, 2] & ~accepted[:, 0]).any()
    assert (v.u[tested] > 0).all() and (v.u[tested] <= 1).all()
    assert torch.equal(accepted[:, 0] | accepted[:, 1], v.last != trees.ROOT)


def test_sampled_trace_is_reproducible_and_its_records_consistent(tiny_target):
    ids = tiny_target.encode(PROMPTS[0])
    settings = dict(tree="balanced", temperature=0.3, max_new_tokens=5)
    a, out_a = run(tiny_target, tiny_target, ids, seed=5, **settings)
    b, out_b = run(tiny_target, tiny_target, ids, seed=5, **settings)
    assert out_a == out_b and [untimed(s.detail) for s in a] == [untimed(s.detail) for s in b]
    for s in a:
        for n in s.detail["nodes"]:
            if "u" in n:
                assert (n["u"] <= n["ratio"]) == (n["status"] == "accepted")
            else:
                assert n["status"] == "not_reached"


# ----------------------------------------------------------------------------- run, trace, CLI, figures

@pytest.fixture(scope="module")
def traces(tiny_target):
    out = {}
    for name, settings in {"greedy": {"max_new_tokens": 12, "tree": "sparse"},
                           "sampled": {"max_new_tokens": 3, "temperature": 0.7, "tree_budget": 64,
                                       "tree_depth": 8, "tree_topk": 8}}.items():
        out[name] = Run("tree", PROMPTS[1], settings, target=tiny_target.source, draft=tiny_target.source).run()
    return out


def test_trace_round_trips_and_names_every_node_token(traces):
    trace = traces["greedy"]
    again = Trace.from_json(trace.to_json())
    assert again.to_json() == trace.to_json()
    for s in trace.steps:
        assert {n["token"] for n in s.detail["nodes"]} | {s.detail["final_token"]} <= set(trace.token_texts)


@pytest.mark.parametrize("which", ["greedy", "sampled"])
def test_figures_for_every_step_are_small_and_hoverable(which, traces):
    trace = traces[which]
    view = figures.VIEW
    for i in range(-1, len(trace.steps)):
        for fig in (view.main(trace, i), view.side(trace, i)):
            assert isinstance(fig, go.Figure)
            assert len(json.dumps(fig.to_plotly_json(), default=str)) < 100_000
            for t in fig.data:
                has_points = any(x is not None for x in (t.x if t.x is not None else [])) or t.type == "heatmap"
                if has_points:
                    assert t.hovertext is not None or t.hovertemplate is not None, t.name
        assert view.words(trace, i)
        if i >= 0:
            chips = view.chips(trace, i)
            committed = [c.token_id for c in chips if c.status != "rejected"]
            assert committed == list(trace.steps[i].committed_ids)


def hand_made_trace() -> Trace:
    """Root "A"; children "B" (accepted) and "C" (rejected, its child "D" never reached); then bonus "E"."""
    nodes = [
        {"id": 0, "parent": -1, "token": 2, "depth": 1, "rank": 0, "q": 0.6, "logq": -0.51, "p": 1.0, "p_raw": 0.7,
         "status": "accepted", "expanded": False},
        {"id": 1, "parent": -1, "token": 3, "depth": 1, "rank": 1, "q": 0.3, "logq": -1.2, "p": 0.0, "p_raw": 0.2,
         "status": "rejected", "expanded": True},
        {"id": 2, "parent": 1, "token": 4, "depth": 2, "rank": 0, "q": 0.5, "logq": -1.9, "p": 0.0, "p_raw": 0.1,
         "status": "not_reached", "expanded": False},
    ]
    detail = {"tree": "dynamic", "root_token": 1, "pending_ids": [1], "nodes": nodes, "dropped": 0,
              "mask": [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]], "positions": [9, 10, 10, 11],
              "accepted_path": [0], "accepted_length": 1, "stop_node": 0, "final_token": 5, "final_kind": "bonus",
              "final_p": 1.0, "final_p_raw": 0.8, "stop_top": [[5, 1.0]], "stop_raw_top": [[5, 0.8]],
              "eos_cut": False, "cache_len": 11}
    step = Step(0, (2, 5), target_forwards=1, draft_forwards=2, tokens_fed=4, wall_s=0.01, detail=detail)
    return Trace(method="tree", config={"temperature": 0.0, "max_new_tokens": 8}, models={}, prompt="A",
                 prompt_ids=[1], steps=[step], token_texts={1: "A", 2: " B", 3: " C", 4: " D", 5: " E"})


def test_hand_made_step_in_words_and_pictures():
    trace = hand_made_trace()
    text = figures.words(trace, 0)
    assert '" B" was accepted' in text and '" E"' in text and "bonus" in text
    assert '" C" (depth 1, rank 1: the target wanted " B")' in text and "1 node below or after them was never" in text
    fig = figures.draft_tree(trace, 0)
    path = next(t for t in fig.data if t.name == "accepted path")
    assert [x for x in path.x if x is not None] == [0, 1, 1, 2]          # root -> B -> E
    statuses = {t.name: len(t.x) for t in fig.data if t.mode.startswith("markers")}
    assert statuses == {"root (last committed token)": 1, "accepted": 1, "rejected": 1, "not reached": 1,
                        "bonus (target's own token)": 1}
    mask = figures.attention_mask(trace, 0).data[0]
    assert [list(r) for r in mask.z] == [[2, 0, 0, 0], [2, 2, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]]
    assert [c.status for c in figures.chips(trace, 0)] == ["accepted", "bonus"]


def test_cli_runs_the_tree_method_with_its_flags(tiny_target, capsys):
    code = cli(["trace", "--method", "tree", "--prompt", PROMPTS[0], "--tree", "dynamic", "--tree-budget", "16",
                "--tree-depth", "4", "--tree-topk", "3", "--max-new-tokens", "6", "--target", tiny_target.source,
                "--draft", tiny_target.source])
    assert code == 0
    d = json.loads(capsys.readouterr().out)
    assert d["method"] == "tree" and len(d["output_ids"]) == 6 and d["config"]["tree_budget"] == 16


@pytest.mark.parametrize("settings, says", [({"tree": "bushy"}, "tree must be one of"),
                                            ({"tree_budget": -1}, "tree budget must be between"),
                                            ({"tree_topk": 9}, "tree top-k must be between")])
def test_bad_settings_are_refused_in_one_sentence(settings, says):
    with pytest.raises(ValueError, match=says):
        TreeConfig(**settings)


def test_eagle2_records_the_candidates_its_budget_dropped(tiny_target, tiny_draft):
    """The tree choice can be audited from the trace alone: every dropped candidate with its token, its place and
    its confidence, none more confident than a kept node (EAGLE-2 keeps the `budget` most confident)."""
    trace = Run("tree", "Once upon a time", {"max_new_tokens": 8, "tree": "dynamic", "tree_budget": 4,
                                              "tree_depth": 3, "tree_topk": 3},
                target=tiny_target.source, draft=tiny_draft.source).run()
    for s in trace.steps:
        d = s.detail
        dropped, kept = d["dropped_nodes"], d["nodes"]
        assert len(dropped) == d["dropped"]
        if not dropped:
            continue
        kept_paths = {tuple(trees_path(kept, n["id"])): n["id"] for n in kept}
        for c in dropped:
            assert tuple(c["path"]) not in kept_paths
            parent = kept_paths.get(tuple(c["path"][:-1]), None) if len(c["path"]) > 1 else -1
            assert c["parent"] == parent
        assert max(c["score"] for c in dropped) <= min(node_score(kept, n["id"]) for n in kept) + 1e-6


def trees_path(nodes, i):
    path = []
    while i >= 0:
        path.append(nodes[i]["rank"])
        i = nodes[i]["parent"]
    return path[::-1]


def node_score(nodes, i):
    import math
    total = 0.0
    while i >= 0:
        total += math.log(max(nodes[i]["q"], 1e-30))
        i = nodes[i]["parent"]
    return total
