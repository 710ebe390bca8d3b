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

ReMDM (Wang et al. 2025, arXiv 2503.00307): diffusion whose committed tokens may be re-masked by recorded coins
and predicted again, the mask count still following the schedule (engines/decoding/remasking.py).

Threshold (Fast-dLLM, Wu et al. 2025, arXiv 2505.22618, section 3.3, eq. 6): each iteration commits every masked
position of the current block whose confidence is at least tau, and at least the most confident one, so the
number of iterations follows from tau instead of being set.

Cached prefix (Fast-dLLM's prefix cache, section 3.2; block diffusion, BD3-LM, Arriola et al. 2025, arXiv
2503.09573): the keys and values of the text before the current block are computed once, when that block
starts, and reused while the block is denoised; each forward feeds only the block and what follows it. For a
model that attends only to the left the reuse is exact. For a bidirectional one the cached positions were
computed while the block they see was still masked, so the reuse is an approximation: every such iteration
also runs the exact forward, only to record how far the logits drifted and whether a decision would have
changed (the auditor's cost, not counted as the method's forwards or time).

End of text (Dream issue 51): a diffusion LM trained on padded text is very sure of end-of-text near the end of
the span, so confidence ordering writes end-of-text tokens there first and the span floods with them. "hold"
does not commit an end-of-text guess while a position before it is still masked; every hold is recorded.

The model needs only `mask_id`, `eos_ids` and `masked_logits_rows(rows) -> [float32 [len(row), vocab]]`; the
cached prefix also needs `new_kv()`, `masked_logits_cached(kv, row, start)`, `cacheable(start)`, `crop(kv, n)`
and `bidirectional` (engines/models/ gives them to the adapted diffusion LM).
"""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field, replace
from time import perf_counter
from typing import Iterator, Sequence

import torch

from engines.config import DecodeConfig, option
from engines.decoding.mask_records import (
    Commitment,
    MaskPredictDetail,
    QualityPoint,
    SpanRecord,
    SpanUpdate,
)
from engines.decoding.mask_schedule import Phase, block_bounds, plan, schedule, worst_plan
from engines.decoding.prefix_cache import Audit, Prefix, cached_forward
from engines.decoding.remasking import REMASK_SCHEDULES, draw_remasks
from engines.decoding.sampling import (
    choose,
    probabilities,
    raw_probabilities,
    top,
)
from engines.decoding.stop import until_eos
from engines.trace import Step

STRATEGIES = ("mask-predict", "diffusion", "threshold", "random", "remdm")
FIXED = ("mask-predict", "diffusion", "random", "remdm")   # the strategies whose iterations are set, not found by tau
HOLDING = ("diffusion", "threshold", "remdm")   # the strategies that may hold an end-of-text guess back
CURVE_DIVISORS = (1, 2, 4, 8)                        # the quality curve: T = length / each


@dataclass(frozen=True)
class MaskPredictConfig(DecodeConfig):
    length: int = option(24, "tokens in the span to fill; 0 predicts it: the length beam runs lengths around "
                             "half of max new tokens at once and keeps the best mean log-probability", 0, 256)
    length_beam: int = option(5, "how many span lengths to try at once when length is 0", 1, 16,
                              label="length beam")
    iterations: int = option(10, "forward passes (T) to fill the span", 1, 256)
    # the default: on smollm2-135m-diffusion it wrote the best text of all strategies at T = 32, 16 and 8 (bench)
    strategy: str = option("diffusion", "mask-predict re-masks the least confident tokens; diffusion commits "
                                           "the most confident and never re-masks; threshold commits every position "
                                           "at least tau sure (at least one), so tau sets the iterations; random "
                                           "commits at random; remdm is diffusion that may re-mask committed tokens "
                                           "at random (ReMDM)", choices=STRATEGIES)
    threshold: float = option(0.9, "threshold strategy: commit every masked position whose confidence is at least "
                                   "tau, and at least the most confident one (Fast-dLLM)", 0.0, 1.0,
                              label="threshold tau")
    remask: float = option(0.1, "remdm strategy: eta, how likely a committed token is re-masked in an iteration "
                                "(ReMDM, Wang et al. 2025): each token decoded in an earlier iteration of the block "
                                "draws a coin and is re-masked with probability sigma_t, at most what the schedule "
                                "has room for; 0 is plain diffusion", 0.0, 1.0, label="remask eta")
    remask_schedule: str = option("cap", "remdm strategy: cap re-masks with sigma_t = min(eta, sigma_max); rescale "
                                         "with eta * sigma_max; conf spreads cap's sigma_t over the committed tokens "
                                         "by softmax(-confidence), the least sure most likely (about sigma_t tokens "
                                         "an iteration in all)", choices=REMASK_SCHEDULES, label="remask schedule")
    cache: str = option("off", "prefix: keep the keys and values of the text before the current block and feed only "
                               "the block and what follows (Fast-dLLM prefix cache, BD3-LM); exact for a left-to-"
                               "right model, an approximation for a bidirectional one, whose drift is recorded",
                        choices=("off", "prefix"))
    eos: str = option("hold", "hold: an end-of-text guess is not committed while a position before it is still "
                              "masked (the end-of-text flood, Dream issue 51); allow: commit it like any token",
                      choices=("hold", "allow"), label="end of text")
    curve: str = option("on", "on: at the last iteration, decode the same span again at T = length, length/2, "
                              "length/4, length/8 and record what each wrote (quality against iterations)",
                        choices=("on", "off"), label="quality curve")
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
        if self.cache == "prefix" and self.length == 0:
            raise ValueError("The cached prefix runs one span: choose a length, or set cache to off.")
        blocks = len(block_bounds(self.length or 1, self.block))
        if self.strategy in FIXED and self.iterations < blocks:
            raise ValueError(f"{blocks} blocks need at least {blocks} iterations; raise iterations or the block size.")


# where a row position's keys and values came from: fed to this forward, read from the cache as computed on the
# text as it stands, or read from the cache though a token it attends to has changed since


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
            rng: torch.Generator, first: int = 0) -> dict[int, list]:
    """Choose a token at every given (masked) position from its logits (row i - first for position i); update
    its probability, confidence and settled iteration. Returns each position's top-5 under the model."""
    tops = {}
    if not positions:
        return tops
    rows = logits[[i - first for i in positions]]
    # the mask token is never a training target, so it is never content: a position "unmasked" to it would
    # still read as masked (an undertrained model can rank it first)
    rows[:, span.mask_id] = float("-inf")
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


def held_eos(span: Span, masked: list[int], eos_ids: frozenset[int]) -> list[int]:
    """Masked positions whose guess is end-of-text while a position before them is still masked: committing
    them would write the end of the text before the text (the flood of Dream issue 51)."""
    first = min(masked, default=0)
    return [i for i in masked if i > first and span.predicted[i] in eos_ids]


def update(span: Span, phase: Phase, masked: list[int], cfg: MaskPredictConfig,
           rng: torch.Generator, eos_ids: frozenset[int] = frozenset()) -> SpanUpdate:
    """Apply the strategy after this iteration's predictions: which positions keep a token, which are
    (re-)masked. Returns the positions unmasked and re-masked, the end-of-text guesses held back and
    committed, and the random draws if any."""
    changes = commit_or_remask(span, phase, masked, cfg, rng, eos_ids)
    return SpanUpdate(**changes, eos_committed=[i for i in changes["unmasked"] if span.tokens[i] in eos_ids])


def commit_or_remask(span: Span, phase: Phase, masked: list[int], cfg: MaskPredictConfig,
                     rng: torch.Generator, eos_ids: frozenset[int]) -> Commitment:
    """The strategy's rule for which predictions stay: one short function per strategy below."""
    # mask-predict re-masks rather than holds, and random is a control: neither holds end-of-text back
    held = held_eos(span, masked, eos_ids) if cfg.eos == "hold" and cfg.strategy in HOLDING else []
    if cfg.strategy == "threshold":
        return commit_sure(span, masked, held, cfg.threshold)
    counts = schedule(phase.end - phase.start, phase.of, cfg.strategy)
    after = counts[phase.t + 1] if phase.t + 1 < phase.of else 0   # masks the schedule leaves for the next iteration
    if cfg.strategy == "mask-predict":
        return remask_least_confident(span, phase, masked, after)
    if cfg.strategy == "random":
        return commit_random(span, masked, len(masked) - after, rng)
    if cfg.strategy == "remdm":
        return remask_and_commit(span, phase, masked, held, after, cfg, rng)
    return commit_most_confident(span, masked, held, len(masked) - after)


def commit_sure(span: Span, masked: list[int], held: list[int], threshold: float) -> Commitment:
    """Fast-dLLM (eq. 6): commit every masked position at least `threshold` sure, and at least the most
    confident, so every iteration makes progress."""
    free = [i for i in masked if i not in held]
    sure = [i for i in free if span.confidence[i] >= threshold]
    chosen = sure or sorted(free, key=lambda i: (-span.confidence[i], i))[:1]
    for i in chosen:
        span.tokens[i] = span.predicted[i]
    return Commitment(unmasked=chosen, remasked=[], eos_held=[i for i in held if i not in chosen])


def remask_least_confident(span: Span, phase: Phase, masked: list[int], after: int) -> Commitment:
    """Mask-predict (Ghazvininejad et al. 2019, eq. 3-4): take every prediction, then mask again the `after` least
    confident positions of the whole block, committed ones included."""
    for i in masked:
        span.tokens[i] = span.predicted[i]
    block = range(phase.start, phase.end)
    remasked = sorted(sorted(block, key=lambda i: (span.confidence[i], i))[:after])
    for i in remasked:
        span.tokens[i] = span.mask_id
    return Commitment(unmasked=[i for i in masked if i not in remasked], remasked=remasked, eos_held=[])


def commit_most_confident(span: Span, masked: list[int], held: list[int], commit: int) -> Commitment:
    """LLaDA's low-confidence remasking (Algorithm 5): of the masked positions, keep the `commit` most confident
    predictions and leave the rest masked; never re-mask a committed token. Held end-of-text guesses go last:
    committed only when the schedule leaves nothing else."""
    chosen = sorted(sorted(masked, key=lambda i: (i in held, -span.confidence[i], i))[:commit])
    for i in chosen:
        span.tokens[i] = span.predicted[i]
    return Commitment(unmasked=chosen, remasked=[], eos_held=[i for i in held if i not in chosen])


def commit_random(span: Span, masked: list[int], commit: int, rng: torch.Generator) -> Commitment:
    """The control (LLaDA's random remasking): `commit` masked positions chosen by uniform draws, recorded."""
    # float32 whatever the default dtype (bf16 while some models load): the same seed, the same order
    draws = torch.rand(len(masked), generator=rng, dtype=torch.float32).tolist()
    order = sorted(range(len(masked)), key=lambda k: (draws[k], masked[k]))
    chosen = sorted(masked[k] for k in order[:commit])
    for i in chosen:
        span.tokens[i] = span.predicted[i]
    return Commitment(unmasked=chosen, remasked=[], eos_held=[], draws=[round(u, 6) for u in draws])


def remask_and_commit(span: Span, phase: Phase, masked: list[int], held: list[int], after: int,
                      cfg: MaskPredictConfig, rng: torch.Generator) -> Commitment:
    """ReMDM: re-mask the block's committed tokens by their coins (the candidates: decoded before this iteration),
    and commit the most confident masked predictions, one more per re-mask, leaving `after` masks in the block."""
    decoded = [i for i in range(phase.start, phase.end) if span.tokens[i] != span.mask_id]
    remasked, remasking = draw_remasks(decoded, [span.confidence[i] for i in decoded], after, cfg.remask,
                                       cfg.remask_schedule, rng)
    commitment = commit_most_confident(span, masked, held, len(masked) - after + len(remasked))
    for i in remasked:
        span.tokens[i] = span.mask_id
    return Commitment(unmasked=commitment["unmasked"], remasked=remasked, eos_held=commitment["eos_held"],
                      remasking=remasking)


def planned_masks(phase: Phase, length: int, strategy: str) -> tuple[int, float]:
    """Masks in the whole span at the start of this phase: the schedule's count, and the paper's
    unrounded n * (T - t) / T for the block, plus the later blocks (still all masks)."""
    n, later = phase.end - phase.start, length - phase.end
    return schedule(n, phase.of, strategy)[phase.t] + later, round(n * (phase.of - phase.t) / phase.of + later, 4)


def record(span: Span, phase: Phase, iteration_input: list[int], masked: list[int],
           tops: dict[int, list], changes: SpanUpdate, cfg: MaskPredictConfig,
           audit: "Audit") -> SpanRecord:
    """One candidate span's part of a Step: plain lists, one entry per span position (the cache's per row
    position: prompt and span)."""
    scheduled, formula = planned_masks(phase, span.length, cfg.strategy)
    return SpanRecord(
        length=span.length, block=[phase.start, phase.end], block_iteration=phase.t,
        block_iterations=phase.of,
        input_tokens=iteration_input, predicted_tokens=list(span.predicted), tokens=list(span.tokens),
        p=list(span.p), confidence=list(span.confidence), settled=list(span.settled),
        masked_before=masked, **changes,
        top=[tops.get(i, []) for i in range(span.length)],
        scheduled_masks=scheduled, formula_masks=formula,
        masks_after=span.tokens.count(span.mask_id),
        mean_logprob=None if span.mean_logprob() is None else round(span.mean_logprob(), 6),
        kv_state=audit.states, kv_computed=audit.computed, drift=audit.drift,
        drift_changed=audit.changed, audit_tokens_fed=audit.tokens_fed,
    )


def best(spans: Sequence[Span]) -> int:
    """The candidate with the highest mean log-probability (the first on a tie)."""
    scores = [s.mean_logprob() for s in spans]
    return max(range(len(spans)), key=lambda k: (scores[k] is not None, scores[k] or 0.0, -k))


def audit_cache(model, span: Span, logits: torch.Tensor, row: list[int], need: int, masked: list[int],
                phase: Phase, iteration: int, cfg: MaskPredictConfig, rng: torch.Generator, audit: Audit) -> None:
    """The auditor's exact forward (not the method's): how far the cached logits of the decided positions are
    from the full bidirectional forward, and whether the same decision, drawn with the same random numbers,
    would have differed anywhere. Call before the span is updated."""
    began = perf_counter()
    exact = model.masked_logits_rows([row])[0][need:]
    rows = [len(row) - len(span.tokens) + i - need for i in masked]
    audit.drift = round(float((logits[rows] - exact[rows]).abs().max()), 6) if rows else 0.0
    audit.tokens_fed = len(row)
    twins = []
    for source in (logits, exact):
        twin, twin_rng = copy.deepcopy(span), torch.Generator()
        twin_rng.set_state(rng.get_state())
        predict(twin, source, masked, iteration, cfg, twin_rng, first=need - (len(row) - len(span.tokens)))
        update(twin, phase, masked, cfg, twin_rng, model.eos_ids)
        twins.append(twin)
    audit.changed = [i for i in masked if (twins[0].tokens[i], twins[0].predicted[i]) !=
                     (twins[1].tokens[i], twins[1].predicted[i])]
    audit.seconds = perf_counter() - began


# ----------------------------------------------------------------------------- the quality curve

def distinct2(ids: Sequence[int]) -> float | None:
    """Share of distinct bigrams among the bigrams of a text (higher is less repetitive)."""
    pairs = list(zip(ids, ids[1:]))
    return round(len(set(pairs)) / len(pairs), 6) if pairs else None


def quality_curve(model, prompt_ids: Sequence[int], cfg: MaskPredictConfig, length: int,
                  rng: torch.Generator) -> list[QualityPoint]:
    """The same span decoded at T = length, length/2, length/4, length/8 (diffusion for threshold, no cache):
    what fewer iterations cost. Each point: T, tokens per iteration, the mean log-probability the model gave
    its tokens when it wrote them, distinct-2 of the text, the text and the forwards it took."""
    fixed = cfg.strategy if cfg.strategy in FIXED else "diffusion"
    points = []
    for t in sorted({max(1, length // d) for d in CURVE_DIVISORS}, reverse=True):
        block = cfg.block if len(block_bounds(length, cfg.block)) <= t else 0
        run = replace(cfg, length=length, iterations=t, block=block, strategy=fixed, cache="off", curve="off")
        steps = list(decode(model, list(prompt_ids), run, rng))
        final = steps[-1].detail["spans"][0]
        text = list(steps[-1].committed_ids)
        points.append(QualityPoint(iterations=t, tokens_per_iteration=round(length / t, 4), block=block,
                                   mean_logprob=final["mean_logprob"], distinct2=distinct2(text), tokens=text,
                                   forwards=sum(s.target_forwards for s in steps)))
    return points


# ----------------------------------------------------------------------------- the engine

def check_model(model, cfg: MaskPredictConfig) -> None:
    """Refuse, before any forward, a cached prefix on a model that keeps no cache (ModernBERT: tiny-masked)."""
    if cfg.cache == "prefix" and not getattr(model, "can_cache", False):
        raise ValueError(f"'{getattr(model, 'name', 'this model')}' keeps no key-value cache, so it cannot reuse "
                         f"a prefix; set cache to off or pick smollm2-135m-diffusion.")


def mask_predict(model, prompt_ids: Sequence[int], cfg: MaskPredictConfig, rng: torch.Generator) -> Iterator[Step]:
    """Yield one Step per iteration; the last one commits the chosen span (the text only exists then), and with
    the curve on carries the quality curve. Settings the model cannot run are refused here, before any forward."""
    check_model(model, cfg)
    steps = decode(model, list(prompt_ids), cfg, rng)
    return steps if cfg.curve == "off" else with_quality_curve(steps, model, list(prompt_ids), cfg, rng)


def with_quality_curve(steps: Iterator[Step], model, prompt: list[int], cfg: MaskPredictConfig,
                       rng: torch.Generator) -> Iterator[Step]:
    """The steps, the last one with the quality curve of its span (its forwards are the curve's, not the step's)."""
    for step in steps:
        if step.final:
            length = step.detail["spans"][step.detail["best"]]["length"]
            curve = quality_curve(model, prompt, cfg, length, rng)
            step = replace(step, detail={**step.detail, "quality_curve": curve})
        yield step


def decode(model, prompt: list[int], cfg: MaskPredictConfig, rng: torch.Generator) -> Iterator[Step]:
    spans = [Span(n, model.mask_id) for n in candidate_lengths(cfg)]
    threshold = cfg.strategy == "threshold"
    plans = [(worst_plan if threshold else lambda n, b: plan(n, b, cfg.iterations))(s.length, cfg.block)
             for s in spans]
    spent = [0] * len(spans)          # threshold: iterations spent in the current block
    prefix = Prefix(model.new_kv()) if cfg.cache == "prefix" else None
    for iteration in itertools.count():
        start = perf_counter()
        phases = [current_phase(s, p, iteration, spent[k]) if threshold else p[iteration]
                  for k, (s, p) in enumerate(zip(spans, plans))]
        masked = [s.masked(ph) for s, ph in zip(spans, phases)]
        running = [k for k in range(len(spans)) if masked[k]]   # a span with nothing masked needs no forward
        rows = [prompt + spans[k].tokens for k in running]
        audits = [Audit(states=["fresh"] * (len(prompt) + s.length) if k in running else [],
                        computed=[iteration] * (len(prompt) + s.length) if k in running else [])
                  for k, s in enumerate(spans)]
        fed = sum(len(r) for r in rows)
        if prefix is not None and rows:   # one span (the config refuses the length beam with a cache)
            need = len(prompt) + phases[0].start
            logits, audits[0] = cached_forward(model, prefix, rows[0], need, iteration)
            fed, first = audits[0].states.count("fresh"), phases[0].start
            if audits[0].states[0] != "fresh":   # something was read from the cache: audit it
                audit_cache(model, spans[0], logits, rows[0], need, masked[0], phases[0], iteration, cfg, rng,
                            audits[0])
            logits = {0: logits}
        else:
            logits = {k: full[len(prompt):] for k, full in zip(running, model.masked_logits_rows(rows))} if rows else {}
            first = 0
        records = []
        for k, (span, phase) in enumerate(zip(spans, phases)):
            before = list(span.tokens)
            tops = predict(span, logits[k], masked[k], iteration, cfg, rng, first) if k in logits else {}
            changes = update(span, phase, masked[k], cfg, rng, model.eos_ids)
            records.append(record(span, phase, before, masked[k], tops, changes, cfg, audits[k]))
            spent[k] = spent[k] + 1 if threshold and masked[k] and span.masked(phase) else 0
            if iteration == 0:   # the whole plan, once, so the schedule can be drawn ahead of the run
                planned = [planned_masks(ph, span.length, cfg.strategy) for ph in plans[k]]
                records[-1]["plan_masks"] = [m for m, _ in planned]
                records[-1]["plan_formula"] = [f for _, f in planned]
        last = (not any(model.mask_id in s.tokens for s in spans)) if threshold else iteration == cfg.iterations - 1
        chosen = best(spans)
        wall = perf_counter() - start - sum(a.seconds for a in audits)
        yield Step(iteration, tuple(until_eos(spans[chosen].tokens, model.eos_ids)) if last else (), final=last,
                   target_forwards=len(rows), tokens_fed=fed, wall_s=wall, detail=MaskPredictDetail(
                       iteration=iteration, iterations=len(plans[chosen]), strategy=cfg.strategy,
                       lengths=[s.length for s in spans], best=chosen, spans=records,
                       quality_curve=None,   # mask_predict adds it to the last step, outside this loop
                   ))
        if last:
            return


def current_phase(span: Span, worst: list[Phase], iteration: int, spent: int) -> Phase:
    """Threshold's phase: the first block that still has masks, `spent` iterations into it (at most its size)."""
    for phase in worst:
        if phase.t == 0 and any(span.tokens[i] == span.mask_id for i in range(phase.start, phase.end)):
            return replace(phase, t=min(spent, phase.of - 1))
    return worst[-1]   # the span is full: a phase with nothing masked, no forward
