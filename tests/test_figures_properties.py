"""Every view of every method renders for synthetic steps across the whole range of every setting.

The explorer's screen for a step is what explorer/render.py composes from the method's View: the main and
side figures, "this step, in words", the token chips and the progress line. Each is rendered here at every
cursor of a synthetic trace (tests/synthetic.py), live and after a JSON round trip, and every figure must
pass Plotly's validation with every axis domain inside [0, 1] and, where Chromium is installed, be drawn by
Plotly.js itself: a figure Python accepts can still fail in the browser (one-row heatmaps on a categorical axis
did, and froze the page's later updates). Real models made only the traces they happened to make; speculative
with 11, 15 or 16 drafted tokens crashed before any test drew it.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import plotly
import plotly.graph_objects as go
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engines.decoding.mask_predict import STRATEGIES
from engines.decoding.trees import SHAPES
from engines.trace import Trace
from explorer import render
from explorer.figures import mask_predict as mp_figures
from explorer.screenshot import CHROMIUM
from explorer.session import Session
from tests import synthetic as syn

FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True, scope="module")
def trace_files_in_a_temporary_folder(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(render, "TRACE_DIR", tmp_path_factory.mktemp("traces"))
        yield


# Draws a figure with Plotly.js in Chromium and returns the error it raised ('' if none); None without Chromium.
draw_in_browser = None
DRAW = """async fig => { try { Plotly.purge('plot'); await Plotly.newPlot('plot', fig.data, fig.layout); return ''; }
                          catch (e) { return String(e); } }"""


@pytest.fixture(autouse=True, scope="module")
def plotly_js_in_chromium(tmp_path_factory):
    """One page holding the Plotly.js that plotly's Python package bundles, for the whole module."""
    global draw_in_browser
    if not Path(CHROMIUM).exists():
        yield
        return
    from explorer.screenshot import browser_page
    page_file = tmp_path_factory.mktemp("plotly") / "plot.html"
    script = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    page_file.write_text(f'<html><body><div id="plot"></div><script src="{script.as_uri()}"></script></body></html>')
    with browser_page() as page:
        page.goto(page_file.as_uri())
        draw_in_browser = lambda fig: page.evaluate(DRAW, json.loads(fig.to_json()))  # noqa: E731
        yield
    draw_in_browser = None


def check_figure(fig: go.Figure) -> None:
    as_dict = fig.to_plotly_json()
    go.Figure(as_dict)    # Plotly's validation of the whole figure
    for name, axis in as_dict["layout"].items():
        if name.startswith(("xaxis", "yaxis")) and "domain" in axis:
            lo, hi = axis["domain"]
            assert 0.0 <= lo <= hi <= 1.0, (name, axis["domain"])
    if draw_in_browser is not None and shape_of(as_dict) not in drawn:
        drawn.add(shape_of(as_dict))
        error = draw_in_browser(fig)
        assert not error, f"Plotly.js could not draw {fig.layout.title.text!r}: {error}"


drawn: set[str] = set()


def shape_of(fig: dict) -> str:
    """What decides whether Plotly.js can draw a figure, not its numbers: each trace's type, name (digits aside)
    and axes, and whether its x and y are numbers or categories. The browser draws each shape once."""
    def kind(values) -> str:
        values = [v for v in (values if isinstance(values, (list, tuple)) else []) if v is not None]
        return "none" if not values else "category" if isinstance(values[0], str) else "number"

    traces = [(d.get("type"), re.sub(r"[\d.]+", "#", d.get("name") or ""), d.get("xaxis"), d.get("yaxis"),
               kind(d.get("x")), kind(d.get("y"))) for d in fig["data"]]
    return json.dumps(traces + sorted(k for k in fig["layout"] if k.startswith(("xaxis", "yaxis"))))


def check_screen(trace: Trace, cursor: int) -> render.Screen:
    session = Session.replay(trace)
    session.seek(cursor)
    screen = render.render(session, trace.method)
    check_figure(screen.main)
    check_figure(screen.side)
    own_view = cursor >= 0 and trace.config.get("drafter") in (*syn.HEAD_DRAFTERS, "early-exit") or \
        cursor >= 0 and "recycling" in trace.steps[cursor].detail
    assert (screen.drafter is not None) == own_view   # the heads', early exit's, Token Recycling's, for their runs only
    if screen.drafter is not None:
        check_figure(screen.drafter)
    assert screen.words.strip() and "Iteration" in screen.position or cursor < 0
    return screen


def check_every_screen(trace: Trace) -> None:
    """Every cursor of the live trace, and the last one of the same trace loaded back from JSON (where the
    engine's tuples have become lists)."""
    for cursor in range(-1, len(trace.steps)):
        check_screen(trace, cursor)
    loaded = render.check_trace(Trace.from_json(trace.to_json()))   # what Load trace accepts
    check_screen(loaded, len(trace.steps) - 1)


def chain(make, count: int) -> list:
    """Up to `count` steps from make(index, produced); a final step (end of text, budget) ends the run."""
    steps, produced = [], 0
    for index in range(count):
        step = make(index, produced)
        steps.append(step)
        produced += len(step.committed_ids)
        if step.final:
            break
    return steps


seeds = st.integers(0, 2 ** 32 - 1)
runs = st.integers(1, 3)


# ----------------------------------------------------------------------------- autoregressive

@FAST
@given(seed=seeds, greedy=st.booleans(), count=runs)
def test_autoregressive_views_render(seed, greedy, count):
    rnd = random.Random(seed)
    steps = chain(lambda i, made: syn.autoregressive_step(rnd, i, greedy=greedy, final=i == count - 1), count)
    check_every_screen(syn.trace_of("autoregressive", steps, syn.sampling_config(greedy, count)))


# ----------------------------------------------------------------------------- speculative

@st.composite
def speculative_iteration(draw, k: int, drafter: str, first: bool = False) -> dict:
    """One iteration's shape: how many were drafted (0: no room, or no lookup match), accepted, and how it ended."""
    k_now = draw(st.one_of(st.just(k), st.integers(0, k)))
    end = draw(st.sampled_from(["none", "eos_next", "eos_draft"]))
    if drafter == "ngram":
        drafted = draw(st.integers(0, k_now))             # 0: prompt lookup found no match
    elif drafter in syn.HEAD_DRAFTERS and first:
        drafted = 0                                       # heads draft from the first verification on
    else:
        drafted = draw(st.integers(1, k_now)) if end == "eos_draft" and k_now else k_now
    if drafter == "heads":
        drafted = min(drafted, syn.MEDUSA_HEADS)          # one token per Medusa head
    return {"k": k_now, "drafted": drafted, "accepted": draw(st.integers(0, drafted)), "end": end}


@FAST
@given(data=st.data(), seed=seeds, k=st.integers(1, 16), greedy=st.booleans(),
       drafter=st.sampled_from(["model", "ngram", "early-exit", *syn.HEAD_DRAFTERS]),
       schedule=st.sampled_from(["constant", "adaptive"]), count=runs,
       verification=st.sampled_from(["token", "block"]))
def test_speculative_views_render(data, seed, k, greedy, drafter, schedule, count, verification):
    rnd = random.Random(seed)
    shapes = [data.draw(speculative_iteration(k, drafter, i == 0)) for i in range(count)]
    steps = chain(lambda i, made: syn.speculative_step(rnd, i, greedy=greedy, drafter=drafter, schedule=schedule,
                                                       produced=made, verification=verification, **shapes[i]), count)
    config = syn.speculative_config(k=k, greedy=greedy, drafter=drafter, schedule=schedule, max_new_tokens=64) | \
        {"verification": verification}
    check_every_screen(syn.trace_of("speculative", steps, config))


@pytest.mark.parametrize("k", range(1, 17))
@pytest.mark.parametrize("greedy, drafter", [(True, "model"), (False, "model"), (True, "ngram"), (False, "ngram"),
                                             (True, "eagle"), (False, "eagle"), (True, "heads"), (False, "heads"),
                                             (False, "early-exit")])
def test_speculative_renders_every_k_fully_drafted(k, greedy, drafter):
    """k = 11, 15 and 16 drafted tokens (12, 16, 17 columns) crashed Plotly's domain check (issue 15). Heads
    draft nothing on the first step; Medusa's four heads draft at most four tokens."""
    rnd = random.Random(k)
    first = 0 if drafter in syn.HEAD_DRAFTERS else k
    most = min(k, syn.MEDUSA_HEADS) if drafter == "heads" else k
    steps = [syn.speculative_step(rnd, 0, k=k, drafted=first, accepted=first, greedy=greedy, drafter=drafter),
             syn.speculative_step(rnd, 1, k=k, drafted=most, accepted=most, greedy=greedy, drafter=drafter,
                                  produced=first + 1),
             syn.speculative_step(rnd, 2, k=k, drafted=most, accepted=most // 2, greedy=greedy, drafter=drafter,
                                  produced=first + most + 2)]
    trace = syn.trace_of("speculative", steps, syn.speculative_config(k=k, greedy=greedy, drafter=drafter,
                                                                      schedule="constant", max_new_tokens=64))
    for cursor in range(len(steps)):
        check_screen(trace, cursor)


# ----------------------------------------------------------------------------- tree

@FAST
@given(seed=seeds, shape=st.sampled_from(["dynamic", *SHAPES]), budget=st.integers(0, 64), depth=st.integers(1, 8),
       topk=st.integers(1, 8), greedy=st.booleans(), rooms=st.lists(st.integers(0, 8), min_size=1, max_size=3),
       stop_chance=st.floats(0, 1), eos=st.sampled_from(["none", "path", "final"]),
       drafter=st.sampled_from(["model", "recycling", "early-exit", *syn.HEAD_DRAFTERS]))
def test_tree_views_render(seed, shape, budget, depth, topk, greedy, rooms, stop_chance, eos, drafter):
    rnd = random.Random(seed)
    steps = chain(lambda i, made: syn.tree_step(
        rnd, i, shape=shape, budget=budget, depth=depth, topk=topk, room=rooms[i], greedy=greedy,
        stop_chance=stop_chance, eos=eos if i == len(rooms) - 1 else "none", produced=made,
        committed_len=4 + made, drafter=drafter), len(rooms))
    config = syn.tree_config(shape=shape, budget=budget, depth=depth, topk=topk, greedy=greedy, max_new_tokens=64,
                             drafter=drafter)
    check_every_screen(syn.trace_of("tree", steps, config))


# ----------------------------------------------------------------------------- jacobi

@FAST
@given(seed=seeds, block=st.integers(1, 32), settled=st.lists(st.integers(0, 32), min_size=1, max_size=3),
       max_new_tokens=st.integers(1, 512), eos=st.booleans())
def test_jacobi_views_render(seed, block, settled, max_new_tokens, eos):
    rnd = random.Random(seed)
    steps = chain(lambda i, made: syn.jacobi_step(
        rnd, i, block=block, settled=settled[i], produced=made, max_new_tokens=max_new_tokens,
        eos=eos and i == len(settled) - 1), len(settled))
    check_every_screen(syn.trace_of("jacobi", steps, syn.jacobi_config(block=block, max_new_tokens=max_new_tokens)))


# ----------------------------------------------------------------------------- lookahead

@FAST
@given(data=st.data(), seed=seeds, window=st.integers(1, 12), ngram=st.integers(2, 6), guesses=st.integers(0, 12),
       greedy=st.booleans(), count=runs)
def test_lookahead_views_render(data, seed, window, ngram, guesses, greedy, count):
    rnd = random.Random(seed)
    shapes = [{"levels": data.draw(st.integers(1, ngram - 1)), "candidates": data.draw(st.integers(0, guesses)),
               "match": data.draw(st.integers(0, ngram - 1)), "pooled_keys": data.draw(st.integers(0, 12)),
               "eos": data.draw(st.booleans())} for _ in range(count)]
    steps = chain(lambda i, made: syn.lookahead_step(rnd, i, window=window, ngram=ngram, guesses=guesses,
                                                     greedy=greedy, produced=made, **shapes[i]), count)
    config = syn.lookahead_config(window=window, ngram=ngram, guesses=guesses, greedy=greedy, max_new_tokens=64)
    check_every_screen(syn.trace_of("lookahead", steps, config))


# ----------------------------------------------------------------------------- mask-predict

WORK = 1024     # forwards x span positions per run at most: the stub engine is plain Python per position
CURVE_UP_TO = 24   # the quality curve decodes the span again at T = length .. length/8: short spans only


@st.composite
def mask_predict_settings(draw) -> dict:
    """Valid settings over their whole ranges: span length (0: the length beam), every strategy, iterations,
    blocks, tau in [0, 1] (1.0: above every confidence), ReMDM's eta in [0, 1] and its schedules, the cached
    prefix, end-of-text hold or allow, and the quality curve on or off, kept within WORK."""
    length = draw(st.integers(0, 256))
    strategy = draw(st.sampled_from(STRATEGIES))
    # the length beam runs up to 16 spans around max_new_tokens / 2: small ones keep the stub engine quick
    max_new_tokens = draw(st.integers(1, 48) if length == 0 else st.integers(length, 256))
    span = length or max_new_tokens
    if length == 0:
        block = 0
    elif strategy == "threshold":      # a block of B takes up to B iterations
        block = draw(st.integers(1, max(1, min(length, WORK // length))) | st.just(0 if length * length <= WORK
                                                                                   else 1))
    else:                              # a block needs an iteration of its own
        block = draw(st.just(0) | st.integers(min(length, -(-length * length // WORK)), length))
    blocks = -(-length // block) if block else 1
    iterations = draw(st.integers(blocks, max(blocks, min(256, WORK // span))))
    return {"max_new_tokens": max_new_tokens, "length": length, "block": block, "iterations": iterations,
            "length_beam": draw(st.integers(1, 16)), "temperature": draw(st.sampled_from([0.0, 0.9])),
            "strategy": strategy, "threshold": draw(st.sampled_from([0.0, 1.0]) | st.floats(0, 1)),
            "remask": draw(st.sampled_from([0.0, 1.0]) | st.floats(0, 1)),
            "remask_schedule": draw(st.sampled_from(["cap", "rescale", "conf"])),
            "confidence": draw(st.sampled_from(["probability", "margin"])),
            "cache": draw(st.sampled_from(["off", "prefix"])) if length else "off",
            "eos": draw(st.sampled_from(["hold", "allow"])),
            "curve": draw(st.sampled_from(["on", "off"])) if span <= CURVE_UP_TO else "off"}


def by_name(fig: go.Figure, name: str) -> list[dict]:
    return [d for d in fig.to_plotly_json()["data"] if d.get("name") == name]


def check_mask_predict_screen(trace: Trace, cursor: int) -> None:
    """The screen renders, and its figures and words show what the step record holds."""
    screen = check_screen(trace, cursor)
    if cursor < 0:
        return
    d = trace.steps[cursor].detail
    r = d["spans"][d["best"]]
    tau = trace.config["threshold"]
    line = by_name(screen.side, f"threshold tau = {tau}")
    assert (len(line) == 1) == (d["strategy"] == "threshold")
    if line:
        assert list(line[0]["y"]) == [tau, tau] and f"tau = {tau}" in screen.words
        if all(r["confidence"][i] < tau for i in r["masked_before"]):   # tau above every confidence
            assert len(r["unmasked"]) == 1
    check_cache_row(screen.main, r)
    check_committed_counts(screen.side, trace, cursor)
    check_marks_clear_of_text(screen.main, trace, cursor)
    check_mask_predict_words(screen.words, r, d)
    check_remasking_shown(screen, trace, cursor, r)


def check_remasking_shown(screen: render.Screen, trace: Trace, cursor: int, r: dict) -> None:
    """ReMDM: the words name the schedule and every re-masked position with its coin; the chips strike exactly
    the re-masked positions; every candidate's hover carries its chance (and its coin when one was drawn)."""
    rm = r.get("remasking")
    assert (rm is not None) == (trace.config["strategy"] == "remdm")
    if rm is None:
        return
    if rm["decoded"]:
        assert f"ReMDM-{rm['schedule']}" in screen.words
    hits = [(i, u, p) for i, u, p in zip(rm["decoded"], rm["coins"], rm["probability"]) if i in r["remasked"]]
    for i, u, p in hits[:6]:
        assert render.markdown_words(f"u = {mp_figures.fmt(u)} < {mp_figures.fmt(p)}") in screen.words
    assert [k for k, c in enumerate(mp_figures.chips(trace, cursor)) if c.status == "rejected"] == r["remasked"]
    heat = by_name(screen.main, "confidence")[0]
    for i in rm["decoded"]:
        assert "re-mask c" in heat["customdata"][-1][i]


def check_cache_row(main: go.Figure, r: dict) -> None:
    """One cell per span position in the state the record gives it (fresh, cached, stale); no row when this
    forward read nothing from a cache."""
    row = by_name(main, "key-value cache")
    span_states = r["kv_state"][len(r["kv_state"]) - r["length"]:] if r["kv_state"] else []
    assert (len(row) == 1) == bool(set(r["kv_state"]) - {"fresh"})
    if row:
        codes = {"fresh": 0, "cached": 1, "stale": 2}
        assert list(row[0]["z"][0]) == [codes[k] for k in span_states]
        assert list(row[0]["text"][0]) == [k[0].upper() for k in span_states]


def check_committed_counts(side: go.Figure, trace: Trace, cursor: int) -> None:
    """The bars are the recorded commits of every iteration so far; with the re-masks of positions that held
    a token they account for every position unmasked now (all of the span at the last iteration)."""
    best = trace.steps[cursor].detail["best"]
    seen = [s.detail["spans"][best] for s in trace.steps[:cursor + 1]]
    bars = by_name(side, "tokens committed (recorded)")[0]
    assert list(bars["y"]) == [len(q["unmasked"]) for q in seen]
    taken_back = sum(len(set(q["remasked"]) - set(q["masked_before"])) for q in seen)
    r = seen[-1]
    assert sum(bars["y"]) - taken_back == r["length"] - r["masks_after"]
    if trace.steps[cursor].final:
        assert r["masks_after"] == 0


def check_marks_clear_of_text(main: go.Figure, trace: Trace, cursor: int) -> None:
    """The unmasked and re-masked marks run along the edges of their cells, never over the token centred in
    the cell, one outline per such cell shown; and a row is tall enough for a line of text between them."""
    fig = main.to_plotly_json()
    best = trace.steps[cursor].detail["best"]
    heat = next(d for d in fig["data"] if d.get("name") == "confidence")
    rows = {y: trace.steps[y - 1].detail["spans"][best] for y in heat["y"]}
    for label, key in (("unmasked this iteration", "unmasked"), ("re-masked (may change)", "remasked")):
        mark = next(d for d in fig["data"] if d.get("name") == label)
        points = [(x, y) for x, y in zip(mark["x"], mark["y"]) if x is not None]
        assert all(abs(x - round(x)) >= 0.4 or abs(y - round(y)) >= 0.4 for x, y in points), label
        assert list(mark["x"]).count(None) == sum(len(r[key]) for r in rows.values())
    layout = fig["layout"]
    margin = layout["margin"]
    low, high = layout["yaxis"]["domain"]
    row_px = (layout["height"] - margin["t"] - margin["b"]) * (high - low) / len(heat["y"])
    text_px = heat["textfont"]["size"]
    # the top and bottom outlines (2 px wide) leave a line of text between them
    assert mp_figures.OUTLINE_INSET * row_px - 1 >= text_px / 2, row_px


def check_mask_predict_words(words: str, r: dict, d: dict) -> None:
    if r["drift"] is not None:
        assert "exact forward" in words and mp_figures.fmt(r["drift"]) in words
        assert ("would have changed at position" in words) == bool(r["drift_changed"])
    if r["eos_held"]:
        assert "held back" in words and ", ".join(map(str, r["eos_held"])) in words
    assert ("End-of-text committed at" in words) == bool(r["eos_committed"])
    curve = d["quality_curve"]
    assert ("fewer iterations" in words) == bool(curve)


def mp_settings(length: int, strategy: str, **more) -> dict:
    return {"max_new_tokens": max(1, length), "length": length, "strategy": strategy, "iterations": 4,
            "curve": "off", **more}


@FAST
@given(seed=seeds, cfg=mask_predict_settings(), sharpness=st.sampled_from([0.5, 3.0, 12.0]),
       bidirectional=st.booleans(), eos_pull=st.sampled_from([0.0, 4.0, 40.0]))
# the cases a dozen draws may miss: tau above every confidence, a bidirectional cache over blocks, end-of-text
# held and flooding, the longest span, the length beam with its curve
@example(seed=1, cfg=mp_settings(12, "threshold", threshold=1.0, curve="on"), sharpness=0.5, bidirectional=True,
         eos_pull=0.0)
@example(seed=2, cfg=mp_settings(16, "diffusion", block=4, cache="prefix", iterations=8), sharpness=3.0,
         bidirectional=True, eos_pull=0.0)
@example(seed=3, cfg=mp_settings(16, "threshold", block=8, cache="prefix", threshold=0.5), sharpness=3.0,
         bidirectional=False, eos_pull=4.0)
@example(seed=4, cfg=mp_settings(24, "diffusion", eos="hold", iterations=6), sharpness=3.0, bidirectional=True,
         eos_pull=40.0)
@example(seed=4, cfg=mp_settings(24, "diffusion", eos="allow", iterations=6), sharpness=3.0, bidirectional=True,
         eos_pull=40.0)
@example(seed=5, cfg=mp_settings(256, "mask-predict", iterations=2, block=128), sharpness=3.0,
         bidirectional=True, eos_pull=0.0)
@example(seed=6, cfg={**mp_settings(0, "random", length_beam=3, curve="on"), "max_new_tokens": 12}, sharpness=3.0,
         bidirectional=True, eos_pull=0.0)
@example(seed=7, cfg=mp_settings(16, "remdm", iterations=8, block=8, remask=1.0, remask_schedule="rescale"),
         sharpness=3.0, bidirectional=True, eos_pull=4.0)
@example(seed=8, cfg=mp_settings(24, "remdm", iterations=6, remask=0.5, remask_schedule="conf", cache="prefix"),
         sharpness=0.5, bidirectional=True, eos_pull=0.0)
def test_mask_predict_views_render(seed, cfg, sharpness, bidirectional, eos_pull):
    steps, config = syn.mask_predict_steps(seed, cfg, sharpness, bidirectional=bidirectional, eos_pull=eos_pull)
    trace = syn.trace_of("mask-predict", steps, config)
    # the first, a middle and the last iteration (every one would repeat the same code on a longer trace)
    for cursor in sorted({-1, 0, len(steps) // 2, len(steps) - 1}):
        check_mask_predict_screen(trace, cursor)
    loaded = render.check_trace(Trace.from_json(trace.to_json()))
    check_mask_predict_screen(loaded, len(steps) - 1)
    curve = steps[-1].detail["quality_curve"]
    if curve:    # the third panel plots the recorded points
        plotted = by_name(check_screen(trace, len(steps) - 1).side, "mean log p at commit")[0]
        assert list(plotted["x"]) == [p["iterations"] for p in curve]
    assert (curve is not None) == (cfg["curve"] == "on")


# ----------------------------------------------------------------------------- the cost model in the views

def with_cost(trace: Trace, cost: dict | None) -> Trace:
    trace.cost = cost
    return trace


@FAST
@given(data=st.data(), seed=seeds, k=st.integers(1, 16), greedy=st.booleans(),
       drafter=st.sampled_from(["model", "ngram", *syn.HEAD_DRAFTERS]), measured=st.booleans(), count=runs)
def test_speculative_cost_panels_render_with_and_without_a_calibration(data, seed, k, greedy, drafter, measured,
                                                                        count):
    rnd = random.Random(seed)
    shapes = [data.draw(speculative_iteration(k, drafter, i == 0)) for i in range(count)]
    steps = chain(lambda i, made: syn.speculative_step(rnd, i, greedy=greedy, drafter=drafter, produced=made,
                                                       **shapes[i]), count)
    config = syn.speculative_config(k=k, greedy=greedy, drafter=drafter, schedule="constant", max_new_tokens=64)
    trace = with_cost(syn.trace_of("speculative", steps, config), syn.calibration(rnd) if measured else None)
    check_every_screen(trace)
    screen = check_screen(trace, len(steps) - 1)
    assert ("not measured" in screen.words) != measured
    if measured and any(s.detail["draft_tokens"] for s in steps):
        assert "Cost model" in screen.words and "acceptance rate α = accepted / examined" in screen.words


@FAST
@given(seed=seeds, shape=st.sampled_from(["dynamic", *SHAPES]), budget=st.integers(0, 64), depth=st.integers(1, 8),
       topk=st.integers(1, 8), rooms=st.lists(st.integers(0, 8), min_size=1, max_size=3),
       drafter=st.sampled_from(["model", *syn.HEAD_DRAFTERS]), measured=st.booleans())
def test_tree_cost_panel_renders_with_and_without_a_calibration(seed, shape, budget, depth, topk, rooms, drafter,
                                                                 measured):
    rnd = random.Random(seed)
    steps = chain(lambda i, made: syn.tree_step(
        rnd, i, shape=shape, budget=budget, depth=depth, topk=topk, room=rooms[i], greedy=True, stop_chance=0.5,
        eos="none", produced=made, committed_len=4 + made, drafter=drafter), len(rooms))
    config = syn.tree_config(shape=shape, budget=budget, depth=depth, topk=topk, greedy=True, max_new_tokens=64,
                             drafter=drafter)
    trace = with_cost(syn.trace_of("tree", steps, config), syn.calibration(rnd) if measured else None)
    check_every_screen(trace)
    screen = check_screen(trace, len(steps) - 1)
    assert ("not measured" in screen.words) != measured
    assert "acceptance rate α = accepted / examined" in screen.words


def test_synthetic_mask_predict_reaches_the_cases_the_views_must_draw():
    """The stubs really make what the examples above are for: a bidirectional cache goes stale and drifts
    enough to change a decision, a causal one stays cached and exact, end-of-text is held or floods, and tau
    above every confidence commits one position an iteration."""
    def records(seed, settings, **stub):
        steps, _ = syn.mask_predict_steps(seed, settings, **stub)
        return [s.detail["spans"][0] for s in steps]

    stale = records(2, mp_settings(16, "diffusion", block=4, cache="prefix", iterations=8))
    assert "stale" in {k for r in stale for k in r["kv_state"]} and any(r["drift_changed"] for r in stale)
    assert all(r["drift"] > 0 for r in stale[1:])
    causal = records(3, mp_settings(16, "threshold", block=8, cache="prefix", threshold=0.5), bidirectional=False)
    assert "cached" in {k for r in causal for k in r["kv_state"]} and all(r["drift"] is None or r["drift"] < 1e-4
                                                                          for r in causal)
    assert any(r["eos_held"] for r in records(4, mp_settings(24, "diffusion", eos="hold", iterations=6),
                                              eos_pull=40.0))
    flood = records(4, mp_settings(24, "diffusion", eos="allow", iterations=6), eos_pull=40.0)
    assert sum(len(r["eos_committed"]) for r in flood) > 12
    sure = records(1, mp_settings(12, "threshold", threshold=1.0), sharpness=0.5)
    assert len(sure) == 12 and all(len(r["unmasked"]) == 1 for r in sure)
