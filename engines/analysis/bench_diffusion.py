"""The bench's masked diffusion section: text quality (perplexity under SmolLM2, distinct-2) of each masked LM and
strategy against autoregressive text, masked top-1 on held-out text, and what the prefix cache saves."""
from __future__ import annotations

import math
import statistics

import torch
import torch.nn.functional as F

from engines.analysis.bench_runs import PROMPTS, Models, run_trace, timed_trace
from engines.decoding.mask_predict import distinct2
from engines.models import adapter, store
from engines.trace import Trace

# the bench prompts and two of another kind: a plain statement of fact, and dialogue
DIFFUSION_PROMPTS = [*PROMPTS, "The moon goes round the earth once in about a month, and",
                     "\"Where are you going so early?\" asked the old man. \"To the market,\" said the boy,"]
DIFFUSION_MODELS = ("tiny-masked", "smollm2-135m-diffusion")


def default_masked() -> tuple[str, ...]:
    """The masked LMs the diffusion section measures unless told: those of DIFFUSION_MODELS available here."""
    return tuple(n for n in DIFFUSION_MODELS if store.available(n))


def strategies(span: int) -> dict[str, dict]:
    """What the diffusion section runs over a span: 1 and 4 tokens per iteration, and Fast-dLLM's threshold."""
    return {f"diffusion T={span}": {"strategy": "diffusion", "iterations": span},
            f"diffusion T={span // 4}": {"strategy": "diffusion", "iterations": span // 4},
            "threshold 0.9": {"strategy": "threshold", "threshold": 0.9}}


def scorer_ids(model: adapter.LM, scorer: adapter.LM, ids: list[int]) -> list[int]:
    """A model's ids as the scorer's tokens: the same ids where the vocabularies agree, else its text re-encoded
    (tiny-masked's vocabulary has a mask token that SmolLM2's lacks)."""
    return list(ids) if model.vocab_digest == scorer.vocab_digest else scorer.encode(model.decode(ids))


def score(scorer: adapter.LM, prompt: str, continuation: list[int]) -> dict:
    """Generative perplexity (as in SEDD, Lou et al. 2024, arXiv 2310.16834, and MDLM, Sahoo et al. 2024, arXiv
    2406.07524): exp of the mean negative log-likelihood of the continuation given the prompt under a causal
    scorer, in one forward; and distinct-2 of the same scorer tokens (low perplexity alone rewards repetition)."""
    if not continuation:
        return {"gen_ppl": None, "distinct2": None, "scored_tokens": 0}
    context = scorer.encode(prompt)
    logits = scorer.forward(scorer.new_kv(), context + continuation)[len(context) - 1:-1]
    nll = F.cross_entropy(logits, torch.tensor(continuation, device=logits.device)).item()
    return {"gen_ppl": math.exp(nll), "distinct2": distinct2(continuation), "scored_tokens": len(continuation)}


def score_run(scorer: adapter.LM, model: adapter.LM, trace: Trace, method: str) -> dict:
    """One row: a run's text scored, its iterations and tokens per iteration."""
    return {"method": method, "target": model.name, "iterations": len(trace.steps),
            "tokens_per_iteration": len(trace.output_ids) / len(trace.steps),
            **score(scorer, trace.prompt, scorer_ids(model, scorer, trace.output_ids)), "text": trace.output_text}


def score_autoregressive(models: Models, scorer: adapter.LM, prompts: list[str], span: int) -> list[dict]:
    """The reference rows: the scorer's own greedy continuations, scored by itself."""
    return [score_run(scorer, scorer, run_trace("autoregressive", prompt, {"max_new_tokens": span}, models.target,
                                                None, models.device), "ar:greedy")
            for prompt in prompts]


def score_strategies(models: Models, name: str, scorer: adapter.LM, prompts: list[str], span: int) -> list[dict]:
    """Each strategy's continuation of every prompt by the masked LM `name`, scored."""
    model = store.load(name, models.device)
    return [score_run(scorer, model, run_trace("mask-predict", prompt, {"length": span, "max_new_tokens": span,
                                                                        "curve": "off", **settings},
                                               name, None, models.device), f"dlm:{label}")
            for prompt in prompts for label, settings in strategies(span).items()]


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


def bench_diffusion(models: Models, prompts: list[str], quick: bool) -> list[dict]:
    """Issue 13, for each masked LM (models.masked, else default_masked()) over `span`-token continuations:
    generative perplexity under the default target (SmolLM2) and distinct-2 of diffusion at 1 and 4 tokens per
    iteration and of threshold 0.9, beside the default target's own greedy text; masked top-1 on held-out text
    at 15% and 50% masking; and, for a model that keeps a cache, the prefix cache against none."""
    names = models.masked or default_masked()
    missing = models.missing(models.target, *names)
    if missing or not names:
        print(f"diffusion: {', '.join(missing) or 'no masked LM'} not available here; skipped", flush=True)
        return []
    span, windows, repeats = (8, 2, 1) if quick else (32, 24, 3)
    scorer = store.load(models.target, models.device)
    print(f"diffusion: {span} new tokens; perplexity and distinct-2 on the tokens of {scorer.name}", flush=True)
    rows = score_autoregressive(models, scorer, prompts, span)
    for name in names:
        model = store.load(name, models.device)
        rows += score_strategies(models, name, scorer, prompts, span)
        rows.append(measure_masked_top1(model, windows))
        if model.can_cache:
            rows += [measure_prefix_cache(models, name, prompt, span, repeats) for prompt in prompts]
    return rows
