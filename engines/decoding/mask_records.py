"""Mask-predict's step record (engines/decoding/mask_predict.py builds it): per candidate span, every position's
input, prediction, probability, confidence and fate, the schedule, the prefix cache's audit, the quality curve."""
from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

from engines.decoding.prefix_cache import KVState
from engines.decoding.sampling import TokenProbability


class Remasking(TypedDict):
    """ReMDM's remasking in one iteration (Wang et al. 2025, arXiv 2503.00307, section 4): every token of the block
    decoded before this iteration is re-masked with probability sigma_t (per position under conf), one coin each."""
    schedule: Literal["cap", "rescale", "conf"]   # how sigma_t follows from eta: min(eta, max), eta * max, conf
    eta: float                   # the remask setting
    sigma_max: float             # min(1, masks the schedule leaves after this iteration / decoded positions)
    sigma: float                 # sigma_t: min(eta, sigma_max) (cap, conf) or eta * sigma_max (rescale)
    decoded: list[int]           # the candidates: block positions holding a token when the iteration began
    confidence: list[float]      # each candidate's confidence when it was committed (the paper's psi)
    probability: list[float]     # each candidate's chance of a re-mask: sigma_t, or sigma_t * softmax(-psi) (conf)
    coins: list[float]           # the uniform per candidate, re-masked when below; none when every probability is 0
    no_room: list[int]           # coins under their probability the schedule had no room for: kept, the most sure


class Commitment(TypedDict):
    """What the strategy did after one iteration's predictions, in span positions."""
    unmasked: list[int]          # positions that now hold their prediction
    remasked: list[int]          # positions masked again: mask-predict's least confident, ReMDM's coins
    eos_held: list[int]          # end-of-text guesses held back: a position before them is still masked (eos hold)
    draws: NotRequired[list[float]]   # random strategy: the uniform drawn per masked position; the lowest commit
    remasking: NotRequired[Remasking]   # remdm strategy: every re-mask decision of the iteration


class SpanUpdate(Commitment):
    """A Commitment and the end-of-text tokens it wrote."""
    eos_committed: list[int]     # unmasked positions whose token is end-of-text


class SpanRecord(SpanUpdate):
    """One candidate span in one iteration: per position (prompt excluded unless said) what was read and written."""
    length: int                           # positions in the span
    block: list[int]                      # [start, end) of the block being filled, in span positions
    block_iteration: int                  # this iteration's index within the block
    block_iterations: int                 # iterations the block has (threshold: at most its size)
    input_tokens: list[int]               # the span the forward read; the mask id where masked
    predicted_tokens: list[int]           # the latest prediction at each position; the mask id before any
    tokens: list[int]                     # the span after this iteration
    p: list[float | None]                 # the model's probability (temperature 1) of each prediction; null before any
    confidence: list[float | None]        # what the strategy ranks by: that probability, or its margin
    settled: list[int | None]             # the iteration since which each prediction is unchanged; null before any
    masked_before: list[int]              # positions masked in the current block when the iteration began
    top: list[list[TokenProbability]]     # per position, top 5 of the model's distribution; empty where not predicted
    scheduled_masks: int                  # masks the schedule leaves in the whole span at the start of this iteration
    formula_masks: float                  # the paper's unrounded count, n * (T - t) / T for the block plus later blocks
    masks_after: int                      # masks left in the span after this iteration
    mean_logprob: float | None            # mean log-probability of the predictions so far (the length beam's score)
    kv_state: list[KVState]               # per row position (prompt and span): where its keys and values came from
    kv_computed: list[int]                # per row position, the iteration that computed its keys and values
    drift: float | None                   # cached prefix: largest logit difference to the exact forward; null otherwise
    drift_changed: list[int]              # cached prefix: positions the exact forward would have decided differently
    audit_tokens_fed: int                 # tokens the audit's exact forward read (not the method's cost); 0 without one
    plan_masks: NotRequired[list[int]]    # first iteration only: the schedule's masks at the start of every iteration
    plan_formula: NotRequired[list[float]]   # first iteration only: the paper's unrounded counts for the same


class QualityPoint(TypedDict):
    """The same span decoded again at fewer iterations: what the speed costs."""
    iterations: int                       # T for this decoding
    tokens_per_iteration: float           # length / T
    block: int                            # the block size used (0: the whole span, where T is below the blocks)
    mean_logprob: float | None            # mean log-probability the model gave its tokens when it wrote them
    distinct2: float | None               # distinct bigrams / bigrams of the text; null under two tokens
    tokens: list[int]                     # the text it wrote
    forwards: int                         # model forwards it took


class MaskPredictDetail(TypedDict):
    """One iteration over every candidate span (several with the length beam); the text exists at the last."""
    iteration: int                        # this iteration, from 0
    iterations: int                       # iterations the chosen span is planned for (threshold: at most its length)
    strategy: Literal["mask-predict", "diffusion", "threshold", "random", "remdm"]   # the rule choosing what to commit
    lengths: list[int]                    # the candidate span lengths
    best: int                             # index of the candidate with the best mean log-probability
    spans: list[SpanRecord]               # one per candidate length
    quality_curve: list[QualityPoint] | None   # last iteration with the curve on: T = length, /2, /4, /8; else null
