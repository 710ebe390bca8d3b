"""Jacobi decoding's figures: the trajectory (positions x iterations) and the convergence curve."""
from __future__ import annotations

import plotly.graph_objects as go

from engines.models import presets
from engines.trace import Trace
from explorer.figures.common import (
    CHAR_PX,
    FIGURE_WIDTH,
    Chip,
    View,
    colour,
    count_axis,
    empty,
    figure,
    listing,
    quoted,
    show,
    token,
)

ROWS_SHOWN = 24    # the trajectory shows at most this many iterations up to the cursor
CELLS_SHOWN = 560  # and at most about this many cells, so a step's figure stays well under 100 KB
CELL_FONT = 11     # px, the cell text

# cell status -> (code, colour, label); the text style is the second cue besides colour
CELLS = {
    "committed": (0, colour("accepted"), "committed (proven by the forward)"),
    # the chosen blue lightened: dark text read at 3.7:1 on the full blue
    "unchanged": (1, "#66AAD1", "unchanged, not proven yet"),
    "changed": (2, colour("resampled"), "changed this iteration"),
    "new": (3, colour("not_reached"), "new guess past the block"),
}


def discrete_scale(colours: list[str]) -> list[list]:
    """A colour scale for the integer codes 0..n-1 (zmin 0, zmax n-1): each code owns the band code +- 0.5."""
    top = len(colours) - 1
    return [[min(1.0, max(0.0, (code + edge) / top)), c] for code, c in enumerate(colours) for edge in (-0.5, 0.5)]


DISCRETE = discrete_scale([c for _, c, _ in CELLS.values()])
STYLE = {"committed": "<b>{}</b>", "unchanged": "{}", "changed": "<i>{}</i>", "new": "<i>{}</i>"}


def cells(d: dict, committed: int) -> list[tuple[int, str, int, int | None, float]]:
    """One iteration's cells: (offset in the block, status, token after, token before, target p)."""
    before, after = d["block_before_ids"], d["block_after_ids"] + [d["beyond_token"]]
    out = []
    for i, t in enumerate(after):
        old = before[i] if i < len(before) else None
        status = ("committed" if i < committed else "new" if old is None
                  else "unchanged" if old == t else "changed")
        out.append((i, status, t, old, d["p_new"][i]))
    return out


def short(text: str, width: int = 7) -> str:
    text = show(text)
    return text if len(text) <= width else text[:width - 1] + "\u2026"


def shown(trace: Trace, index: int) -> list:
    """The iterations the trajectory shows: the cursor's and those just before it, within the caps."""
    steps, count = [], 0
    for s in trace.steps[index::-1]:
        count += len(s.detail["block_before_ids"]) + 1
        if steps and (len(steps) == ROWS_SHOWN or count > CELLS_SHOWN):
            break
        steps.append(s)
    return steps[::-1]


def trajectory(trace: Trace, index: int, narrow: bool = False) -> go.Figure:
    """Each row is one Jacobi iteration; each cell the block's token at an output position after it."""
    if index < 0:
        return empty("Press Step: each iteration refines the whole block in one forward.")
    steps = shown(trace, index)
    # each cell's text is cut to the characters its width holds, and left to the hover where two would not fit
    columns = 1 + max(s.detail["block_start"] + len(s.detail["block_before_ids"]) for s in steps) - \
        min(s.detail["block_start"] for s in steps)
    fits = int((FIGURE_WIDTH[narrow] - 70) / columns / (CHAR_PX * CELL_FONT)) - 1
    xs, ys, zs, texts, hovers = [], [], [], [], []
    for s in steps:
        d = s.detail
        for i, status, t, old, p in cells(d, len(s.committed_ids)):
            pos = d["block_start"] + i
            xs.append(pos)
            ys.append(s.index + 1)
            zs.append(CELLS[status][0])
            texts.append(STYLE[status].format(short(token(trace, t), min(7, fits))) if fits >= 2 else "")
            was = f"{quoted(trace, old)} \u2192 " if old is not None else "(past the block) "
            hovers.append(f"iteration {s.index + 1}, position {pos}<br>{was}{quoted(trace, t)}, p = {p:.3f}<br>"
                          f"{CELLS[status][2]}")
    data = [{"type": "heatmap", "x": xs, "y": ys, "z": zs, "text": texts, "texttemplate": "%{text}",
             "textfont": {"size": CELL_FONT, "color": "#111111"}, "hovertext": hovers, "hoverinfo": "text",
             "colorscale": DISCRETE, "zmin": 0, "zmax": 3, "showscale": False, "xgap": 2, "ygap": 2,
             "showlegend": False}]
    data += [{"type": "scatter", "x": [None], "y": [None], "mode": "markers", "name": label,
              "marker": {"symbol": "square", "size": 12, "color": c}} for _, c, label in CELLS.values()]
    current = trace.steps[index]
    lo = current.detail["block_start"] - 0.5
    frame = {"type": "rect", "x0": lo, "x1": lo + len(current.detail["block_before_ids"]) + 1,
             "y0": index + 0.5, "y1": index + 1.5, "line": {"color": colour("chosen"), "width": 2}}
    xaxis = {"title": {"text": "output position (0 = first new token)"}}
    if max(xs) - min(xs) < 40:
        xaxis["dtick"] = 1
    yaxis = {**count_axis("iteration", len(steps)), "autorange": "reversed"}
    return figure(data, None, f"Jacobi trajectory up to iteration {index + 1}", height=max(300, 60 + 34 * len(steps)),
                  xaxis=xaxis, yaxis=yaxis, shapes=[frame], legend_below=True, width=FIGURE_WIDTH[narrow])


def convergence(trace: Trace, index: int, narrow: bool = False) -> go.Figure:
    """Tokens proven per iteration (at least one, Santilli et al.'s guarantee) and guesses still open; for a
    CLLM target, its base's measured mean as a reference line."""
    return convergence_figure(trace, index, narrow, presets.jacobi_reference(trace.models.get("target", "")))


def reference_line(reference: dict, last: int) -> dict:
    """The base model's mean tokens settled per Jacobi iteration, measured on the held-out task suite and stored
    with the CLLM (presets.jacobi_reference): a dotted line across the iterations, its source in the hover."""
    y = reference["tokens_per_forward"]
    return {"type": "scatter", "x": [0.5, last + 0.5], "y": [y, y], "mode": "lines",
            "name": f"{reference['model']}: {y:.2f} per iteration (measured, task suite, block {reference['block']})",
            "line": {"dash": "dot", "color": colour("prompt"), "width": 2},
            "hovertemplate": f"measured reference: {reference['model']} settles {y:.2f} tokens per Jacobi iteration"
                             f"<br>{reference['source']}<extra></extra>"}


def convergence_figure(trace: Trace, index: int, narrow: bool = False, reference: dict | None = None) -> go.Figure:
    steps = trace.steps[: index + 1]
    if not steps:
        return empty("No iterations yet.")
    x = [s.index + 1 for s in steps]
    committed = [len(s.committed_ids) for s in steps]
    unchanged = [sum(1 for i in s.detail["fixed"] if i >= len(s.committed_ids)) for s in steps]
    data = [
        {"type": "bar", "x": x, "y": committed, "name": "committed (converged prefix)",
         "marker": {"color": colour("accepted")},
         "customdata": [[s.detail["settled"], len(s.detail["block_before_ids"])] for s in steps],
         "hovertemplate": "iteration %{x}<br>%{y} committed<br>%{customdata[0]} guesses confirmed of "
                          "%{customdata[1]}<extra></extra>"},
        {"type": "bar", "x": x, "y": unchanged, "name": "unchanged, not proven yet",
         "marker": {"color": colour("chosen"), "pattern": {"shape": "/"}},
         "hovertemplate": "iteration %{x}<br>%{y} guesses unchanged but not yet proven<extra></extra>"},
        {"type": "scatter", "x": [0.5, x[-1] + 0.5], "y": [1, 1], "mode": "lines",
         "name": "guarantee: at least 1 per iteration", "line": {"dash": "dash", "color": colour("earlier")},
         "hovertemplate": "greedy Jacobi always commits at least 1 token<extra></extra>"},
    ]
    if reference is not None:
        data.append(reference_line(reference, x[-1]))
    total = sum(committed)
    # the totals on a second line: one line ran under Plotly's toolbar and off a phone-width figure
    return figure(data, None, f"Settled per iteration<br><sup>{total} tokens in {len(steps)} forwards, "
                              f"{total / len(steps):.2f} per forward</sup>", height=300, barmode="stack",
                  legend_below=True, margin={"t": 60}, xaxis=count_axis("iteration", x[-1]),
                  yaxis={"title": {"text": "positions"}, "rangemode": "tozero"})


def words(trace: Trace, index: int) -> str:
    if index < 0:
        return ("Nothing has run yet. Each iteration is one forward of the target over the pending token and "
                "the block of guesses; every guess is replaced at once by the target's argmax given the guesses "
                "before it. Greedy only: the fixed point is exactly the greedy output.")
    s = trace.steps[index]
    d = s.detail
    n, k, m = len(d["block_before_ids"]), d["settled"], len(s.committed_ids)
    first = d["block_start"]
    text = (f"Iteration {index + 1} fed {s.tokens_fed} token{'s' if s.tokens_fed != 1 else ''} in one forward: "
            f"the pending text and {n} guess{'es' if n != 1 else ''} for output positions {first}"
            f"\u2013{first + n - 1}. " if n else
            f"Iteration {index + 1} fed only the pending text: the token budget left no room for guesses. ")
    ids = s.committed_ids
    if k == 0 and n:
        text += (f"The first guess {quoted(trace, d['block_before_ids'][0])} was wrong; the target's token "
                 f"{quoted(trace, ids[0])} replaces it and is committed (the guarantee: at least one per forward).")
    elif k:
        confirmed = listing(trace, ids[:min(k, m)])
        text += f"The first {k} guess{'es' if k != 1 else ''} matched the target's argmax ({confirmed})"
        if m > k:
            what = "its token past the block" if k == n else "the first corrected token"
            text += f", so they are committed together with {what} {quoted(trace, ids[k])}"
        text += f": {m} tokens for 1 forward."
    else:
        text += f"The target's token {quoted(trace, ids[0])} is committed."
    if m < k + 1:
        text += (" The text ended inside the block (an end-of-text token or the token budget), so the rest "
                 "of the converged prefix is dropped.")
    changed = [i for i in d["changed"] if i >= m]
    if changed:
        shown = ", ".join(f"{first + i}: {quoted(trace, d['block_before_ids'][i])} \u2192 "
                          f"{quoted(trace, d['block_after_ids'][i])}" for i in changed[:4])
        text += f" {len(changed)} later position{'s' if len(changed) != 1 else ''} changed ({shown}"
        text += ", \u2026)." if len(changed) > 4 else ")."
    open_ = [i for i in d["fixed"] if i >= m]
    if open_:
        text += (f" {len(open_)} kept {'their' if len(open_) != 1 else 'its'} guess but "
                 f"{'are' if len(open_) != 1 else 'is'} not proven until every position before "
                 f"{'them' if len(open_) != 1 else 'it'} is.")
    if d["fresh_ids"]:
        text += (f" The block slides on; {len(d['fresh_ids'])} new slot{'s' if len(d['fresh_ids']) != 1 else ''} "
                 f"start{'s' if len(d['fresh_ids']) == 1 else ''} from the '{trace.config.get('init', 'repeat')}' "
                 f"guess.")
    return text


def chips(trace: Trace, index: int) -> list[Chip]:
    s = trace.steps[index]
    d = s.detail
    k, n = d["settled"], len(d["block_before_ids"])
    out = []
    for i, t in enumerate(s.committed_ids):
        status = "accepted" if i < k else "bonus" if k == n else "resampled"
        what = "guess confirmed" if i < k else "past the block" if k == n else "corrected guess"
        out.append(Chip(t, status, f"{what}, target p = {d['p_new'][i]:.3f}"))
    return out


VIEW = View(
    main=trajectory, side=convergence, words=words, chips=chips,
    fields=("block_start", "block_before_ids", "block_after_ids", "beyond_token", "p_new", "changed", "fixed",
            "settled", "fresh_ids", "cache_len"),
    legend=("prompt", "earlier", "accepted", "resampled", "bonus"),
    help="**Jacobi decoding** (Santilli et al., 2023). Greedy decoding is the fixed point of "
         "y_i = argmax p(y_i | y_<i, x). Jacobi guesses a block of future tokens and, in ONE forward, replaces "
         "every guess by the target's argmax given the guesses before it. The leading guesses the target "
         "reproduced are exact, and so is the first corrected token, so every iteration commits at least one "
         "token: never slower than autoregressive in forwards, and the output is exactly the greedy output. "
         "The block then slides on. **Trajectory**: rows are iterations, columns output positions; bold green "
         "cells were committed, italic orange cells changed, blue cells kept their guess without being proven "
         "yet. **Convergence**: tokens committed per iteration against the guarantee of one; with the CLLM "
         "(smollm2-135m-cllm, SmolLM2 consistency-trained on its own Jacobi trajectories) as the target, a "
         "dotted line gives SmolLM2's own mean, measured on the held-out task suite. Greedy only "
         "(temperature 0).",
)
