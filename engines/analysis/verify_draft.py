"""Be the drafter: a person types a continuation and the target verifies it as a draft in ONE forward.

The typed tokens are a deterministic draft, so q is one-hot and the step is exactly a speculative step:
speculative.verify keeps the prefix the target accepts (greedy: while each token is the target's argmax;
sampled: while u <= p(x)), then the target adds its own token (the argmax, or a draw from the residual p
with the rejected token removed; after a fully accepted draft, the bonus from p). speculative.record writes
the step, so the speculative figures and words show it unchanged, with the drafter named "typed".
"""
from __future__ import annotations

from dataclasses import asdict
from time import perf_counter
from typing import Sequence

import torch

from engines.config import MAX_PROMPT_TOKENS, RunSettings
from engines.decoding.acceptance import one_hot
from engines.decoding.sampling import Sampling, choose, probabilities
from engines.decoding.speculative import (
    MAX_K,
    Draft,
    SpeculativeConfig,
    SpeculativeDetail,
    record,
    verify,
)
from engines.methods import _ids_in, check_prompt_length, default_target
from engines.models import chat as chat_template
from engines.models import store
from engines.models.adapter import LM
from engines.trace import Step, Trace


def verify_draft(target: LM, prompt_ids: Sequence[int], draft_ids: Sequence[int], s: Sampling,
                 rng: torch.Generator) -> Step:
    """One target forward over the prompt and the typed draft; the speculative step it makes."""
    start = perf_counter()
    draft_ids = list(draft_ids)
    m = len(draft_ids)
    kv = target.new_kv()
    logits = target.forward(kv, list(prompt_ids) + draft_ids)[-(m + 1):]
    p = probabilities(logits, s)
    q = one_hot(torch.tensor(draft_ids, dtype=torch.long, device=p.device), p.shape[-1], like=p)
    verdict = verify(p, q, draft_ids, s, rng)
    n = verdict.accepted
    committed = draft_ids[:n]
    ended = bool(committed) and committed[-1] in target.eos_ids
    next_token, dist = None, None
    if not ended:
        dist = verdict.next_distribution
        next_token = choose(dist, s, rng)
        committed.append(next_token)
        ended = next_token in target.eos_ids
    fed = len(prompt_ids) + m
    detail = SpeculativeDetail(**record(p, logits, q, Draft(draft_ids), verdict, next_token, dist),
                               drafter="typed", acceptance="exact", k=m, k_next=m, schedule="constant", ended=ended,
                               target_cache=[0, fed, len(prompt_ids) + n], draft_cache=None, heads=None)
    return Step(0, tuple(committed), target_forwards=1, draft_forwards=0, tokens_fed=fed,
                wall_s=perf_counter() - start, final=True, detail=detail)


def checked_draft(target: LM, continuation: str) -> list[int]:
    if not isinstance(continuation, str) or not continuation.strip():
        raise ValueError("Type a continuation for the target to verify: a few words that could follow the prompt.")
    ids = target.encode(continuation)
    if len(ids) > MAX_K:
        raise ValueError(f"The continuation is {len(ids)} tokens; type at most {MAX_K}, as a drafter would.")
    return ids


def verify_draft_trace(prompt: str, continuation: str, target: str | None = None, temperature: float = 0.0,
                       top_k: int = 0, top_p: float = 1.0, seed: int = 0, device: str | None = None,
                       max_prompt_tokens: int = MAX_PROMPT_TOKENS, chat: bool | None = None) -> Trace:
    """A one-step speculative trace: the typed continuation verified by the target, after the prompt as Run reads
    it (in the target's chat template on an instruct model unless `chat` says otherwise)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("The prompt is empty: type a few words for the model to continue.")
    target_lm = store.load(target or default_target(), device)
    prompt_ids, chatted = chat_template.prompt_ids(target_lm, prompt, chat)
    check_prompt_length(len(prompt_ids), max_prompt_tokens)
    draft_ids = checked_draft(target_lm, continuation)
    cfg = SpeculativeConfig(k=len(draft_ids), max_new_tokens=len(draft_ids) + 1, temperature=temperature,
                            top_k=top_k, top_p=top_p, drafter="ngram")   # the nearest drafter: one-hot q, no model
    run = RunSettings(seed=seed)
    step = verify_draft(target_lm, prompt_ids, draft_ids, cfg.sampling, torch.Generator().manual_seed(seed))
    config = {**asdict(cfg), "drafter": "typed", **asdict(run)}
    ids = set(prompt_ids) | _ids_in(step)
    trace = Trace(method="speculative", config=config, models={"target": target_lm.name}, prompt=prompt,
                  prompt_ids=prompt_ids, steps=[step], finished=True, chat=chatted,
                  token_texts={i: target_lm.token_text(i) for i in sorted(ids)})
    trace.output_text = target_lm.decode(trace.output_ids)
    return trace

