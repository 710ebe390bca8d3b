"""The speculative view in words: what this step drafted, what verification decided and why, the acceptance rate
and the cost model as sentences with the recorded numbers; the chips of the step's tokens."""
from __future__ import annotations

from dataclasses import dataclass

from engines.analysis.theory import (
    TRADE_OFF,
    acceptance_rate,
    drafts,
    expected_speedup,
    expected_tokens,
    speculative_drafts,
    verdict,
)
from engines.trace import Step, Trace
from explorer.figures import heads, heads_words, theory
from explorer.figures.common import (
    Chip,
    listing,
    quoted,
    show,
    token,
)


def is_greedy(trace: Trace) -> bool:
    return float(trace.config.get("temperature", 0) or 0) == 0


def num(v: float) -> str:
    """A probability for a sentence: three decimals, or two significant digits when tiny."""
    return f"{v:.3f}" if v == 0 or v >= 0.001 else f"{v:.1e}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def label(trace: Trace, token_id: int) -> str:
    return show(token(trace, token_id))


def is_typical(d: dict) -> bool:
    """Typical acceptance (lossy); traces recorded before the setting existed used the exact rule."""
    return d.get("acceptance", "exact") == "typical"


def is_block(d: dict) -> bool:
    """Block verification (Sun et al. 2024); traces recorded before the setting existed used the token rule."""
    return "block" in d


def block_decision(d: dict, i: int) -> str:
    """Position i's coin under block verification: u_i against the stop chance h_i, with the weight p_i."""
    b, pos = d["block"], d["positions"][i]
    sign = "<=" if b["passed"][i] else ">"
    return f"u = {pos['u']:.3f} {sign} h_{i + 1} = {b['stop_chances'][i]:.3f}, weight p_{i + 1} = {b['weights'][i]:.3f}"


def block_sentence(trace: Trace, d: dict) -> str:
    """How block verification read the coins, and what token verification decides with the same coins."""
    b, m = d["block"], len(d["positions"])
    if not m:
        return ""
    n, token = b["accepted"], b["token_accepted"]
    if is_greedy(trace):
        return (f" Block verification (Sun et al. 2024): under greedy p is one-hot, so each weight p_i = "
                f"min(p_(i-1) p(x_i)/q(x_i), 1) is 1 while the drafts match the argmax and 0 after; it keeps "
                f"{plural(n, 'draft')}, as token verification does ({token}).")
    failed = [f"{i + 1} ({block_decision(d, i)})" for i in range(m - 1, n - 1, -1)]
    read = (f"it read the coins from the end: {'; '.join(failed)} failed" if failed else "")
    passed = (f"{'then ' if failed else 'it read the coins from the end: '}{n} passed ({block_decision(d, n - 1)}), "
              f"which keeps x_1..x_{n} whatever their own coins say" if n else
              "none passed, so no draft is kept")
    compare = ("the same length" if token == n else f"{plural(token, 'draft')}, " +
               ("fewer" if token < n else "more") + " than the block rule's " + str(n))
    return (f" Block verification (Sun et al. 2024, Algorithm 2) weighs the block, p_i = min(p_(i-1) p(x_i)/q(x_i), "
            f"1), and keeps the first i drafts when u_i <= h_i = r_i / (r_i + 1 - p_i) (h_m = p_m), r_i the mass "
            f"of the block residual max(0, p_i·p - q) after i drafts: {', '.join(x for x in (read, passed) if x)}. "
            f"Token verification, with the same coins against min(1, p/q) from the front, would keep {compare}.")


def phrase(trace: Trace, d: dict, i: int) -> str:
    """Position i's verdict under the rule the step used."""
    pos = d["positions"][i]
    return block_decision(d, i) if is_block(d) and pos["u"] is not None else decision(trace, pos)


def decision(trace: Trace, pos: dict) -> str:
    """One position's verdict as a phrase with its numbers."""
    if pos.get("threshold") is not None:
        sign = ">" if pos["p"] > pos["threshold"] else "<="
        return (f"typical: p = {num(pos['p'])} {sign} min(ε, δ·exp(-H)) = {num(pos['threshold'])}, "
                f"H(p) = {pos['entropy']:.2f} nats")
    if pos["u"] is None:   # greedy
        if pos["token"] == pos["target_token"]:
            return f"it is the target's argmax (raw p = {num(pos['p_raw'])})"
        return (f"the target's argmax is {quoted(trace, pos['target_token'])}, not this token "
                f"(raw p = {num(pos['p_raw'])})")
    sign = "<=" if pos["u"] <= pos["ratio"] else ">"
    return f"u = {pos['u']:.3f} {sign} min(1, p/q) = min(1, {num(pos['p'])}/{num(pos['q'])}) = {pos['ratio']:.3f}"


# ----------------------------------------------------------------------------- main figure


def nothing_drafted(d: dict) -> bool:
    """Nothing was drafted: the step is a plain target forward, and its token is the target's own, no bonus."""
    return not d["positions"]


def why_nothing(trace: Trace, index: int, sentence: bool = False) -> str:
    """Why a step drafted nothing, read from the record: a short phrase, or the opening of a sentence."""
    d = trace.steps[index].detail
    if d["k"] == 0:
        return "Only one token was left in the budget" if sentence else "one token left in the budget"
    if d["drafter"] == "ngram" and d["lookup"] is None:
        return ("Prompt lookup found no earlier occurrence of the text's last tokens" if sentence
                else "prompt lookup found no match")
    if d.get("heads") and trace.steps[index].index == 0:
        return ("The heads draft from a verification forward's hidden states and none had run yet" if sentence
                else "the heads had no verification to read yet")
    return "The drafter proposed nothing" if sentence else "the drafter proposed nothing"


def unmeasured(trace: Trace) -> str:
    """Why a trace carries no cost calibration (yet)."""
    if (measured := theory.measuring(trace)) is not None:
        return measured
    if trace.config.get("drafter") == "typed":
        return "Be the drafter verifies one typed draft in one forward and does not time the target's forwards"
    return "it was recorded before runs measured c and T(n)"


@dataclass
class Running:
    """Acceptance statistics after each step so far."""
    steps: list[int]
    alpha: list[float | None]       # accepted / examined draft tokens
    measured: list[float]           # committed tokens per target forward
    expected: list[float | None]    # mean of (1 - alpha^(k+1)) / (1 - alpha) over the steps' draft lengths


def running(trace: Trace, index: int) -> Running:
    out = Running([], [], [], [])
    steps = trace.steps[: index + 1]
    tokens = forwards = 0
    for i, s in enumerate(steps):
        tokens += len(s.committed_ids)
        forwards += s.target_forwards
        alpha = acceptance_rate(steps[: i + 1])
        out.steps.append(s.index + 1)
        out.alpha.append(alpha)
        out.measured.append(tokens / max(forwards, 1))
        out.expected.append(None if alpha is None else sum(
            expected_tokens(alpha, len(t.detail["draft_tokens"])) for t in steps[: i + 1]) / (i + 1))
    return out


def measured_tokens(steps: list[Step]) -> list[theory.Measured]:
    """Mean tokens per iteration at each k the steps drafted (the adaptive schedule and the budget vary it),
    the marker sized by how many steps it averages."""
    by_k: dict[int, list[int]] = {}
    for s in steps:
        if s.detail["draft_tokens"]:
            by_k.setdefault(len(s.detail["draft_tokens"]), []).append(len(s.committed_ids))
    return [theory.Measured(k, sum(v) / len(v), f"measured at k = {k}: {sum(v) / len(v):.2f} tokens per iteration "
                                                f"over {plural(len(v), 'step')}", min(18, 9 + 2 * len(v)))
            for k, v in sorted(by_k.items())]


def run_k(steps: list[Step]) -> int:
    """The k most steps drafted: the run's k, where its measured speedup is placed."""
    ks = [len(s.detail["draft_tokens"]) for s in steps if s.detail["draft_tokens"]]
    return max(set(ks), key=ks.count) if ks else max(1, int(steps[-1].detail["k"]))


def drafted_sentence(trace: Trace, index: int) -> str:
    d = trace.steps[index].detail
    tokens = d["draft_tokens"]
    if d["drafter"] == "typed":
        return f"You proposed {plural(len(tokens), 'token')}: {listing(trace, tokens)} (a one-hot q)."
    if not tokens:
        return (f"{why_nothing(trace, index, sentence=True)}, so nothing was drafted and this step is a plain target "
                "forward.")
    if d["drafter"] == "ngram":
        look = d["lookup"]
        return (f"Prompt lookup matched the {look['n']}-gram {listing(trace, look['ngram_tokens'])} "
                f"(seen earlier at position {look['match_at']}) and proposed what followed it: "
                f"{listing(trace, tokens)}.")
    who = heads.who(d) if d.get("heads") else theory.exit_who(d) if d.get("early_exit") else "The draft"
    return f"{who} proposed {plural(len(tokens), 'token')}: {listing(trace, tokens)}."


def next_probability(trace: Trace, d: dict) -> str:
    if is_greedy(trace):
        return f"raw p = {num(d['next_raw_p'])}"
    return f"probability {num(d['next_p'])} in the distribution it was drawn from"


def verdict_sentence(trace: Trace, d: dict) -> str:
    kept = [i for i, p in enumerate(d["positions"]) if p["status"] == "accepted"]
    rejected = [i for i, p in enumerate(d["positions"]) if p["status"] == "rejected"]
    said = [] if not is_block(d) or is_greedy(trace) else kept[:-1]   # the block sentence gives the last kept coin
    parts = []
    if kept:
        parts.append("The target accepted " + ", ".join(
            quoted(trace, d["positions"][i]["token"]) + ("" if i in said else f" ({phrase(trace, d, i)})")
            for i in kept))
    if rejected:
        i = rejected[0]
        verb = "then rejected" if kept else "The target rejected"
        how = ("took its own argmax" if is_greedy(trace) else
               "drew from p itself, as typical acceptance does" if is_typical(d) else
               f"drew from the block residual max(0, p_{i}·p - q), renormalised" if is_block(d) and i else
               "drew from the residual max(0, p - q), renormalised")
        parts.append(f"{verb} {quoted(trace, d['positions'][i]['token'])} ({phrase(trace, d, i)}) and {how}: "
                     f"{quoted(trace, d['next_token'])} ({next_probability(trace, d)})")
    text = "; ".join(parts) + "." if parts else ""
    if d["next_kind"] == "bonus" and d["positions"]:
        text += (f" Every drafted token passed, so the target's distribution after the last one gave a bonus "
                 f"token: {quoted(trace, d['next_token'])} ({next_probability(trace, d)}).")
    elif d["next_kind"] == "bonus":
        text += f" The target chose {quoted(trace, d['next_token'])} ({next_probability(trace, d)})."
    if d["next_token"] is None:
        text += " The last accepted token ends the text, so no bonus token follows it."
    elif d["ended"]:
        text += " That token ends the text."
    return text.strip()


def words(trace: Trace, index: int) -> str:
    if index < 0:
        return ("Nothing has run yet. Each step drafts up to k tokens, checks them with one target forward, "
                "keeps the accepted prefix and adds one token from the target.")
    s = trace.steps[index]
    d = s.detail
    committed = len(s.committed_ids)
    tc, dc = d["target_cache"], d["draft_cache"]
    text = " ".join(x for x in (drafted_sentence(trace, index), verdict_sentence(trace, d)) if x)
    if is_block(d):
        text += block_sentence(trace, d)
    drafted_by = "head forward" if d.get("heads") else "draft forward"
    text += (f" {plural(committed, 'token')} for 1 target forward"
             f"{' and ' + plural(s.draft_forwards, drafted_by) if s.draft_forwards else ''}, "
             f"{s.wall_s * 1000:.0f} ms.")
    if split := theory.time_split(s):
        text += f" {split}"
    text += f" The target read {plural(s.tokens_fed, 'token')} (cache {tc[0]} → {tc[1]}, cropped to {tc[2]})"
    text += f"; the draft's cache went {dc[0]} → {dc[1]} → {dc[2]}." if dc else "."
    if is_typical(d):
        text += (" Typical acceptance (Medusa-2) keeps x when p(x) > min(ε, δ·exp(-H(p))), with no coin and no "
                 "residual: it is lossy, so sampled output is not distributed as the target's" +
                 (" (under greedy p is one-hot, so only the argmax passes and it equals greedy)." if is_greedy(trace)
                  else "."))
    if d["schedule"] == "adaptive" and not d["ended"]:
        text += f" Adaptive schedule: k = {d['k_next']} next."
    text += acceptance_words(trace, index)
    said = heads_words.words(trace, index, heads.CHAIN)
    return "\n\n".join(x for x in (text, cost_words(trace, index), said) if x)


def acceptance_words(trace: Trace, index: int) -> str:
    """The two acceptance figures side by side, each named, with its counts."""
    steps = trace.steps[: index + 1]
    r = running(trace, index)
    if r.alpha[-1] is None:
        return ""
    accepted, examined = drafts(speculative_drafts, steps)
    made = sum(len(s.committed_ids) for s in steps)
    return (f" So far, two acceptance figures: the acceptance rate α = accepted / examined drafts = {accepted} / "
            f"{examined} = {r.alpha[-1]:.2f} (a draft counts as examined up to and including the first refused "
            f"one); and the mean tokens per iteration, the target's own token included, = {made} / "
            f"{plural(len(steps), 'iteration')} = {made / len(steps):.2f}, against {expected_words(steps, r)}.")


def expected_words(steps: list[Step], r: Running) -> str:
    """The expected tokens per iteration the measured mean is set against, saying how it was computed: the
    formula at each step's own draft length, averaged, which is the formula at k itself only when every step
    drafted k tokens (the budget's end, a lookup miss or heads not yet fed draft fewer)."""
    alpha, k = r.alpha[-1], run_k(steps)
    lengths = [len(s.detail["draft_tokens"]) for s in steps]
    if all(n == k for n in lengths):
        return f"{r.expected[-1]:.2f} expected from (1 - α^(k+1)) / (1 - α) at k = {k}"
    fewer = sum(n != k for n in lengths)
    return (f"{r.expected[-1]:.2f} expected: (1 - α^(k+1)) / (1 - α) at each iteration's own draft length, "
            f"averaged, since {fewer} of {plural(len(steps), 'iteration')} drafted other than k = {k} "
            f"(at k = {k} throughout it would be {expected_tokens(alpha, k):.2f}, the figure the cost model uses)")


def cost_words(trace: Trace, index: int) -> str:
    """The cost model with the run's numbers: c, T(k+1), the expected and the measured speedup, the best k."""
    cal = theory.calibration(trace)
    if cal is None:
        if theory.measuring(trace) is not None:
            return f"**Cost model:** {unmeasured(trace)}; no speedup is drawn until then."
        return f"**Cost model:** not measured for this trace ({unmeasured(trace)}), so no speedup is drawn."
    steps = trace.steps[: index + 1]
    k, alpha, c = run_k(steps), acceptance_rate(steps), theory.draft_c(trace, cal)
    drafter = trace.config.get("drafter", "model")
    draft = (f"a draft forward {theory.c_source(trace, cal)}, so c = {c:.2f}" if drafter not in theory.FREE_DRAFTS
             else theory.FREE_DRAFTS[drafter])
    text = (f"**Cost model**, {theory.origin(cal)}: a target forward over one token takes "
            f"{theory.ms(cal.target_forward_s)}; {draft}; verifying k + 1 = {k + 1} tokens costs "
            f"T({k + 1}) = {cal.T(k + 1):.2f} forwards of one token.")
    if alpha is None or c is None:
        return text
    ns, costs = cal.verify_n, cal.verify_cost
    spent = k * c + cal.T(k + 1)
    text += (f" At α = {alpha:.2f} and k = {k} the model expects {expected_tokens(alpha, k):.2f} tokens per "
             f"iteration for {k} × {c:.2f} + {cal.T(k + 1):.2f} = {spent:.2f} forwards: "
             f"{expected_speedup(alpha, k, c, ns, costs):.2f}x.")
    speedup = theory.measured_speedup(steps, cal)
    if speedup is not None:
        made = sum(len(s.committed_ids) for s in steps)
        text += (f" Measured: {speedup:.2f}x ({made} tokens × {theory.ms(cal.target_forward_s)} / "
                 f"{sum(s.wall_s for s in steps):.3f} s of steps; the engine's own work per step, sampling and "
                 f"recording what these figures show, is in that time but not in the model).")
    return f"{text} {TRADE_OFF} Here, at α = {alpha:.2f} and c = {c:.2f}, {verdict(alpha, c, ns, costs)}."


def chips(trace: Trace, index: int) -> list[Chip]:
    d = trace.steps[index].detail
    out = [Chip(p["token"], p["status"], phrase(trace, d, i)) for i, p in enumerate(d["positions"])]
    if d["next_token"] is not None:
        out.append(Chip(d["next_token"], "chosen" if nothing_drafted(d) else d["next_kind"],
                        ("nothing drafted: the target's own token, " if nothing_drafted(d) else "")
                        + next_probability(trace, d)))
    return out
