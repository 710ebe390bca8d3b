"""Growing a draft token tree from any drafter that gives distributions level by level (`LevelSource`: the
draft model, the Medusa heads, the EAGLE head): a fixed shape of rank paths (Medusa's trees), or EAGLE-2's
dynamic tree (expand the most confident nodes, then keep the `budget` most confident of all drafted)."""
from __future__ import annotations

import math
from typing import Protocol, Sequence

import torch

from engines.decoding import trees
from engines.decoding.trees import Node, Path
from engines.drafting.base import TreeSettings


class LevelSource(Protocol):
    def root(self, committed: Sequence[int]) -> torch.Tensor:
        """The drafter's distribution after the committed text."""

    def expand(self, nodes: list[Node]) -> torch.Tensor:
        """One forward over a level of nodes, each seeing only its ancestors; their distributions [n, V]."""


def offspring(parent: Node | None, probs: torch.Tensor, ranks: Sequence[int]) -> list[Node]:
    """The children of `parent` (None: the root) at the given ranks of the draft's distribution."""
    values, ids = probs.topk(max(ranks) + 1)
    values, ids = values.tolist(), ids.tolist()
    path, logq = (parent.path, parent.logq) if parent else ((), 0.0)
    return [Node(path + (r,), ids[r], values[r], logq + math.log(max(values[r], 1e-30))) for r in ranks]


def grow_static(drafting: LevelSource, committed: Sequence[int], shape: Sequence[Path]) -> list[Node]:
    """A fixed shape of rank paths, filled from the draft's top-k choices one level per forward."""
    ranks: dict[Path, list[int]] = {}
    for p in trees.ordered(shape):
        ranks.setdefault(p[:-1], []).append(p[-1])
    level = offspring(None, drafting.root(committed), ranks[()])
    nodes = list(level)
    while parents := [n for n in level if n.path in ranks]:
        probs = drafting.expand(parents)
        level = [c for n, pr in zip(parents, probs) for c in offspring(n, pr, ranks[n.path])]
        nodes += level
    return nodes


def grow_dynamic(drafting: LevelSource, committed: Sequence[int], depth: int, topk: int) -> list[Node]:
    """EAGLE-2's expansion phase: each level, expand the top-k children of the top-k most confident
    nodes of the level before. Returns every drafted candidate."""
    level = offspring(None, drafting.root(committed), range(topk))
    nodes = list(level)
    for _ in range(depth - 1):
        frontier = sorted(level, key=lambda n: -n.logq)[:topk]
        probs = drafting.expand(frontier)
        level = [c for n, pr in zip(frontier, probs) for c in offspring(n, pr, range(topk))]
        nodes += level
    return nodes


def most_confident(nodes: list[Node], budget: int) -> list[Node]:
    """EAGLE-2's reranking: the `budget` nodes with the highest cumulative draft log-probability. A child is
    never more confident than its parent (ties go to the shallower node), so the kept nodes form a tree."""
    return sorted(nodes, key=lambda n: (-n.logq, len(n.path)))[:budget]


def grow(drafting: LevelSource, committed: Sequence[int], cfg: TreeSettings,
         depth: int) -> tuple[list[Node], list[Node]]:
    """The iteration's draft tree in breadth-first order (at most `depth` deep), and the drafted candidates the
    budget dropped (most confident first): a fixed shape, or EAGLE-2's dynamic tree."""
    if depth < 1:
        return [], []
    if cfg.tree == "dynamic":
        drafted = grow_dynamic(drafting, committed, min(depth, cfg.tree_depth), cfg.tree_topk)
        kept = most_confident(drafted, cfg.tree_budget)
    else:
        drafted = kept = grow_static(drafting, committed, [p for p in trees.SHAPES[cfg.tree] if len(p) <= depth])
    kept_paths = {n.path for n in kept}
    dropped = sorted((n for n in drafted if n.path not in kept_paths), key=lambda n: (-n.logq, len(n.path), n.path))
    return sorted(kept, key=lambda n: (len(n.path), n.path)), dropped
