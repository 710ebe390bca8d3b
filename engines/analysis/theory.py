"""The theory the cost model and the views read, free of torch: expected tokens and speedup of speculative
decoding (Leviathan et al. 2023, eq. 1 and Theorem 3.8) from alpha, k, c and the measured verification cost
T(n); a calibration as a trace records it; and each method's count of accepted and examined drafts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from engines.trace import Step

VERIFY_N = (1, 2, 3, 5, 9, 17, 33, 65)   # 17: a 16-draft chain or a 16-node tree and its pending token
K_MAX = 16                               # the longest draft the speculative engine takes
TRADE_OFF = ("Each drafted token adds c to the cost of an iteration but only alpha^k expected tokens to what it "
             "yields, so drafting more pays only while alpha^k exceeds c plus the extra verify cost: a high alpha "
             "and a cheap draft favour a long draft, and when c is close to 1 no k beats plain decoding.")


@dataclass(frozen=True)
class Calibration:
    """What one short timing measured: seconds per forward and the relative costs the model reads."""
    target_forward_s: float          # one target forward over one token, after the prompt
    draft_forward_s: float | None    # one draft-model forward over one token (None: no draft model)
    c: float | None                  # draft forward / target forward
    verify_n: list[int]              # T(n) measured at these n
    verify_cost: list[float]         # T(n) = a target forward over n tokens / one over 1 token
    measured_at: str                 # UTC time of the measurement, ISO 8601
    # where it came from, for traces since the calibration stopped blocking a run's first step (older traces:
    # the defaults, a sweep before the run): SOURCES below; complete: every verify size measured (False while a
    # run is still measuring, its verify_n the sizes so far); at_step: the step after which the run recorded it
    # (None: before its first step)
    source: str = "sweep"
    complete: bool = True
    at_step: int | None = None

    def T(self, n: int) -> float:   # noqa: N802 - the paper's name
        return verify_cost_at(n, self.verify_n, self.verify_cost)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        return cls(float(d["target_forward_s"]), d.get("draft_forward_s"), d.get("c"),
                   [int(n) for n in d["verify_n"]], [float(x) for x in d["verify_cost"]], str(d["measured_at"]),
                   str(d.get("source", "sweep")), bool(d.get("complete", True)), d.get("at_step"))


# where a calibration came from: a file an earlier run on this machine left, the verify forwards of the run that
# records it (T(n) at the sizes it fed), or a sweep (forwards timed on caches of their own)
DISK, OWN, SWEEP = "disk cache", "this run's forwards", "sweep"
SOURCES = (DISK, OWN, SWEEP, f"{OWN} and a {SWEEP}")


# ----------------------------------------------------------------------------- timing


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


def best_k(alpha: float, c: float, ns: Sequence[int], costs: Sequence[float],
           limit: int = K_MAX) -> tuple[int, float]:
    return max(((k, expected_speedup(alpha, k, c, ns, costs)) for k in range(1, limit + 1)), key=lambda kv: kv[1])


def verdict(alpha: float, c: float, ns: Sequence[int], costs: Sequence[float]) -> str:
    """Which k the model picks for this alpha and c, or that none wins."""
    k, speedup = best_k(alpha, c, ns, costs)
    return (f"the best is k = {k} at {speedup:.2f}x" if speedup > 1
            else f"no k wins (the best, k = {k}, reaches only {speedup:.2f}x)")


# ----------------------------------------------------------------------------- acceptance, per method
# (accepted, examined) drafted tokens of one step: the drafts up to and including the first refusal count as
# examined, so a chain, a tree path, a Jacobi block and a pooled n-gram read the same way. The acceptance
# rate alpha is accepted / examined; tokens per iteration also counts the target's own token.


def speculative_drafts(s: Step) -> tuple[int, int]:
    n, m = s.detail["accepted"], len(s.detail["draft_tokens"])
    return n, n + (n < m)


def tree_drafts(s: Step) -> tuple[int, int]:
    n = s.detail["accepted_length"]
    return n, n + (s.detail["final_kind"] == "resampled")   # the stop node had children, all refused


def jacobi_drafts(s: Step) -> tuple[int, int]:
    n, m = s.detail["settled"], len(s.detail["block_before_ids"])
    return n, n + (n < m)


def lookahead_drafts(s: Step) -> tuple[int, int]:
    n = s.detail["accepted_len"]
    longest = max((len(c) for c in s.detail["candidates"]), default=0)
    return n, n + (n < longest)


def drafts(counter: Callable[[Step], tuple[int, int]], steps: Sequence[Step]) -> tuple[int, int]:
    """Accepted and examined drafts over the steps, as a method's counter (its `drafts` in the methods table)
    counts them: the drafts up to and including the first refusal count as examined, so a chain, a tree path,
    a Jacobi block and a pooled n-gram read the same way; alpha = accepted / examined."""
    counts = [counter(s) for s in steps]
    return sum(a for a, _ in counts), sum(x for _, x in counts)


def acceptance_rate(steps: Sequence[Step]) -> float | None:
    """Accepted drafts / drafts the target examined (those up to and including the first rejection)."""
    kept, examined = drafts(speculative_drafts, steps)
    return kept / examined if examined else None
