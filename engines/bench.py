"""`python -m engines bench`: forwards per token and speed of every method, measured in one process.

Ratios (this engine / a reference) are measured back to back in the same process, since
these machines are noisy; absolute seconds are printed for orientation only.
Each method adds one function to SECTIONS: (models, prompts, quick) -> list of result rows.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from engines import lm
from engines.bench_lookahead import bench_jacobi_lookahead
from engines.mask_predict import bench_mask_predict
from engines.methods import Run, default_target
from engines.speculative import bench_speculative
from engines.tree import bench_tree

PROMPTS = [
    "Once upon a time",
    "Alice was beginning to get very tired of sitting by her sister on the bank, and",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "The little red hen found a grain of wheat. \"Who will plant this wheat?\" said the little red hen.",
]


@dataclass
class Models:
    target: str            # the default target (SmolLM2 where installed)
    tiny_target: str
    draft: str
    device: str | None


def timed(fn: Callable[[], object], repeats: int = 1) -> tuple[float, object]:
    """Median wall time of fn over repeats, and its last result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def run_trace(method: str, prompt: str, settings: dict, target: str, draft: str | None, device: str | None):
    run = Run(method, prompt, settings, target=target, draft=draft, device=device)
    return run.run()


def bench_autoregressive(models: Models, prompts: list[str], quick: bool) -> list[dict]:
    """The baseline against transformers' own greedy generate, on the default target."""
    rows = []
    n = 16 if quick else 48
    target = lm.load(models.target, models.device)
    for prompt in prompts:
        ids = torch.tensor([target.encode(prompt)], device=target.device)
        ref_s, _ = timed(lambda: target.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                                       min_new_tokens=n, do_sample=False))
        ours_s, trace = timed(lambda: run_trace("autoregressive", prompt, {"max_new_tokens": n}, models.target,
                                                None, models.device))
        t = trace.totals
        steps_ms = sorted(s.wall_s * 1000 for s in trace.steps)
        rows.append({"method": "autoregressive", "target": target.name, "new_tokens": t["new_tokens"],
                     "target_forwards_per_token": t["target_forwards"] / t["new_tokens"],
                     "p95_step_ms": steps_ms[int(0.95 * (len(steps_ms) - 1))],
                     "wall_ratio_vs_generate": ours_s / ref_s})
    return rows


SECTIONS: list[Callable[[Models, list[str], bool], list[dict]]] = [
    bench_autoregressive, bench_speculative, bench_tree, bench_jacobi_lookahead, bench_mask_predict]


def summarise(rows: list[dict]) -> None:
    by_method: dict[str, list[dict]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    for method, rs in by_method.items():
        keys = [k for k in rs[0] if isinstance(rs[0][k], (int, float)) and not isinstance(rs[0][k], bool)]
        means = {k: statistics.mean(r[k] for r in rs if r.get(k) is not None) for k in keys}
        text = "  ".join(f"{k}={v:.3f}" for k, v in means.items())
        print(f"{method:16s} ({rs[0].get('target', '')}; mean over {len(rs)} prompts)  {text}", flush=True)


def bench(quick: bool = False, device: str | None = None) -> None:
    torch.manual_seed(0)
    models = Models(target=default_target(), tiny_target="tiny-target", draft="tiny-draft", device=device)
    prompts = PROMPTS[:2] if quick else PROMPTS
    for section in SECTIONS:
        summarise(section(models, prompts, quick))
