"""REST's drafter: the continuations of the text's longest suffix in a datastore, merged into a frequency trie."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from engines.decoding.trees import Node
from engines.drafting.base import Drafter, RetrievalMatch, RetrievedContinuation, TreeSettings
from engines.drafting.datastore import Datastore, column, find

SHOWN = 12   # branches a step records


class RetrievalDrafter(Drafter):
    """REST (He et al. 2024, "REST: Retrieval-Based Speculative Decoding", arXiv 2311.08252, section 3): find the
    longest suffix of the text (from `max_match` tokens down to `min_match`) that occurs in the datastore; read
    the `depth` tokens after up to `cap` of its occurrences (evenly spaced over its suffix-array range when there
    are more: that range is sorted by what follows, so the spacing samples it fairly); merge them into a trie
    whose nodes count the continuations passing through; keep the `budget` most frequent nodes as the draft tree
    (a node's count never exceeds its parent's, and ties go to the shallower, so a kept node's parent is kept).
    No model runs; the tokens are deterministic (one-hot q) and a node's share of its parent's count is what is
    recorded as q. The datastore is passed in (engines/drafting/datastore.py builds and caches it)."""

    name = "retrieval"

    def __init__(self, store: Datastore, max_match: int = 16, min_match: int = 2, cap: int = 5000):
        super().__init__()
        self.store, self.max_match, self.min_match, self.cap = store, max_match, min_match, cap
        self.match: RetrievalMatch | None = None   # the last draft's match, as tree steps record it

    def draft_tree(self, committed: Sequence[int], cfg: TreeSettings, depth: int) -> tuple[list[Node], list[Node]]:
        depth = min(depth, cfg.tree_depth)
        length, occurrences, conts = self.retrieve(committed, max(depth, 1))
        counted = trie(conts[:, :depth]) if depth >= 1 else {}
        kept = chosen(counted, cfg.tree_budget)
        self.match = RetrievalMatch(
            length=length, tokens=list(committed[len(committed) - length:]) if length else [],
            occurrences=occurrences, read=len(conts), continuations=branches(kept, counted),
            datastore=self.store.meta["name"], datastore_tokens=int(self.store.meta["tokens"]),
            datastore_bytes=int(self.store.meta["bytes"]))
        return nodes(kept, counted, len(conts)), []

    def tree_record(self, target_tokens: Sequence[int]) -> dict:
        return {"retrieval_match": self.match}

    def retrieve(self, text: Sequence[int], depth: int) -> tuple[int, int, np.ndarray]:
        """(the matched suffix's length, its occurrences, [read, depth] continuations, -1 after a cut): the longest
        suffix with at least one continuation; (0, 0, an empty array) when none has."""
        for m in range(min(self.max_match, len(text)), self.min_match - 1, -1):
            lo, hi = find(self.store, [int(t) for t in text[-m:]])
            if hi <= lo:
                continue
            picks = np.unique(np.linspace(lo, hi - 1, min(self.cap, hi - lo)).round().astype(np.int64))
            conts = continuations(self.store, self.store.order[picks], m, depth)
            if (conts[:, 0] >= 0).any():
                return m, hi - lo, conts
        return 0, 0, np.zeros((0, depth), dtype=np.int64)


def continuations(store: Datastore, starts: np.ndarray, m: int, depth: int) -> np.ndarray:
    """The `depth` tokens after each occurrence (starting at `starts`, `m` tokens long), -1 from the first separator
    or the array's end on."""
    cols = np.stack([column(store, starts, m + j) for j in range(depth)], axis=1).astype(np.int64)
    return np.where(np.cumprod(cols >= 0, axis=1).astype(bool), cols, -1)


def trie(conts: np.ndarray) -> dict[tuple[int, ...], int]:
    """Every prefix of the continuations -> how many continuations begin with it (REST's trie, flattened)."""
    counted: dict[tuple[int, ...], int] = {}
    for d in range(1, conts.shape[1] + 1):
        rows = conts[conts[:, d - 1] >= 0, :d]
        if not len(rows):
            break
        keys, counts = np.unique(rows, axis=0, return_counts=True)
        counted.update((tuple(int(t) for t in k), int(c)) for k, c in zip(keys, counts))
    return counted


def chosen(counted: dict[tuple[int, ...], int], budget: int) -> list[tuple[int, ...]]:
    """The `budget` most frequent prefixes; ties to the shallower, then the smaller tokens (deterministic)."""
    return sorted(counted, key=lambda k: (-counted[k], len(k), k))[:max(budget, 0)]


def nodes(kept: list[tuple[int, ...]], counted: dict[tuple[int, ...], int], total: int) -> list[Node]:
    """The kept prefixes as tree.Node records, breadth-first: a node's rank is its place among its kept siblings by
    count, q its share of its parent's count, logq the log of its share of all continuations read."""
    children: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for k in sorted(kept, key=lambda k: (-counted[k], k)):
        children.setdefault(k[:-1], []).append(k)
    out, frontier, paths = [], [()], {(): ()}
    while frontier:
        nxt = []
        for parent in frontier:
            above = counted.get(parent, total)
            for rank, k in enumerate(children.get(parent, [])):
                paths[k] = paths[parent] + (rank,)
                out.append(Node(paths[k], k[-1], counted[k] / above, math.log(counted[k] / total)))
                nxt.append(k)
        frontier = nxt
    return out


def branches(kept: list[tuple[int, ...]], counted: dict[tuple[int, ...], int]) -> list[RetrievedContinuation]:
    """The kept tree's root-to-leaf branches with their counts, most frequent first, at most SHOWN."""
    inner = {k[:-1] for k in kept}
    leaves = sorted((k for k in kept if k not in inner), key=lambda k: (-counted[k], -len(k), k))
    return [RetrievedContinuation(tokens=list(k), count=counted[k]) for k in leaves[:SHOWN]]
