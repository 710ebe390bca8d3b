"""Token Recycling (Luo et al. 2024, arXiv 2408.08696): the adjacency table's update rule, its template tree, greedy
output equal to generate() on the tiny target and on SmolLM2, the step record against the schema, and the words."""
from __future__ import annotations

import json
import random

import pytest
import torch

from engines.decoding import trees
from engines.decoding.tree import TreeConfig, tree
from engines.drafting.recycling import K, RecyclingDrafter, template
from engines.methods import Run
from engines.schema import validate
from explorer.figures import tree as tree_figures
from tests import synthetic
from tests.conftest import PROMPTS, greedy_reference

REPETITIVE = "one two three four five, one two three four five, one two three four five, one two"


def run(target, ids, n, **settings):
    cfg = TreeConfig(drafter="recycling", max_new_tokens=n, **settings)
    steps = list(tree(target, None, ids, cfg, torch.Generator().manual_seed(0)))
    return steps, [t for s in steps for t in s.committed_ids]


# ----------------------------------------------------------------------------- the table and the template

def logits_ranking(rows: list[list[int]], vocab: int = 20) -> torch.Tensor:
    """Logits whose row i ranks rows[i] first, in that order, and every other token below them."""
    out = torch.zeros(len(rows), vocab)
    for i, ranked in enumerate(rows):
        for r, t in enumerate(ranked):
            out[i, t] = 10.0 - r
    return out


def test_every_position_rewrites_its_tokens_row_rejected_ones_too():
    """Fed: pending [3, 4], then nodes 5 (accepted) and 6, 7 (rejected): all four tokens get the target's top k at
    their position, the rejected ones too (the recycling); a token at a kept and an unkept position takes the kept
    one's scores."""
    drafter = RecyclingDrafter(k=3)
    ids = [3, 4, 5, 6, 7, 4]
    ranked = [[1, 2, 3], [5, 6, 7], [8, 9, 10], [11, 12, 13], [14, 15, 16], [17, 18, 19]]
    drafter.verified(ids, logits_ranking(ranked), kept=[0, 1, 2])
    assert {t: row[0] for t, row in drafter.table.items()} == {3: [1, 2, 3], 4: [5, 6, 7], 5: [8, 9, 10],
                                                              6: [11, 12, 13], 7: [14, 15, 16]}
    assert drafter.table[6][1][0] > drafter.table[6][1][1] > drafter.table[6][1][2] > 0   # probabilities, ranked
    r = drafter.record
    assert (r["written"], r["recycled"], r["new"], r["changed"]) == (5, 2, 5, 0)
    # the next verification overwrites a row, and the count of changed rows says so
    drafter.verified([6], logits_ranking([[0, 1, 2]]), kept=[])
    assert drafter.table[6][0] == [0, 1, 2] and drafter.record["changed"] == 1 and drafter.record["new"] == 0


def test_the_draft_walks_the_rows_breadth_first_along_the_template():
    drafter = RecyclingDrafter(k=3)
    drafter.verified([1, 2, 3], logits_ranking([[2, 3, 4], [5, 6, 7], [8, 9, 10]]), kept=[0])
    cfg = TreeConfig(drafter="recycling", tree="balanced")   # ranks 0 and 1, three levels
    nodes, dropped = drafter.draft_tree([0, 1], cfg, depth=8)
    got = {n.path: n.token for n in nodes}
    # row 1 -> 2, 3; row 2 -> 5, 6; row 3 -> 8, 9; rows 5, 6, 8, 9 do not exist, so the third level is empty
    assert got == {(0,): 2, (1,): 3, (0, 0): 5, (0, 1): 6, (1, 0): 8, (1, 1): 9}
    assert dropped == [] and [n.path for n in nodes] == trees.ordered(got)
    assert [n.row is not None for n in nodes] == [True, True, False, False, False, False]
    r = drafter.record
    assert r is None   # recorded once the verification has rewritten the table
    drafter.verified([1, 2, 3, 5], logits_ranking([[2, 3, 4], [7, 6, 5], [8, 9, 10], [1, 2, 3]]), kept=[0, 1])
    used = drafter.record["used"]
    assert [(u["token"], u["before"], u["after"]) for u in used] == [(1, [2, 3, 4], [2, 3, 4]),
                                                                     (2, [5, 6, 7], [7, 6, 5]),
                                                                     (3, [8, 9, 10], [8, 9, 10])]
    assert drafter.record["rows_read"] == 3 and drafter.record["rows_known"] == 3


@pytest.mark.parametrize("budget, depth, topk", [(1, 1, 1), (24, 6, 8), (48, 6, 8), (64, 8, 8), (80, 6, 8)])
def test_the_template_is_a_tree_within_the_settings(budget, depth, topk):
    paths = template(budget, depth, topk)
    assert len(paths) == min(budget, sum(topk ** d for d in range(1, depth + 1)))
    assert list(paths) == trees.ordered(paths)   # breadth-first, every parent present
    assert max(map(len, paths)) <= depth and max(max(p) for p in paths) < topk
    assert (0,) * min(depth, 3) in paths


# ----------------------------------------------------------------------------- greedy equals generate

@pytest.mark.parametrize("prompt, settings", [(REPETITIVE, {}), (PROMPTS[0], {"tree": "sparse"}),
                                              (PROMPTS[1], {"tree_budget": 48, "tree_depth": 6, "tree_topk": 8})])
def test_greedy_equals_generate_on_the_tiny_target(prompt, settings, tiny_target):
    ids = tiny_target.encode(prompt)
    steps, out = run(tiny_target, ids, 20, **settings)
    assert out == greedy_reference(tiny_target, ids, 20)
    assert all(s.target_forwards == 1 and s.draft_forwards == 0 for s in steps)
    assert steps[0].detail["nodes"] == []   # the table is empty before the prompt's forward
    assert any(s.detail["nodes"] for s in steps[1:])


def test_greedy_equals_generate_on_smollm2_with_the_chat_template(smollm2):
    messages = [{"role": "user", "content": "List the days of the week, one per line."}]
    ids = list(smollm2.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                     return_dict=False))
    steps, out = run(smollm2, ids, 24, tree_budget=48, tree_depth=6, tree_topk=8)
    assert out == greedy_reference(smollm2, ids, 24)
    assert len(out) / len(steps) > 1.2   # the recycled rows are accepted: fewer forwards than tokens
    assert sum(s.detail["recycling"]["recycled"] for s in steps) > 0


# ----------------------------------------------------------------------------- the record and the words

def test_the_record_follows_the_schema_and_matches_the_tree(tiny_target):
    trace = Run("tree", REPETITIVE, {"drafter": "recycling", "max_new_tokens": 12}, target=tiny_target.source,
                seed=0).run()
    validate(json.loads(trace.to_json()))
    for step in trace.steps:
        d = step.detail
        r = d["recycling"]
        assert r["k"] == K and r["written"] >= len({n["token"] for n in d["nodes"]})
        if d["nodes"]:   # the root's children are its row's first ranks, as the draft read it
            root = r["used"][0]
            assert root["token"] == d["root_token"]
            assert [n["token"] for n in d["nodes"] if n["parent"] == trees.ROOT] == \
                [root["before"][n["rank"]] for n in d["nodes"] if n["parent"] == trees.ROOT]
    broken = json.loads(trace.to_json())
    broken["steps"][-1]["recycling"]["used"] = [{"token": 1}]
    with pytest.raises(ValueError, match="before"):
        validate(broken)


def recycling_trace(nodes: bool):
    rnd = random.Random(4)
    step = synthetic.tree_step(rnd, 1, shape="dynamic", budget=16, depth=4, topk=3, room=8 if nodes else 0,
                               greedy=True, produced=1, max_new_tokens=16, drafter="recycling")
    root = step.detail["root_token"]
    children = [n["token"] for n in step.detail["nodes"] if n["parent"] == trees.ROOT]
    step.detail["recycling"] = {"k": 8, "template": 16, "rows_known": 40, "rows_read": 5,
                                "used": [{"token": root, "before": children + [7] * (8 - len(children)),
                                          "after": [9] * 8}] if nodes else [],
                                "written": 17, "recycled": 12, "new": 3, "changed": 11}
    first = synthetic.tree_step(rnd, 0, shape="dynamic", budget=16, depth=4, topk=3, room=0, greedy=True,
                                max_new_tokens=16, drafter="recycling")
    config = synthetic.tree_config(shape="dynamic", budget=16, depth=4, topk=3, greedy=True, max_new_tokens=16,
                                   drafter="recycling")
    return synthetic.trace_of("tree", [first, step], config)


def test_the_words_say_what_the_table_drafted_and_what_the_verification_rewrote():
    trace = recycling_trace(nodes=True)
    said = tree_figures.words(trace, 1)
    assert "adjacency table (Token Recycling) filled" in said and "16 rank paths" in said
    assert "reading 5 of its 40 rows" in said and "rewrote 17 rows" in said and "12 of them from nodes" in said
    assert "3 rows were new and 11 changed" in said and "now " in said
    assert "EAGLE-2" not in said and "draft forward" not in said.split("Cost model")[0]
    hover = " ".join(t for d in tree_figures.draft_tree(trace, 1).data for t in (d.hovertext or []) if t)
    assert "when that table row was written" in hover


def test_a_step_without_a_row_for_the_last_token_says_so():
    trace = recycling_trace(nodes=False)
    said = tree_figures.words(trace, 1)
    assert "no row for the last token" in said and "plain target forward" in said
    assert "no table row for the last token yet" in tree_figures.draft_tree(trace, 1).layout.title.text.replace(
        "<br>", " ")


def test_the_trace_names_every_token_of_the_table_rows_it_shows(tiny_target):
    trace = Run("tree", REPETITIVE, {"drafter": "recycling", "max_new_tokens": 8}, target=tiny_target.source,
                seed=0).run()
    rows = [row for s in trace.steps for row in s.detail["recycling"]["used"]]
    assert rows
    assert {t for row in rows for t in (row["token"], *row["before"], *row["after"])} <= set(trace.token_texts)
