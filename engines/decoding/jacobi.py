"""Jacobi decoding: refine a block of guesses in parallel until it stops changing.

Santilli et al. 2023, "Accelerating Transformer Inference for Translation via Parallel
Decoding" (arXiv 2305.10427), Eq. 3-4: greedy decoding is the fixed point of the system
y_i = argmax p(y_i | y_<i, x), i = 1..n. A Jacobi iteration updates every y_i at once from
the previous iterate, which is ONE causal forward over [pending] + block. Under greedy the
leading guesses that the target reproduces are exact, and so is the first corrected one,
so each iteration commits at least one token and the fixed point is the greedy output.

This is the sliding variant (as in CLLM and lookahead decoding): the converged prefix is
committed at once, the block slides on and the freed slots get fresh guesses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence, TypedDict

import torch

from engines.config import DecodeConfig, option
from engines.decoding.sampling import raw_probabilities
from engines.decoding.stop import until_eos
from engines.models.adapter import LM
from engines.models.devices import clock
from engines.trace import Step

INITS = ("repeat", "random", "pad")


@dataclass(frozen=True)
class JacobiConfig(DecodeConfig):
    block: int = option(8, "guesses refined in parallel by each forward", 1, 32)
    init: str = option("repeat", "first guess for a new block slot: repeat the token before it, a random "
                                 "vocabulary token (seeded), or the pad token", choices=INITS)

    def __post_init__(self):
        super().__post_init__()
        if self.temperature > 0:
            raise ValueError("Jacobi decoding here is greedy only: set temperature to 0.")


class JacobiDetail(TypedDict):
    """One Jacobi iteration: the block of guesses before and after the forward, and the prefix that settled."""
    block_start: int               # the block's first slot, counted in new tokens from the end of the prompt
    block_before_ids: list[int]    # the guesses the forward read (the previous iterate)
    block_after_ids: list[int]     # the target's argmax at every guessed slot (the new iterate)
    beyond_token: int              # the argmax after the last guess: the first corrected token when all matched
    p_new: list[float]             # the target's own probability (temperature 1) of each argmax, slots 1..n+1
    changed: list[int]             # block slots whose guess the forward replaced
    fixed: list[int]               # block slots whose guess the forward reproduced
    settled: int                   # leading guesses reproduced: exact, committed with the next token
    fresh_ids: list[int]           # new guesses for the slots freed after the block slides
    cache_len: int                 # tokens in the target's cache after the crop (the text but its last token)


def guesses(init: str, before: int, count: int, target: LM, rng: torch.Generator) -> list[int]:
    """`count` fresh guesses for the slots after token `before`."""
    if init == "repeat":
        return [before] * count
    if init == "pad":
        pad = target.tokenizer.pad_token_id
        return [pad if pad is not None else min(target.eos_ids)] * count
    vocab = min(target.model.config.vocab_size, len(target.tokenizer))
    return torch.randint(vocab, (count,), generator=rng).tolist()


def leading_matches(guess: Sequence[int], new: Sequence[int]) -> int:
    """How many leading guesses the target reproduced (each is then exact, by induction on i)."""
    k = 0
    while k < len(guess) and guess[k] == new[k]:
        k += 1
    return k




def jacobi(target: LM, prompt_ids: Sequence[int], cfg: JacobiConfig, rng: torch.Generator) -> Iterator[Step]:
    kv = target.new_kv()
    pending = list(prompt_ids)
    block = guesses(cfg.init, pending[-1], cfg.block, target, rng)
    produced = 0
    for index in range(cfg.max_new_tokens):
        start = clock(target.device)   # CUDA waited for: timings measure the GPU's work
        budget = cfg.max_new_tokens - produced
        block = block[:budget - 1]                  # guesses past the budget could never be committed
        cached = len(kv)
        logits = target.forward(kv, pending + block)[len(pending) - 1:]   # rows predict slots 1..n+1
        new = logits.argmax(-1).tolist()
        probs = raw_probabilities(logits)
        p_new = probs.gather(-1, torch.tensor(new, device=probs.device).view(-1, 1)).view(-1).tolist()
        settled = leading_matches(block, new)
        committed = until_eos(new[:min(settled + 1, budget)], target.eos_ids)
        # the cache keeps the committed text but its last token; the matched guesses' rows are exact
        target.crop(kv, cached + len(pending) + len(committed) - 1)
        produced += len(committed)
        rest = new[len(committed):]                 # the new iterate beyond the commit slides left
        fresh = guesses(cfg.init, rest[-1] if rest else committed[-1], cfg.block - len(rest), target, rng)
        final = committed[-1] in target.eos_ids or produced >= cfg.max_new_tokens
        yield Step(index, tuple(committed), target_forwards=1, tokens_fed=len(pending) + len(block),
                   wall_s=clock(target.device) - start, final=final, detail=JacobiDetail(
                       block_start=produced - len(committed),
                       block_before_ids=list(block),
                       block_after_ids=new[:len(block)],
                       beyond_token=new[len(block)],
                       p_new=[round(p, 6) for p in p_new],
                       changed=[i for i, (a, b) in enumerate(zip(block, new)) if a != b],
                       fixed=[i for i, (a, b) in enumerate(zip(block, new)) if a == b],
                       settled=settled,
                       fresh_ids=fresh,
                       cache_len=len(kv),
                   ))
        if final:
            return
        pending = [committed[-1]]
        block = rest + fresh
