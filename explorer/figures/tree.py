"""Tree speculative decoding's figures: the draft tree with its fate, and the tree attention mask.

The tree is laid out in layers (x = depth, so a column is one position) with the leaves in rank
order down the page and every parent centred on its children, so no two edges cross.
"""
from __future__ import annotations

import html

import networkx as nx
import plotly.graph_objects as go

from engines.decoding import trees
from engines.trace import Step, Trace
from explorer.figures import drafters, theory
from explorer.figures.common import (
    FIGURE_WIDTH,
    GRID_COLOUR,
    TARGET_COLOUR,
    TEXT_COLOUR,
    Grid,
    View,
    colour,
    empty,
    figure,
    fit,
    grid,
    quoted,
    show,
    symbol,
    token,
)
from explorer.figures.tree_words import chips, choices, draft_cost, no_tree, words

FINAL = "final"
DIM = 0.4          # opacity of rejected and unreached branches
HIDDEN = "rgba(128,128,128,0.12)"   # a masked cell of the attention mask
CROWDED = 24       # leaves beyond which unreached nodes lose their text labels (hover keeps them)


def tidy(g: nx.DiGraph, root) -> dict:
    """Layered tree layout: x = depth; leaves take consecutive rows in rank order, parents sit midway
    between their first and last child. Children keep their insertion (rank) order, so edges never cross."""
    depth = nx.shortest_path_length(g, root)
    row: dict = {}
    leaves = 0
    for node in nx.dfs_postorder_nodes(g, root):
        kids = list(g.successors(node))
        if kids:
            row[node] = (row[kids[0]] + row[kids[-1]]) / 2
        else:
            row[node], leaves = leaves, leaves + 1
    return {node: (depth[node], row[node]) for node in g}


def node_hover(trace: Trace, step: Step, n: dict) -> str:
    d = step.detail
    taken = choices(step).get(n["parent"])
    lines = [f"node {n['id']}: {hovered(trace, n['token'])} (id {n['token']})",
             f"depth {n['depth']}, rank {n['rank']} among its siblings, position {d['positions'][n['id'] + 1]}",
             (f"q (draft, temperature 1) = {n['q']:.4f}" if "recycling" not in d else
              f"q = {n['q']:.4f}: the target's probability of it after "
              f"{hovered(trace, token_of(step, n['parent']))} when that table row was written")
             + f"; cumulative log q = {n['logq']:.3f}",
             f"p (target, as verified) = {n['p']:.4f}; raw p = {n['p_raw']:.4f}"]
    if "u" in n:
        sign = "<=" if n["status"] == "accepted" else ">"
        lines.append(f"u = {n['u']:.4f} {sign} accept probability {n['ratio']:.4f}")
    if "threshold" in n:
        lines.append(f"typical threshold min(ε, δ·exp(-H)) = {n['threshold']:.4f}, H(p) = {n['entropy']:.3f} nats")
    if n["status"] == "rejected" and taken is not None:
        lines.append(f"rejected: the target took {hovered(trace, taken)} here")
    elif n["status"] == "not_reached":
        lines.append("not reached: an ancestor or an earlier sibling settled this position")
    grows = "its table row was read to grow children" if "recycling" in d else "fed to the draft to grow children"
    lines.append(grows if n["expanded"] else "a leaf for the draft")
    return "<br>".join(lines)


def draft_tree(trace: Trace, index: int, narrow: bool = False) -> go.Figure:
    """The step's draft tree: accepted path highlighted, other branches dimmed, p and q on hover."""
    if index < 0:
        return empty("Press Step: the draft grows a tree and the target verifies it in one forward.")
    step = trace.steps[index]
    d = step.detail
    nodes = d["nodes"]
    g = trees.graph([n["parent"] for n in nodes])
    g.add_edge(d["stop_node"], FINAL)
    pos = tidy(g, trees.ROOT)
    on_path = {trees.ROOT, *d["accepted_path"], FINAL}
    data = []
    for bright in (False, True):
        xs, ys, hover = [], [], []
        for a, b in g.edges:
            if (a in on_path and b in on_path) != bright:
                continue
            text = f"edge {label(trace, step, a)} -> {label(trace, step, b)}"
            xs += [pos[a][0], pos[b][0], None]
            ys += [pos[a][1], pos[b][1], None]
            hover += [text, text, None]
        data.append({"type": "scatter", "x": xs, "y": ys, "mode": "lines", "hovertext": hover, "hoverinfo": "text",
                     "name": "accepted path" if bright else "other branches",
                     "line": {"color": colour("accepted") if bright else GRID_COLOUR,
                              "width": 4 if bright else 1.5}})
    root = d["root_token"]
    groups = [("earlier", [trees.ROOT], [f"root: the last committed token {hovered(trace, root)} (id {root}), "
                                         f"position {d['positions'][0]}"])]
    for status in ("accepted", "rejected", "not_reached"):
        members = [n for n in nodes if n["status"] == status]
        groups.append((status, [n["id"] for n in members], [node_hover(trace, step, n) for n in members]))
    final_hover = (f"{legend_name(d['final_kind'])}: the target's own token {hovered(trace, d['final_token'])} "
                   f"(id {d['final_token']})<br>p = {d['final_p']:.4f}; raw p = {d['final_p_raw']:.4f}"
                   + ("<br>outside the draft vocabulary: no head could ever have drafted it"
                      if d.get("heads") and d["heads"]["target_in_vocab"] == [False] else ""))
    groups.append((d["final_kind"], [FINAL], [final_hover]))
    leaves = sum(1 for m in g if g.out_degree(m) == 0)
    depth = max((n["depth"] for n in nodes), default=0)
    room = (FIGURE_WIDTH[narrow] - 70) / (depth + 2) - 8    # px between two depths, for a node's label
    crowded = leaves > CROWDED      # then unreached nodes lose their text labels (hover keeps them)
    for status, members, hover in groups:
        if not members:
            continue
        dimmed = status in ("rejected", "not_reached")
        data.append({
            "type": "scatter", "x": [pos[m][0] for m in members], "y": [pos[m][1] for m in members],
            "mode": "markers" if status == "not_reached" and crowded else "markers+text",
            "text": [node_label(trace, token_of(step, m), room) for m in members], "textposition": "top center",
            "cliponaxis": False,    # a label over the top row's node may rise past the plot area
            "hovertext": hover, "hoverinfo": "text", "name": legend_name(status),
            # dim the marks of branches that lost, but keep their tokens readable
            "textfont": {"color": TEXT_COLOUR},
            "marker": {"color": colour(status), "symbol": symbol(status), "size": 13, "opacity": DIM if dimmed else 1.0,
                       "line": {"width": 1, "color": colour(status)}}})
    title = (f"Step {index + 1}: draft tree of {len(nodes)} node{'s' if len(nodes) != 1 else ''}, "
             f"{len(d['accepted_path'])} accepted + 1 from the target" if nodes else
             f"Step {index + 1}: no draft tree ({no_tree(trace, index)[1]}); a plain target forward, 1 token")
    return figure(data, None, title, height=max(320, min(1100, (20 if crowded else 34) * leaves + 120)),
                  xaxis={"title": {"text": "depth (position = root position + depth)"},
                         "tickmode": "linear", "dtick": 1, "range": [-0.4, depth + 1.6]},
                  yaxis={"visible": False, "autorange": "reversed"}, legend_below=True, width=FIGURE_WIDTH[narrow])


def token_of(step: Step, node) -> int:
    d = step.detail
    if node == FINAL:
        return d["final_token"]
    return d["root_token"] if node == trees.ROOT else d["nodes"][node]["token"]


def label(trace: Trace, step: Step, node) -> str:
    return "root" if node == trees.ROOT else hovered(trace, token_of(step, node))


def hovered(trace: Trace, token_id: int) -> str:
    """A quoted token for hover text, where Plotly would read "<...>" as markup."""
    return html.escape(quoted(trace, token_id), quote=False)


def shown(trace: Trace, token_id: int) -> str:
    """A token for a label on the figure, escaped like hover text."""
    return html.escape(show(token(trace, token_id)), quote=False)


def node_label(trace: Trace, token_id: int, room: float = 1e9) -> str:
    """A node's label: its token, bold and in quotes when it has no letter or digit, since a lone comma or
    full stop is a speck beside a marker; cut to `room` px (the hover has it whole)."""
    if any(ch.isalnum() for ch in token(trace, token_id)):
        return html.escape(fit(show(token(trace, token_id)), room), quote=False)
    return f"<b>\u201c{shown(trace, token_id)}\u201d</b>"


def legend_name(status: str) -> str:
    return {"earlier": "root (last committed token)", "accepted": "accepted", "rejected": "rejected",
            "not_reached": "not reached", "bonus": "bonus (target's own token)",
            "resampled": "resampled / corrected"}[status]


def attention_mask(trace: Trace, index: int, narrow: bool = False) -> go.Figure:
    """The tree attention mask of the target forward: row = a node, column = what it may see."""
    if index < 0:
        return empty("The tree attention mask appears after the first step.")
    step = trace.steps[index]
    d = step.detail
    on_path = {0, *(i + 1 for i in d["accepted_path"])}
    names = [f"root {shown(trace, d['root_token'])} @{d['positions'][0]}"]
    names += [f"{n['id']}: {shown(trace, n['token'])} @{d['positions'][n['id'] + 1]}" for n in d["nodes"]]
    z = [[(2 if r in on_path and c in on_path else 1) if seen else 0 for c, seen in enumerate(row)]
         for r, row in enumerate(d["mask"])]
    # the bare additive value: a 64-node tree has 4,225 cells, and the legend says which value hides
    text = [["0" if seen else "-inf" for seen in row] for row in d["mask"]]
    data = [{"type": "heatmap", "z": z, "x": names, "y": names, "text": text, "zmin": 0, "zmax": 2,
             "showscale": False, "xgap": 1, "ygap": 1,
             "colorscale": [[0, HIDDEN], [0.33, HIDDEN], [0.34, TARGET_COLOUR],
                            [0.66, TARGET_COLOUR], [0.67, colour("accepted")], [1, colour("accepted")]],
             "hovertemplate": "query %{y}<br>key %{x}<br>additive mask %{text}<extra></extra>"}]
    for name, fill in (("visible (additive 0)", TARGET_COLOUR), ("visible, on the accepted path", colour("accepted")),
                       ("hidden (additive -inf)", HIDDEN)):
        data.append({"type": "scatter", "x": [None], "y": [None], "mode": "markers", "name": name,
                     "hoverinfo": "skip", "marker": {"symbol": "square", "size": 12, "color": fill}})
    size = len(names)
    mask_px = max(360, min(800, 18 * size + 230))
    g = grid(2, 1, row_heights=[mask_px, COST_PX], vspace=COST_GAP / (mask_px + COST_PX + COST_GAP),
             titles=["", COST_TITLE])
    for trace_ in data:
        trace_.update(g.cell(1, 1))
    g.xaxis(1, 1).update(type="category", side="top", tickangle=-60, tickfont={"size": 10})
    g.yaxis(1, 1).update(autorange="reversed", type="category", tickfont={"size": 10})
    notes: list[dict] = []
    cost_panel(data, notes, g, trace, index)
    # title_y / title_yanchor move the shared title (figure() owns its text) above the column labels
    return figure(data, g, f"Tree attention mask ({size} x {size}); every row also sees all earlier text",
                  height=mask_px + COST_PX + COST_GAP, margin={"t": 150}, title_y=0.99, title_yanchor="top",
                  annotations=notes, legend_below=True)


# ----------------------------------------------------------------------------- the cost model

COST_PX, COST_GAP = 300, 110   # the cost panel's height, and the room above it for its title and the mask's
COST_TITLE = "tokens per step against its cost<br>T(n) + drafting, in forwards of one token"   # two lines: a phone


def cost_panel(data: list[dict], notes: list[dict], g: Grid, trace: Trace, index: int) -> None:
    """Each step so far as a point (tokens the verify forward read, tokens it committed) over the cost of such
    a step in target forwards of one token: a point above the cost line beat plain decoding."""
    steps = trace.steps[: index + 1]
    cell = g.cell(2, 1)
    cal = theory.calibration(trace)
    c = theory.draft_c(trace, cal)
    fed = [s.tokens_fed for s in steps]
    hover = [f"step {s.index + 1}: the verify forward read {s.tokens_fed} tokens and committed "
             f"{len(s.committed_ids)}" + (f"; cost T({s.tokens_fed}) = {cal.T(s.tokens_fed):.2f}"
                                          f"{f' + {s.draft_forwards} × c' if s.draft_forwards and c else ''}"
                                          if cal is not None else "") for s in steps]
    data.append({"type": "scatter", "mode": "markers", "name": "steps so far: tokens committed", "x": fed,
                 "y": [len(s.committed_ids) for s in steps], "hovertext": hover, "hoverinfo": "text",
                 "marker": {"color": colour("accepted"), "symbol": symbol("accepted"), "size": 9, "opacity": 0.6},
                 **cell})
    data.append({"type": "scatter", "mode": "markers", "name": "this step", "x": fed[-1:],
                 "y": [len(steps[-1].committed_ids)], "hovertext": hover[-1:], "hoverinfo": "text",
                 "marker": {"color": colour("bonus"), "symbol": symbol("bonus"), "size": 15,
                            "line": {"color": "#333333", "width": 1}}, **cell})
    top = max([*fed, 2])
    g.xaxis(2, 1).update(title={"text": "n: tokens read (pending + tree nodes)"},
                         rangemode="tozero")
    g.yaxis(2, 1).update(title={"text": "tokens / forwards"}, rangemode="tozero")
    if cal is None:
        notes.append(theory.cost_note(trace, cell))
        return
    ns = list(range(1, top + 1))
    data.append({"type": "scatter", "mode": "lines", "name": "T(n): verifying n tokens", "x": ns,
                 "y": [cal.T(n) for n in ns], "line": {"color": TARGET_COLOUR},
                 "hovertemplate": "T(%{x}) = %{y:.2f} forwards of one token<extra></extra>", **cell})
    drafting = draft_cost(steps, c)
    if drafting:
        data.append({"type": "scatter", "mode": "lines", "name": f"T(n) + drafting ({drafting:.2f})", "x": ns,
                     "y": [cal.T(n) + drafting for n in ns], "line": {"color": TARGET_COLOUR, "dash": "dash"},
                     "hovertemplate": "T(%{x}) + drafting = %{y:.2f} forwards<extra></extra>", **cell})


VIEW = View(
    main=draft_tree, side=attention_mask, words=words, chips=chips, drafter=drafters.for_tree,
    fields=("tree", "root_token", "pending_ids", "nodes", "dropped", "mask", "positions", "accepted_path",
            "accepted_length", "stop_node", "final_token", "final_kind", "final_p", "final_p_raw", "stop_top",
            "stop_raw_top", "eos_cut", "cache_len"),
    legend=("prompt", "earlier", "accepted", "rejected", "resampled", "bonus", "not_reached"),
    help="**Tree speculative decoding** (SpecInfer, Miao et al. 2024; Medusa, Cai et al. 2024; EAGLE-2, "
         "Li et al. 2024). Each step the small draft model proposes not one continuation but a tree of them: "
         "after every node it keeps its top-ranked next tokens, either in a fixed shape ('chain', 'balanced', "
         "'sparse') or grown where the draft is most confident ('dynamic': expand the likeliest nodes, keep the "
         "budget's worth with the highest cumulative draft probability). The target then reads the whole tree in "
         "ONE forward pass.\n\n"
         "**Tree budget:** 0 means auto: each step keeps the number of nodes that maximises expected tokens per "
         "second on this machine, and the words say why that size (what one node more or fewer would cost and "
         "earn). The box starts at auto for the drafters that are heads trained on the target and "
         "at a fixed size for the others, and follows the drafter you pick until you type into it; a value you "
         "type stays.\n\n"
         "**Top figure:** the tree, root (the last committed token) on the left, one column per depth, so one "
         "column is one position in the text. Green: the path the target accepted; star or diamond: the token "
         "the target adds itself (a free bonus after a leaf, or its own choice where every child failed); dimmed: "
         "branches rejected or never reached. Hover a node for the draft's q, the target's p and, when sampling, "
         "the coin flip u against its acceptance probability.\n\n"
         "**Bottom figure:** the tree attention mask of that one forward. Row = a node, column = what it may "
         "attend to: only its own ancestors and itself (every node also sees all earlier text), and each node "
         "sits at position root + depth, so every branch is scored exactly as if it were alone. Under it, the cost "
         "model measured when the run started: each step as a point (tokens the verify forward read, tokens it "
         "committed) over the cost of such a step in forwards of one token, T(n) plus the drafting; a point "
         "above the cost line beat plain decoding.\n\n"
         "Look for: a wide tree helps when the draft's first choice is often wrong but its second or third is "
         "right. Greedy output equals the target's own greedy decoding; sampled output has exactly the target's "
         "distribution (recursive rejection over siblings).")
