"""The sampling check's figure: the histogram of the emitted token against the target's p. Pure function of a
`Check` and the token texts."""
from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.graph_objects as go

from explorer.figures.common import TARGET_COLOUR, colour, figure, grid, show

if TYPE_CHECKING:   # the figure reads a check's fields only, so a replay loads no engine
    from engines.analysis.sampling_check import Check


def histogram_figure(check: Check, texts: dict[int, str]) -> go.Figure:
    """p and the share of draws that emitted each token, side by side; the proposed token marked."""
    g = grid(1, 1)
    names = [f"{show(texts.get(t, f'<{t}>'))} ({t})" for t in check.token_ids]
    emitted_colour = colour("accepted") if check.within_noise else colour("rejected")
    outline = [colour("bonus") if t in check.proposed else "rgba(0,0,0,0)" for t in check.token_ids]
    data = [
        {"type": "bar", **g.cell(1, 1), "x": names, "y": check.p, "name": "p, the target (recomputed)",
         "marker": {"color": TARGET_COLOUR, "line": {"color": outline, "width": 3}},
         "hovertemplate": "%{x}<br>p = %{y:.4f}<extra></extra>"},
        {"type": "bar", **g.cell(1, 1), "x": names, "y": check.emitted,
         "name": f"emitted, {check.draws:,} draws", "marker": {"color": emitted_colour, "pattern": {
             "shape": "" if check.within_noise else "/"}},
         "hovertemplate": "%{x}<br>share of draws = %{y:.4f}<extra></extra>"},
    ]
    g.xaxis(1, 1).update(tickangle=-40, title={"text": "token (id); outlined: proposed at this position"})
    g.yaxis(1, 1).update(title={"text": "probability"}, rangemode="tozero")
    verdict = "within the noise" if check.within_noise else f"{check.tv / check.noise_floor:.1f}x the noise floor"
    title = (f"{check.rule}: TV {check.tv:.4f} vs noise floor {check.noise_floor:.4f} at {check.draws:,} draws "
             f"({verdict})")
    return figure(data, g, title, height=420, uirevision="sampling-check", barmode="group")
