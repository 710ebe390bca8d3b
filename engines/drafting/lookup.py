"""Prompt lookup decoding (Saxena 2023): copy what followed the text's last n-gram earlier in the text."""
from __future__ import annotations

import torch

from engines.decoding.sampling import Sampling
from engines.drafting.base import Draft, Drafter, LookupMatch


def draft_by_lookup(text: list[int], k: int, longest: int, stop_ids: frozenset[int]) -> Draft:
    """Prompt lookup decoding (Saxena 2023): find the latest earlier occurrence of the text's last
    n tokens (n from `longest` down to 1) and propose the k tokens that followed it."""
    for n in range(min(longest, len(text) - 1), 0, -1):
        tail = text[-n:]
        for start in range(len(text) - n - 1, -1, -1):
            if text[start:start + n] == tail:
                follow = text[start + n:start + n + k]
                cut = next((i + 1 for i, t in enumerate(follow) if t in stop_ids), len(follow))
                return Draft(follow[:cut], lookup=LookupMatch(ngram_tokens=tail, match_at=start, n=n))
    return Draft([], lookup=None)


class LookupDrafter(Drafter):
    """Prompt lookup as a run's drafter: no model, no forwards, no state beyond the text itself."""
    name = "ngram"

    def __init__(self, longest: int):
        super().__init__()
        self.longest = longest

    def draft_chain(self, text: list[int], k: int, s: Sampling, rng: torch.Generator,
                    stop_ids: frozenset[int]) -> Draft:
        return draft_by_lookup(text, k, self.longest, stop_ids)
