"""The race: every causal method on one prompt and one target, greedy, to the same number of new tokens.

    python -m engines race --prompt "Once upon a time" --max-new-tokens 48 [--target T] [--chat on|off] [--json]

Each entry is a recorded `Run`, timed back to back in this process (wall-time ratios are only
meaningful within one process on a shared machine). A row carries what each method spent
(target and draft forwards, tokens fed), what it got (tokens per target forward), both acceptance
definitions, and whether its output equals greedy autoregressive decoding.

The cost model explains the wall-time column: a short timing in this run measures c, the cost of a
draft forward relative to a target forward, and T(n), a target forward over n tokens relative to
one token. With acceptance rate alpha and k drafts, speculative decoding expects
(1 - alpha^(k+1)) / (1 - alpha) tokens per iteration (Leviathan et al. 2023, eq. 1) for a cost of
k*c + T(k+1) target forwards.

Mask-predict is left out: it fills a span with a bidirectional masked LM, so it has no greedy
causal output to race against.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from engines.analysis.cost import measure
from engines.analysis.theory import (
    TRADE_OFF,
    best_k,
    drafts,
    expected_speedup,
    expected_tokens,
    verdict,
    verify_cost_at,
)
from engines.drafting import registry
from engines.drafting.early_exit import exit_layer_of, layer_count
from engines.methods import DEFAULT_DRAFT, METHODS, Run, default_target
from engines.models import devices, store
from engines.models.adapter import LM
from engines.trace import Step, Trace


@dataclass(frozen=True)
class Entry:
    """One lane of the race: a method with its settings. New drafters and strategies join by adding a line."""
    label: str
    method: str
    settings: dict[str, Any] = field(default_factory=dict)


METHOD_LANES: tuple[Entry, ...] = (
    Entry("jacobi, block 8", "jacobi", {"block": 8, "init": "repeat"}),
    Entry("lookahead, W5 N4 G5", "lookahead", {"window": 5, "ngram": 4, "guesses": 5}),
)


def lanes(target: str) -> tuple[Entry, ...]:
    """The race's lanes for a target (a preset name or a folder): autoregressive first, every drafter's lanes
    from the drafter registry where it can draft for this target, then the methods that need no drafter."""
    drafted = tuple(Entry(label, method, settings) for spec in registry.DRAFTERS.values() if spec.serves(target)
                    for label, method, settings in spec.lanes)
    return (Entry("autoregressive", "autoregressive"), *drafted, *METHOD_LANES)


REFERENCE = "autoregressive"   # the entry every ratio and every output is compared with
LEFT_OUT = {"mask-predict": "not a causal method: it fills a span with a masked LM, so it has no greedy "
                            "autoregressive output to race against"}


@dataclass
class Row:
    label: str
    method: str
    settings: dict[str, Any]
    new_tokens: int
    iterations: int
    target_forwards: int
    draft_forwards: int
    tokens_per_target_forward: float
    tokens_fed_per_forward: float
    wall_s: float
    wall_ratio: float                 # wall time / autoregressive wall time, same process, back to back
    equals_greedy: bool               # output ids equal greedy autoregressive's
    first_difference: int | None      # index of the first output token that differs from autoregressive's
    acceptance_rate: float | None     # accepted / examined drafts (None: the method drafts nothing)
    tokens_per_iteration: float       # mean tokens per iteration, the target's own token included
    drafts_accepted: int
    drafts_examined: int
    committed_per_forward: list[int]  # the timeline: tokens committed by each target forward, in order
    step_wall_s: list[float]
    output_ids: list[int]
    output_text: str

    @property
    def speedup(self) -> float:
        """Autoregressive wall time / this wall time: above 1 is faster. Every view shows this direction."""
        return 1 / self.wall_ratio


@dataclass
class Point:
    """A measured run placed on the theory curves."""
    label: str
    k: int
    alpha: float
    c: float
    tokens_per_iteration: float       # measured
    expected_tokens: float            # (1 - alpha^(k+1)) / (1 - alpha)
    speedup: float                    # measured: autoregressive wall / this wall
    expected_speedup: float           # expected_tokens / (k c + T(k+1))
    best_k: int
    best_speedup: float


@dataclass
class CostModel:
    target_forward_s: float           # one target forward over one token, after the prompt
    draft_forward_s: float | None
    c: float | None                   # draft forward / target forward
    verify_n: list[int]               # T(n) measured at these n
    verify_cost: list[float]          # T(n) / T(1)
    points: list[Point]
    words: str


@dataclass
class Race:
    prompt: str
    target: str
    draft: str
    max_new_tokens: int
    rows: list[Row]
    cost: CostModel
    left_out: dict[str, str]
    token_texts: dict[int, str] = field(default_factory=dict)   # every output id -> its text, for the views
    chat: bool = False                # whether the prompt was in the target's chat template

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- running

def race(prompt: str, max_new_tokens: int, target: str | None = None, draft: str | None = None,
         device: str | None = None, entries: Sequence[Entry] | None = None, repeats: int = 1,
         chat: bool | None = None) -> Race:
    """Run every entry (the target's lanes unless given) greedily on one prompt and target; the median wall time
    of `repeats` runs. `chat` as Run takes it: the prompt in the target's chat template (None: where the target
    is an instruct model)."""
    entries = lanes(target or default_target()) if entries is None else entries
    if not any(e.method == REFERENCE for e in entries):
        raise ValueError("The race needs an autoregressive entry: every ratio is measured against it.")
    target, draft = target or default_target(), draft or DEFAULT_DRAFT
    settings = {"max_new_tokens": max_new_tokens, "temperature": 0.0}
    # loading a model, comparing vocabularies and each method's first forwards are one-off costs that would
    # otherwise land on whichever lane meets them first: a short untimed run of every lane pays them
    for e in entries:
        Run(e.method, prompt, {**e.settings, **settings, "max_new_tokens": min(4, max_new_tokens)},
            target=target, draft=draft, device=device, chat=chat, calibrate_first=True).run()
    traces, times = {}, {e.label: [] for e in entries}
    for _ in range(max(1, repeats)):   # round robin, so a burst of load on the machine hits every lane alike
        for e in entries:
            start = devices.clock()   # every GPU waited for, so the lap measures its own work
            traces[e.label] = Run(e.method, prompt, {**e.settings, **settings}, target=target, draft=draft,
                                  device=device, chat=chat, calibrate_first=True).run()
            times[e.label].append(devices.clock() - start)
    walls = {label: statistics.median(ts) for label, ts in times.items()}
    ref = next(e.label for e in entries if e.method == REFERENCE)
    rows = [row(e, traces[e.label], walls[e.label], walls[ref], traces[ref].output_ids) for e in entries]
    target_lm = store.load(target, device)
    draft_lm = store.load(draft, device) if any(r.draft_forwards for r in rows) else None
    cost = cost_model(target_lm, draft_lm, traces[ref].prompt_ids, rows)
    texts = {i: t.token_texts[i] for t in traces.values() for i in t.output_ids if i in t.token_texts}
    return Race(prompt, target, draft, max_new_tokens, rows, cost, dict(LEFT_OUT), texts, traces[ref].chat)


def row(e: Entry, trace: Trace, wall_s: float, reference_wall_s: float, reference_ids: list[int]) -> Row:
    t, ids = trace.totals, trace.output_ids
    accepted, examined = drafts(counter, trace.steps) if (counter := METHODS[e.method].drafts) else (0, 0)
    return Row(
        label=e.label, method=e.method, settings=dict(e.settings), new_tokens=t["new_tokens"],
        iterations=len(trace.steps), target_forwards=t["target_forwards"], draft_forwards=t["draft_forwards"],
        tokens_per_target_forward=t["new_tokens"] / max(t["target_forwards"], 1),
        tokens_fed_per_forward=t["tokens_fed"] / max(t["target_forwards"], 1),
        wall_s=wall_s, wall_ratio=wall_s / reference_wall_s, equals_greedy=ids == reference_ids,
        first_difference=first_difference(ids, reference_ids),
        acceptance_rate=accepted / examined if examined else None,
        tokens_per_iteration=t["new_tokens"] / max(len(trace.steps), 1),
        drafts_accepted=accepted, drafts_examined=examined,
        committed_per_forward=timeline(trace.steps), step_wall_s=[s.wall_s for s in trace.steps],
        output_ids=ids, output_text=trace.output_text)


def timeline(steps: Sequence[Step]) -> list[int]:
    """Tokens committed by each target forward. A step with several forwards commits with its last one."""
    out = []
    for s in steps:
        if s.target_forwards:
            out += [0] * (s.target_forwards - 1) + [len(s.committed_ids)]
    return out


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first index where two token lists differ (a shorter list differs where it ends); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


# ----------------------------------------------------------------------------- cost model

def cost_model(target: LM, draft: LM | None, prompt_ids: Sequence[int], rows: Sequence[Row]) -> CostModel:
    """This run's timing (a median of 5 per size, fresher and steadier than a view's cached calibration) and
    each speculative row placed on the theory curves."""
    cal = measure(target, draft, prompt_ids, repeats=5)
    ns, costs = cal.verify_n, cal.verify_cost
    points = []
    for r in rows:
        if r.method != "speculative" or r.acceptance_rate is None:
            continue
        # prompt lookup costs a scan of the text, nothing a forward would notice; an early exit its share of layers
        c_here = (cal.c or 0.0) if r.settings.get("drafter") == "model" else 0.0
        if r.settings.get("drafter") == "early-exit":
            c_here = exit_layer_of(target, r.settings.get("exit_layer", 0)) / layer_count(target)
        k, alpha = r.settings.get("k", 4), r.acceptance_rate
        bk, bs = best_k(alpha, c_here, ns, costs)
        points.append(Point(r.label, k, alpha, c_here, r.tokens_per_iteration, expected_tokens(alpha, k),
                            r.speedup, expected_speedup(alpha, k, c_here, ns, costs), bk, bs))
    return CostModel(cal.target_forward_s, cal.draft_forward_s, cal.c, ns, costs, points,
                     explain(cal.c, ns, costs, points))


def explain(c: float | None, ns: Sequence[int], costs: Sequence[float], points: Sequence[Point]) -> str:
    """Why the best k depends on alpha and c, with this run's numbers."""
    parts = [f"A target forward over 5 tokens costs {verify_cost_at(5, ns, costs):.2f} and over 17 tokens "
             f"{verify_cost_at(17, ns, costs):.2f} forwards of one token" +
             (f"; a draft forward costs c = {c:.2f} of a target forward." if c is not None else "."), TRADE_OFF]
    for p in points:
        parts.append(f"{p.label}: alpha = {p.alpha:.2f}, c = {p.c:.2f}: {p.tokens_per_iteration:.2f} tokens per "
                     f"iteration measured against {p.expected_tokens:.2f} expected; expected speedup "
                     f"{p.expected_speedup:.2f}x, measured {p.speedup:.2f}x (the engine's own per-step work is "
                     f"not in the model); {verdict(p.alpha, p.c, ns, costs)}.")
    return " ".join(parts)


# ----------------------------------------------------------------------------- text

def table(r: Race) -> str:
    """The race as a plain-text table, then the cost model in words."""
    head = (f"{'method':24s} {'tgt fwd':>7s} {'drf fwd':>7s} {'tok/fwd':>7s} {'fed/fwd':>7s} {'accept':>6s} "
            f"{'tok/it':>6s} {'wall s':>7s} {'speedup':>7s}  greedy")
    lines = [f"prompt {r.prompt!r}{' in the chat template' if r.chat else ''}, target {r.target}, draft {r.draft}, "
             f"{r.max_new_tokens} new tokens, greedy",
             head]
    for x in r.rows:
        acc = f"{x.acceptance_rate:6.2f}" if x.acceptance_rate is not None else f"{'-':>6s}"
        same = "= greedy" if x.equals_greedy else f"differs at token {x.first_difference}"
        lines.append(f"{x.label:24s} {x.target_forwards:7d} {x.draft_forwards:7d} {x.tokens_per_target_forward:7.2f} "
                     f"{x.tokens_fed_per_forward:7.2f} {acc} {x.tokens_per_iteration:6.2f} {x.wall_s:7.3f} "
                     f"{x.speedup:6.2f}x  {same}")
    lines += [f"left out: {name}, {why}" for name, why in r.left_out.items()]
    lines += ["accept = accepted / examined drafts; tok/it = mean tokens per iteration, the target's own token "
              "included; speedup = autoregressive wall time / this wall time (above 1 is faster).", r.cost.words]
    return "\n".join(lines)
