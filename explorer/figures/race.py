"""The race's figures: a timeline per method (one mark per target forward, as wide as the tokens it
committed), the cost model's curves with the measured points, the table and the outputs side by side.
Pure functions of a `Race`."""
from __future__ import annotations

import html
from typing import TYPE_CHECKING

import plotly.graph_objects as go

from explorer.figures import theory
from explorer.figures.common import colour, figure, grid, show

if TYPE_CHECKING:   # the figures read a race's fields only, so a replay loads no engine
    from engines.analysis.race import Race

SINGLE, MULTI = colour("chosen"), colour("accepted")   # one token per forward (plain decoding) vs several


def lane(r) -> str:
    return (f"{r.label}<br>{r.target_forwards} fwd · speedup {r.speedup:.2f}x"
            + ("" if r.equals_greedy else " · ≠ greedy"))


def timeline_figure(race: Race) -> go.Figure:
    """Each lane is a method; each mark one target forward, its width the tokens that forward committed."""
    g = grid(1, 1)
    data = []
    for r in race.rows:
        starts, at = [], 0
        for n in r.committed_per_forward:
            starts.append(at)
            at += n
        hover = [f"{r.label}<br>target forward {i + 1} of {r.target_forwards}<br>committed {n} token"
                 f"{'' if n == 1 else 's'} (new tokens {s + 1}-{s + n})"
                 for i, (s, n) in enumerate(zip(starts, r.committed_per_forward))]
        data.append({"type": "bar", "orientation": "h", "name": r.label, "showlegend": False,
                     "y": [lane(r)] * len(starts), "x": r.committed_per_forward, "base": starts,
                     "marker": {"color": [MULTI if n > 1 else SINGLE for n in r.committed_per_forward],
                                "line": {"color": "rgba(255,255,255,0.9)", "width": 1.5}},
                     "hovertext": hover, "hoverinfo": "text", **g.cell(1, 1)})
    # legend entries: colour is never the only cue, the width says the same
    for name, c in (("1 token per forward", SINGLE), ("several tokens per forward", MULTI)):
        data.append({"type": "bar", "orientation": "h", "name": name, "x": [None], "y": [None],
                     "marker": {"color": c}, **g.cell(1, 1)})
    g.xaxis(1, 1).update(title={"text": "new tokens (each mark: one target forward, as wide as it committed)"},
                         range=[0, race.max_new_tokens])
    g.yaxis(1, 1).update(autorange="reversed", automargin=True)
    return figure(data, g, f"Race to {race.max_new_tokens} new tokens on {race.target} (greedy)",
                  height=110 + 46 * len(race.rows), uirevision="race", barmode="overlay", bargap=0.35,
                  margin={"l": 10})


def cost_figure(race: Race) -> go.Figure:
    """Expected tokens per iteration and expected speedup over k for each measured (alpha, c), with the
    measured runs as points on the curves."""
    cost = race.cost
    g = grid(1, 2, titles=(theory.TOKENS_TITLE, theory.SPEEDUP_TITLE))
    data = []
    for i, p in enumerate(cost.points):
        said = f"measured in this run: k {p.k}"
        tokens = theory.Measured(p.k, p.tokens_per_iteration,
                                 f"{said}, {p.tokens_per_iteration:.2f} tokens per iteration")
        speedup = theory.Measured(p.k, p.speedup, f"{said}, speedup {p.speedup:.2f}x")
        cv = theory.Curves(f"{p.label} (α {p.alpha:.2f}, c {p.c:.2f})", p.alpha, p.c, cost.verify_n,
                           cost.verify_cost, theory.PALETTE[i % len(theory.PALETTE)], [tokens], [speedup],
                           marker_name=f"{p.label}: measured")
        data += theory.curve_traces(cv, g.cell(1, 1), g.cell(1, 2))
    data.append(theory.plain_line(g.cell(1, 2)))
    for col in (1, 2):
        g.xaxis(1, col).update(theory.k_axis())
        g.yaxis(1, col).update(rangemode="tozero")
    return figure(data, g, "Cost model, measured in this run", height=380, uirevision="race-cost",
                  legend={"y": -0.3})


def table_markdown(race: Race) -> str:
    head = ("| method | target fwd | draft fwd | tokens / target fwd | tokens fed / fwd | acceptance (accepted / "
            "examined) | tokens / iteration (incl. target's) | wall s | speedup vs AR | output |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    lines = [head]
    for r in race.rows:
        acc = f"{r.acceptance_rate:.2f} ({r.drafts_accepted}/{r.drafts_examined})" if r.acceptance_rate is not None \
            else "–"
        same = "= greedy" if r.equals_greedy else f"**differs at token {r.first_difference}**"
        lines.append(f"| {r.label} | {r.target_forwards} | {r.draft_forwards} | {r.tokens_per_target_forward:.2f} | "
                     f"{r.tokens_fed_per_forward:.2f} | {acc} | {r.tokens_per_iteration:.2f} | {r.wall_s:.3f} | "
                     f"{r.speedup:.2f}x | {same} |")
    notes = [f"*{name} is left out: {why}.*" for name, why in race.left_out.items()]
    notes.append("Acceptance counts drafts up to and including the first refused one; tokens per iteration also "
                 "counts the token the target adds itself, so it is 1 + accepted drafts per iteration. Speedup is "
                 "autoregressive's wall time over the method's: above 1 is faster than autoregressive, as in the "
                 "cost figure and the words; both runs were timed back to back in one process.")
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes)


def outputs_html(race: Race) -> str:
    """Every method's output as tokens, side by side with autoregressive's; the first token that differs
    is struck through and named, and what follows it is dotted."""
    rows = []
    for r in race.rows:
        cut = r.first_difference
        spans = []
        for i, t in enumerate(r.output_ids):
            status = "earlier" if cut is None or i < cut else "rejected" if i == cut else "not_reached"
            title = f"token {i} | id {t}" + (" | first difference from autoregressive" if i == cut else "")
            text = html.escape(show(race.token_texts.get(t, f"<{t}>")))
            spans.append(f'<span class="chip chip-{status}" title="{html.escape(title, quote=True)}">{text}</span>')
        verdict = "= greedy" if r.equals_greedy else f"first difference at token {cut}"
        rows.append(f'<tr><td class="race-lane"><b>{html.escape(r.label)}</b><br><small>{verdict}</small></td>'
                    f'<td><div class="chips">{"".join(spans)}</div></td></tr>')
    return f'<table class="race-outputs">{"".join(rows)}</table>'
