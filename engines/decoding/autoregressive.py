"""The baseline: one target forward per token, the cache holding everything but the pending token."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NotRequired, Sequence, TypedDict

import torch

from engines.config import DecodeConfig
from engines.decoding.sampling import (
    TokenProbability,
    choose,
    probabilities,
    raw_probabilities,
    top,
)
from engines.decoding.step_time import time_split
from engines.models.adapter import LM
from engines.models.devices import clock
from engines.trace import Step


@dataclass(frozen=True)
class AutoregressiveConfig(DecodeConfig):
    pass


class AutoregressiveDetail(TypedDict):
    """One token from one target forward: the distribution it came from, before and after the sampling settings."""
    chosen: int                          # the token committed: the argmax (greedy) or a draw from the processed p
    p_chosen: float                      # its probability under p, the distribution after temperature / top-k / top-p
    raw_p_chosen: float                  # its probability under the target's own distribution (temperature 1)
    top: list[TokenProbability]          # the 10 most probable tokens under p, most probable first
    raw_top: list[TokenProbability]      # the 10 most probable under the target's own distribution
    cache_len: int                       # tokens in the target's cache after the forward (the text but its last token)
    target_forward_s: NotRequired[float]   # seconds of the target's forward this step (CUDA waited for)
    bookkeeping_s: NotRequired[float]    # the rest of wall_s: sampling and the record


def autoregressive(target: LM, prompt_ids: Sequence[int], cfg: AutoregressiveConfig,
                   rng: torch.Generator) -> Iterator[Step]:
    kv = target.new_kv()
    pending = list(prompt_ids)
    for index in range(cfg.max_new_tokens):
        start = clock(target.device)   # CUDA waited for: timings measure the GPU's work
        logits = target.forward(kv, pending)[-1]
        target_s = clock(target.device) - start
        probs = probabilities(logits, cfg.sampling)
        raw = raw_probabilities(logits)
        token = choose(probs, cfg.sampling, rng)
        final = token in target.eos_ids or index == cfg.max_new_tokens - 1
        detail = AutoregressiveDetail(
            chosen=token,
            p_chosen=round(float(probs[token]), 6),
            raw_p_chosen=round(float(raw[token]), 6),
            top=top(probs, 10),
            raw_top=top(raw, 10),
            cache_len=len(kv),
        )
        wall_s = clock(target.device) - start
        detail.update(time_split(wall_s, target_s))
        yield Step(index, (token,), target_forwards=1, tokens_fed=len(pending), wall_s=wall_s, final=final,
                   detail=detail)
        if final:
            return
        pending = [token]
