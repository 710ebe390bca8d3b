"""No label drawn on another (issue 21): every figure of every method's view, drawn by Plotly.js in Chromium.

Each method's figures are rendered by explorer/render.py from synthetic steps (tests/synthetic.py) over its
settings, at the widths the app gives them on a 1280 px page (main and head figures 900 px, the side figure
440 px beside the words) and on a 420 px phone (388 px each, laid out for narrow), in the light and the dark
theme with the app's own stylesheet. One browser and one page hold the Plotly.js of plotly's Python package;
each figure replaces the last. A figure fails when
  - two pieces of its text overlap (boxes turned with their text, a little of each line's leading allowed),
    or the Plotly toolbar lies over text;
  - text is cut by the box that clips it (a subplot, a table, the legend) or by the figure's edge;
  - a legend entry's trace has no point to show (a key naming a colour of a heatmap's cells or a table's rows aside);
  - text reads at under 4.5:1 against what is drawn behind it (the text hidden, the pixels read from a
    screenshot), in either theme.
"""
from __future__ import annotations

# ruff: noqa: B023 - the step builders close over loop variables, and chain() calls them within the iteration
import io
import json
import random
from collections import Counter
from pathlib import Path

import plotly
import pytest

from explorer import render
from explorer.screenshot import CHROMIUM
from explorer.session import Session
from tests import synthetic as syn

if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)

AUDIT = (Path(__file__).parent / "figure_audit.js").read_text(encoding="utf-8")
CSS = (Path(__file__).parent.parent / "assets" / "explorer.css").read_text(encoding="utf-8")
PAGES = {"light": "#ffffff", "dark": "#0b0f19"}       # Gradio's page behind a transparent figure, per theme
# (page width, narrow, figure widths): main and head figures fill the results column, the side figure half of it
WIDTHS = {1280: (False, {"main": 900, "side": 440, "drafter": 900}),
          420: (True, {"main": 388, "side": 388, "drafter": 388})}
LEADING = 0.18     # of a text box's height, top and bottom: line spacing, not ink
MIN_CONTRAST = 4.5


# ----------------------------------------------------------------------------- synthetic runs per method

def chain(make, count: int) -> list:
    steps, produced = [], 0
    for index in range(count):
        step = make(index, produced)
        steps.append(step)
        produced += len(step.committed_ids)
        if step.final:
            break
    return steps


def autoregressive_traces():
    for greedy in (True, False):
        rnd = random.Random(1)
        steps = chain(lambda i, made: syn.autoregressive_step(rnd, i, greedy=greedy, final=i == 5), 6)
        yield syn.trace_of("autoregressive", steps, syn.sampling_config(greedy, 6))


def speculative_traces():
    """Each drafter, greedy and sampled, one drafted token to sixteen, both schedules, with and without a
    calibration of the cost model."""
    for drafter, greedy, k, schedule in (("model", True, 1, "constant"), ("model", False, 5, "adaptive"),
                                         ("ngram", True, 16, "constant"),
                                         ("heads", False, 4, "constant"), ("eagle", True, 8, "constant"),
                                         ("early-exit", False, 6, "constant")):
        rnd = random.Random(k)
        most = min(k, syn.MEDUSA_HEADS) if drafter == "heads" else k
        first = 0 if drafter in syn.HEAD_DRAFTERS else most
        shapes = [(first, first // 2), (most, 0), (most, most)]
        steps = chain(lambda i, made: syn.speculative_step(
            rnd, i, k=k, drafted=shapes[i][0], accepted=shapes[i][1], greedy=greedy, drafter=drafter,
            schedule=schedule, produced=made), 3)
        trace = syn.trace_of("speculative", steps, syn.speculative_config(
            k=k, greedy=greedy, drafter=drafter, schedule=schedule, max_new_tokens=64))
        trace.cost = syn.calibration(rnd) if k in (5, 8) else None
        yield trace


def tree_traces():
    """Each drafter, the dynamic tree and every fixed shape from a small budget to a large one, greedy and sampled."""
    for drafter, shape, budget, depth, topk, greedy in (
            ("model", "dynamic", 16, 4, 3, True), ("model", "balanced", 64, 8, 8, False),
            ("heads", "sparse", 64, 4, 8, True), ("model", "chain", 8, 8, 1, True),
            ("eagle", "dynamic", 4, 2, 2, False), ("early-exit", "dynamic", 12, 4, 3, True),
            ("recycling", "dynamic", 64, 6, 8, True), ("eagle", "dynamic", 0, 6, 4, True)):
        rnd = random.Random(budget)
        steps = chain(lambda i, made: syn.tree_step(
            rnd, i, shape=shape, budget=budget, depth=depth, topk=topk, room=8, greedy=greedy,
            stop_chance=0.3, produced=made, committed_len=4 + made, drafter=drafter), 3)
        trace = syn.trace_of("tree", steps, syn.tree_config(
            shape=shape, budget=budget, depth=depth, topk=topk, greedy=greedy, max_new_tokens=64,
            drafter=drafter))
        trace.cost = syn.calibration(rnd) if budget == 16 else None
        yield trace


def jacobi_traces():
    for block, settled in ((1, [0, 1]), (8, [2, 0, 8]), (32, [3, 1, 32])):
        rnd = random.Random(block)
        steps = chain(lambda i, made: syn.jacobi_step(rnd, i, block=block, settled=settled[i], produced=made,
                                                      max_new_tokens=128), len(settled))
        yield syn.trace_of("jacobi", steps, syn.jacobi_config(block=block, max_new_tokens=128))


def lookahead_traces():
    """The smallest window, a middle one and the largest, warming up, guessing and accepting."""
    for window, ngram, guesses, greedy in ((1, 2, 1, True), (5, 4, 5, False), (12, 6, 12, True)):
        rnd = random.Random(window)
        shapes = [(1, 0, 0), (ngram - 1, guesses, 0), (ngram - 1, guesses, ngram - 1)]
        steps = chain(lambda i, made: syn.lookahead_step(
            rnd, i, window=window, ngram=ngram, guesses=guesses, levels=shapes[i][0], candidates=shapes[i][1],
            match=shapes[i][2], greedy=greedy, pooled_keys=12 if window == 12 else 3, produced=made), 3)
        yield syn.trace_of("lookahead", steps, syn.lookahead_config(
            window=window, ngram=ngram, guesses=guesses, greedy=greedy, max_new_tokens=64))


def mask_predict_traces():
    cases = [({"length": 12, "strategy": "mask-predict", "iterations": 4, "curve": "on"}, {}),
             ({"length": 24, "strategy": "diffusion", "iterations": 6, "eos": "hold"}, {"eos_pull": 40.0}),
             ({"length": 24, "strategy": "threshold", "block": 8, "cache": "prefix", "threshold": 0.5},
              {"bidirectional": False}),
             ({"length": 16, "strategy": "diffusion", "block": 4, "cache": "prefix", "iterations": 8}, {}),
             ({"length": 64, "strategy": "random", "iterations": 8}, {}),
             ({"length": 24, "strategy": "remdm", "iterations": 6, "remask": 1.0, "remask_schedule": "rescale"}, {}),
             ({"length": 0, "strategy": "mask-predict", "length_beam": 3, "curve": "on", "max_new_tokens": 12}, {})]
    for settings, stub in cases:
        settings = {"max_new_tokens": max(1, settings["length"]), "iterations": 4, "curve": "off", **settings}
        steps, config = syn.mask_predict_steps(7, settings, **stub)
        yield syn.trace_of("mask-predict", steps, config)


TRACES = {"autoregressive": autoregressive_traces, "speculative": speculative_traces, "tree": tree_traces,
          "jacobi": jacobi_traces, "lookahead": lookahead_traces, "mask-predict": mask_predict_traces}


def screens(method: str, narrow: bool):
    """(name, part, figure) for every figure the method's view draws: at a middle and the last step."""
    for t, trace in enumerate(TRACES[method]()):
        session = Session.replay(trace)
        for cursor in sorted({len(trace.steps) // 2, len(trace.steps) - 1}):
            session.seek(cursor)
            screen = render.render(session, method, narrow=narrow)
            for part in ("main", "side", "drafter"):
                fig = getattr(screen, part)
                if fig is not None:
                    yield f"{method} run {t} ({json.dumps(trace.config)[:120]}) step {cursor + 1} {part}", part, fig


# ----------------------------------------------------------------------------- the browser

@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from explorer.screenshot import browser_page
    folder = tmp_path_factory.mktemp("plotly")
    script = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    (folder / "plot.html").write_text(
        f'<html><head><style>body {{ margin: 0; }} #plot.no-text svg text {{ visibility: hidden !important; }} {CSS}'
        f'</style></head><body>'
        f'<div class="js-plotly-plot-host"><div id="plot"></div></div>'
        f'<script src="{script.as_uri()}"></script></body></html>')
    with browser_page(1280, 1000) as p:
        p.goto((folder / "plot.html").as_uri())
        yield p


@pytest.fixture(autouse=True, scope="module")
def trace_files_in_a_temporary_folder(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(render, "TRACE_DIR", tmp_path_factory.mktemp("traces"))
        yield


DRAW = """async ([fig, width]) => {
    const gd = document.getElementById('plot');
    Plotly.purge(gd);
    gd.style.width = width + 'px';
    await Plotly.newPlot(gd, fig.data, {...fig.layout, width}, {displayModeBar: true, responsive: false});
    return (AUDIT)(gd); }""".replace("AUDIT", AUDIT)


def draw(page, fig, width: int) -> dict:
    return page.evaluate(DRAW, [json.loads(fig.to_json()), width])


# ----------------------------------------------------------------------------- the checks

def shrunk(corners: list, by: float = LEADING) -> list:
    """The box without the leading above and below its line (the corners go round: top left first)."""
    (ax, ay), (bx, by_), (cx, cy), (dx, dy) = corners
    top = ((ax + (dx - ax) * by, ay + (dy - ay) * by), (bx + (cx - bx) * by, by_ + (cy - by_) * by))
    bottom = ((bx + (cx - bx) * (1 - by), by_ + (cy - by_) * (1 - by)),
              (ax + (dx - ax) * (1 - by), ay + (dy - ay) * (1 - by)))
    return [*top, *bottom]


def overlap(a: list, b: list, tolerance: float = 1.0) -> bool:
    """Two convex boxes overlap by more than `tolerance` px along every separating direction (SAT)."""
    for poly in (a, b):
        for i in range(4):
            (x1, y1), (x2, y2) = poly[i], poly[(i + 1) % 4]
            nx, ny = y2 - y1, x1 - x2
            norm = (nx * nx + ny * ny) ** 0.5 or 1
            pa = [(x * nx + y * ny) / norm for x, y in a]
            pb = [(x * nx + y * ny) / norm for x, y in b]
            if min(max(pa), max(pb)) - max(min(pa), min(pb)) <= tolerance:
                return False
    return True


def inside(corners: list, box: list, tolerance: float = 1.5) -> bool:
    return all(box[0] - tolerance <= x <= box[2] + tolerance and box[1] - tolerance <= y <= box[3] + tolerance
               for x, y in corners)


def rectangle(box: list) -> list:
    return [(box[0], box[1]), (box[2], box[1]), (box[2], box[3]), (box[0], box[3])]


def layout_problems(seen: dict) -> list[str]:
    texts, problems = seen["texts"], []
    ink = [shrunk(t["corners"]) for t in texts]
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            if overlap(ink[i], ink[j]):
                problems.append(f"overlap: {texts[i]['text'][:40]!r} and {texts[j]['text'][:40]!r}")
    if seen["modebar"]:
        bar = rectangle(seen["modebar"])
        problems += [f"toolbar over {t['text'][:40]!r}" for t, box in zip(texts, ink) if overlap(bar, box, 0)]
    for t, box in zip(texts, ink):
        if not inside(box, seen["page"]):
            problems.append(f"cut by the figure's edge: {t['text'][:60]!r}")
        elif t["clip"] and not inside(box, t["clip"]["box"]):
            problems.append(f"cut by its {t['clip']['owner'].split()[0]}: {t['text'][:60]!r}")
    problems += [f"legend entry without points: {e['name']!r}" for e in seen["legend"]
                 if e["points"] == 0 and e["visible"] is True and not e["key"]]
    return problems


def rgb(css: str) -> tuple[float, ...]:
    if css.startswith("#"):
        return tuple(int(css[i:i + 2], 16) for i in (1, 3, 5))
    return tuple(float(v) for v in css[css.index("(") + 1:-1].split(",")[:3])


def luminance(c) -> float:
    c = [x / 255 for x in c[:3]]
    c = [x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4 for x in c]
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]


def contrast(a, b) -> float:
    hi, lo = sorted([luminance(a), luminance(b)], reverse=True)
    return (hi + 0.05) / (lo + 0.05)


FILLS = """() => Object.fromEntries([...document.querySelectorAll('#plot svg text[data-audit]')].map(t => {
    const s = getComputedStyle(t);
    return [t.getAttribute('data-audit'), [s.fill, Number(s.fillOpacity) * Number(s.opacity)]]; }))"""
HIDE_TEXT = "on => document.getElementById('plot').classList.toggle('no-text', on)"


def contrast_problems(page, seen: dict, theme: str) -> list[str]:
    """Each text's fill in this theme against the most common pixel under its box with all text hidden."""
    from PIL import Image
    page.evaluate("([dark, background]) => { document.body.classList.toggle('dark', dark); "
                  "document.body.style.background = background; }", [theme == "dark", PAGES[theme]])
    fills = page.evaluate(FILLS)
    page.evaluate(HIDE_TEXT, True)
    left, top, right, bottom = seen["page"]
    shot = Image.open(io.BytesIO(page.screenshot(clip={"x": left, "y": top, "width": right - left,
                                                       "height": bottom - top}))).convert("RGB")
    page.evaluate(HIDE_TEXT, False)
    problems = []
    for t in seen["texts"]:
        fill, opacity = fills[str(t["id"])]
        if t["size"] >= 24:
            continue
        xs = [x - left for x, _ in t["corners"]]
        ys = [y - top for _, y in t["corners"]]
        box = (max(0, int(min(xs))), max(0, int(min(ys))), min(shot.width, int(max(xs)) + 1),
               min(shot.height, int(max(ys)) + 1))
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        behind = Counter(shot.crop(box).get_flattened_data()).most_common(1)[0][0]
        colour = [opacity * f + (1 - opacity) * b for f, b in zip(rgb(fill), behind)]
        ratio = contrast(colour, behind)
        if ratio < MIN_CONTRAST:
            problems.append(f"contrast {ratio:.1f}:1 in {theme}: {t['text'][:40]!r} ({fill} on rgb{behind})")
    return problems


# ----------------------------------------------------------------------------- the test

# (method, figure) pairs whose figures still break a rule, with what the last run counted; strict: fixing one
# fails its mark, so the mark comes off with the fix
UNFINISHED: dict[tuple[str, str], str] = {
}
PARTS = {"autoregressive": ("main", "side"), "speculative": ("main", "side", "drafter"),
         "tree": ("main", "side", "drafter"), "jacobi": ("main", "side"), "lookahead": ("main", "side"),
         "mask-predict": ("main", "side")}


def case(method: str, part: str):
    if (method, part) in UNFINISHED:
        return pytest.param(method, part, marks=pytest.mark.xfail(strict=True, reason=UNFINISHED[method, part]))
    return pytest.param(method, part)


@pytest.mark.parametrize("method, part", [case(m, p) for m, parts in PARTS.items() for p in parts])
def test_no_text_overlaps_is_cut_or_fades(page, method, part):
    """main, side: the view's two figures; drafter: the head drafter's own figure, for runs drafted by heads."""
    problems: dict[str, list[str]] = {}
    for page_width, (narrow, widths) in WIDTHS.items():
        seen_json = set()
        for name, fig_part, fig in screens(method, narrow):
            key = fig.to_json()
            if fig_part != part or key in seen_json:
                continue
            seen_json.add(key)
            seen = draw(page, fig, widths[part])
            found = layout_problems(seen)
            if page_width == 1280:    # colours do not change with the width
                for theme in PAGES:
                    found += contrast_problems(page, seen, theme)
            if found:
                problems[f"{page_width} px: {name}"] = found
    count = sum(len(p) for p in problems.values())
    report = "\n".join(f"{name}\n    " + "\n    ".join(dict.fromkeys(found)) for name, found in problems.items())
    assert not problems, f"{count} problems in {len(problems)} figures:\n{report}"
