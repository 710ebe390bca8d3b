"""The drafters' own figures under the main one (explorer/figures/drafters.py), read only from the step record: the
early exit's layer strip with the exit layer L marked (layers 1..L draft, L+1..N only verify), and Token
Recycling's adjacency-table rows the draft read, before and after this step's verification."""
from __future__ import annotations

import random

import pytest

from explorer.figures import early_exit, recycling
from explorer.figures.speculative import VIEW as SPECULATIVE
from explorer.figures.tree import VIEW as TREE
from tests import synthetic as syn


def early_exit_chain(exit_layer: int, layers: int, accepted: list[int], drafted: int = 3):
    rnd = random.Random(3)
    steps, made = [], 0
    for i, n in enumerate(accepted):
        step = syn.speculative_step(rnd, i, k=4, drafted=drafted, accepted=n, greedy=True, drafter="early-exit",
                                    produced=made)
        step.detail["early_exit"] = {"exit_layer": exit_layer, "target_layers": layers}
        steps.append(step)
        made += len(step.committed_ids)
    config = syn.speculative_config(k=4, greedy=True, drafter="early-exit", schedule="constant", max_new_tokens=64)
    return syn.trace_of("speculative", steps, config)


def strip(fig) -> dict:
    return next(d for d in fig.to_plotly_json()["data"] if d.get("name") == "target layers")


@pytest.mark.parametrize("exit_layer, layers", [(1, 2), (4, 8), (15, 30), (1, 48), (47, 48)])
@pytest.mark.parametrize("narrow", [False, True])
def test_the_strip_marks_the_exit_layer_and_which_layers_only_verify(exit_layer, layers, narrow):
    trace = early_exit_chain(exit_layer, layers, [1, 2])
    fig = SPECULATIVE.drafter(trace, 1, narrow)
    s = strip(fig)
    assert list(s["x"]) == list(range(layers + 1))
    filled = [x for x, m in zip(s["x"], s["marker"]["symbol"]) if m == "square"]
    assert filled == list(range(exit_layer + 1))            # embeddings and layers 1..L: the draft computes them
    assert [t for t in s["text"] if t] == [f"exit {exit_layer}"] and s["text"][exit_layer] == f"exit {exit_layer}"
    assert "the exit" in s["hovertext"][exit_layer] and "only by the verification" in s["hovertext"][-1]
    said = " ".join(a["text"] for a in fig.to_plotly_json()["layout"]["annotations"])
    assert f"layers 1-{exit_layer}" in said or narrow
    assert f"layers 1-{exit_layer} of {layers}" in fig.layout.title.text.replace("<br>", " ")


def test_the_tally_counts_each_draft_position_over_the_steps_so_far():
    trace = early_exit_chain(3, 6, [2, 0, 3])
    # step 1: positions 1, 2 kept, 3 refused; step 2: position 1 refused; step 3: all three kept
    assert [(t.name, t.reached, t.accepted) for t in early_exit.tally(trace.steps)] == [
        ("position 1", 3, 2), ("position 2", 2, 2), ("position 3", 2, 1)]
    bars = next(d for d in SPECULATIVE.drafter(trace, 2).to_plotly_json()["data"] if d["type"] == "bar")
    assert list(bars["text"]) == ["2/3", "2/2", "1/2"]
    assert [t.reached for t in early_exit.tally(trace.steps[:1])] == [1, 1, 1]


def test_tree_steps_get_the_strip_and_a_tally_per_depth():
    rnd = random.Random(5)
    step = syn.tree_step(rnd, 0, shape="dynamic", budget=8, depth=3, topk=2, room=6, greedy=True,
                         drafter="early-exit")
    step.detail["early_exit"] = {"exit_layer": 2, "target_layers": 4}
    trace = syn.trace_of("tree", [step], syn.tree_config(shape="dynamic", budget=8, depth=3, topk=2, greedy=True,
                                                         max_new_tokens=64, drafter="early-exit"))
    fig = TREE.drafter(trace, 0)
    assert [m for m in strip(fig)["marker"]["symbol"]] == ["square"] * 3 + ["square-open"] * 2
    depths = max(n["depth"] for n in step.detail["nodes"])
    assert [t.name for t in early_exit.tally(trace.steps)] == [f"depth {i + 1}" for i in range(depths)]


def test_other_drafters_have_no_early_exit_figure():
    rnd = random.Random(1)
    step = syn.speculative_step(rnd, 0, k=4, drafted=2, accepted=1, greedy=True, drafter="model")
    trace = syn.trace_of("speculative", [step], syn.speculative_config(k=4, greedy=True, drafter="model",
                                                                       schedule="constant", max_new_tokens=64))
    assert early_exit.drafter_figure(trace, 0) is None and SPECULATIVE.drafter(trace, 0) is None
    assert early_exit.drafter_figure(early_exit_chain(2, 4, [1]), -1) is None


# ----------------------------------------------------------------------------- Token Recycling's table

def recycling_trace(room: int = 6, seed: int = 2):
    rnd = random.Random(seed)
    config = syn.tree_config(shape="dynamic", budget=16, depth=4, topk=3, greedy=True, max_new_tokens=64,
                             drafter="recycling")
    step = syn.tree_step(rnd, 1, shape="dynamic", budget=16, depth=4, topk=3, room=room, greedy=True, produced=1,
                         drafter="recycling")
    first = syn.tree_step(rnd, 0, shape="dynamic", budget=16, depth=4, topk=3, room=0, greedy=True,
                          drafter="recycling")
    return syn.trace_of("tree", [first, step], config)


def heatmaps(fig) -> list[dict]:
    return [d for d in fig.to_plotly_json()["data"] if d["type"] == "heatmap"]


@pytest.mark.parametrize("narrow", [False, True])
def test_the_table_shows_each_row_read_before_and_after_with_the_fate_of_its_drafted_cells(narrow):
    trace = recycling_trace()
    d = trace.steps[1].detail
    used = d["recycling"]["used"]
    fig = TREE.drafter(trace, 1, narrow)
    before, after = heatmaps(fig)
    assert len(before["z"]) == len(after["z"]) == len(used) > 0
    code = {kind: c for kind, (c, _, _) in recycling.CELLS.items()}
    nodes = d["nodes"]
    for y, row in enumerate(used):
        for rank in range(len(row["before"])):
            # the node drafted from this cell: a node whose parent holds the row's token, at this rank
            made = [n for n in nodes if n["rank"] == rank and
                    (d["root_token"] if n["parent"] == -1 else nodes[n["parent"]]["token"]) == row["token"]]
            want = min((n["status"] for n in made), key=recycling.FATE.index) if made else "idle"
            assert before["z"][y][rank] == code[want], (y, rank)
            assert f"(id {row['before'][rank]}) as read" in before["hovertext"][y][rank]
            t = row["after"][rank]
            kind = "kept" if row["before"][rank] == t else "moved" if t in row["before"] else "new"
            assert after["z"][y][rank] == code[kind]
    # every node was drafted from some cell of a row the record holds
    shown = {(row["token"], r) for row in used for r in range(len(row["before"]))}
    assert all(((d["root_token"] if n["parent"] == -1 else nodes[n["parent"]]["token"]), n["rank"]) in shown
               for n in nodes)
    assert f"read {d['recycling']['rows_read']} table row" in fig.layout.title.text.replace("<br>", " ")


def test_a_row_rewritten_the_same_is_all_kept_and_a_new_token_is_new():
    trace = recycling_trace()
    used = trace.steps[1].detail["recycling"]["used"]
    used[0]["after"] = list(used[0]["before"])
    used[0]["after"][-1] = next(t for t in syn.WORD_IDS if t not in used[0]["before"])
    used[0]["after"][0], used[0]["after"][1] = used[0]["before"][1], used[0]["before"][0]
    after = heatmaps(TREE.drafter(trace, 1))[1]
    code = {kind: c for kind, (c, _, _) in recycling.CELLS.items()}
    assert after["z"][0] == [code["moved"]] * 2 + [code["kept"]] * (len(used[0]["before"]) - 3) + [code["new"]]
    assert "was at rank 2" in after["hovertext"][0][0] and "not in the row" in after["hovertext"][0][-1]


def test_a_step_that_read_no_row_says_so_and_other_drafters_have_no_table():
    trace = recycling_trace(room=0)
    fig = TREE.drafter(trace, 1)
    assert not heatmaps(fig) and "no row for the last token" in " ".join(
        a["text"] for a in fig.to_plotly_json()["layout"]["annotations"]).replace("<br>", " ")
    assert recycling.table_figure(trace, -1) is None
    rnd = random.Random(1)
    step = syn.tree_step(rnd, 0, shape="dynamic", budget=8, depth=3, topk=2, room=6, greedy=True)
    other = syn.trace_of("tree", [step], syn.tree_config(shape="dynamic", budget=8, depth=3, topk=2, greedy=True,
                                                         max_new_tokens=64))
    assert recycling.table_figure(other, 0) is None and TREE.drafter(other, 0) is None
