"""`python -m engines bench`: forwards per token and speed of every method, measured in one process.

Ratios (this engine / a reference) are measured back to back in the same process, since
these machines are noisy; absolute seconds are printed for orientation only. Prompts are read
as Run reads them by default (engines/models/chat.py): in the chat template on an instruct
target, as plain text on the embedded models; a reference such as generate() gets the same ids. Each method
has one section: (models, prompts, quick) -> result rows, and SECTIONS runs them in the
order of the method tabs.
"""
from __future__ import annotations

import copy
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from engines.analysis.bench_diffusion import DIFFUSION_PROMPTS, bench_diffusion
from engines.analysis.bench_runs import PROMPTS, Models, baseline, run_trace, timed, timed_trace
from engines.analysis.theory import acceptance_rate
from engines.decoding.speculative import SpeculativeConfig, speculative
from engines.methods import default_target
from engines.models import adapter, chat, store

# ----------------------------------------------------------------------------- autoregressive

def bench_autoregressive(models: Models, prompts: list[str], quick: bool) -> list[dict]:
    """The baseline against transformers' own greedy generate, on the default target."""
    rows = []
    n = 16 if quick else 48
    target = store.load(models.target, models.device)
    for prompt in prompts:
        ids = torch.tensor([chat.prompt_ids(target, prompt)[0]], device=target.device)
        ref_s, _ = timed(lambda: target.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                                       min_new_tokens=n, do_sample=False))
        ours_s, trace = baseline(models, models.target, prompt, n)
        t = trace.totals
        steps_ms = sorted(s.wall_s * 1000 for s in trace.steps)
        rows.append({"method": "autoregressive", "target": target.name, "new_tokens": t["new_tokens"],
                     "target_forwards_per_token": t["target_forwards"] / t["new_tokens"],
                     "p95_step_ms": steps_ms[int(0.95 * (len(steps_ms) - 1))],
                     "wall_ratio_vs_generate": ours_s / ref_s})
    return rows


# ----------------------------------------------------------------------------- speculative

def assisted_generate(target: adapter.LM, draft: adapter.LM | None, ids: torch.Tensor, n: int, k: int) -> list[int]:
    """transformers' assisted generation with a constant k (a draft model) or prompt lookup (no draft)."""
    kwargs = {"prompt_lookup_num_tokens": k, "max_matching_ngram_size": 3} if draft is None else \
        {"assistant_model": draft.model}
    saved = draft.model.generation_config if draft is not None else None
    if draft is not None:   # the candidate generator reads its schedule from the assistant's own config
        constant = copy.deepcopy(saved)
        constant.num_assistant_tokens, constant.num_assistant_tokens_schedule = k, "constant"
        constant.assistant_confidence_threshold = 0.0
        draft.model.generation_config = constant
    try:
        out = target.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                    eos_token_id=sorted(target.eos_ids),
                                    pad_token_id=target.tokenizer.pad_token_id or 0, **kwargs)
    finally:
        if draft is not None:
            draft.model.generation_config = saved
    return out[0, ids.shape[1]:].tolist()


def bench_speculative(models: Models, prompts: list[str], quick: bool) -> list[dict]:
    """Greedy, k = 4: target forwards per new token, and wall time against transformers' own assisted
    generation (constant schedule of 4, no confidence early stop), back to back in this process: the
    engine with its full step records, and the whole Run (token texts, model checks) as the CLI makes
    it. The model drafter runs on the embedded pair; prompt lookup runs on the default target against
    generate(prompt_lookup_num_tokens=4)."""
    n, k, repeats = (models.new_tokens or 24, 4, 1) if quick else (models.new_tokens or 64, 4, 3)
    rows = []
    cases = []
    if not models.missing(models.tiny_target, models.draft):
        cases.append(("speculative", store.load(models.tiny_target, models.device), store.load(models.draft, models.device),
                      {"drafter": "model"}))
    cases.append(("speculative:ngram", store.load(models.target, models.device), None,
                  {"drafter": "ngram", "lookup_ngram": 3}))
    for method, target, draft, settings in cases:
        cfg = SpeculativeConfig(**settings, k=k, max_new_tokens=n)
        for prompt in prompts:
            ids = chat.prompt_ids(target, prompt)[0]
            reference = lambda: assisted_generate(target, draft, torch.tensor([ids], device=target.device), n, k)
            engine = lambda: list(speculative(target, draft, ids, cfg, torch.Generator().manual_seed(0)))
            # lookup ignores the draft that Run loads for it
            run = lambda: run_trace("speculative", prompt, asdict(cfg), target.source, (draft or target).source,
                                    models.device)
            reference(), engine(), run()   # warm up
            ref_s, ref_out = timed(reference, repeats)
            engine_s, steps = timed(engine, repeats)
            run_s, _ = timed(run, repeats)
            made = sum(len(s.committed_ids) for s in steps)
            rows.append({"method": method, "target": target.name, "new_tokens": made,
                         "target_forwards_per_token": len(steps) / made,
                         "acceptance": acceptance_rate(steps),
                         "same_output_as_generate": float(ref_out == [t for s in steps for t in s.committed_ids]),
                         "wall_ratio_vs_assisted_generate": engine_s / ref_s,
                         "run_wall_ratio_vs_assisted_generate": run_s / ref_s})
    return rows


# ----------------------------------------------------------------------------- tree

TREES = {"dynamic": {"tree": "dynamic", "tree_budget": 16, "tree_depth": 4, "tree_topk": 3},
         "chain": {"tree": "chain"}, "balanced": {"tree": "balanced"}, "sparse": {"tree": "sparse"}}


def bench_tree(models: Models, prompts: list[str], quick: bool) -> list[dict]:
    """Greedy on the embedded pair: target forwards per new token and mean accepted length of every tree,
    beside linear speculative decoding with k = 4 (the same 4 draft forwards per step as a depth-4 tree)."""
    missing = models.missing(models.tiny_target, models.draft)
    if missing:
        print(f"tree: {', '.join(missing)} not available here; skipped", flush=True)
        return []
    n = 16 if quick else 48
    runs = {f"tree:{name}": ("tree", settings) for name, settings in TREES.items()}
    runs["spec:k=4"] = ("speculative", {"k": 4, "drafter": "model"})
    rows = []
    for prompt in prompts:
        ar_s, _ = baseline(models, models.tiny_target, prompt, n)
        for name, (method, settings) in runs.items():
            wall, trace = timed_trace(method, prompt, {"max_new_tokens": n, **settings},
                                      models.tiny_target, models.draft, models.device)
            t, steps = trace.totals, trace.steps
            rows.append({"method": name, "target": models.tiny_target,
                         "target_forwards_per_token": t["target_forwards"] / t["new_tokens"],
                         "mean_accepted_length": sum(len(s.committed_ids) - 1 for s in steps) / len(steps),
                         "tokens_fed_per_forward": t["tokens_fed"] / t["target_forwards"],
                         "draft_forwards_per_step": t["draft_forwards"] / len(steps),
                         "wall_ratio_vs_autoregressive": wall / ar_s})
    return rows


# ----------------------------------------------------------------------------- Jacobi and lookahead

FIXED_POINT = {"jacobi": {"block": 8, "init": "repeat"}, "lookahead": {"window": 5, "ngram": 4, "guesses": 5}}


def bench_jacobi_lookahead(models: Models, prompts: list[str], quick: bool) -> list[dict]:
    """Greedy on the default target, each method beside the autoregressive baseline on the same prompt:
    target forwards per new token and tokens fed per forward (goals: Jacobi <= 1.0, lookahead <= 0.8)."""
    n = 16 if quick else 48
    rows = []
    for prompt in prompts:
        ar_s, _ = baseline(models, models.target, prompt, n)
        for method, settings in FIXED_POINT.items():
            wall, trace = timed_trace(method, prompt, {**settings, "max_new_tokens": n}, models.target,
                                      None, models.device)
            t = trace.totals
            rows.append({"method": method, "target": models.target, "new_tokens": t["new_tokens"],
                         "target_forwards_per_token": t["target_forwards"] / t["new_tokens"],
                         "tokens_fed_per_forward": t["tokens_fed"] / t["target_forwards"],
                         "multi_token_steps": sum(1 for s in trace.steps if len(s.committed_ids) > 1),
                         "wall_ratio_vs_autoregressive": wall / ar_s})
    return rows


# ----------------------------------------------------------------------------- mask-predict

SPANS = {"mask-predict": {"strategy": "mask-predict"}, "diffusion": {"strategy": "diffusion"},
         "diffusion-block8": {"strategy": "diffusion", "block": 8}, "random": {"strategy": "random"},
         "mask-predict-beam5": {"strategy": "mask-predict", "length": 0, "length_beam": 5}}


def bench_mask_predict(models: Models, prompts: list[str], quick: bool) -> list[dict]:
    """Forwards used (T, or T x the length beam) and wall time for each strategy on a 32-token span of
    tiny-masked, beside the autoregressive forwards and wall time for the same 32 tokens on the tiny target."""
    masked = "tiny-masked"
    missing = models.missing(masked, models.tiny_target)
    if missing:
        print(f"mask-predict: {', '.join(missing)} not available here; skipped", flush=True)
        return []
    runs = {k: SPANS[k] for k in ("mask-predict", "mask-predict-beam5")} if quick else SPANS
    rows = []
    for prompt in prompts:
        # median of 3: the first run of a model pays one-off set-up costs
        ar_s, ar = baseline(models, models.tiny_target, prompt, 32, repeats=3)
        for name, settings in runs.items():
            settings = {"length": 32, "iterations": 10, "max_new_tokens": 64, **settings}
            wall, trace = timed_trace("mask-predict", prompt, settings, masked, None, models.device, 3)
            d = trace.steps[-1].detail
            rows.append({"method": f"mp:{name}", "target": masked, "span": d["lengths"][d["best"]],
                         "target_forwards": trace.totals["target_forwards"], "wall_s": wall,
                         "ar_forwards": ar.totals["target_forwards"], "ar_wall_s": ar_s})
    return rows


# ----------------------------------------------------------------------------- draft heads and suffix trees

HEAD_TREES = {"tree:eagle": {"drafter": "eagle", "tree": "dynamic", "tree_budget": 24, "tree_depth": 6, "tree_topk": 4},
              "tree:medusa": {"drafter": "heads", "tree": "dynamic", "tree_budget": 24, "tree_depth": 4,
                              "tree_topk": 4},
              "spec:eagle k=4": {"drafter": "eagle", "k": 4}, "spec:heads k=4": {"drafter": "heads", "k": 4}}
REPETITIVE = ("def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\ndef mul(a, b):\n"
              "    return a * b\n\n\ndef div(a, b):\n")


def head_agreement(steps) -> dict:
    """From recorded chain drafts: how often the first drafted token is the target's greedy token (top-1), and
    how often the target's token is among the first head's top-5 (top-5)."""
    firsts = [s.detail["positions"][0] for s in steps if s.detail["positions"]]
    if not firsts:
        return {"first_top1": None, "first_top5": None}
    return {"first_top1": sum(p["token"] == p["target_token"] for p in firsts) / len(firsts),
            "first_top5": sum(p["target_token"] in [t for t, _ in p["q_raw_top"]] for p in firsts) / len(firsts)}


def bench_heads(models: Models, prompts: list[str], quick: bool) -> list[dict]:
    """Greedy on the default target with its trained heads, beside (in this process, back to back) our
    autoregressive engine, transformers' generate() and its assisted generation with the tiny draft: tokens
    per target forward, the heads' agreement with the target, and wall-time ratios (speedup > 1 is faster)."""
    from engines.drafting.heads import head_folder
    target = store.load(models.target, models.device)
    if not all((head_folder(target, d) / "head.json").exists() for d in ("heads", "eagle")):
        print(f"heads: no trained heads for {target.name}; skipped", flush=True)
        return []
    n = 24 if quick else 64
    draft = None if models.missing(models.draft) else store.load(models.draft, models.device)
    rows = []
    for prompt in prompts:
        ids = torch.tensor([chat.prompt_ids(target, prompt)[0]], device=target.device)
        generate = lambda: target.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                                 do_sample=False, eos_token_id=sorted(target.eos_ids),
                                                 pad_token_id=target.tokenizer.pad_token_id or 0)
        gen_s, _ = timed(generate)
        assisted_s = timed(lambda: assisted_generate(target, draft, ids, n, 4))[0] if draft else None
        ar_s, ar = baseline(models, models.target, prompt, n)
        for name, settings in HEAD_TREES.items():
            method = "tree" if name.startswith("tree") else "speculative"
            wall, trace = timed_trace(method, prompt, {"max_new_tokens": n, **settings}, models.target,
                                      None, models.device)
            t = trace.totals
            row = {"method": name, "target": target.name, "new_tokens": t["new_tokens"],
                   "tokens_per_target_forward": t["new_tokens"] / t["target_forwards"],
                   "equals_autoregressive": float(trace.output_ids == ar.output_ids),
                   "speedup_vs_autoregressive": ar_s / wall, "speedup_vs_generate": gen_s / wall}
            if assisted_s:
                row["speedup_vs_assisted_tiny_draft"] = assisted_s / wall
            if method == "speculative":
                row.update(head_agreement(trace.steps))
            rows.append(row)
    for name, method, settings in (("suffix tree", "tree", {"drafter": "suffix", "tree_budget": 24,
                                                             "tree_depth": 8}),
                                   ("prompt lookup", "speculative", {"drafter": "ngram", "k": 4})):
        trace = run_trace(method, REPETITIVE, {"max_new_tokens": n, **settings}, models.target, None, models.device)
        t = trace.totals
        rows.append({"method": f"repetitive:{name}", "target": target.name,
                     "tokens_per_target_forward": t["new_tokens"] / t["target_forwards"]})
    return rows


# ----------------------------------------------------------------------------- the held-out task suite

def bench_tasks(models: Models, prompts: list[str], quick: bool, per_family: int | None = None,
                new_tokens: int | None = None) -> list[dict]:
    """Every drafter on the held-out task suite's families (engines/analysis/task_suite.py), in its own
    prompts' chat template rather than `prompts`; prints Spec-Bench's tables itself."""
    from engines.analysis.task_suite import bench_section
    return bench_section(models, quick, per_family, new_tokens)


def bench_block(models: Models, prompts: list[str], quick: bool) -> list[dict]:
    """Block against token verification, sampled at temperature 1 with the same seeds, on the held-out task suite
    (engines/analysis/bench_block.py) rather than `prompts`; prints its own summary."""
    from engines.analysis import bench_block as block
    rows = block.compare(models.target, models.draft, 1 if quick else 2, 16 if quick else 32,
                         (0,) if quick else (0, 1, 2), models.device)
    for rule, s in block.summary(rows).items():
        print(f"verification {rule:5s} ({models.target} + {models.draft}, {s['runs']} runs, {s['steps']} drafting "
              f"steps)  accepted per step={s['accepted_per_step']:.3f}  mean of runs={s['mean_of_runs']:.3f} "
              f"(sd {s['stdev_of_runs']:.3f})  tokens per target forward={s['tokens_per_forward']:.3f}", flush=True)
    return rows


SECTIONS: list[Callable[[Models, list[str], bool], list[dict]]] = [
    bench_autoregressive, bench_speculative, bench_tree, bench_heads, bench_jacobi_lookahead,
    bench_mask_predict, bench_diffusion, bench_tasks, bench_block]
SELF_SUMMARISED = (bench_block,)   # prints its own summary (the tasks section takes more arguments, above)
SECTION_PROMPTS = {bench_diffusion: DIFFUSION_PROMPTS}   # a section's own prompts, where not PROMPTS


def section_name(section: Callable) -> str:
    """What `--section` calls a section: its function's name without bench_."""
    return section.__name__.removeprefix("bench_")


def summarise(rows: list[dict]) -> None:
    by_method: dict[tuple, list[dict]] = {}
    for r in rows:
        by_method.setdefault((r["method"], r.get("target", ""), r.get("prompt_set", "")), []).append(r)
    for (method, _, prompt_set), rs in by_method.items():
        keys = [k for k in rs[0] if isinstance(rs[0][k], (int, float)) and not isinstance(rs[0][k], bool)]
        means = {k: statistics.mean(r[k] for r in rs if r.get(k) is not None) for k in keys if "wall_ratio" not in k}
        # a wall ratio (this / reference, recorded as such) is printed as the speedup every view shows: above 1
        # is faster; the mean of each prompt's own speedup
        means.update({k.replace("wall_ratio", "speedup"): statistics.mean(1 / r[k] for r in rs if r.get(k))
                      for k in keys if "wall_ratio" in k})
        text = "  ".join(f"{k}={v:.3f}" for k, v in means.items())
        where = f"{rs[0].get('target', '')}{f', {prompt_set} prompts' if prompt_set else ''}"
        print(f"{method:16s} ({where}; mean over {len(rs)} prompts)  {text}", flush=True)


def bench(quick: bool = False, device: str | None = None, section: str | None = None,
          masked: tuple[str, ...] = (), per_family: int | None = None, task_tokens: int | None = None) -> None:
    """Every section, or the one named; `masked`: the masked LMs of the diffusion section; `per_family` and
    `task_tokens`: prompts per family and new tokens of the tasks section."""
    torch.manual_seed(0)
    models = Models(target=default_target(), tiny_target="tiny-target", draft="tiny-draft", device=device,
                    masked=masked)
    unknown = models.missing(*masked)
    if unknown:
        raise ValueError(f"--masked {unknown[0]} is neither an available preset nor a folder; give a masked LM "
                         f"such as tiny-masked or a folder written by diffusion-export.")
    for run in SECTIONS:
        if section in (None, section_name(run)):
            prompts = SECTION_PROMPTS.get(run, PROMPTS)
            if run is bench_tasks:   # its tables are its summary
                bench_tasks(models, prompts, quick, per_family, task_tokens)
                continue
            if run in SELF_SUMMARISED:
                run(models, prompts, quick)
                continue
            summarise(run(models, prompts[:2] if quick else prompts, quick))


# ----------------------------------------------------------------------------- bench --json

def bench_json(path: str, quick: bool = False, device: str | None = None, max_new_tokens: int | None = None,
               target: str | None = None, prompts: list[str] | None = None) -> dict:
    """Every figure of the race for each bench prompt, and for speculative decoding the wall-time ratio to
    transformers' assisted generation (the model drafter) and to prompt-lookup generation (the ngram drafter)
    with the same settings, written to `path` as one JSON object with the command that made it."""
    import json

    from engines.analysis.race import race
    torch.manual_seed(0)
    n = max_new_tokens or (16 if quick else 48)
    models = Models(target=target or default_target(), tiny_target="tiny-target", draft="tiny-draft", device=device,
                    new_tokens=n)
    prompts = prompts or (PROMPTS[:2] if quick else PROMPTS)
    command = (f"python -m engines bench --json {Path(path).name}{' --quick' if quick else ''}"
               f"{f' --max-new-tokens {n}' if max_new_tokens else ''}")   # no server path in what is written
    result = {"command": command, "target": models.target, "max_new_tokens": n,
              "race": [race(prompt, n, target=models.target, draft=models.draft, device=device).to_dict()
                       for prompt in prompts],
              "speculative_vs_transformers": bench_speculative(models, prompts, quick)}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, indent=1)
    return result
