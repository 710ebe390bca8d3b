"""Bench section for Jacobi and lookahead decoding: target forwards per new token and tokens fed per forward,
greedy, on the default target (goals: Jacobi <= 1.0 forwards per token, lookahead <= 0.8)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from engines.methods import Run

if TYPE_CHECKING:
    from engines.bench import Models

SETTINGS = {"jacobi": {"block": 8, "init": "repeat"}, "lookahead": {"window": 5, "ngram": 4, "guesses": 5}}


def bench_jacobi_lookahead(models: "Models", prompts: list[str], quick: bool) -> list[dict]:
    """Each method beside the autoregressive baseline, run back to back on the same prompt."""
    n = 16 if quick else 48
    rows = []
    for prompt in prompts:
        walls = {}
        for method, settings in (("autoregressive", {}), *SETTINGS.items()):
            start = time.perf_counter()
            trace = Run(method, prompt, {**settings, "max_new_tokens": n}, target=models.target,
                        device=models.device).run()
            walls[method] = time.perf_counter() - start
            if method == "autoregressive":
                continue
            t = trace.totals
            hits = sum(1 for s in trace.steps if len(s.committed_ids) > 1)
            rows.append({"method": method, "target": models.target, "new_tokens": t["new_tokens"],
                         "target_forwards_per_token": t["target_forwards"] / t["new_tokens"],
                         "tokens_fed_per_forward": t["tokens_fed"] / t["target_forwards"],
                         "multi_token_steps": hits,
                         "wall_ratio_vs_autoregressive": walls[method] / walls["autoregressive"]})
    return rows
