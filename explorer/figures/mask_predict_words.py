"""Mask-predict's step in words, with the recorded numbers: what was unmasked and re-masked and why (the
schedule, tau, ReMDM's coins), the cached prefix's audit, end-of-text held back, and the quality curve."""
from __future__ import annotations

from engines.trace import Trace
from explorer.figures.common import quoted


def span_at(trace: Trace, index: int) -> dict:
    """The record of the candidate span the step ranks best (the only one unless the length is predicted)."""
    d = trace.steps[index].detail
    return d["spans"][d["best"]]


def fmt(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def coin_note(r: dict, i: int) -> str:
    """ReMDM: the coin a committed position drew and the chance it was held to, or nothing."""
    rm = r.get("remasking")
    if not rm or i not in rm["decoded"]:
        return ""
    k = rm["decoded"].index(i)
    chance = rm["probability"][k]
    if not rm["coins"]:
        return f"<br>re-mask chance {fmt(chance)}: no coin drawn"
    u = rm["coins"][k]
    verdict = ("re-masked" if i in r["remasked"] else "kept: the schedule had no room" if i in rm["no_room"]
               else "kept")
    return f"<br>re-mask coin u {fmt(u)} {'<' if u < chance else '>='} chance {fmt(chance)}: {verdict}"


def listed(trace: Trace, r: dict, positions: list[int], limit: int = 6) -> str:
    items = [f"{i} {quoted(trace, r['predicted_tokens'][i])} ({fmt(r['confidence'][i])})" for i in positions[:limit]]
    more = f" and {len(positions) - limit} more" if len(positions) > limit else ""
    return ", ".join(items) + more


def words(trace: Trace, index: int) -> str:
    if index < 0 or not trace.steps:
        cfg = trace.config
        return (f"Nothing has run yet. The span after the prompt starts as masks and is filled over "
                f"{cfg.get('iterations', 'T')} forward passes of the masked LM ({cfg.get('strategy', '')}).")
    step = trace.steps[index]
    d, r = step.detail, span_at(trace, index)
    block = f", block {r['block'][0]}-{r['block'][1] - 1}" if r["block_iterations"] < d["iterations"] else ""
    most = "at most " if d["strategy"] == "threshold" else ""
    text = (f"Iteration {index + 1} of {most}{d['iterations']} ({d['strategy']}{block}): ")
    if not step.target_forwards:
        text += "nothing was masked in this block, so no forward was needed."
    else:
        text += (f"{step.target_forwards} forward{'s' if step.target_forwards > 1 else ''} over "
                 f"{step.tokens_fed} positions predicted the {len(r['masked_before'])} masked position"
                 f"{'s' if len(r['masked_before']) != 1 else ''}.")
    if r["unmasked"]:
        text += f" Unmasked: {listed(trace, r, r['unmasked'])}."
    if r.get("remasking"):
        text += remdm_words(trace, r)
    elif r["remasked"]:
        text += f" Re-masked as the least confident: {listed(trace, r, r['remasked'])}."
    if d["strategy"] == "threshold":
        tau = trace.config.get("threshold")
        sure = [i for i in r["masked_before"] if r["confidence"][i] is not None and r["confidence"][i] >= tau]
        text += (f" {len(sure)} of {len(r['masked_before'])} masked positions were at least tau = {tau} sure"
                 + ("" if sure else ", so only the most confident was committed") + f"; {r['masks_after']} masks "
                 f"remain (threshold has no schedule: it ends when the span is full).")
    else:
        text += (f" {r['masks_after']} masks remain; the schedule planned {r['scheduled_masks']} going in "
                 f"(formula {r['formula_masks']:g}).")
    text += cache_words(r) + eos_words(trace, r) + curve_words(d.get("quality_curve"))
    if len(d["lengths"]) > 1:
        text += (f" The length beam runs {len(d['lengths'])} spans ({', '.join(map(str, d['lengths']))}); the best "
                 f"mean log-probability is length {r['length']} ({fmt(r['mean_logprob'])}).")
    if step.committed_ids:
        text += f" The span is final: {len(step.committed_ids)} tokens committed."
    return text


SIGMA_RULES = {"cap": "min(eta {eta}, sigma_max)", "rescale": "eta {eta} x sigma_max",
               "conf": "min(eta {eta}, sigma_max), spread by softmax(-confidence)"}


def remdm_words(trace: Trace, r: dict) -> str:
    """ReMDM's remasking in one iteration, with its recorded chances and coins."""
    rm = r["remasking"]
    decoded = rm["decoded"]
    if not decoded:
        return " ReMDM: no token of this block was committed before this iteration, so none could be re-masked."
    rule = SIGMA_RULES[rm["schedule"]].format(eta=fmt(rm["eta"]))
    left = r["masks_after"] - (r["length"] - r["block"][1])   # the block's masks after this iteration
    text = (f" ReMDM-{rm['schedule']}: {len(decoded)} token{'s' if len(decoded) != 1 else ''} committed earlier "
            f"could be re-masked; sigma_max = min(1, masks left after / tokens committed) = min(1, {left} / "
            f"{len(decoded)}) = {fmt(rm['sigma_max'])}, sigma_t = {rule} = {fmt(rm['sigma'])}")
    if rm["schedule"] == "conf":
        text += f", so each chance is between {fmt(min(rm['probability']))} and {fmt(max(rm['probability']))}"
    if not rm["coins"]:
        return text + ("; every chance is 0, so no coin was drawn" +
                       (" (the last iteration of the block must leave no mask)." if not rm["sigma_max"] else "."))
    hits = [f"{i} {quoted(trace, r['predicted_tokens'][i])} (conf {fmt(c)}, u = {fmt(u)} < {fmt(p)})"
            for i, c, u, p in zip(decoded, rm["confidence"], rm["coins"], rm["probability"]) if i in r["remasked"]]
    text += (f"; {len(rm['coins'])} coins drawn. " + (f"Re-masked, to be predicted again: {', '.join(hits[:6])}"
             + (f" and {len(hits) - 6} more" if len(hits) > 6 else "") +
             f"; so {len(hits)} more masked position{'s' if len(hits) != 1 else ''} committed than the schedule's "
             f"share." if hits else "No coin fell under its chance: nothing re-masked."))
    if rm["no_room"]:
        text += (f" Coins also fell under at {', '.join(map(str, rm['no_room']))}, but the schedule had no room left: "
                 f"kept, as the most confident.")
    return text


def cache_words(r: dict) -> str:
    states = r.get("kv_state") or []
    if "cached" not in states and "stale" not in states:
        return ""
    text = (f" The forward fed {states.count('fresh')} positions and read {states.count('cached')} from the key-value "
            f"cache as computed on this text and {states.count('stale')} stale ones, computed when a token they "
            f"see was different.")
    if r.get("drift") is not None:
        changed = r.get("drift_changed") or []
        text += (f" The auditor also ran the exact forward ({r['audit_tokens_fed']} positions, not counted as the "
                 f"method's cost): the largest logit difference at the decided positions is {fmt(r['drift'])}, and "
                 + (f"the decision would have changed at position{'s' if len(changed) > 1 else ''} "
                    f"{', '.join(map(str, changed))}." if changed else "no decision would have changed."))
    return text


def eos_words(trace: Trace, r: dict) -> str:
    held, written = r.get("eos_held") or [], r.get("eos_committed") or []
    text = ""
    if held:
        text += (f" End-of-text was the guess at position{'s' if len(held) > 1 else ''} {', '.join(map(str, held))}, "
                 f"before text that is still masked: held back, so the span does not flood with end-of-text tokens.")
    if written:
        text += f" End-of-text committed at {', '.join(map(str, written))}; the text ends at the first one."
    return text


def curve_words(curve: list[dict] | None) -> str:
    if not curve:
        return ""
    points = "; ".join(f"T = {p['iterations']}: mean log p {fmt(p['mean_logprob'])}, distinct-2 {fmt(p['distinct2'])}"
                       for p in curve)
    return f" The same span decoded again at fewer iterations (recorded, {sum(p['forwards'] for p in curve)} forwards): {points}."
