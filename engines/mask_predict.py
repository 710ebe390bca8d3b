"""Mask-predict and masked diffusion: a span of masks after the prompt, filled in over T iterations.

Mask-predict (Ghazvininejad et al. 2019, "Mask-Predict: Parallel Decoding of Conditional Masked Language
Models", arXiv 1904.09324, section 3.1): iteration 0 predicts every position; after iteration t the
n = N * (T - t) / T least confident tokens among all positions are masked again and re-predicted, so a
token may change. Only re-predicted positions get a new probability (eq. 3-4). With length 0 the span is
run at several lengths at once and the one with the best mean log-probability is kept (section 3.3,
the length beam).

Masked diffusion (LLaDA, Nie et al. 2025, arXiv 2502.09992, Algorithm 5 with low-confidence remasking):
each iteration commits the most confident masked positions and never masks them again; the count per
iteration spreads the block evenly over its iterations; with a block size B the span is decoded block by
block, left to right (semi-autoregressive). "random" commits positions chosen uniformly at random: a
control that shows what confidence ordering buys.

The model needs only `mask_id`, `eos_ids` and `masked_logits_rows(rows) -> [float32 [len(row), vocab]]`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from time import perf_counter
from typing import Iterator, Sequence

import torch

from engines.config import DecodeConfig, option
from engines.sampling import choose, probabilities, raw_probabilities, top
from engines.trace import Step

STRATEGIES = ("mask-predict", "diffusion", "random")


@dataclass(frozen=True)
class MaskPredictConfig(DecodeConfig):
    length: int = option(24, "tokens in the span to fill; 0 predicts it: the length beam runs lengths around "
                             "half of max new tokens at once and keeps the best mean log-probability", 0, 256)
    length_beam: int = option(5, "how many span lengths to try at once when length is 0", 1, 16,
                              label="length beam")
    iterations: int = option(10, "forward passes (T) to fill the span", 1, 256)
    strategy: str = option("mask-predict", "mask-predict re-masks the least confident tokens; diffusion commits "
                                           "the most confident and never re-masks; random commits at random",
                           choices=STRATEGIES)
    block: int = option(0, "block size in tokens: the span is filled block by block, left to right, "
                           "iterations shared between blocks (0: the whole span as one block)", 0, 256)
    confidence: str = option("probability", "how sure the model is of a token: its probability, or the margin "
                                             "between it and the best other token", choices=("probability", "margin"))

    def __post_init__(self):
        super().__post_init__()
        if self.length > self.max_new_tokens:
            raise ValueError(f"The span length {self.length} is more than max new tokens {self.max_new_tokens}; "
                             f"raise max new tokens or shorten the span.")
        if self.length == 0 and self.block:
            raise ValueError("Length 0 (predict the length) fills the whole span at once, so set block to 0 "
                             "or choose a length.")
        blocks = len(block_bounds(self.length or 1, self.block))
        if self.iterations < blocks:
            raise ValueError(f"{blocks} blocks need at least {blocks} iterations; raise iterations or the block size.")


# ----------------------------------------------------------------------------- schedules (pure)

def spread(total: int, parts: int) -> list[int]:
    """`total` split into `parts` counts differing by at most one, the larger first (LLaDA's
    get_num_transfer_tokens: tokens committed per iteration, and here also iterations per block)."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def schedule(n: int, iterations: int, strategy: str) -> list[int]:
    """Masks at the start of each iteration t = 0 .. T-1 of a block of n positions.

    mask-predict: floor(n * (T - t) / T), the paper's n (all n at t = 0).
    diffusion, random: n minus the tokens committed so far, `spread(n, T)` per iteration.
    """
    if strategy == "mask-predict":
        return [n * (iterations - t) // iterations for t in range(iterations)]
    commits = spread(n, iterations)
    return [n - sum(commits[:t]) for t in range(iterations)]


def block_bounds(length: int, block: int) -> list[tuple[int, int]]:
    """[start, end) of every block of the span; block 0 or >= length is the whole span."""
    size = block if 0 < block < length else length
    return [(s, min(s + size, length)) for s in range(0, length, size)]


@dataclass(frozen=True)
class Phase:
    """Where one global iteration falls: the block [start, end) and the iteration t of T inside it."""
    start: int
    end: int
    t: int
    of: int


def plan(length: int, block: int, iterations: int) -> list[Phase]:
    """One Phase per global iteration: blocks left to right, the iterations spread over them."""
    bounds = block_bounds(length, block)
    return [Phase(s, e, t, per) for (s, e), per in zip(bounds, spread(iterations, len(bounds)))
            for t in range(per)]


def candidate_lengths(cfg: MaskPredictConfig) -> list[int]:
    """The span lengths to run: the one asked for, or `length_beam` consecutive lengths around half of
    max new tokens (the paper's beam takes the top lengths of a length predictor; we have none)."""
    if cfg.length:
        return [cfg.length]
    centre = max(1, cfg.max_new_tokens // 2)
    first = centre - cfg.length_beam // 2
    return sorted({min(max(1, first + i), cfg.max_new_tokens) for i in range(cfg.length_beam)})


# ----------------------------------------------------------------------------- one span's state

@dataclass
class Span:
    """The working state of one candidate span (mask id where masked)."""
    length: int
    mask_id: int
    tokens: list[int] = field(default_factory=list)
    predicted: list[int] = field(default_factory=list)        # latest prediction at every position
    p: list[float | None] = field(default_factory=list)       # model probability of that prediction
    confidence: list[float | None] = field(default_factory=list)
    settled: list[int | None] = field(default_factory=list)   # iteration since which the prediction is unchanged

    def __post_init__(self):
        n = self.length
        self.tokens, self.predicted = [self.mask_id] * n, [self.mask_id] * n
        self.p, self.confidence, self.settled = [None] * n, [None] * n, [None] * n

    def masked(self, phase: Phase) -> list[int]:
        return [i for i in range(phase.start, phase.end) if self.tokens[i] == self.mask_id]

    def mean_logprob(self) -> float | None:
        known = [p for p in self.p if p is not None]
        return sum(math.log(max(p, 1e-30)) for p in known) / len(known) if known else None


def predict(span: Span, logits: torch.Tensor, positions: list[int], iteration: int, cfg: MaskPredictConfig,
            rng: torch.Generator) -> dict[int, list]:
    """Choose a token at every given (masked) position from its logits; update its probability,
    confidence and settled iteration. Returns each position's top-5 under the model."""
    tops = {}
    if not positions:
        return tops
    rows = logits[positions]
    processed = probabilities(rows, cfg.sampling)
    raw = raw_probabilities(rows)
    for row, i in enumerate(positions):
        token = choose(processed[row], cfg.sampling, rng)
        p = float(raw[row, token])
        if cfg.confidence == "margin":
            others = raw[row].clone()
            others[token] = 0
            confidence = p - float(others.max())
        else:
            confidence = p
        if span.predicted[i] != token or span.settled[i] is None:
            span.settled[i] = iteration
        span.predicted[i], span.p[i], span.confidence[i] = token, round(p, 6), round(confidence, 6)
        tops[i] = [list(pair) for pair in top(raw[row], 5)]
    return tops


def update(span: Span, phase: Phase, masked: list[int], cfg: MaskPredictConfig,
           rng: torch.Generator) -> dict:
    """Apply the strategy after this iteration's predictions: which positions keep a token, which are
    (re-)masked. Returns the positions unmasked and re-masked, and the random draws if any."""
    counts = schedule(phase.end - phase.start, phase.of, cfg.strategy)
    after = counts[phase.t + 1] if phase.t + 1 < phase.of else 0
    if cfg.strategy == "mask-predict":
        for i in masked:
            span.tokens[i] = span.predicted[i]
        block = range(phase.start, phase.end)
        remasked = sorted(sorted(block, key=lambda i: (span.confidence[i], i))[:after])
        for i in remasked:
            span.tokens[i] = span.mask_id
        return {"unmasked": [i for i in masked if i not in remasked], "remasked": remasked}
    commit = len(masked) - after
    if cfg.strategy == "random":
        draws = torch.rand(len(masked), generator=rng).tolist()
        order = sorted(range(len(masked)), key=lambda k: (draws[k], masked[k]))
        chosen = sorted(masked[k] for k in order[:commit])
        extra = {"draws": [round(u, 6) for u in draws]}
    else:
        chosen = sorted(sorted(masked, key=lambda i: (-span.confidence[i], i))[:commit])
        extra = {}
    for i in chosen:
        span.tokens[i] = span.predicted[i]
    return {"unmasked": chosen, "remasked": [], **extra}


def planned_masks(phase: Phase, length: int, strategy: str) -> tuple[int, float]:
    """Masks in the whole span at the start of this phase: the schedule's count, and the paper's
    unrounded n * (T - t) / T for the block, plus the later blocks (still all masks)."""
    n, later = phase.end - phase.start, length - phase.end
    return schedule(n, phase.of, strategy)[phase.t] + later, round(n * (phase.of - phase.t) / phase.of + later, 4)


def record(span: Span, phase: Phase, iteration_input: list[int], masked: list[int], tops: dict,
           changes: dict, cfg: MaskPredictConfig) -> dict:
    """One candidate span's part of a Step: plain lists, one entry per span position."""
    scheduled, formula = planned_masks(phase, span.length, cfg.strategy)
    return {
        "length": span.length, "block": [phase.start, phase.end], "block_iteration": phase.t,
        "block_iterations": phase.of,
        "input_tokens": iteration_input, "predicted_tokens": list(span.predicted), "tokens": list(span.tokens),
        "p": list(span.p), "confidence": list(span.confidence), "settled": list(span.settled),
        "masked_before": masked, **changes,
        "top": [tops.get(i, []) for i in range(span.length)],
        "scheduled_masks": scheduled, "formula_masks": formula,
        "masks_after": span.tokens.count(span.mask_id),
        "mean_logprob": None if span.mean_logprob() is None else round(span.mean_logprob(), 6),
    }


def best(spans: Sequence[Span]) -> int:
    """The candidate with the highest mean log-probability (the first on a tie)."""
    scores = [s.mean_logprob() for s in spans]
    return max(range(len(spans)), key=lambda k: (scores[k] is not None, scores[k] or 0.0, -k))


def output(span: Span, eos_ids: frozenset[int]) -> tuple[int, ...]:
    """The span's tokens up to and including the first end-of-text token."""
    for i, t in enumerate(span.tokens):
        if t in eos_ids:
            return tuple(span.tokens[:i + 1])
    return tuple(span.tokens)


# ----------------------------------------------------------------------------- the engine

def mask_predict(model, prompt_ids: Sequence[int], cfg: MaskPredictConfig, rng: torch.Generator) -> Iterator[Step]:
    """Yield one Step per iteration; the last one commits the chosen span (the text only exists then)."""
    prompt = list(prompt_ids)
    spans = [Span(n, model.mask_id) for n in candidate_lengths(cfg)]
    plans = [plan(s.length, cfg.block, cfg.iterations) for s in spans]
    for iteration in range(cfg.iterations):
        start = perf_counter()
        phases = [p[iteration] for p in plans]
        masked = [s.masked(ph) for s, ph in zip(spans, phases)]
        running = [k for k in range(len(spans)) if masked[k]]   # a span with nothing masked needs no forward
        rows = [prompt + spans[k].tokens for k in running]
        logits = dict(zip(running, model.masked_logits_rows(rows))) if rows else {}
        records = []
        for k, (span, phase) in enumerate(zip(spans, phases)):
            before = list(span.tokens)
            tops = predict(span, logits[k][len(prompt):], masked[k], iteration, cfg, rng) if k in logits else {}
            changes = update(span, phase, masked[k], cfg, rng)
            records.append(record(span, phase, before, masked[k], tops, changes, cfg))
            if iteration == 0:   # the whole plan, once, so the schedule can be drawn ahead of the run
                planned = [planned_masks(ph, span.length, cfg.strategy) for ph in plans[k]]
                records[-1]["plan_masks"] = [m for m, _ in planned]
                records[-1]["plan_formula"] = [f for _, f in planned]
        last = iteration == cfg.iterations - 1
        chosen = best(spans)
        yield Step(iteration, output(spans[chosen], model.eos_ids) if last else (), final=last,
                   target_forwards=len(rows), tokens_fed=sum(len(r) for r in rows),
                   wall_s=perf_counter() - start, detail={
                       "iteration": iteration, "iterations": cfg.iterations, "strategy": cfg.strategy,
                       "lengths": [s.length for s in spans], "best": chosen, "spans": records,
                   })
