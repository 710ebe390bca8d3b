"""Token trees in Medusa's form: a tree is a list of paths of draft ranks.

The path (0, 1) is the node "the draft's 2nd choice after its 1st choice": its parent is (0,), its
depth is 2 and its rank is 1. Everything a tree forward needs follows from the paths: parents,
depths, which nodes a node may attend to (its ancestors and itself), its position (the root's
position + its depth) and the root-to-leaf paths. Medusa (Cai et al. 2024, arXiv 2401.10774,
section 2.1.2, "tree attention"); SpecInfer (Miao et al. 2024) verifies such trees in one pass.

Nodes are kept in breadth-first order (by depth, then by path), so a parent always comes before
its children and one tree level is a contiguous run of nodes. The root is the last committed
token; it is not a node and has index -1.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

import networkx as nx

Path = tuple[int, ...]
ROOT = -1

# The shipped static shapes. Medusa-like: most nodes follow the draft's first choices, a few try
# its 2nd-4th, since deeper low-rank branches are rarely all accepted.
SHAPES: dict[str, tuple[Path, ...]] = {
    "chain": ((0,), (0, 0), (0, 0, 0), (0, 0, 0, 0)),
    "balanced": tuple(p for d in (1, 2, 3) for p in itertools.product((0, 1), repeat=d)),
    "sparse": ((0,), (1,), (2,), (3,),
               (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0),
               (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0),
               (0, 0, 0, 0), (0, 0, 1, 0),
               (0, 0, 0, 0, 0)),
}


def ordered(paths: Sequence[Sequence[int]]) -> list[Path]:
    """The paths in breadth-first order, after checking they form a tree."""
    out = sorted({tuple(int(r) for r in p) for p in paths}, key=lambda p: (len(p), p))
    if len(out) != len(paths):
        raise ValueError("A tree may list each path only once.")
    present = set(out)
    for p in out:
        if not p or min(p) < 0:
            raise ValueError(f"Tree path {p} must be a non-empty list of ranks 0, 1, 2, ...")
        if len(p) > 1 and p[:-1] not in present:
            raise ValueError(f"Tree path {p} needs its parent {p[:-1]} in the tree too.")
    return out


def parents(paths: Sequence[Path]) -> list[int]:
    """Each node's parent index (ROOT for the first level)."""
    index = {p: i for i, p in enumerate(paths)}
    return [index[p[:-1]] if len(p) > 1 else ROOT for p in paths]


def depths(paths: Sequence[Path]) -> list[int]:
    """Each node's distance from the root (the first level is depth 1)."""
    return [len(p) for p in paths]


def children(parent_of: Sequence[int]) -> dict[int, list[int]]:
    """Each node's children in rank order (with breadth-first nodes, index order is rank order)."""
    kids: dict[int, list[int]] = {ROOT: [], **{i: [] for i in range(len(parent_of))}}
    for i, p in enumerate(parent_of):
        kids[p].append(i)
    return kids


def attend(rows: Sequence[Path], cols: Sequence[Path] | None = None) -> "torch.Tensor":
    """attend[i, j]: may node rows[i] see node cols[j]? Only if cols[j] is rows[i] or one of its ancestors.

    With cols omitted this is the tree attention mask among the nodes (Medusa fig. 2): row i is
    True exactly on node i's root-to-node path."""
    import torch  # here, not above: only the masks are tensors, and a replayed trace reads the rest without torch
    cols = rows if cols is None else cols
    return torch.tensor([[len(c) <= len(r) and r[:len(c)] == c for c in cols] for r in rows],
                        dtype=torch.bool).view(len(rows), len(cols))


def behind(pending: int, tree_attend: "torch.Tensor") -> "torch.Tensor":
    """The mask for `pending` committed tokens followed by the tree: the pending tokens are causal among
    themselves, and every node sees all of them (the last one is the root) plus its own path."""
    import torch  # as in attend
    n = tree_attend.shape[0]
    out = torch.zeros(pending + n, pending + n, dtype=torch.bool)
    out[:pending, :pending] = torch.ones(pending, pending, dtype=torch.bool).tril()
    out[pending:, :pending] = True
    out[pending:, pending:] = tree_attend
    return out


def positions(paths: Sequence[Path], root_position: int) -> list[int]:
    """Position ids: a node sits at the root's position plus its depth, whatever branch it is on."""
    return [root_position + len(p) for p in paths]


def leaf_paths(parent_of: Sequence[int]) -> list[list[int]]:
    """Every root-to-leaf path as a list of node indices."""
    kids = children(parent_of)
    out = []
    for leaf in (i for i in range(len(parent_of)) if not kids[i]):
        path = [leaf]
        while parent_of[path[-1]] != ROOT:
            path.append(parent_of[path[-1]])
        out.append(path[::-1])
    return out


def graph(parent_of: Sequence[int]) -> nx.DiGraph:
    """The tree as a networkx DiGraph rooted at ROOT, edges added in rank order."""
    g = nx.DiGraph()
    g.add_node(ROOT)
    for i, p in enumerate(parent_of):
        g.add_edge(p, i)
    return g


@dataclass
class Node:
    path: Path
    token: int
    q: float                # the draft's probability of `token` after its parent (temperature 1)
    logq: float             # cumulative draft log-probability from the root: EAGLE-2's confidence
    row: int | None = None  # its row in the draft cache after the committed text, once fed to the draft


def ancestry(parents: Sequence[int]) -> tuple[list[list[bool]], list[int]]:
    """For tokens fed with these parents (-1: after the cached text): sees[i][j], j is i or an ancestor of i; and
    each token's depth below the cached text. Lookahead's mask, and its figure's."""
    sees, depths = [], []
    for i, p in enumerate(parents):
        row = list(sees[p]) + [False] * (i - p) if p >= 0 else [False] * (i + 1)
        row[i] = True
        sees.append(row)
        depths.append(depths[p] + 1 if p >= 0 else 0)
    n = len(parents)
    return [row + [False] * (n - len(row)) for row in sees], depths
