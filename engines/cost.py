"""The cost model of drafting and verifying, measured on this machine (paper notation: p target, q draft).

Two numbers, timed in this process: c, the cost of a draft forward relative to a target forward, and T(n),
a target forward over n tokens relative to one token. With acceptance rate alpha and k drafts, speculative
decoding expects (1 - alpha^(k+1)) / (1 - alpha) tokens per iteration (Leviathan et al. 2023, eq. 1) for a
cost of k*c + T(k+1) target forwards, so its expected speedup over plain decoding is their ratio.

`measure` times the forwards; `calibrate` does so once per model pair in the process (every session of a
Space shares it) and is what a run records in its trace. The acceptance counts of each method (accepted and
examined drafts) live here too: they are the alpha the model reads.
"""
from __future__ import annotations

import statistics
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from engines import lm
from engines.lm import LM
from engines.trace import Step

VERIFY_N = (1, 2, 3, 5, 9, 17, 33, 65)   # 17: a 16-draft chain or a 16-node tree and its pending token
K_MAX = 16                               # the longest draft the speculative engine takes
CALIBRATION_REPEATS = 3                  # a median of 3 per size keeps calibrating SmolLM2 on a CPU near 1-2 s
CACHED = 8                               # model pairs whose calibration the process remembers


@dataclass(frozen=True)
class Calibration:
    """What one short timing measured: seconds per forward and the relative costs the model reads."""
    target_forward_s: float          # one target forward over one token, after the prompt
    draft_forward_s: float | None    # one draft-model forward over one token (None: no draft model)
    c: float | None                  # draft forward / target forward
    verify_n: list[int]              # T(n) measured at these n
    verify_cost: list[float]         # T(n) = a target forward over n tokens / one over 1 token
    measured_at: str                 # UTC time of the measurement, ISO 8601

    def T(self, n: int) -> float:   # noqa: N802 - the paper's name
        return verify_cost_at(n, self.verify_n, self.verify_cost)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        return cls(float(d["target_forward_s"]), d.get("draft_forward_s"), d.get("c"),
                   [int(n) for n in d["verify_n"]], [float(x) for x in d["verify_cost"]], str(d["measured_at"]))


# ----------------------------------------------------------------------------- timing

def forward_seconds(model: LM, prompt_ids: Sequence[int], n: int, repeats: int = 5) -> float:
    """Median time of one forward over n new tokens after the prompt, the cache cropped back each time."""
    kv = model.new_kv()
    model.forward(kv, prompt_ids)
    filler = [prompt_ids[-1]] * n
    times = []
    for _ in range(repeats):
        start = lm.clock(model.device)
        model.forward(kv, filler)
        times.append(lm.clock(model.device) - start)
        model.crop(kv, len(prompt_ids))
    return statistics.median(times)


def sizes_that_fit(model: LM, prompt_tokens: int, ns: Sequence[int] = VERIFY_N) -> list[int]:
    """The verify sizes the model has positions for after this prompt (1 always)."""
    room = (model.max_positions or 10 ** 9) - prompt_tokens
    return [n for n in ns if n == 1 or n <= room]


def measure(target: LM, draft: LM | None, prompt_ids: Sequence[int], repeats: int = CALIBRATION_REPEATS,
            ns: Sequence[int] = VERIFY_N) -> Calibration:
    """Time a target forward over each n tokens and a draft forward over one, after the prompt. The forwards
    run on caches of their own: no run's cache, counter or random draw is touched."""
    ns = sizes_that_fit(target, len(prompt_ids), ns)
    one = forward_seconds(target, prompt_ids, 1, repeats)
    costs = [1.0] + [forward_seconds(target, prompt_ids, n, repeats) / one for n in ns[1:]]
    draft_s = forward_seconds(draft, prompt_ids, 1, repeats) if draft is not None else None
    return Calibration(one, draft_s, draft_s / one if draft_s is not None else None, ns, costs,
                       time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


# A model object is one (model, device, dtype) of engines.lm's cache, so its identity is the key. The cache
# holds weak references and a few entries only: an evicted model must be freed, and a new object that reuses
# a dead one's id finds the reference dead and is measured afresh.
_CALIBRATIONS: OrderedDict[tuple[int, int], tuple[weakref.ref, weakref.ref | None, Calibration]] = OrderedDict()
_CALIBRATING = threading.Lock()   # also keeps two sessions' timings from running at once and skewing each other


def calibrate(target: LM, draft: LM | None, prompt_ids: Sequence[int]) -> Calibration:
    """The pair's calibration, measured on first use in this process and remembered."""
    key = (id(target), id(draft))
    with _CALIBRATING:
        found = _CALIBRATIONS.get(key)
        if found is not None and found[0]() is target and (found[1]() if found[1] else None) is draft:
            _CALIBRATIONS.move_to_end(key)
            return found[2]
        cal = measure(target, draft, prompt_ids)
        _CALIBRATIONS[key] = (weakref.ref(target), weakref.ref(draft) if draft is not None else None, cal)
        while len(_CALIBRATIONS) > CACHED:
            _CALIBRATIONS.popitem(last=False)
        return cal


def forget_calibrations() -> None:
    with _CALIBRATING:
        _CALIBRATIONS.clear()


# ----------------------------------------------------------------------------- theory

def expected_tokens(alpha: float, k: int) -> float:
    """Expected tokens per iteration with k drafts, each accepted with probability alpha."""
    return k + 1.0 if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def verify_cost_at(n: int, ns: Sequence[int], costs: Sequence[float]) -> float:
    """T(n) by linear interpolation between the measured points (extrapolated along the last segment)."""
    if n <= ns[0] or len(ns) == 1:
        return costs[0]
    for (n0, c0), (n1, c1) in zip(zip(ns, costs), zip(ns[1:], costs[1:])):
        if n <= n1:
            return c0 + (c1 - c0) * (n - n0) / (n1 - n0)
    return costs[-1] + (costs[-1] - costs[-2]) * (n - ns[-1]) / (ns[-1] - ns[-2])


def expected_speedup(alpha: float, k: int, c: float, ns: Sequence[int], costs: Sequence[float]) -> float:
    """Tokens per iteration over the iteration's cost in target forwards (k drafts + one verify of k+1)."""
    return expected_tokens(alpha, k) / (k * c + verify_cost_at(k + 1, ns, costs))


def best_k(alpha: float, c: float, ns: Sequence[int], costs: Sequence[float], limit: int = K_MAX) -> tuple[int, float]:
    return max(((k, expected_speedup(alpha, k, c, ns, costs)) for k in range(1, limit + 1)), key=lambda kv: kv[1])


TRADE_OFF = ("Each drafted token adds c to the cost of an iteration but only alpha^k expected tokens to what it "
             "yields, so drafting more pays only while alpha^k exceeds c plus the extra verify cost: a high alpha "
             "and a cheap draft favour a long draft, and when c is close to 1 no k beats plain decoding.")


def verdict(alpha: float, c: float, ns: Sequence[int], costs: Sequence[float]) -> str:
    """Which k the model picks for this alpha and c, or that none wins."""
    k, speedup = best_k(alpha, c, ns, costs)
    return (f"the best is k = {k} at {speedup:.2f}x" if speedup > 1
            else f"no k wins (the best, k = {k}, reaches only {speedup:.2f}x)")


# ----------------------------------------------------------------------------- acceptance, per method
# (accepted, examined) drafted tokens of one step: the drafts up to and including the first refusal count as
# examined, so a chain, a tree path, a Jacobi block and a pooled n-gram read the same way. The acceptance
# rate alpha is accepted / examined; tokens per iteration also counts the target's own token.

def _speculative_drafts(s: Step) -> tuple[int, int]:
    n, m = s.detail["accepted"], len(s.detail["draft_tokens"])
    return n, n + (n < m)


def _tree_drafts(s: Step) -> tuple[int, int]:
    n = s.detail["accepted_length"]
    return n, n + (s.detail["final_kind"] == "resampled")   # the stop node had children, all refused


def _jacobi_drafts(s: Step) -> tuple[int, int]:
    n, m = s.detail["settled"], len(s.detail["block_before_ids"])
    return n, n + (n < m)


def _lookahead_drafts(s: Step) -> tuple[int, int]:
    n = s.detail["accepted_len"]
    longest = max((len(c) for c in s.detail["candidates"]), default=0)
    return n, n + (n < longest)


DRAFTS_OF: dict[str, Callable[[Step], tuple[int, int]]] = {
    "speculative": _speculative_drafts, "tree": _tree_drafts, "jacobi": _jacobi_drafts,
    "lookahead": _lookahead_drafts}


def drafts(method: str, steps: Sequence[Step]) -> tuple[int, int]:
    """Accepted and examined drafts over the steps."""
    counts = [DRAFTS_OF[method](s) for s in steps]
    return sum(a for a, _ in counts), sum(x for _, x in counts)
