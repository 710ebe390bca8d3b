"""Token Recycling's own view in tree decoding (engines/drafting/recycling.py): the adjacency-table rows this step's
draft read, as the draft read them and as this step's verification left them.

A row holds the k tokens the target ranked highest after a token the last time a forward read that token. The
figure reads only detail["recycling"] (the rows' tokens before and after) and the tree's nodes: on the left, each
row as the draft read it, a cell per rank, coloured by what became of the node drafted from it (accepted,
rejected, never reached) or left pale where the template did not draft that rank; on the right, the same row
after the verification rewrote it, each cell saying whether its token held its rank, moved, or is new to the row.
"""
from __future__ import annotations

import plotly.graph_objects as go

from engines.decoding.trees import ROOT
from engines.trace import Trace
from explorer.figures.common import FIGURE_WIDTH, colour, empty, figure, fit, grid, quoted, show, token
from explorer.figures.jacobi import discrete_scale

CELL_FONT = 10
ROW_PX = 24
# cell kind -> (code, colour, legend label); dark text reads on every one of them in both themes
CELLS = {
    "idle": (0, "#E6E6E6", "in the row, not drafted"),
    "accepted": (1, colour("accepted"), "drafted: accepted"),
    "rejected": (2, colour("rejected"), "drafted: rejected"),
    "not_reached": (3, "#BBBBBB", "drafted: not reached"),
    "kept": (4, "#F2F2F2", "after: the same token at this rank"),
    "moved": (5, "#66AAD1", "after: in the row before, at another rank"),
    "new": (6, colour("resampled"), "after: new to the row"),
}
SCALE = discrete_scale([c for _, c, _ in CELLS.values()])
FATE = ("accepted", "rejected", "not_reached")   # the better of two nodes drafted from one cell first


def drafted_cells(d: dict) -> dict[tuple[int, int], dict]:
    """(row token, rank) -> the node the draft made from that cell: a node's parent token names the row it was
    read from, its rank the cell. Where two nodes share a cell (a token at two places in the tree), the one that
    fared best."""
    nodes = d["nodes"]
    out: dict[tuple[int, int], dict] = {}
    for n in nodes:
        key = (d["root_token"] if n["parent"] == ROOT else nodes[n["parent"]]["token"], n["rank"])
        if key not in out or FATE.index(n["status"]) < FATE.index(out[key]["status"]):
            out[key] = n
    return out


def after_kind(row: dict, rank: int) -> str:
    t = row["after"][rank]
    return "kept" if rank < len(row["before"]) and row["before"][rank] == t else \
        "moved" if t in row["before"] else "new"


def panel(trace: Trace, d: dict, side: str, cell_px: float) -> dict:
    """One heatmap: a row per table row read, a cell per rank, on the `side` "before" or "after"."""
    made = drafted_cells(d)
    z, text, hover = [], [], []
    for y, row in enumerate(d["recycling"]["used"]):
        z.append([]), text.append([]), hover.append([])
        for rank, t in enumerate(row[side]):
            if side == "before":
                node = made.get((row["token"], rank))
                kind = node["status"] if node else "idle"
                about = (f"drafted as node {node['id']} (depth {node['depth']}): {node['status'].replace('_', ' ')}"
                         if node else "not drafted (the template did not take this rank here)")
            else:
                kind = after_kind(row, rank)
                was = row["before"].index(t) + 1 if t in row["before"] else None
                about = ("held its rank" if kind == "kept" else f"was at rank {was} as the draft read it"
                         if kind == "moved" else "not in the row as the draft read it")
            z[y].append(CELLS[kind][0])
            label = fit(show(token(trace, t)), cell_px - 4, CELL_FONT)
            text[y].append(label or "")
            hover[y].append(f"row of {quoted(trace, row['token'])} (id {row['token']}), rank {rank + 1}:<br>"
                            f"{quoted(trace, t)} (id {t}) {'as read' if side == 'before' else 'after'}<br>{about}")
    k = d["recycling"]["k"]
    return {"type": "heatmap", "z": z, "x": list(range(1, k + 1)), "y": list(range(len(z))), "text": text,
            "texttemplate": "%{text}", "textfont": {"size": CELL_FONT, "color": "#111111"}, "hovertext": hover,
            "hoverinfo": "text", "colorscale": SCALE, "zmin": 0, "zmax": len(CELLS) - 1, "showscale": False,
            "xgap": 2, "ygap": 2, "showlegend": False}


def table_figure(trace: Trace, index: int, narrow: bool = False) -> go.Figure | None:
    """Token Recycling's rows for a step, or None when the step was not drafted by Token Recycling."""
    if index < 0 or not trace.steps[index].detail.get("recycling"):
        return None
    d = trace.steps[index].detail
    r = d["recycling"]
    if not r["used"]:
        return empty(f"Step {index + 1}: the adjacency table had no row for the last token "
                     f"{quoted(trace, d['root_token'])}, so the draft read none; this step's verification wrote "
                     f"{r['written']} rows ({r['new']} new).")
    width = FIGURE_WIDTH[narrow]
    rows, k = len(r["used"]), r["k"]
    labels = [fit(f"{show(token(trace, row['token']))} \u2192", 72, 11) or "\u2192" for row in r["used"]]
    # side by side on a wide page; one over the other on a phone, where side by side a cell held one character
    g = grid(2, 1, vspace=0.12, titles=("as the draft read it", "after this step's verification")) if narrow else \
        grid(1, 2, hspace=0.1, titles=("as the draft read it", "after this step's verification"))
    cells_px = (width - 110) if narrow else (width - 190) / 2
    data = []
    for i, side in enumerate(("before", "after")):
        at = (i + 1, 1) if narrow else (1, i + 1)
        data.append({**panel(trace, d, side, cells_px / k), **g.cell(*at)})
        # stacked, the upper panel's axis title met the lower panel's title: the ranks' numbers say it there
        g.xaxis(*at).update(tickmode="array", tickvals=list(range(1, k + 1)), showgrid=False, zeroline=False,
                            title={"text": "" if narrow and i == 0 else "rank"})
        g.yaxis(*at).update(autorange="reversed", tickmode="array", tickvals=list(range(rows)), ticktext=labels,
                            showgrid=False, zeroline=False, tickfont={"size": 11},
                            showticklabels=narrow or i == 0)
    data += [{"type": "scatter", "x": [None], "y": [None], "mode": "markers", "name": label,
              "marker": {"symbol": "square", "size": 12, "color": c}} for _, c, label in CELLS.values()]
    panel_px = ROW_PX * rows + 70
    height = 90 + (2 * panel_px if narrow else panel_px)
    title = (f"Step {index + 1}: Token Recycling read {r['rows_read']} table row{'s' if r['rows_read'] != 1 else ''}"
             + (f" (the first {rows} shown)" if rows < r["rows_read"] else "")
             + f"; the verification rewrote {r['written']} ({r['changed']} changed, {r['new']} new)")
    return figure(data, g, title, height=height, legend_below=True, width=width)
