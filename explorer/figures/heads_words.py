"""The head drafters' words (Medusa heads, Hydra heads, the EAGLE-3 head): what the heads read, what each head or
depth guessed and its fate, the target's tokens outside the draft vocabulary, the cost in head forwards and the
acceptance per head so far; explorer/figures/heads.py draws the same records."""
from __future__ import annotations

from engines.trace import Step, Trace
from explorer.figures.common import quoted
from explorer.figures.heads import (
    CHAIN,
    Level,
    Reading,
    Tally,
    by_head,
    head_name,
    is_hydra,
    is_medusa,
    step_levels,
)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def reads_sentence(d: dict) -> str:
    heads = d["heads"]
    last = heads["target_layers"]
    if is_medusa(d):
        return (f"The Medusa heads read the target's last hidden state (layer {last} of {last}) and guess through "
                f"a {heads['draft_vocab']}-token draft vocabulary.")
    if is_hydra(d):
        return (f"The Hydra heads read the target's last hidden state (layer {last} of {last}) and the tokens "
                f"drafted before each guess: head 1 reads the pending token, head i the draft of head i - 1 on "
                f"its path (the arrows), so unlike Medusa's each guess depends on the one before. They guess "
                f"through a {heads['draft_vocab']}-token draft vocabulary.")
    layers = ", ".join(str(x) for x in heads["layers"][:-1]) + f" and {heads['layers'][-1]}"
    return (f"The EAGLE head fuses the outputs of target layers {layers} of {last} (low, middle, high) and drafts "
            f"at the feature level over a {heads['draft_vocab']}-token draft vocabulary.")


def read_phrase(trace: Trace, level: Level) -> str:
    return f" after reading {quoted(trace, level.reads)}" if level.reads is not None else ""


def chain_phrase(trace: Trace, level: Level) -> str:
    x = level.guesses[0]
    fate = {"accepted": "accepted", "not_reached": "not reached"}.get(x.status, "rejected")
    if x.status == "rejected" and level.target is not None and level.target != x.token:
        fate += f"; the target's most likely was {quoted(trace, level.target)}"
    return f"{level.name}{read_phrase(trace, level)} {quoted(trace, x.token)} (q = {x.q:.3f}, {fate})"


def tree_phrase(trace: Trace, level: Level) -> str:
    offered = ", ".join(f"{quoted(trace, x.token)} ({x.q:.3f})" for x in level.guesses[:4])
    more = f" and {len(level.guesses) - 4} more" if len(level.guesses) > 4 else ""
    won = [x for x in level.guesses if x.status == "accepted"]
    if won:
        verdict = f"the target accepted {quoted(trace, won[0].token)}"
    elif level.target is not None:
        verdict = f"none was accepted; the target took {quoted(trace, level.target)}"
    else:
        verdict = "not reached" if all(x.status == "not_reached" for x in level.guesses) else "none was accepted"
    return f"{level.name}{read_phrase(trace, level)} offered {offered}{more}: {verdict}"


def outside_sentence(trace: Trace, d: dict, levels: list[Level]) -> str:
    said = [f"{quoted(trace, lv.target)} (at {lv.name})" for lv in levels if lv.in_vocab is False]
    if not levels and d["heads"]["target_in_vocab"] and d["heads"]["target_in_vocab"][-1] is False:
        said.append("this step's token")
    if not said:
        return ""
    return (f"The target's token {', '.join(said)} lies outside the {d['heads']['draft_vocab']}-token draft "
            f"vocabulary: no head could ever have drafted it.")


def cost_sentence(step: Step, d: dict) -> str:
    if not step.draft_forwards:
        return ("Nothing was drafted: the heads draft from the hidden states of a verification forward, and "
                "none had run yet (or the budget left no room), so this step is one plain target forward.")
    return (f"Drafting cost {plural(step.draft_forwards, 'head forward')} and no target forward: "
            f"{head_name(d)} read the hidden states the previous verification forward had already computed.")


def tally_sentence(d: dict, tallies: list[Tally], extra: str) -> str:
    seen = [t for t in tallies if t.reached]
    if not seen:
        return ""
    return (f"So far, accepted / examined per {'head' if by_head(d) else 'depth'}: "
            + ", ".join(f"{t.name} {t.accepted}/{t.reached}" for t in seen)
            + f" ({extra}: " + ", ".join(f"{t.extra}/{t.reached}" for t in seen) + ").")


def words(trace: Trace, index: int, reading: Reading) -> str:
    """What the heads did this step, with the record's numbers; empty when no head drafted."""
    if index < 0 or not trace.steps[index].detail.get("heads"):
        return ""
    step = trace.steps[index]
    d = step.detail
    levels = step_levels(trace, index, reading)
    phrase = chain_phrase if reading is CHAIN else tree_phrase
    guessed = ("Per " + ("head" if by_head(d) else "depth") + ": " + "; ".join(phrase(trace, lv) for lv in levels)
               + ".") if levels else ""
    parts = [reads_sentence(d), guessed, outside_sentence(trace, d, levels), cost_sentence(step, d),
             tally_sentence(d, reading.tally(trace.steps[: index + 1]), reading.extra)]
    return " ".join(p for p in parts if p)
