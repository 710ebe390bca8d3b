"""SuffixDecoding's drafter: a suffix tree over the prompt and output drafts a token tree, model-free."""
from __future__ import annotations

import heapq
import math
from typing import Sequence

from engines.decoding.trees import Node
from engines.drafting.base import Drafter, SuffixMatch, TreeSettings


class SuffixDrafter(Drafter):
    """SuffixDecoding (Oliaro et al. 2024, arXiv 2411.04975): a suffix tree over the prompt and the output so
    far, each node counting how often its substring occurred. The text's longest suffix found in the tree
    (up to `max_match` tokens) selects a node; its continuations, scored by frequency, form the draft tree:
    best first, each node's score its parent's times count(child) / count(children of the parent), until
    `budget` nodes. No model runs, so drafting is free; the tokens are deterministic (one-hot q) and the
    frequency share is what is recorded as q."""

    def __init__(self, depth: int = 16, max_match: int = 12):
        super().__init__()
        self.depth, self.max_match = depth, max_match
        self.root: dict = {"count": 0, "next": {}}
        self.text: list[int] = []
        self.forwards, self.ready = 0, True
        self.match: SuffixMatch | None = None   # the last draft's match, as tree steps record it

    name = "suffix"

    def draft_tree(self, committed: Sequence[int], cfg: TreeSettings, depth: int) -> tuple[list[Node], list[Node]]:
        if depth < 1:
            return [], []
        return self.grow(committed, cfg.tree_budget, min(depth, cfg.tree_depth)), []

    def tree_record(self, target_tokens: Sequence[int]) -> dict:
        return {"suffix_match": self.match}

    def extend(self, text: Sequence[int]) -> None:
        """Count every substring of at most `depth` tokens that ends in a token added since the last call."""
        start = len(self.text)
        self.text.extend(text[start:])
        for end in range(start, len(self.text)):
            for s in range(max(0, end - self.depth + 1), end + 1):
                node = self.root
                for t in self.text[s:end]:
                    node = node["next"][t]
                child = node["next"].setdefault(self.text[end], {"count": 0, "next": {}})
                child["count"] += 1

    def matched(self) -> tuple[int, dict | None]:
        """The longest suffix of the text whose node has continuations: (its length, the node)."""
        for m in range(min(self.max_match, len(self.text)), 0, -1):
            node = self.root
            for t in self.text[-m:]:
                node = node["next"].get(t)
                if node is None:
                    break
            if node is not None and node["next"]:
                return m, node
        return 0, None

    def grow(self, committed: Sequence[int], budget: int, depth: int) -> list:
        """The frequency-scored draft tree as tree.Node records (rank paths, breadth-first order)."""

        self.extend(committed)
        m, node = self.matched()
        self.match = SuffixMatch(length=m, tokens=list(self.text[-m:]) if m else [],
                                 occurrences=node["count"] if node else 0)
        if node is None or depth < 1 or budget < 1:
            return []
        nodes, heap, tick = [], [], 0

        def push(parent_node: dict, parent_path: tuple, parent_logq: float) -> None:
            nonlocal tick
            kids = sorted(parent_node["next"].items(), key=lambda kv: -kv[1]["count"])
            total = sum(c["count"] for _, c in kids)
            for rank, (token, child) in enumerate(kids):
                share = child["count"] / total
                heapq.heappush(heap, (-(parent_logq + math.log(share)), tick, parent_path + (rank,), token, share,
                                      child))
                tick += 1

        push(node, (), 0.0)
        while heap and len(nodes) < budget:
            neg, _, path, token, share, child = heapq.heappop(heap)
            nodes.append(Node(path, token, share, -neg))
            if len(path) < depth and child["next"]:
                push(child, path, -neg)
        return sorted(nodes, key=lambda n: (len(n.path), n.path))
