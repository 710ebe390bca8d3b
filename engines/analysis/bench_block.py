"""Block verification against token verification on real models, and a per-position check of its recorded steps.

Sun et al. 2024 (arXiv 2403.10444) prove that block verification keeps at least as many drafts as token verification
in expectation, with the same output distribution. `compare` measures both on the held-out task suite
(engines/analysis/task_suite.py): sampled speculative decoding at temperature 1 with the model drafter, each prompt
in its chat template, the same seeds for both rules, and reports the mean accepted drafts per step (and tokens per
target forward). Both rules draw their coins from the same generator in the same order, so a pair of runs with one
seed shares the first step's draft and coins; after the first step where the rules keep different lengths the
texts differ, which is why it is a mean over prompts and seeds and not a paired count.

`check_steps` recomputes a recorded block-verification step without the engine's own code (engines/decoding/
acceptance.py): it feeds the step's context and draft to the target and the draft model, takes p and q after the
run's sampling settings, and recomputes from them and the recorded coins the weights p_i, the residual masses r_i,
the stop chances h_i, which coins pass, the kept length tau, and what token verification would keep.
"""
from __future__ import annotations

import statistics
from typing import Sequence

import torch

from engines.decoding.sampling import Sampling
from engines.models import adapter, store
from engines.trace import Step

SETTINGS = {"drafter": "model", "k": 4, "temperature": 1.0}


def run_sampled(target: adapter.LM, draft: adapter.LM, ids: list[int], n: int, verification: str,
                seed: int) -> list[Step]:
    from engines.config import build
    from engines.methods import METHODS
    m = METHODS["speculative"]
    cfg = build(m.config, {**SETTINGS, "verification": verification, "max_new_tokens": n})
    return list(m.start(target, draft, ids, cfg, torch.Generator().manual_seed(seed)))


def compare(target: adapter.LM | str, draft: adapter.LM | str, per_family_count: int = 2, new_tokens: int = 32,
            seeds: Sequence[int] = (0, 1, 2), device: str | None = None) -> list[dict]:
    """One row per (task, seed, verification): steps that drafted, drafts accepted and examined, target forwards."""
    from engines.analysis.task_suite import load_suite, per_family, prompt_ids
    target = target if isinstance(target, adapter.LM) else store.load(target, device)
    draft = draft if isinstance(draft, adapter.LM) else store.load(draft, device)
    store.check_same_tokenizer(target, draft)
    rows = []
    for task in per_family(load_suite(), per_family_count):
        ids = prompt_ids(target, task)
        for seed in seeds:
            for verification in ("token", "block"):
                steps = [s for s in run_sampled(target, draft, ids, new_tokens, verification, seed)
                         if s.detail["draft_tokens"]]
                rows.append({"task": task.id, "family": task.family, "seed": seed, "verification": verification,
                             "steps": len(steps), "accepted": sum(s.detail["accepted"] for s in steps),
                             "drafted": sum(len(s.detail["draft_tokens"]) for s in steps),
                             "new_tokens": sum(len(s.committed_ids) for s in steps),
                             "target_forwards": sum(s.target_forwards for s in steps)})
    return rows


def summary(rows: Sequence[dict]) -> dict[str, dict]:
    """Per rule: mean accepted drafts per step (over all steps), its mean over prompts and seeds with the spread,
    and tokens per target forward."""
    out = {}
    for rule in ("token", "block"):
        rs = [r for r in rows if r["verification"] == rule]
        per_run = [r["accepted"] / r["steps"] for r in rs if r["steps"]]
        out[rule] = {"runs": len(rs), "steps": sum(r["steps"] for r in rs),
                     "accepted_per_step": sum(r["accepted"] for r in rs) / max(1, sum(r["steps"] for r in rs)),
                     "mean_of_runs": statistics.mean(per_run) if per_run else 0.0,
                     "stdev_of_runs": statistics.stdev(per_run) if len(per_run) > 1 else 0.0,
                     "tokens_per_forward": sum(r["new_tokens"] for r in rs) / max(1, sum(r["target_forwards"]
                                                                                       for r in rs))}
    return out


def distributions(target: adapter.LM, draft: adapter.LM, context: Sequence[int], drafted: Sequence[int],
                  s: Sampling) -> tuple[torch.Tensor, torch.Tensor]:
    """p [m+1, V] (the target after the context and after each draft) and q [m, V] (the draft model before each
    draft), after the sampling settings, from fresh forwards with no cache."""
    from engines.decoding.sampling import probabilities
    m = len(drafted)
    p = probabilities(target.forward(target.new_kv(), list(context) + list(drafted))[-(m + 1):], s)
    q = probabilities(draft.forward(draft.new_kv(), list(context) + list(drafted[:-1]))[-m:], s)
    return p.double(), q.double()


def check_step(step: Step, p: torch.Tensor, q: torch.Tensor) -> dict:
    """The step's block decision recomputed from p, q and its recorded coins (plain arithmetic, Algorithm 2 of Sun
    et al.), beside what it recorded: the largest differences and whether every decision agrees."""
    d, b = step.detail, step.detail["block"]
    x = d["draft_tokens"]
    m = len(x)
    u = [pos["u"] for pos in d["positions"]]
    w = [1.0]
    for i in range(m):
        w.append(min(w[-1] * float(p[i, x[i]]) / float(q[i, x[i]]), 1.0))
    r = [float((w[i] * p[i] - q[i]).clamp(min=0).sum()) for i in range(m)]
    h = [(r[i] / (r[i] + 1 - w[i]) if r[i] > 0 else 0.0) for i in range(1, m)] + [w[m]]
    passed = [u[i] <= h[i] for i in range(m)]
    tau = max((i + 1 for i in range(m) if passed[i]), default=0)
    ratio = [min(1.0, float(p[i, x[i]]) / float(q[i, x[i]])) for i in range(m)]
    token = next((i for i in range(m) if u[i] > ratio[i]), m)
    gap = lambda a, b_: max((abs(s - t) for s, t in zip(a, b_)), default=0.0)
    # a coin within the float32 noise of its threshold may fall either way: counted, not failed
    close = sum(1 for i in range(m) if abs(u[i] - h[i]) < 1e-4)
    return {"step": step.index, "drafted": m, "recorded_accepted": b["accepted"], "accepted": tau,
            "recorded_token_accepted": b["token_accepted"], "token_accepted": token,
            "p_gap": gap([pos["p"] for pos in d["positions"]], [float(p[i, x[i]]) for i in range(m)]),
            "q_gap": gap([pos["q"] for pos in d["positions"]], [float(q[i, x[i]]) for i in range(m)]),
            "weight_gap": gap(b["weights"], w[1:]), "residual_gap": gap(b["residual_mass"], r),
            "stop_gap": gap(b["stop_chances"], h), "passed_agree": b["passed"] == passed, "coins_near": close,
            "statuses_agree": [pos["status"] == "accepted" for pos in d["positions"]][:b["accepted"]]
            == [True] * b["accepted"]}


def check_steps(target: adapter.LM, draft: adapter.LM, prompt_ids: Sequence[int], steps: Sequence[Step],
                s: Sampling) -> list[dict]:
    """check_step for every step of a recorded block-verification run that drafted."""
    out, context = [], list(prompt_ids)
    for step in steps:
        if step.detail["draft_tokens"]:
            p, q = distributions(target, draft, context, step.detail["draft_tokens"], s)
            out.append(check_step(step, p, q))
        context += list(step.committed_ids)
    return out
