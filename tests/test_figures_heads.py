"""The head drafters' view (explorer/figures/heads.py) says what the records hold: per-head acceptance counted
over the steps so far, the target's token marked where the draft vocabulary lacks it, the cost in head forwards."""
from __future__ import annotations

import random

from explorer.figures import heads
from explorer.figures.common import quoted
from explorer.figures.speculative import VIEW as SPECULATIVE
from explorer.figures.tree import VIEW as TREE
from tests import synthetic as syn


def medusa_chain(accepted: list[int], drafted: int = 3):
    """A speculative run drafted by Medusa heads: nothing on the first step, then `drafted` tokens a step."""
    rnd = random.Random(7)
    steps, made = [syn.speculative_step(rnd, 0, k=4, drafted=0, accepted=0, greedy=True, drafter="heads")], 1
    for i, n in enumerate(accepted, start=1):
        steps.append(syn.speculative_step(rnd, i, k=4, drafted=drafted, accepted=n, greedy=True, drafter="heads",
                                          produced=made))
        made += len(steps[-1].committed_ids)
    config = syn.speculative_config(k=4, greedy=True, drafter="heads", schedule="constant", max_new_tokens=64)
    return syn.trace_of("speculative", steps, config)


def test_per_head_acceptance_counts_the_steps_so_far():
    trace = medusa_chain([2, 0, 3])
    # step 2: heads 1, 2 accepted, 3 rejected; step 3: head 1 rejected; step 4: all three accepted
    tallies = heads.chain_tally(trace.steps[:4])
    assert [(t.name, t.reached, t.accepted) for t in tallies] == [("head 1", 3, 2), ("head 2", 2, 2),
                                                                  ("head 3", 2, 1)]
    assert [(t.reached, t.accepted) for t in heads.chain_tally(trace.steps[:2])] == [(1, 1), (1, 1), (1, 0)]
    assert "head 1 2/3, head 2 2/2, head 3 1/2" in SPECULATIVE.words(trace, 3)


def test_a_target_token_outside_the_draft_vocabulary_is_marked_and_said():
    trace = medusa_chain([0])
    d = trace.steps[1].detail
    d["heads"]["target_in_vocab"] = [True, True, True, True]
    fig = SPECULATIVE.drafter(trace, 1).to_plotly_json()
    assert not any("outside the draft vocabulary" in a["text"] for a in fig["layout"]["annotations"])
    d["heads"]["target_in_vocab"][0] = False
    fig = SPECULATIVE.drafter(trace, 1).to_plotly_json()
    assert any("outside the draft vocabulary" in a["text"] for a in fig["layout"]["annotations"])
    target = d["positions"][0]["target_token"]
    assert f"target's token {quoted(trace, target)} (at head 1) lies outside" in SPECULATIVE.words(trace, 1)
    assert "no head could ever have drafted it" in SPECULATIVE.words(trace, 1)


def test_words_name_each_heads_guess_and_the_cost_in_head_forwards():
    trace = medusa_chain([1])
    step = trace.steps[1]
    words = SPECULATIVE.words(trace, 1)
    for i, pos in enumerate(step.detail["positions"], start=1):
        assert f"head {i} \"{syn.TEXTS[pos['token']]}\" (q = {pos['q_raw']:.3f}, {pos['status'].replace('_', ' ')}" \
               in words.replace("\n", "\\n")
    assert f"{step.draft_forwards} head forward and no target forward" in words
    assert SPECULATIVE.drafter(trace, -1) is None and "Nothing was drafted" in SPECULATIVE.words(trace, 0)


def test_medusa_tree_levels_are_one_heads_ranks():
    rnd = random.Random(3)
    steps = [syn.tree_step(rnd, i, shape="sparse", budget=16, depth=4, topk=3, room=8, greedy=True,
                           drafter="heads") for i in range(2)]
    d = steps[1].detail
    levels = heads.tree_levels(d)
    assert [lv.name for lv in levels] == [f"head {i}" for i in range(1, len(levels) + 1)]
    for depth, level in enumerate(levels, start=1):
        ranks = sorted({n["rank"] for n in d["nodes"] if n["depth"] == depth})
        assert len(level.guesses) == len(ranks)          # a rank once, however many parents it has
        assert len({g.token for g in level.guesses}) == len(ranks)
    trace = syn.trace_of("tree", steps, syn.tree_config(shape="sparse", budget=16, depth=4, topk=3, greedy=True,
                                                        max_new_tokens=64, drafter="heads"))
    assert TREE.drafter(trace, 1) is not None and "The Medusa heads grew" in TREE.words(trace, 1)


def hydra_chain(accepted: list[int], drafted: int = 3):
    rnd = random.Random(11)
    steps, made = [syn.speculative_step(rnd, 0, k=4, drafted=0, accepted=0, greedy=True, drafter="hydra")], 1
    for i, n in enumerate(accepted, start=1):
        steps.append(syn.speculative_step(rnd, i, k=4, drafted=drafted, accepted=n, greedy=True, drafter="hydra",
                                          produced=made))
        made += len(steps[-1].committed_ids)
    config = syn.speculative_config(k=4, greedy=True, drafter="hydra", schedule="constant", max_new_tokens=64)
    return syn.trace_of("speculative", steps, config)


def arrows(fig) -> list[dict]:
    return [a for a in fig["layout"]["annotations"] if a.get("showarrow") and a["text"].startswith("reads")]


def test_hydra_chain_heads_read_the_token_before_their_guess_drawn_as_arrows():
    trace = hydra_chain([1, 3])
    step = trace.steps[2]
    pending = trace.steps[1].committed_ids[-1]
    drafted = step.detail["draft_tokens"]
    levels = heads.step_levels(trace, 2, heads.CHAIN)
    assert [lv.name for lv in levels] == ["head 1", "head 2", "head 3"]
    assert [lv.reads for lv in levels] == [pending, *drafted[:-1]]    # head i reads head i - 1's draft
    fig = SPECULATIVE.drafter(trace, 2).to_plotly_json()
    drawn = arrows(fig)
    assert [a["xref"] for a in drawn] == ["x4 domain", "x5 domain", "x6 domain"]     # one into each head's panel
    assert drawn[1]["text"] == f"reads {quoted(trace, drafted[0])}" and drawn[1]["ax"] < 0   # from the head before
    words = SPECULATIVE.words(trace, 2)
    assert "The Hydra heads read the target's last hidden state" in words and "head i the draft of head i - 1" in words
    assert f"head 2 after reading {quoted(trace, drafted[0])} {quoted(trace, drafted[1])}" in words
    assert f"{step.draft_forwards} head forwards and no target forward" in words
    assert not arrows(SPECULATIVE.drafter(medusa_chain([1, 3]), 2).to_plotly_json())   # Medusa heads read none


def test_hydra_tree_levels_come_from_different_parents_and_read_the_accepted_path():
    rnd = random.Random(5)
    steps = [syn.tree_step(rnd, i, shape="dynamic", budget=16, depth=4, topk=3, room=8, greedy=True,
                           drafter="hydra") for i in range(2)]
    d = steps[1].detail
    assert max(n["depth"] for n in d["nodes"]) <= syn.MEDUSA_HEADS     # one level per head
    levels = heads.tree_levels(d, d["root_token"])
    assert [lv.name for lv in levels] == [f"head {i}" for i in range(1, len(levels) + 1)]
    path = [d["nodes"][i]["token"] for i in d["accepted_path"]]
    assert levels[0].reads == d["root_token"]
    assert [lv.reads for lv in levels[1:len(path) + 1]] == path[:len(levels) - 1]
    per_depth = [sum(n["depth"] == k for n in d["nodes"]) for k in range(1, len(levels) + 1)]
    assert [len(lv.guesses) for lv in levels] == [min(c, heads.SHOWN) for c in per_depth]   # no rank folding
    trace = syn.trace_of("tree", steps, syn.tree_config(shape="dynamic", budget=16, depth=4, topk=3, greedy=True,
                                                        max_new_tokens=64, drafter="hydra"))
    fig = TREE.drafter(trace, 1).to_plotly_json()
    assert len(arrows(fig)) == len(levels)
    assert f"reads {quoted(trace, d['root_token'])}" in arrows(fig)[0]["text"]
    assert "The Hydra heads grew" in TREE.words(trace, 1)
    assert f"head 1 after reading {quoted(trace, d['root_token'])} offered" in TREE.words(trace, 1)


def test_the_layer_strip_numbers_fit_side_by_side_at_phone_width():
    """At 420 px the numbers 0 to 30 ran together: the narrow figure numbers every few layers instead."""
    trace = hydra_chain([1, 3])
    layers = trace.steps[2].detail["heads"]["target_layers"]
    for narrow in (False, True):
        axis = SPECULATIVE.drafter(trace, 2, narrow=narrow).to_plotly_json()["layout"]["xaxis"]
        per_tick = (heads.FIGURE_WIDTH[narrow] - 70) / (layers + 1) * axis["dtick"]
        assert per_tick >= heads.LAYER_TICK_PX and axis["tick0"] == 0
    assert heads.layer_tick_step(30, narrow=False) == 1 and heads.layer_tick_step(30, narrow=True) == 2


def test_head_one_reads_label_stands_clear_of_head_twos():
    """Head 2's arrow comes in over head 1's panel at the same height: head 1's label stands a line higher."""
    drawn = arrows(SPECULATIVE.drafter(hydra_chain([1, 3]), 2, narrow=True).to_plotly_json())
    assert drawn[0]["ay"] <= -heads.FIRST_READS_RISE and all(a["ay"] == 0 for a in drawn[1:])
