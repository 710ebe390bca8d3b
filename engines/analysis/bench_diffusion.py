"""The bench's masked diffusion section: text quality (perplexity under SmolLM2, distinct-2) of each masked LM and
strategy against autoregressive text, on two prompt sets (the bench's texts to continue, and the held-out task
suite's conversations in the chat template, as the Mask-predict tab answers a chat), masked top-1 on held-out text,
and what the prefix cache saves. The summary, goals and training curve are printed by diffusion_tables."""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engines.analysis.bench_runs import PROMPTS, Models, run_trace, timed_trace
from engines.analysis.task_suite import load_suite, per_family
from engines.decoding.mask_predict import FIXED, STRATEGIES, distinct2
from engines.models import adapter, store
from engines.models.chat import Prompt
from engines.trace import Trace

# the bench prompts and two of another kind: a plain statement of fact, and dialogue
DIFFUSION_PROMPTS = [*PROMPTS, "The moon goes round the earth once in about a month, and",
                     "\"Where are you going so early?\" asked the old man. \"To the market,\" said the boy,"]
DIFFUSION_MODELS = ("tiny-masked", "smollm2-135m-diffusion")


def default_masked() -> tuple[str, ...]:
    """The masked LMs the diffusion section measures unless told: those of DIFFUSION_MODELS available here."""
    return tuple(n for n in DIFFUSION_MODELS if store.available(n))


# every strategy of the engine whose iterations are set (the fixed ones and any added since), at span, span/2 and
# span/4; threshold finds its own iterations from tau
ITERATED = tuple(s for s in STRATEGIES if s in FIXED or s != "threshold")
SUITE_PER_FAMILY = 1   # held-out suite prompts per family in a full run; a quick run takes the chat family's first


@dataclass(frozen=True)
class PromptSet:
    """Prompts the section runs as one set, and how every model reads them."""
    name: str                          # what the rows call the set
    prompts: tuple[Prompt, ...]        # texts, or conversations as {"role", "content"} messages
    chat: bool                         # read in each model's chat template (the scorer scores in the same one)
    families: tuple[str, ...]          # each prompt's task family, "" outside the suite


def bench_set(prompts: Sequence[str]) -> PromptSet:
    """The bench's own prompts, read as plain text to continue by the masked LMs and by the scorer alike."""
    return PromptSet("bench", tuple(prompts), False, ("",) * len(prompts))


def suite_set(quick: bool, per_family_count: int = SUITE_PER_FAMILY) -> PromptSet:
    """The held-out task suite's conversations, read in the chat template as the tasks section reads them, so the
    masked LM answers the last user turn; `per_family_count` of each family, or the chat family's first when quick."""
    tasks = per_family(load_suite(), per_family_count)
    tasks = [t for t in tasks if t.family == "multi_turn"][:1] if quick else tasks
    return PromptSet("suite", tuple([dict(m) for m in t.messages] for t in tasks), True,
                     tuple(t.family for t in tasks))


def strategies(span: int) -> dict[str, dict]:
    """What the diffusion section runs over a span: every iterated strategy at T = span, span/2 and span/4 (1, 2
    and 4 tokens per forward), and Fast-dLLM's threshold at tau 0.9."""
    runs = {f"{s} T={t}": {"strategy": s, "iterations": t} for s in ITERATED for t in (span, span // 2, span // 4)}
    runs["threshold 0.9"] = {"strategy": "threshold", "threshold": 0.9}
    return runs


def scorer_ids(model: adapter.LM, scorer: adapter.LM, ids: list[int]) -> list[int]:
    """A model's ids as the scorer's tokens: the same ids where the vocabularies agree, else its text re-encoded
    (tiny-masked's vocabulary has a mask token that SmolLM2's lacks)."""
    return list(ids) if model.vocab_digest == scorer.vocab_digest else scorer.encode(model.decode(ids))


def score(scorer: adapter.LM, context: list[int], continuation: list[int]) -> dict:
    """Generative perplexity (as in SEDD, Lou et al. 2024, arXiv 2310.16834, and MDLM, Sahoo et al. 2024, arXiv
    2406.07524): exp of the mean negative log-likelihood of the continuation given the context the generator read
    (scorer tokens: the prompt's ids, chat template included where it was read in one) under a causal scorer, in
    one forward; and distinct-2 of the same scorer tokens (low perplexity alone rewards repetition)."""
    if not continuation:
        return {"gen_ppl": None, "distinct2": None, "scored_tokens": 0}
    logits = scorer.forward(scorer.new_kv(), context + continuation)[len(context) - 1:-1]
    nll = F.cross_entropy(logits, torch.tensor(continuation, device=logits.device)).item()
    return {"gen_ppl": math.exp(nll), "distinct2": distinct2(continuation), "scored_tokens": len(continuation)}


def score_run(scorer: adapter.LM, model: adapter.LM, trace: Trace, method: str, label: str) -> dict:
    """One row: a run's text scored given the ids it read, its iterations and tokens per forward."""
    forwards = trace.totals["target_forwards"]
    return {"method": method, "target": label, "iterations": len(trace.steps), "target_forwards": forwards,
            "tokens_per_iteration": len(trace.output_ids) / len(trace.steps),
            "tokens_per_forward": len(trace.output_ids) / forwards if forwards else None,
            **score(scorer, scorer_ids(model, scorer, trace.prompt_ids), scorer_ids(model, scorer, trace.output_ids)),
            "text": trace.output_text}


def shown(row: dict) -> dict:
    """A scored row as it is printed while the section runs (a full run is long on a busy CPU)."""
    ppl, d2 = row["gen_ppl"], row["distinct2"]
    print(f"  {row['prompt_set']:5s} {row['target']} {row['method']}: perplexity "
          f"{'–' if ppl is None else f'{ppl:.2f}'}, distinct-2 {'–' if d2 is None else f'{d2:.2f}'}, "
          f"{row['tokens_per_forward'] or 0:.2f} tokens per forward  {row['text'][:60]!r}", flush=True)
    return row


def score_autoregressive(models: Models, scorer: adapter.LM, prompts: PromptSet, span: int) -> list[dict]:
    """The reference rows: the scorer's own greedy continuations of the set, read as the set is read, scored by
    itself."""
    return [shown({**score_run(scorer, scorer, run_trace("autoregressive", prompt, {"max_new_tokens": span},
                                                         models.target, None, models.device, chat=prompts.chat),
                               "ar:greedy", scorer.name), "prompt_set": prompts.name, "family": family})
            for prompt, family in zip(prompts.prompts, prompts.families)]


def score_strategies(models: Models, name: str, scorer: adapter.LM, prompts: PromptSet, span: int) -> list[dict]:
    """Each strategy's continuation of every prompt of the set by the masked LM `name`, scored."""
    model = store.load(name, models.device)
    rows = []
    for prompt, family in zip(prompts.prompts, prompts.families):
        for label, settings in strategies(span).items():
            trace = run_trace("mask-predict", prompt, {"length": span, "max_new_tokens": span, "curve": "off",
                                                       **settings}, name, None, models.device, chat=prompts.chat)
            rows.append(shown({**score_run(scorer, model, trace, f"dlm:{label}", name), "prompt_set": prompts.name,
                               "family": family, "strategy": settings["strategy"],
                               "T": settings.get("iterations")}))
    return rows


def measure_masked_top1(model: adapter.LM, windows: int) -> dict:
    """Top-1 on held-out corpus text at 15% and 50% masking (engines.training.common.masked_accuracy), beside always
    guessing the commonest token."""
    from engines.training.common import masked_accuracy
    row = {"method": "dlm:masked top-1", "target": model.name}
    for rate in (15, 50):
        row[f"top1_at_{rate}pct"], row[f"commonest_at_{rate}pct"] = masked_accuracy(model, rate / 100,
                                                                                    windows=windows)
    return row


def measure_prefix_cache(models: Models, name: str, prompt: str, span: int, repeats: int) -> dict:
    """Diffusion block by block (block span/4, one token per iteration) with the prefix cache and without, run
    back to back `repeats` times: tokens fed per committed token of each, and the median wall-time ratio. The
    method's time is the steps' own wall_s, which leaves out the auditor's exact forward; the whole run's time,
    auditor included, is given too."""
    settings = {"length": span, "max_new_tokens": span, "iterations": span, "strategy": "diffusion",
                "block": span // 4, "curve": "off"}
    walls, runs, traces = {"off": [], "prefix": []}, {"off": [], "prefix": []}, {}
    for _ in range(repeats):
        for cache in walls:
            run_s, traces[cache] = timed_trace("mask-predict", prompt, {**settings, "cache": cache}, name,
                                               None, models.device)
            walls[cache].append(traces[cache].totals["wall_s"])
            runs[cache].append(run_s)
    spans = [s.detail["spans"][0] for s in traces["prefix"].steps]
    return {"method": f"dlm:block {span // 4} prefix cache vs off", "target": traces["off"].models["target"],
            "fed_per_token_off": traces["off"].totals["tokens_fed"] / span,
            "fed_per_token_prefix": traces["prefix"].totals["tokens_fed"] / span,
            "wall_ratio_prefix_vs_off": statistics.median(walls["prefix"]) / statistics.median(walls["off"]),
            "run_wall_ratio_prefix_vs_off": statistics.median(runs["prefix"]) / statistics.median(runs["off"]),
            "same_output": float(traces["off"].output_ids == traces["prefix"].output_ids),
            "decisions_changed_by_cache": sum(len(r["drift_changed"]) for r in spans)}


def bench_diffusion(models: Models, prompts: list[str], quick: bool, suite: PromptSet | None = None) -> list[dict]:
    """Issues 13 and 24, for each masked LM (models.masked, else default_masked()) over `span`-token continuations
    of two prompt sets, the bench's prompts (plain text) and the held-out task suite's conversations (in the chat
    template): generative perplexity under the default target (SmolLM2) and distinct-2 of every iterated strategy
    at T = span, span/2, span/4 and of threshold 0.9 with its tokens per forward, beside the default target's own
    greedy text; masked top-1 on held-out text at 15% and 50% masking; for a model that keeps a cache, the prefix
    cache against none. Prints the summary table, the goals and each model's training curve. `suite`: the suite
    prompts to run instead of suite_set(quick)'s."""
    from engines.analysis import diffusion_tables as tables
    names = models.masked or default_masked()
    missing = models.missing(models.target, *names)
    if missing or not names:
        print(f"diffusion: {', '.join(missing) or 'no masked LM'} not available here; skipped", flush=True)
        return []
    span, windows, repeats = (8, 2, 1) if quick else (32, 24, 3)
    scorer = store.load(models.target, models.device)
    print(f"diffusion: {span} new tokens; perplexity and distinct-2 on the tokens of {scorer.name}", flush=True)
    sets = [bench_set(prompts), suite or suite_set(quick)]
    rows = []
    for prompt_set in sets:
        rows += score_autoregressive(models, scorer, prompt_set, span)
        for name in names:
            rows += score_strategies(models, name, scorer, prompt_set, span)
    # the summary before the slower measurements, so a run cut short still has it
    print(tables.summary_markdown(rows), *tables.goal_lines(rows, span), sep="\n", flush=True)
    for name in names:
        model = store.load(name, models.device)
        curve = tables.curve_markdown(model.source)
        if curve:
            print(f"training curve of {name}:\n{curve}", flush=True)
        rows.append(measure_masked_top1(model, windows))
        if model.can_cache:
            rows += [measure_prefix_cache(models, name, prompt, span, repeats) for prompt in prompts]
    return rows
