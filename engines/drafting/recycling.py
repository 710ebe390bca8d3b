"""Token Recycling's drafter: an adjacency table of each token's likeliest successors, filled from the target's own
verification forwards, drafts a token tree with no model.

Luo et al. 2024, "Turning Trash into Treasure: Accelerating Inference of Large Language Models with Token
Recycling" (arXiv 2408.08696). Every forward already scores the whole vocabulary at every position it reads,
including the candidates it rejects; plain speculative decoding throws those scores away. Token Recycling keeps,
per token id, the top-k tokens the target ranked after it the last time it read that token (the adjacency
matrix, k = 8 in the paper), and overwrites those rows after every verification, from every position the forward
read: the pending tokens and every tree node, accepted or not (the "recycled" candidates). Drafting walks the
table breadth-first from the last committed token: a node's children are the top ranks of its token's row, cut to
a static template of rank paths (the paper's is 80 nodes, 6 deep; here it is derived from the tree settings).

No model runs to draft, so a node's q is one-hot for verification (lossless under sampling too: siblings are
distinct tokens); the q recorded is the target's probability of the successor when its row was written.
"""
from __future__ import annotations

import functools
import heapq
import math
from typing import Sequence, TypedDict

import torch

from engines.decoding import trees
from engines.decoding.trees import Node, Path
from engines.drafting.base import Drafter, TreeSettings

K = 8              # successors kept per token: the paper's k
USED_SHOWN = 16    # the rows a step records, of those its draft read (the counts cover them all)
LEVEL_COST = 0.4   # the template's prior: each level costs this much log-score, a rank r costs log(r + 1) (Zipf)


class RecycledRow(TypedDict):
    """One row of the adjacency table the draft read, and what this step's verification made of it."""
    token: int            # the token whose successors the row holds
    before: list[int]     # its successors as the draft read them, the target's most probable first
    after: list[int]      # the row after this step's verification; equal to before when no position held the token


class RecyclingRecord(TypedDict):
    """Token Recycling's adjacency table in a tree step: the rows the draft read and how the verification rewrote
    the table."""
    k: int                       # successors kept per token
    template: int                # rank paths in the template the tree was cut from (it keeps those the rows fill)
    rows_known: int              # tokens that had a row when the draft read the table
    rows_read: int               # distinct rows the draft read: the root's and every expanded node's
    used: list[RecycledRow]      # the first of them in reading order, at most 16
    written: int                 # rows the verification wrote: one per distinct token among pending tokens and nodes
    recycled: int                # of those, rows last written from a node the target did not accept
    new: int                     # rows for tokens that had none before
    changed: int                 # rows whose successors differ from before


@functools.cache
def template(budget: int, depth: int, topk: int) -> tuple[Path, ...]:
    """The `budget` likeliest rank paths at most `depth` deep with ranks below `topk`, under a prior where a rank r
    costs log(r + 1) and a level LEVEL_COST: mostly first choices, a few later ranks near the root, as the paper's
    hand-made tree. A child always scores below its parent, so the chosen paths form a tree (breadth-first)."""
    score = lambda path: sum(math.log(r + 1) for r in path) + LEVEL_COST * len(path)
    heap = [(score((r,)), 1, (r,)) for r in range(topk)]
    chosen: list[Path] = []
    while heap and len(chosen) < budget:
        _, d, path = heapq.heappop(heap)
        chosen.append(path)
        if d < depth:
            for r in range(topk):
                heapq.heappush(heap, (score(path + (r,)), d + 1, path + (r,)))
    return tuple(trees.ordered(chosen))


class RecyclingDrafter(Drafter):
    """Token Recycling (Luo et al. 2024, arXiv 2408.08696): the adjacency table drafts, the verification refills
    it. `table[token]` = (its k successors, their target probabilities), most probable first."""
    name = "recycling"

    def __init__(self, k: int = K):
        super().__init__()
        self.k = k
        self.table: dict[int, tuple[list[int], list[float]]] = {}
        self.read: list[int] = []                  # the rows this step's draft read, in order
        self.before: dict[int, list[int]] = {}     # those rows as read
        self.record: RecyclingRecord | None = None
        self.paths, self.known = 0, 0   # this step's template size, and the rows the table had when it drafted

    def draft_tree(self, committed: Sequence[int], cfg: TreeSettings, depth: int) -> tuple[list[Node], list[Node]]:
        shape = (template(cfg.tree_budget, cfg.tree_depth, cfg.tree_topk) if cfg.tree == "dynamic"
                 else trees.SHAPES[cfg.tree])
        shape = [p for p in shape if len(p) <= depth]
        self.paths, self.read, self.before, self.record = len(shape), [], {}, None
        self.known = len(self.table)
        return self.grow(committed[-1], shape), []

    def grow(self, root: int, shape: Sequence[Path]) -> list[Node]:
        """Breadth-first from the root: each node whose path the template extends reads its token's row, and its
        children are the row's ranks the template names (those the row has)."""
        ranks: dict[Path, list[int]] = {}
        for p in shape:
            ranks.setdefault(p[:-1], []).append(p[-1])
        nodes: list[Node] = []
        level = [Node((), root, 1.0, 0.0)]
        while level:
            children = []
            for parent in level:
                if parent.path not in ranks or parent.token not in self.table:
                    continue
                if parent.path:
                    parent.row = self.reading(parent.token)
                else:
                    self.reading(root)
                tokens, qs = self.table[parent.token]
                children += [Node(parent.path + (r,), tokens[r], qs[r], parent.logq + math.log(max(qs[r], 1e-30)))
                             for r in ranks[parent.path] if r < len(tokens)]
            nodes += children
            level = children
        return sorted(nodes, key=lambda n: (len(n.path), n.path))

    def reading(self, token: int) -> int:
        """Note that the draft read `token`'s row; its index in this step's reading order."""
        if token not in self.before:
            self.before[token] = list(self.table[token][0])
            self.read.append(token)
        return self.read.index(token)

    def verified(self, ids: Sequence[int], logits: torch.Tensor, kept: Sequence[int]) -> None:
        """Recycle the forward: the row of the token at every position becomes the target's top-k there. Where a
        token sits at several positions, a kept position (the committed text's own context) wins over an unkept
        one, and a later over an earlier."""
        top = torch.softmax(logits.float(), dim=-1).topk(min(self.k, logits.shape[-1]))
        tokens, qs = top.indices.tolist(), top.values.tolist()
        kept_rows = set(kept)
        order = [i for i in range(len(ids)) if i not in kept_rows] + sorted(kept_rows)
        written: dict[int, int] = {}
        for i in order:
            written[ids[i]] = i
        before = {t: self.table[t][0] for t in written if t in self.table}
        for token, i in written.items():
            self.table[token] = (tokens[i], qs[i])
        self.record = RecyclingRecord(
            k=self.k, template=self.paths, rows_known=self.known, rows_read=len(self.read),
            used=[RecycledRow(token=t, before=self.before[t], after=list(self.table[t][0]))
                  for t in self.read[:USED_SHOWN]],
            written=len(written), recycled=sum(1 for i in written.values() if i not in kept_rows),
            new=len(written) - len(before), changed=sum(1 for t, row in before.items() if row != self.table[t][0]))

    def tree_record(self, target_tokens: Sequence[int]) -> dict:
        return {"recycling": self.record} if self.record else {}
