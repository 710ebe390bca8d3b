"""The drafter interface the speculative and tree engines talk to, and what drafters hand back and record.

An engine asks the registry (engines/drafting/registry.py) for a run's drafter, then each iteration calls
`begin`, then `draft_chain` (speculative) or `draft_tree` (tree), runs one target forward that hands over the
hidden states of `layers`, and tells the drafter what the target kept (`after_chain` / `after_tree`). The tree
engine also hands every drafter the verification forward's logits at every position it read (`verified`), which a
drafter that learns from the target's own scores (Token Recycling) keeps and the rest ignore. A drafter overrides
what it can do; the rest refuses in one sentence or does nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, Sequence, TypedDict

import torch

from engines.decoding.sampling import Sampling
from engines.decoding.trees import Node


class LookupMatch(TypedDict):
    """Where prompt lookup found the text's last n-gram earlier in the text."""
    ngram_tokens: list[int]   # the text's last n tokens, the n-gram looked up
    match_at: int             # where its latest earlier occurrence starts, as an index into the text (prompt first)
    n: int                    # the n-gram's length: the longest from lookup_ngram down to 1 that matched


class HeadsRecord(TypedDict):
    """What a speculative or tree step records about its head drafter."""
    kind: Literal["medusa", "hydra", "eagle"]   # Medusa / blockwise heads, Hydra heads, or the EAGLE-3 head
    trained_on: str                    # the target preset the head was trained on (the only one it drafts for)
    layers: list[int]                  # the target's hidden-state indices it reads (0: the embeddings' output)
    target_layers: int                 # how many layers the target has
    draft_vocab: int                   # tokens the head can draft (its vocabulary, a part of the target's)
    target_in_vocab: list[bool]        # per token the target chose this step: could the head draft it at all


class EarlyExitRecord(TypedDict):
    """What a speculative or tree step records about the early-exit drafter (the target's own first layers)."""
    exit_layer: int       # L: the draft ran the target's decoder layers 1..L, then its final norm and output head
    target_layers: int    # how many decoder layers the target has (the verification runs them all)


class SuffixMatch(TypedDict):
    """The text's longest suffix found in the suffix tree, whose continuations became the draft tree."""
    length: int          # its length in tokens; 0 when no suffix of the text has a continuation
    tokens: list[int]    # the suffix itself
    occurrences: int     # how often it occurred in the prompt and output so far


class RetrievedContinuation(TypedDict):
    """One branch of a retrieval tree, root to leaf, and how many retrieved continuations began with it."""
    tokens: list[int]   # the branch's tokens after the matched suffix, root to leaf
    count: int          # retrieved continuations that begin with them (the leaf's count in the trie)


class RetrievalMatch(TypedDict):
    """REST: the text's longest suffix found in the datastore, and the continuations that made the draft tree."""
    length: int          # the matched suffix's length in tokens; 0 when no suffix of 2 or more tokens occurred
    tokens: list[int]    # the suffix itself
    occurrences: int     # how often it occurs in the datastore
    read: int            # occurrences whose continuations were read (at most the drafter's cap, evenly spaced)
    continuations: list[RetrievedContinuation]   # the tree's branches with their counts, most frequent first (<= 12)
    datastore: str       # the datastore's name: what it was built from, and the digest of its sources
    datastore_tokens: int   # tokens in the datastore
    datastore_bytes: int    # its size: token array and suffix array


@dataclass
class Draft:
    """What a drafter proposed: the tokens and, for the draft model, its processed and raw distributions."""
    tokens: list[int]
    q: torch.Tensor | None = None        # [m, V] the distributions the tokens were sampled from
    q_raw: torch.Tensor | None = None    # [m, V] the drafter's own distributions (temperature 1)
    forwards: int = 0
    lookup: LookupMatch | None = None    # prompt lookup: the n-gram matched and where


class TreeSettings(Protocol):
    """The tree settings a drafter reads (engines.decoding.tree.TreeConfig has them)."""
    tree: str
    tree_budget: int
    tree_depth: int
    tree_topk: int


class Drafter:
    """One run's drafter. `forwards` counts its forwards in the current iteration (the engines record it)."""
    name = "drafter"
    layers: tuple[int, ...] = ()   # the target's hidden-state layers each verification hands over; () for none

    def __init__(self) -> None:
        self.forwards = 0

    def begin(self) -> None:
        """A new iteration."""
        self.forwards = 0

    def draft_chain(self, text: list[int], k: int, s: Sampling, rng: torch.Generator,
                    stop_ids: frozenset[int]) -> Draft:
        raise ValueError(f"The {self.name} drafter drafts trees only; use it with tree decoding.")

    def draft_tree(self, committed: Sequence[int], cfg: TreeSettings, depth: int) -> tuple[list[Node], list[Node]]:
        """The tree to verify (breadth-first) and the drafted candidates left out of it."""
        raise ValueError(f"The {self.name} drafter drafts chains only; use it with speculative decoding.")

    def after_chain(self, kept: int, features: torch.Tensor | None, start: int, text: Sequence[int]) -> None:
        """The target kept the first `kept` tokens of the text it verified. `features`: the hidden states
        (of `layers`) of the positions now final, from position `start`; None when the text ended."""

    def after_tree(self, committed: int, rows: list[int], features: torch.Tensor | None, start: int,
                   text: Sequence[int]) -> None:
        """The target kept the nodes at drafter rows `rows` after `committed` committed tokens; features as in
        `after_chain`."""

    def verified(self, ids: Sequence[int], logits: torch.Tensor, kept: Sequence[int]) -> None:
        """The tree verification forward read `ids` (the pending tokens, then every node breadth-first, rejected
        ones too); `logits[i]` [len(ids), V] is the target's next-token logits after ids[i] in its own branch, and
        `kept` the rows of ids that are now committed text (the pending tokens and the accepted path)."""

    def chain_record(self, target_tokens: Sequence[int]) -> dict:
        """The drafter's fields of a speculative step record."""
        return {}

    def tree_record(self, target_tokens: Sequence[int]) -> dict:
        """The drafter's fields of a tree step record."""
        return {}
