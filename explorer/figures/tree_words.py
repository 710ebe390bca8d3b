"""The tree view in words: what this step drafted and verified, where the time went, why it won or lost against
plain decoding, and the chips of the step's tokens."""
from __future__ import annotations

from engines.analysis.theory import drafts, tree_drafts
from engines.decoding import trees
from engines.trace import Step, Trace
from explorer.figures import heads, heads_words, theory
from explorer.figures.common import (
    Chip,
    listing,
    quoted,
)


def choices(step: Step) -> dict[int, int]:
    """The token the target took after each node of the accepted path (ROOT included)."""
    path, d = step.detail["accepted_path"], step.detail
    tokens = [d["nodes"][i]["token"] for i in path] + [d["final_token"]]
    return dict(zip([trees.ROOT, *path], tokens))


def draft_cost(steps: list[Step], c: float | None) -> float:
    """Mean drafting cost per step in target forwards: draft forwards x c (0 for drafters that run no model)."""
    return sum(s.draft_forwards for s in steps) / len(steps) * c if c else 0.0


def words(trace: Trace, index: int) -> str:
    if index < 0:
        return ("Nothing has run yet. Each step, the draft grows a tree of guesses and the target checks "
                "every branch at once in one forward pass with a tree attention mask.")
    step = trace.steps[index]
    d = step.detail
    nodes = d["nodes"]
    depth = max((n["depth"] for n in nodes), default=0)
    shape = ("frequency-ranked (REST)" if "retrieval_match" in d else "dynamic (EAGLE-2)" if d["tree"] == "dynamic"
             else f"'{d['tree']}'")
    if not nodes:
        p = d["final_p_raw"] if not trace.config.get("temperature", 0) else d["final_p"]
        parts = [f"{no_tree(trace, index)[0]}, so no tree was drafted and this step is a plain target forward: it "
                 f"read the {len(d['pending_ids'])} pending token{'s' if len(d['pending_ids']) != 1 else ''} and "
                 f"chose {quoted(trace, d['final_token'])} (p = {p:.3g})."]
    else:
        dropped = f"; the budget dropped {d['dropped']} less confident candidates" if d["dropped"] else ""
        who, unit = ((heads.who(d), "head") if d.get("heads") else (theory.exit_who(d), "draft") if d.get("early_exit")
                     else ("The datastore", "draft") if "retrieval_match" in d else ("The draft", "draft"))
        grew = (f"{who} grew a {shape} tree of {len(nodes)} node{'s' if len(nodes) != 1 else ''}, {depth} deep, "
                f"in {step.draft_forwards} {unit} forward{'s' if step.draft_forwards != 1 else ''}{dropped}."
                if "recycling" not in d else recycled_tree(d, depth))
        parts = [grew, sizing(d),
                 f"One target forward read {step.tokens_fed} tokens ({len(d['pending_ids'])} pending + "
                 f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}) under the tree mask, each node at position root + depth.",
                 retrieved(trace, d), won(trace, step), failures(trace, step)]
    n = len(step.committed_ids)
    parts += [f"{n} token{'s' if n != 1 else ''} for 1 target forward ({step.wall_s * 1000:.0f} ms).",
              theory.time_split(step)]
    if d.get("acceptance") == "typical":
        parts.append("Typical acceptance (Medusa-2) keeps the deepest path whose every node has p(x) > "
                     "min(ε, δ·exp(-H(p))) at its parent, with no coin and no residual: it is lossy, so sampled "
                     "output is not distributed as the target's (under greedy only the argmax passes).")
    parts.append(so_far(trace, index))
    said = heads_words.words(trace, index, heads.TREE)
    return "\n\n".join(x for x in (" ".join(p for p in parts if p), recycling_words(trace, d),
                                     cost_words(trace, index), said) if x)


def recycled_tree(d: dict, depth: int) -> str:
    """Token Recycling's draft in a sentence: the template it filled and the table rows it read."""
    r, n = d["recycling"], len(d["nodes"])
    return (f"The adjacency table (Token Recycling) filled {n} of its template's {r['template']} rank paths, "
            f"{depth} deep, reading {r['rows_read']} of its {r['rows_known']} rows; no model ran.")


def recycling_words(trace: Trace, d: dict) -> str:
    """The table rows this step's draft read and what its verification rewrote in the table."""
    r = d.get("recycling")
    if not r:
        return ""
    k = r["k"]
    rows = []
    for row in r["used"][:3]:
        change = "unchanged" if row["after"] == row["before"] else f"now {listing(trace, row['after'][:3])}"
        rows.append(f"{quoted(trace, row['token'])} -> {listing(trace, row['before'][:3])}, ... ({change})")
    read = f" The draft read {'; '.join(rows)}." if rows else ""
    return (f"**Token Recycling:** a token's row holds the {k} tokens the target ranked highest after it the last "
            f"time a forward read that token.{read} This step's verification rewrote {r['written']} rows from the "
            f"target's top {k} at every position it read, {r['recycled']} of them from nodes it did not accept (the "
            f"recycled candidates); {r['new']} rows were new and {r['changed']} changed.")


def no_tree(trace: Trace, index: int) -> tuple[str, str]:
    """Why a step drafted no tree, as a sentence's opening and as a short phrase for the figure's title, read
    from the record: the token budget, heads that had not read a verification yet, a suffix tree that held
    no continuation of the text, an adjacency table with no row for the last token, or an auto budget for which
    no tree paid for itself."""
    step = trace.steps[index]
    d = step.detail
    left = trace.config.get("max_new_tokens", 0) - sum(len(s.committed_ids) for s in trace.steps[:index])
    if left <= 1:
        return "Only one token was left to generate", "one token left"
    if d.get("sizing", {}).get("candidates") and not d["sizing"]["budget"] and d["sizing"]["measured"]:
        z = d["sizing"]
        return (f"Tree budget auto verified none of the {z['candidates']} candidates: by the measured forward "
                f"times, the target's one token alone ({z['seconds'][0] * 1000:.0f} ms) made more tokens per second "
                f"than any tree (one node: {z['expected_tokens'][1]:.2f} expected tokens in "
                f"{z['seconds'][1] * 1000:.0f} ms)", "auto budget: no tree paid")
    if d.get("heads") and step.index == 0:
        return ("The heads draft from a verification forward's hidden states and none had run yet",
                "the heads had nothing to read yet")
    if "recycling" in d:
        return (f"{left} tokens were left, but the adjacency table had no row for the last token "
                f"{quoted(trace, d['root_token'])} yet" + (" (the first verification fills it from the prompt)"
                                                           if step.index == 0 else ""),
                "no table row for the last token yet")
    if "retrieval_match" in d:
        m = d["retrieval_match"]
        return (f"{left} tokens were left, but no suffix of the text of 2 or more tokens occurs in the datastore "
                f"'{m['datastore']}' with a continuation", "the datastore matched nothing")
    if "suffix_match" in d:
        return (f"{left} tokens were left, but the suffix tree matched nothing: no suffix of the text so far had "
                "occurred before with a continuation", "the suffix tree matched nothing")
    return f"{left} tokens were left, but the drafter proposed nothing", "nothing drafted"


def retrieved(trace: Trace, d: dict) -> str:
    """REST's lookup in words: the suffix matched, how often it occurs, the branches the tree kept."""
    m = d.get("retrieval_match")
    if not m or not m["length"]:
        return ""
    read = f"all {m['read']}" if m["read"] == m["occurrences"] else f"{m['read']} of them, evenly spaced,"
    said = "; ".join(f"{listing(trace, c['tokens'], ' ')} ×{c['count']}" for c in m["continuations"][:4])
    more = f" and {len(m['continuations']) - 4} more" if len(m["continuations"]) > 4 else ""
    return (f"It looked the text's last {m['length']} tokens ({listing(trace, m['tokens'], ' ')}) up in the "
            f"datastore '{m['datastore']}' ({m['datastore_tokens']:,} tokens, {m['datastore_bytes'] / 1e6:.1f} MB), "
            f"the longest suffix found there: it occurs {m['occurrences']} time{'s' if m['occurrences'] != 1 else ''}; "
            f"the continuations after {read} were merged into a trie counting how many pass each node, and the "
            f"most frequent nodes are the tree (each node's q is its share of its parent's count). Its branches: "
            f"{said}{more}.")


def cost_words(trace: Trace, index: int) -> str:
    """The cost model with the run's numbers: both acceptance figures, what a step costs in target forwards
    (verifying n tokens, and drafting), and the speedup it predicts against the one measured."""
    steps = trace.steps[: index + 1]
    accepted, examined = drafts(tree_drafts, steps)
    made = sum(len(s.committed_ids) for s in steps)
    text = (f"**Two acceptance figures:** the acceptance rate α = accepted / examined drafts along the accepted "
            f"paths = {accepted} / {examined}" + (f" = {accepted / examined:.2f}" if examined else "") +
            f"; the mean tokens per iteration, the target's own token included, = {made} / {len(steps)} = "
            f"{made / len(steps):.2f} (one target forward per iteration, so also tokens per target forward).")
    cal = theory.calibration(trace)
    if cal is None:   # still measuring, or a trace from before runs measured c and T(n)
        return text + f" **Cost model:** {theory.unmeasured(trace)}; no cost line is drawn."
    c = theory.draft_c(trace, cal)
    drafter = trace.config.get("drafter", "model")
    n = sum(s.tokens_fed for s in steps) / len(steps)
    verify = sum(cal.T(s.tokens_fed) for s in steps) / len(steps)
    drafting = draft_cost(steps, c)
    draft = (f"the draft grew each tree in {sum(s.draft_forwards for s in steps) / len(steps):.1f} draft forwards "
             f"on average, each c = {c:.2f} of a target forward ({theory.c_source(trace, cal)}), so drafting "
             f"costs {drafting:.2f} forwards a step" if drafter not in theory.FREE_DRAFTS
             else f"drafting is nearly free: {theory.FREE_DRAFTS[drafter]}")
    text += (f"\n\n**Cost model**, {theory.origin(cal)}: a target forward over one token "
             f"takes {theory.ms(cal.target_forward_s)}; verifying a tree reads n = {n:.1f} tokens a step on average "
             f"(pending + nodes), T(n) = {verify:.2f} forwards of one token; {draft}.")
    expected = made / len(steps) / (verify + drafting)
    text += (f" So each step yields {made / len(steps):.2f} tokens for {verify + drafting:.2f} forwards' cost: "
             f"the model expects {expected:.2f}x over plain decoding.")
    speedup = theory.measured_speedup(steps, cal)
    if speedup is not None:
        text += (f" Measured: {speedup:.2f}x ({made} tokens × {theory.ms(cal.target_forward_s)} / "
                 f"{sum(s.wall_s for s in steps):.3f} s of steps; the engine's own work per step, building the tree "
                 f"and its mask and recording it, is in that time but not in the model).")
    return text + (" A bigger tree raises the tokens a step can yield but also T(n) and the drafting: it pays only "
                   "while the extra accepted tokens outgrow the extra cost, which the points above or below the cost "
                   "line show step by step.")


def won(trace: Trace, step: Step) -> str:
    d = step.detail
    nodes, path = d["nodes"], d["accepted_path"]
    if path:
        chain = listing(trace, [nodes[i]["token"] for i in path], " -> ")
        text = f"The winning path {chain} was accepted ({len(path)} drafted token{'s' if len(path) != 1 else ''}"
        tests = [nodes[i] for i in path if "u" in nodes[i]]
        if tests:
            text += "; " + ", ".join(f"u = {n['u']:.2f} <= {n['ratio']:.2f}" for n in tests)
        text += ")."
    else:
        text = "No drafted token was accepted."
    if d.get("eos_cut"):
        return text + " It reached the end-of-text token, so the text ends there."
    final = quoted(trace, d["final_token"])
    greedy = not trace.config.get("temperature", 0)
    p = f"raw p = {d['final_p_raw']:.3g}" if greedy else f"p = {d['final_p']:.3g}"
    if d["final_kind"] == "bonus":
        return text + f" The path ended at a leaf, so the target's own next token {final} ({p}) came free as " \
                      f"the bonus."
    if d.get("acceptance") == "typical":
        return text + (f" Typical acceptance then chose {final} ({p}) from p itself at the last accepted node, "
                       f"with no residual.")
    if greedy:
        return text + f" No child there matched the target's argmax, so the target's {final} ({p}) was added instead."
    return text + f" The target rejected every child it tried there and drew {final} ({p}) from what was left."


def failures(trace: Trace, step: Step) -> str:
    """Where each other branch failed: the rejected nodes, each at the first node where it left the path."""
    d = step.detail
    taken = choices(step)
    rejected = [n for n in d["nodes"] if n["status"] == "rejected"]
    unreached = sum(1 for n in d["nodes"] if n["status"] == "not_reached")
    if not rejected and not unreached:
        return ""
    said = []
    for n in rejected[:6]:
        why = f"u = {n['u']:.2f} > {n['ratio']:.2f}" if "u" in n else \
            (f"p = {n['p']:.2f} <= threshold {n['threshold']:.2f}" if n["p"] <= n["threshold"] else
             "it passed, but a deeper path won") if "threshold" in n else \
            f"the target wanted {quoted(trace, taken[n['parent']])}"
        said.append(f"{quoted(trace, n['token'])} (depth {n['depth']}, rank {n['rank']}: {why})")
    text = ("Other branches failed at " + "; ".join(said) + (f"; and {len(rejected) - 6} more" if len(rejected) > 6
                                                               else "") + ".") if said else ""
    if unreached:
        text += f" {unreached} node{'s' if unreached != 1 else ''} below or after them {'were' if unreached != 1 else 'was'}" \
                f" never checked."
    return text.strip()


def so_far(trace: Trace, index: int) -> str:
    steps = trace.steps[: index + 1]
    accepted = [s.detail["accepted_length"] for s in steps]
    made = sum(len(s.committed_ids) for s in steps)
    size = sum(len(s.detail["nodes"]) for s in steps) / len(steps)
    return (f"So far: {len(steps)} step{'s' if len(steps) != 1 else ''}, mean accepted length "
            f"{sum(accepted) / len(steps):.2f}, {made / len(steps):.2f} tokens per target forward, "
            f"mean tree size {size:.1f} nodes.")


def chips(trace: Trace, index: int) -> list[Chip]:
    step = trace.steps[index]
    d = step.detail
    nodes = d["nodes"]
    out = [Chip(t, "accepted", f"node {i}, p = {nodes[i]['p']:.3f}, q = {nodes[i]['q']:.3f}")
           for i, t in zip(d["accepted_path"], step.committed_ids)]
    if len(step.committed_ids) > len(d["accepted_path"]):
        # the rejected siblings are alternatives for one position, not consecutive text: the first-ranked
        # stands for them (struck through, as a rejected draft reads everywhere) and names the others
        rejected = [n for n in nodes if n["status"] == "rejected" and n["parent"] == d["stop_node"]]
        if rejected:
            others = ", ".join(quoted(trace, n["token"]) for n in rejected[1:])
            out.append(Chip(rejected[0]["token"], "rejected", f"node {rejected[0]['id']}, rejected"
                            + (f"; also rejected at this position: {others}" if others else "")))
        out.append(Chip(d["final_token"], d["final_kind"], f"p = {d['final_p']:.3f}"))
    return out


def sizing(d: dict) -> str:
    """Why an auto budget chose this size: the expected tokens and seconds of the sizes beside it."""
    z = d.get("sizing")
    if not z:
        return ""
    n, e, t, m = z["budget"], z["expected_tokens"], z["seconds"], z["candidates"]
    if not z["measured"]:
        return (f"Tree budget auto: no target forward of this run has been timed yet, so it kept the {n} likeliest of "
                f"{m} candidates (the fixed default) until one is.")
    out = (f"Tree budget auto kept {n} of {m} candidates: {e[n]:.2f} expected tokens in {t[n] * 1000:.0f} ms "
           f"({e[n] / t[n]:.1f} tokens/s), the most of any size by this machine's measured forward times and the "
           f"acceptance seen so far.")
    if n < m:
        out += (f" One more node would cost {(t[n + 1] - t[n]) * 1000:.1f} ms and earn {e[n + 1] - e[n]:.2f} expected "
                f"tokens ({e[n + 1] / t[n + 1]:.1f} tokens/s).")
    if n > 0:
        out += (f" One fewer would save {(t[n] - t[n - 1]) * 1000:.1f} ms and lose {e[n] - e[n - 1]:.2f} "
                f"({e[n - 1] / t[n - 1]:.1f} tokens/s).")
    return out

