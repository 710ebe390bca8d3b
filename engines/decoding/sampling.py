"""Logits -> probabilities, the same way for every caller; seeded sampling.

Temperature 0 means greedy: the processed distribution is one-hot at the argmax,
so the verification rules need no special case to stay exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

TokenProbability = tuple[int, float]   # (token id, probability), as a Step records a distribution's top tokens


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_k: int = 0       # 0: no top-k filter
    top_p: float = 1.0   # 1: no nucleus filter

    def __post_init__(self):
        if not (self.temperature >= 0 and self.temperature <= 10):
            raise ValueError("temperature must be between 0 (greedy) and 10")
        if self.top_k < 0:
            raise ValueError("top-k must be 0 (off) or a positive number of tokens")
        if not (0 < self.top_p <= 1):
            raise ValueError("top-p must be above 0 and at most 1")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def probabilities(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """Processed next-token distribution(s): temperature, then top-k, then top-p (as in transformers)."""
    logits = logits.float()
    if s.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    logits = logits / s.temperature
    if s.top_k:
        kth = logits.topk(min(s.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop_sorted = sorted_probs.cumsum(-1) - sorted_probs >= s.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def raw_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """The model's own distribution (temperature 1, no filters), for showing next to the processed one."""
    return logits.float().softmax(-1)


def sample(probs: torch.Tensor, rng: torch.Generator) -> int:
    """One token from a distribution, using only the generator passed in."""
    return int(torch.multinomial(probs.float().cpu(), 1, generator=rng).item())


def choose(probs: torch.Tensor, s: Sampling, rng: torch.Generator) -> int:
    """The next token: the argmax when greedy (no draw), else a sample."""
    return int(probs.argmax()) if s.greedy else sample(probs, rng)


def uniform(rng: torch.Generator) -> float:
    """One uniform draw in [0, 1) for an accept/reject decision."""
    # float32 whatever the default dtype (bf16 while some models load): the same seed draws the same number
    return float(torch.rand((), generator=rng, dtype=torch.float32).item())


def top(probs: torch.Tensor, k: int = 5) -> list[TokenProbability]:
    """The k most probable tokens as (id, probability), for recording in a Step."""
    values, ids = probs.float().topk(min(k, probs.shape[-1]))
    return [(int(i), round(float(v), 6)) for i, v in zip(ids.tolist(), values.tolist()) if v > 0]
