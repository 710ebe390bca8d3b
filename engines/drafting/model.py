"""The draft model drafter: a small LM with its own KV cache proposes a chain (x_i ~ q_i) or a token tree
level by level, each level in one forward under a tree attention mask."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from engines.decoding import trees
from engines.decoding.sampling import Sampling, choose, probabilities, raw_probabilities
from engines.decoding.trees import Node
from engines.drafting.base import Draft, Drafter, TreeSettings
from engines.drafting.growth import grow
from engines.models.adapter import KV, LM


def draft_with_model(draft: LM, kv: KV, text: list[int], k: int, s: Sampling, rng: torch.Generator,
                     stop_ids: frozenset[int]) -> Draft:
    """x_i ~ q_i, one draft forward per token; the cache is brought up to the text first (catch-up
    feeds only what it lacks). Drafting stops after an end-of-text token: nothing after it could count."""
    logits = draft.catch_up(kv, text)
    tokens, qs, raws = [], [], []
    while True:
        q = probabilities(logits, s)
        x = choose(q, s, rng)
        tokens.append(x)
        qs.append(q)
        raws.append(logits)
        if len(tokens) == k or x in stop_ids:
            break
        logits = draft.forward(kv, [x])[-1]
    return Draft(tokens, torch.stack(qs), raw_probabilities(torch.stack(raws)), forwards=len(tokens))


@dataclass
class Drafting:
    """The draft's side of one iteration: its cache beyond the committed text and the nodes fed so far."""
    draft: LM
    kv: KV
    start: int                              # committed length; tree rows follow it in the draft cache
    fed: list[Node] = field(default_factory=list)
    forwards: int = 0

    def root(self, committed: Sequence[int]) -> torch.Tensor:
        """Bring the draft cache to the committed text; the draft's distribution after it."""
        self.forwards += 1
        return raw_probabilities(self.draft.catch_up(self.kv, committed))

    def expand(self, nodes: list[Node]) -> torch.Tensor:
        """Feed one level of nodes in one draft forward, each seeing only its ancestors; their distributions."""
        attend = trees.attend([n.path for n in nodes], [n.path for n in self.fed + nodes])
        logits = self.draft.forward_tree_level(self.kv, [n.token for n in nodes], start=self.start,
                                               depths=[len(n.path) - 1 for n in nodes], attend=attend)
        for n in nodes:
            n.row = len(self.fed)
            self.fed.append(n)
        self.forwards += 1
        return raw_probabilities(logits)


class ModelDrafter(Drafter):
    """A draft model with its own KV cache, kept in step with the committed text: it drafts a chain token by
    token, or a tree level by level; after verification its cache keeps what the target kept."""
    name = "model"

    def __init__(self, draft: LM):
        super().__init__()
        self.draft, self.kv = draft, draft.new_kv()
        self.cache_before = self.cache_after = 0
        self.grown = False

    def begin(self) -> None:
        super().begin()
        self.cache_before = self.cache_after = len(self.kv)

    def draft_chain(self, text: list[int], k: int, s: Sampling, rng: torch.Generator,
                    stop_ids: frozenset[int]) -> Draft:
        proposal = draft_with_model(self.draft, self.kv, text, k, s, rng, stop_ids)
        self.forwards, self.cache_after = proposal.forwards, len(self.kv)
        return proposal

    def draft_tree(self, committed: Sequence[int], cfg: TreeSettings, depth: int) -> tuple[list[Node], list[Node]]:
        drafting = Drafting(self.draft, self.kv, len(committed))
        nodes, dropped = grow(drafting, committed, cfg, depth)
        self.forwards, self.grown = drafting.forwards, bool(nodes)
        return nodes, dropped

    def after_chain(self, kept: int, features, start: int, text: Sequence[int]) -> None:
        self.draft.crop(self.kv, min(len(self.kv), kept))

    def after_tree(self, committed: int, rows: list[int], features, start: int, text: Sequence[int]) -> None:
        if self.grown:
            self.draft.keep(self.kv, committed, rows)

    def chain_record(self, target_tokens: Sequence[int]) -> dict:
        return {"draft_cache": [self.cache_before, self.cache_after, len(self.kv)]}
