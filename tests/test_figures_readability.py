"""The readability points of issue 15 that live in the figure modules, each checked on synthetic steps so
that the old figure fails: legends under axis titles, whole-number step ticks, no coin where none was
drawn, tree labels and chips, the lookahead pool table and words, mask-predict's cell text and colours."""
from __future__ import annotations

import random
import re

from engines.decoding.trees import ROOT
from explorer.figures import (
    autoregressive,
    jacobi,
    lookahead,
    mask_predict,
    speculative,
    tree,
)
from explorer.figures.common import AXIS_ROOM, LEGEND_ROW, legend_rows
from tests import synthetic as syn

COMMA = next(i for i, text in syn.TEXTS.items() if text == ",")


def layout(fig) -> dict:
    return fig.to_plotly_json()["layout"]


def autoregressive_trace(count: int = 2):
    rnd = random.Random(0)
    steps = [syn.autoregressive_step(rnd, i, greedy=True, final=i == count - 1) for i in range(count)]
    return syn.trace_of("autoregressive", steps, syn.sampling_config(True, count))


def jacobi_trace(count: int = 2):
    rnd = random.Random(0)
    steps, made = [], 0
    for i in range(count):
        steps.append(syn.jacobi_step(rnd, i, block=4, settled=1, produced=made, max_new_tokens=64))
        made += len(steps[-1].committed_ids)
    return syn.trace_of("jacobi", steps, syn.jacobi_config(block=4, max_new_tokens=64))


# ----------------------------------------------------------------------------- autoregressive and jacobi

def test_legends_sit_below_the_axis_titles():
    figures = [autoregressive.distribution(autoregressive_trace(), 1), jacobi.trajectory(jacobi_trace(), 1),
               jacobi.convergence(jacobi_trace(), 1)]
    for fig in figures:
        lay, data = layout(fig), fig.to_plotly_json()["data"]
        assert lay["legend"]["yref"] == "container" and lay["legend"]["y"] == 0
        assert lay["legend"]["yanchor"] == "bottom"
        assert lay["margin"]["b"] >= AXIS_ROOM + LEGEND_ROW * legend_rows(data)


def test_step_and_iteration_axes_tick_whole_numbers_only():
    """Two steps used to get ticks at 1, 1.5 and 2."""
    axes = [layout(autoregressive.step_times(autoregressive_trace(), 1))["xaxis"],
            layout(jacobi.convergence(jacobi_trace(), 1))["xaxis"]]
    steps, config = syn.mask_predict_steps(0, {"length": 6, "iterations": 2, "max_new_tokens": 8})
    axes.append(layout(mask_predict.confidence_and_schedule(syn.trace_of("mask-predict", steps, config), 1))["xaxis2"])
    for axis in axes:
        assert axis["tickmode"] == "linear" and axis["tick0"] == 1
        assert isinstance(axis["dtick"], int) and axis["dtick"] >= 1


# ----------------------------------------------------------------------------- speculative

def speculative_trace(greedy: bool):
    rnd = random.Random(3)
    step = syn.speculative_step(rnd, 0, k=5, drafted=5, accepted=2, greedy=greedy, drafter="model")
    return syn.trace_of("speculative", [step], syn.speculative_config(k=5, greedy=greedy, drafter="model",
                                                                      schedule="constant", max_new_tokens=64))


def test_greedy_coin_row_draws_no_points():
    """Greedy draws no uniform, so the old dots at u = 0.5 meant nothing; the verdict is a word instead."""
    fig = speculative.draft_check(speculative_trace(greedy=True), 0).to_plotly_json()
    assert [d for d in fig["data"] if d["type"] == "scatter"] == []
    words = [a["text"] for a in fig["layout"]["annotations"]]
    assert words.count("= argmax") == 2 and words.count("not reached") == 3   # 2 positions, the bonus column


def test_sampled_coin_row_marks_only_real_draws():
    trace = speculative_trace(greedy=False)
    drawn = {p["u"] for p in trace.steps[0].detail["positions"] if p["status"] != "not_reached"}
    fig = speculative.draft_check(trace, 0).to_plotly_json()
    marked = {x for d in fig["data"] if d["type"] == "scatter" for x in d["x"]}
    assert marked == drawn


# ----------------------------------------------------------------------------- tree

def tree_trace(**kw):
    rnd = random.Random(5)
    step = syn.tree_step(rnd, 0, shape="sparse", budget=16, depth=4, topk=3, room=8, greedy=True, **kw)
    return syn.trace_of("tree", [step], syn.tree_config(shape="sparse", budget=16, depth=4, topk=3, greedy=True,
                                                        max_new_tokens=64))


def test_rejected_siblings_are_one_struck_chip_not_consecutive_text():
    trace = tree_trace(stop_chance=1.0)      # the target takes none of the root's four children
    step = trace.steps[0]
    assert step.detail["stop_node"] == ROOT and step.detail["final_kind"] == "resampled"
    chips = tree.chips(trace, 0)
    rejected = [c for c in chips if c.status == "rejected"]
    assert len(rejected) == 1 and chips[-1].status == "resampled" and chips[-2] is rejected[0]
    siblings = [n for n in step.detail["nodes"] if n["parent"] == ROOT]
    assert all(syn.TEXTS[n["token"]] in rejected[0].hover for n in siblings[1:])


def test_punctuation_node_labels_stand_out():
    trace = tree_trace()
    trace.steps[0].detail["nodes"][0]["token"] = COMMA
    labels = [t for d in tree.draft_tree(trace, 0).to_plotly_json()["data"] for t in d.get("text") or []]
    assert "," not in labels and "<b>\u201c,\u201d</b>" in labels


# ----------------------------------------------------------------------------- lookahead

def lookahead_trace(**kw):
    rnd = random.Random(7)
    step = syn.lookahead_step(rnd, 1, window=5, ngram=4, guesses=5, levels=3, candidates=2, match=2, greedy=True,
                              pooled_keys=3, **kw)
    return syn.trace_of("lookahead", [step], syn.lookahead_config(window=5, ngram=4, guesses=5, greedy=True,
                                                                  max_new_tokens=64))


def test_pool_table_title_counts_the_rows_it_shows_and_every_row_fits():
    trace = lookahead_trace()
    d = trace.steps[0].detail
    for size in (sum(len(t) for _, t in d["pool"]), 40):     # all of the pool shown, and a part of it
        d["pool_size"] = size
        fig = lookahead.pool_table(trace, 0).to_plotly_json()
        table = fig["data"][0]
        rows = len(table["cells"]["values"][0])
        title = fig["layout"]["title"]["text"].replace("<br>", " ")   # a long title is broken into lines
        assert ("all shown" in title) if rows == size else (f"showing {rows} rows" in title)
        texts = list(zip(*table["cells"]["values"]))
        assert fig["layout"]["height"] >= lookahead.POOL_CHROME + sum(lookahead.row_height(t) for t in texts)
        assert fig["layout"]["height"] >= lookahead.POOL_CHROME + lookahead.POOL_ROW * rows


def test_words_count_the_input_token_once():
    """The input token is the window's first cell: the old words counted it as the input and again in the
    window's levels x columns, one more than the target read."""
    trace = lookahead_trace()
    step = trace.steps[0]
    fed = lookahead.fed_counts(step)
    assert fed.pending + fed.window + fed.pooled == step.tokens_fed
    words = lookahead.words(trace, 0)
    assert f"read {step.tokens_fed} tokens" in words
    assert f"{fed.window} guesses of the window" in words and f"{fed.pooled} pooled tokens" in words


# ----------------------------------------------------------------------------- mask-predict

def luminance(colour: str) -> float:
    r, g, b = (int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_heatmap_text_is_dark_on_light_cells():
    """Plotly's automatic text colour put white text on the dark end of Cividis and Plasma."""
    steps, config = syn.mask_predict_steps(1, {"length": 12, "iterations": 4, "max_new_tokens": 12})
    fig = mask_predict.unmasking(syn.trace_of("mask-predict", steps, config), 3).to_plotly_json()
    with_text = [d for d in fig["data"] if d["type"] == "heatmap" and d.get("texttemplate")]
    assert len(with_text) == 2
    for d in with_text:
        text = d["textfont"]["color"]
        assert all(contrast(text, c) >= 4.5 for _, c in d["colorscale"]), d["colorscale"]


def test_text_strip_colours_a_token_by_the_iteration_that_unmasked_it():
    """A model that never changes its mind predicts every token at iteration 1, so the record says 'unchanged
    since 1' for a position that diffusion unmasks at 3; the strip showed the colour of 1."""
    settings = {"length": 8, "iterations": 4, "max_new_tokens": 8, "strategy": "diffusion"}
    steps, config = syn.mask_predict_steps(2, settings, steady=True)
    trace = syn.trace_of("mask-predict", steps, config)
    third = steps[2].detail["spans"][0]
    assert third["unmasked"] and all(third["settled"][i] == 0 for i in third["unmasked"])
    fig = mask_predict.unmasking(trace, 3).to_plotly_json()
    strip = next(d for d in fig["data"] if d.get("name") == "unmasked at iteration")
    for i in third["unmasked"]:
        assert strip["z"][0][i] == 3
        assert re.search(rf"position {i}: .*unmasked at iteration 3", strip["customdata"][0][i])
