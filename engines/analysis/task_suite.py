"""The held-out task suite: chat prompts nobody trained on, in Spec-Bench's six families, and the bench over them.

Spec-Bench (Xia et al. 2024, arXiv 2401.07851, github hemingkx/Spec-Bench) measures drafters on multi-turn chat,
translation, summarization, question answering, math reasoning and retrieval-augmented generation. The prompts
here (engines/analysis/tasks/*.jsonl, one file per family) were written for this project and are checked against
every text the shipped models and heads were trained on (tests/test_tasks.py with `overlaps`), so a drafter's
acceptance on them says how it does on text it has not seen, not how well it remembers.

    python -m engines bench --section tasks --per-family 2 --max-new-tokens 32

`bench_tasks` runs every drafter on each prompt through the target's chat template, greedy, and measures tokens
per target forward (mean accepted + 1, as Spec-Bench counts it), acceptance, wall-time speedups over this
project's autoregressive engine and over transformers' generate() (back to back in this process), and whether
the output equals generate(do_sample=False). `tables` prints them in Spec-Bench's layout beside its own GPU
figures for Vicuna-7B.
"""
from __future__ import annotations

import hashlib
import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from engines.analysis.bench_runs import timed
from engines.models import adapter, locate, presets, store

SUITE_DIR = Path(__file__).resolve().parent / "tasks"
# file stem -> the column title Spec-Bench gives the family
FAMILIES = {"multi_turn": "Multi-turn Conversation", "translation": "Translation", "summarization": "Summarization",
            "question_answering": "Question Answering", "math_reasoning": "Mathematical Reasoning",
            "rag": "Retrieval-aug. Generation"}
ROLES = ("system", "user", "assistant")
WINDOW = 8   # tokens: a shared window this long counts as the suite having been seen in training


@dataclass(frozen=True)
class Task:
    id: str
    family: str
    messages: tuple[dict, ...]   # {"role", "content"}, ending with the user's turn the model answers


def parse_line(line: str, where: str, family: str) -> Task:
    """One JSONL line -> a Task, or one sentence saying what is wrong with it."""
    try:
        d = json.loads(line)
    except json.JSONDecodeError:
        raise ValueError(f"{where} is not valid JSON.") from None
    if not isinstance(d, dict) or not {"id", "family", "messages"} <= d.keys():
        raise ValueError(f"{where} needs the keys id, family and messages.")
    if d["family"] != family:
        raise ValueError(f"{where} says family '{d['family']}' but sits in {family}.jsonl.")
    messages = d["messages"]
    well_formed = lambda m: (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
                             and bool(m["content"].strip()))
    if not isinstance(messages, list) or not messages or not all(map(well_formed, messages)):
        raise ValueError(f"{where}: messages must be a non-empty list of {{role, content}} with roles {ROLES}.")
    if messages[-1]["role"] != "user":
        raise ValueError(f"{where}: the last message must be the user's, for the model to answer.")
    return Task(str(d["id"]), family, tuple({"role": m["role"], "content": m["content"]} for m in messages))


def load_suite(folder: Path = SUITE_DIR) -> list[Task]:
    """Every task, family by family in FAMILIES order, file order within a family; ids must be unique."""
    tasks: list[Task] = []
    for family in FAMILIES:
        path = Path(folder) / f"{family}.jsonl"
        if not path.exists():
            raise ValueError(f"The task suite has no {family}.jsonl in {Path(folder).name}.")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                tasks.append(parse_line(line, f"{path.name} line {number}", family))
    seen: set[str] = set()
    for t in tasks:
        if t.id in seen:
            raise ValueError(f"The task id '{t.id}' appears twice in the suite.")
        seen.add(t.id)
    return tasks


def digest(tasks: Sequence[Task]) -> str:
    """A short fingerprint of the suite's content: results quote it, so two runs on different prompts differ."""
    canonical = json.dumps([[t.id, t.family, list(t.messages)] for t in tasks], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def per_family(tasks: Sequence[Task], count: int) -> list[Task]:
    """The first `count` tasks of each family, families in FAMILIES order."""
    return [t for family in FAMILIES for t in [x for x in tasks if x.family == family][:count]]


def chat_messages(task: Task) -> list[dict]:
    """The task's conversation as transformers' chat templates take it."""
    return [dict(m) for m in task.messages]


def prompt_ids(target: adapter.LM, task: Task) -> list[int]:
    """The ids the target reads: the conversation in its chat template, ending where the assistant's answer
    begins (add_generation_prompt)."""
    tok = target.tokenizer
    if not tok.chat_template:
        raise ValueError(f"'{target.name}' has no chat template, so the task suite's conversations cannot be "
                         f"put to it; choose a chat model such as smollm2-135m-instruct.")
    ids = tok.apply_chat_template(chat_messages(task), add_generation_prompt=True, tokenize=True, return_dict=False)
    return list(ids)


# ----------------------------------------------------------------------------- contamination

def suite_tokenizer():
    """SmolLM2's tokenizer, which every shipped model and head reads (tiny-target carries a copy of it)."""
    from transformers import AutoTokenizer
    source = locate.resolve(presets.SMOLLM2) if store.available(presets.SMOLLM2) else str(presets.MODELS_DIR / "tiny-target")
    return AutoTokenizer.from_pretrained(source)


def pieces(text: str) -> list[str]:
    """A text as whitespace-normalised paragraphs: hard-wrapped book lines and a prompt's one-line form then
    tokenize alike."""
    return [p for p in (" ".join(block.split()) for block in re.split(r"\n\s*\n", text)) if p]


def token_lists(texts: Iterable[str], tokenizer) -> list[list[int]]:
    paragraphs = [p for text in texts for p in pieces(text)]
    out: list[list[int]] = []
    for start in range(0, len(paragraphs), 4096):   # batches: the fast tokenizer splits them over threads
        out += tokenizer(paragraphs[start:start + 4096], add_special_tokens=False)["input_ids"]
    return out


def suite_windows(tasks: Sequence[Task], tokenizer, n: int = WINDOW) -> dict[tuple[int, ...], str]:
    """Every n-token window of every message of the suite -> the id of a task it comes from."""
    windows: dict[tuple[int, ...], str] = {}
    for t in tasks:
        for ids in token_lists((m["content"] for m in t.messages), tokenizer):
            for i in range(len(ids) - n + 1):
                windows.setdefault(tuple(ids[i:i + n]), t.id)
    return windows


@dataclass(frozen=True)
class Overlap:
    task_id: str
    window: str   # the shared tokens as text


def shared_windows(text_ids: Iterable[Sequence[int]], windows: dict[tuple[int, ...], str], tokenizer,
                   n: int = WINDOW) -> list[Overlap]:
    """Each window of `windows` (suite_windows) that occurs in token lists already made (token_lists), once."""
    found: dict[tuple[int, ...], Overlap] = {}
    for ids in text_ids:
        for i in range(len(ids) - n + 1):
            key = tuple(ids[i:i + n])
            if key in windows and key not in found:
                found[key] = Overlap(windows[key], tokenizer.decode(list(key)))
    return list(found.values())


def overlaps(texts: Iterable[str], n: int = WINDOW, tasks: Sequence[Task] | None = None,
             tokenizer=None) -> list[Overlap]:
    """Each n-token window of a suite prompt that also occurs in `texts` (each shared window once). The suite's
    windows go in a set; the texts are tokenized once and slid over, so millions of tokens take seconds."""
    tasks = load_suite() if tasks is None else tasks
    tokenizer = tokenizer or suite_tokenizer()
    return shared_windows(token_lists(texts, tokenizer), suite_windows(tasks, tokenizer, n), tokenizer, n)


def training_texts() -> list[str]:
    """Every text a shipped model or head was trained on, as text: each file of the corpus (assets/corpus, as
    engines.training.common reads it; held-out slice included), the chat data's instructions and follow-ups
    (engines/training/instructions.py, the seed chat_data uses) and the prompts the heads' own-text data starts
    from (engines.training.heads.PROMPTS). The answers the target wrote are its own, not text anyone gave it."""
    from engines.training.heads import PROMPTS as HEAD_PROMPTS
    from engines.training.instructions import CORPUS_DIR, instructions
    texts = []
    for path in sorted(CORPUS_DIR.iterdir()):
        if path.is_file():
            raw = path.read_bytes()
            try:
                texts.append(raw.decode("utf-8"))
            except UnicodeDecodeError:   # one book has a few Latin-1 accents, as engines.training.common knows
                texts.append(raw.decode("latin-1"))
    for item in instructions():
        texts += [item["user"], *([item["follow_up"]] if item["follow_up"] else [])]
    return texts + list(HEAD_PROMPTS)


# ----------------------------------------------------------------------------- the bench

# The drafters bench.py runs, with its settings: name -> (method, settings, what it needs). The Spec-Bench row each
# corresponds to is in the name: SpS (a draft model), PLD (prompt lookup), Medusa, EAGLE(-2's dynamic tree),
# Lookahead; LayerSkip (self-speculation, no row there either; its exit layer is half the target's layers here);
# SuffixDecoding and Token Recycling have no row there; REST is the retrieval drafter's row.
TASK_METHODS: dict[str, tuple[str, dict, str]] = {
    "autoregressive (ours)": ("autoregressive", {}, ""),
    "SpS: tiny draft, k=4": ("speculative", {"drafter": "model", "k": 4}, "draft"),
    "PLD: prompt lookup, k=4": ("speculative", {"drafter": "ngram", "lookup_ngram": 3, "k": 4}, ""),
    "Medusa: heads tree": ("tree", {"drafter": "heads", "tree": "dynamic", "tree_budget": 24, "tree_depth": 4,
                                    "tree_topk": 4}, "heads"),
    "Hydra: heads tree": ("tree", {"drafter": "hydra", "tree": "dynamic", "tree_budget": 24, "tree_depth": 4,
                                   "tree_topk": 4}, "hydra"),
    "EAGLE: head tree": ("tree", {"drafter": "eagle", "tree": "dynamic", "tree_budget": 24, "tree_depth": 6,
                                  "tree_topk": 4}, "eagle"),
    "Lookahead: W5 N4 G5": ("lookahead", {"window": 5, "ngram": 4, "guesses": 5}, ""),
    "Suffix tree": ("tree", {"drafter": "suffix", "tree_budget": 24, "tree_depth": 8}, ""),
    "LayerSkip: early exit at half, k=4": ("speculative", {"drafter": "early-exit", "exit_layer": 0, "k": 4}, ""),
    "Token Recycling: adjacency tree": ("tree", {"drafter": "recycling", "tree_budget": 64, "tree_depth": 6,
                                                 "tree_topk": 8}, ""),
    "REST: retrieval tree": ("tree", {"drafter": "retrieval", "tree_budget": 24, "tree_depth": 8}, ""),
    "CLLM: Jacobi, block 8": ("jacobi", {"block": 8, "init": "repeat"}, ""),
}

# Rows whose engine runs on another model than the suite's target: a model fine-tuned from the target for the
# method (the CLLM: SmolLM2 consistency-trained for Jacobi; engines/training/cllm.py), so the row runs only where
# the suite's target is that model's base. Its output is compared with that model's own generate(); its speedups
# are over the target's decoding, as the CLLM paper compares with its base model.
ROW_TARGETS: dict[str, str] = {"CLLM: Jacobi, block 8": "smollm2-135m-cllm"}


def row_target(name: str, target: adapter.LM) -> adapter.LM | None:
    """The model a row runs on: the suite's target, or the row's own model when it adapts that target; None
    where the row cannot run here (the row's model is missing or adapts another target)."""
    own = ROW_TARGETS.get(name)
    if own is None:
        return target
    delta = locate.delta_file(presets.MODELS_DIR / own)
    if delta is None or json.loads(delta.read_text())["base"] != target.name or not store.available(own):
        return None
    return store.load(own, target.device.type)

# Spec-Bench's Leaderboard.md (hemingkx/Spec-Bench, commit 09244ff), "Leaderboard on 3090": Vicuna-7B-v1.3, greedy,
# FP16, batch 1, one RTX 3090. Speedup over vanilla autoregressive decoding per family (FAMILIES order), then the
# mean accepted tokens per decoding step (1.00 for autoregressive) and the overall speedup.
SPEC_BENCH_VICUNA_7B = {
    "EAGLE2": ((2.71, 1.82, 2.19, 2.11, 2.71, 1.91), 4.36, 2.25),
    "EAGLE": ((2.44, 1.81, 2.13, 2.11, 2.54, 1.82), 3.57, 2.16),
    "SpS": ((1.98, 1.37, 2.00, 1.95, 1.89, 1.76), 2.29, 1.83),
    "Hydra": ((2.04, 1.67, 1.56, 1.81, 2.16, 1.48), 3.26, 1.80),
    "PLD": ((1.57, 1.07, 2.31, 1.25, 1.62, 1.56), 1.74, 1.55),
    "Medusa": ((1.60, 1.38, 1.28, 1.46, 1.64, 1.22), 2.32, 1.44),
    "REST": ((1.49, 1.18, 1.21, 1.46, 1.35, 1.27), 1.63, 1.32),
    "Lookahead": ((1.13, 0.97, 1.05, 1.07, 1.29, 0.98), 1.65, 1.08),
}


def runnable(methods: dict[str, tuple[str, dict, str]], target: adapter.LM, draft: adapter.LM | None) -> dict:
    """The methods that can run here: a draft model for SpS, trained heads for the head drafters; the rest are
    named once on stdout as skipped, with the reason."""
    from engines.drafting.heads import head_folder
    out = {}
    for name, (method, settings, needs) in methods.items():
        if name in ROW_TARGETS and row_target(name, target) is None:
            print(f"tasks: {name} skipped: {ROW_TARGETS[name]} is missing here or does not adapt {target.name}",
                  flush=True)
        elif needs == "draft" and draft is None:
            print(f"tasks: {name} skipped: no draft model here", flush=True)
        elif needs in ("heads", "hydra", "eagle") and not (head_folder(target, needs) / "head.json").exists():
            print(f"tasks: {name} skipped: no {needs} head trained for {target.name}", flush=True)
        else:
            out[name] = (method, settings, needs)
    return out


def greedy_generate(target: adapter.LM, ids: list[int], n: int) -> list[int]:
    """transformers' own greedy decoding of n tokens at most (it stops at an end-of-text token, as we do)."""
    x = torch.tensor([ids], device=target.device)
    out = target.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                                eos_token_id=sorted(target.eos_ids),
                                pad_token_id=target.tokenizer.pad_token_id or 0)
    return out[0, len(ids):].tolist()


def run_engine(method: str, settings: dict, target: adapter.LM, draft: adapter.LM | None, ids: list[int], n: int):
    """One greedy run of an engine on prompt ids (no Run: the chat template's ids go in as they are)."""
    from engines.config import build
    from engines.methods import METHODS
    m = METHODS[method]
    cfg = build(m.config, {**settings, "max_new_tokens": n})
    return list(m.start(target, draft, ids, cfg, torch.Generator().manual_seed(0)))


def bench_tasks(target: adapter.LM | str, draft: adapter.LM | str | None = None, per_family_count: int = 2,
                new_tokens: int = 32, device: str | None = None, methods: dict | None = None,
                tasks: Sequence[Task] | None = None) -> list[dict]:
    """One row per (method, task): greedy on the task's chat-template ids, `new_tokens` at most. Per task, back
    to back in this process: generate(), our autoregressive engine, then each drafter. Every method runs once on
    the first task before anything is timed, so no row pays one-off set-up costs."""
    from engines.analysis.theory import drafts
    from engines.config import MAX_NEW_TOKENS
    from engines.methods import METHODS
    if per_family_count < 1:
        raise ValueError(f"Prompts per family must be at least 1, not {per_family_count}.")
    if not 1 <= new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"New tokens per prompt must be between 1 and {MAX_NEW_TOKENS}, not {new_tokens}.")
    target = target if isinstance(target, adapter.LM) else store.load(target, device)
    if isinstance(draft, str):
        draft = store.load(draft, device)
    if draft is not None:
        store.check_same_tokenizer(target, draft)
    chosen = runnable(TASK_METHODS if methods is None else methods, target, draft)
    tasks = per_family(load_suite() if tasks is None else tasks, per_family_count)
    encoded = [(t, prompt_ids(target, t)) for t in tasks]
    warm = encoded[0][1]
    models = {name: row_target(name, target) for name in chosen}
    greedy_generate(target, warm, new_tokens)
    for name, (method, settings, needs) in chosen.items():
        run_engine(method, settings, models[name], draft if needs == "draft" else None, warm, new_tokens)
    rows = []
    for task, ids in encoded:
        generate_s, reference = timed(lambda: greedy_generate(target, ids, new_tokens))
        ar_s, _ = timed(lambda: run_engine("autoregressive", {}, target, None, ids, new_tokens))
        for name, (method, settings, needs) in chosen.items():
            model = models[name]
            wall, steps = timed(lambda: run_engine(method, settings, model, draft if needs == "draft" else None,
                                                   ids, new_tokens))
            output = [t for s in steps for t in s.committed_ids]
            counter = METHODS[method].drafts
            accepted, examined = drafts(counter, steps) if counter else (0, 0)
            own = reference if model is target else greedy_generate(model, ids, new_tokens)
            rows.append({"method": name, "family": task.family, "task": task.id, "target": model.name,
                         "prompt_tokens": len(ids), "max_new_tokens": new_tokens,
                         "new_tokens": len(output), "steps": len(steps),
                         "target_forwards": sum(s.target_forwards for s in steps),
                         "accepted": accepted, "examined": examined, "wall_s": wall, "autoregressive_s": ar_s,
                         "generate_s": generate_s, "reference_tokens": len(reference),
                         "same_as_generate": output == own})
    return rows


# ----------------------------------------------------------------------------- the tables

def aggregate(rows: Sequence[dict]) -> dict:
    """Spec-Bench's figures of a set of rows: tokens per target forward pooled over every step (its mean
    accepted tokens), acceptance pooled over drafted tokens, and speedup as the mean of per-prompt tokens per
    second over the baseline's mean (Spec-Bench's evaluation/speed.py)."""
    tokens = sum(r["new_tokens"] for r in rows)
    forwards = sum(r["target_forwards"] for r in rows)
    examined = sum(r["examined"] for r in rows)

    def speedup(base: str) -> float:
        ours = statistics.mean(r["new_tokens"] / r["wall_s"] for r in rows)
        theirs = statistics.mean(r["reference_tokens"] / r[base] for r in rows)   # generate()'s greedy text
        return ours / theirs

    return {"tokens_per_forward": tokens / forwards if forwards else float("nan"),
            "acceptance": sum(r["accepted"] for r in rows) / examined if examined else None,
            "speedup_vs_autoregressive": speedup("autoregressive_s"), "speedup_vs_generate": speedup("generate_s"),
            "same": sum(r["same_as_generate"] for r in rows), "runs": len(rows)}


def table_cells(rows: Sequence[dict]) -> dict[str, dict[str, dict]]:
    """method -> column (each family present, then 'Overall') -> aggregate."""
    out: dict[str, dict[str, dict]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        cells = {f: aggregate([r for r in mine if r["family"] == f]) for f in FAMILIES if any(r["family"] == f
                                                                                            for r in mine)}
        cells["Overall"] = aggregate(mine)
        out[method] = cells
    return out


def markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " :---: |" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def tables(rows: Sequence[dict], suite_digest: str | None = None) -> str:
    """The measured tables in Spec-Bench's layout (families as columns, methods as rows, an Overall column),
    then Spec-Bench's own Vicuna-7B figures for reference."""
    if not rows:
        return "No rows: no method could run here."
    cells = table_cells(rows)
    families = [c for c in next(iter(cells.values())) if c != "Overall"]
    first = rows[0]
    per = max(sum(1 for r in rows if r["method"] == first["method"] and r["family"] == f) for f in FAMILIES)
    tokens = first["max_new_tokens"]
    out = [f"Task suite {suite_digest or digest(load_suite())}: {first['target']}, greedy, {per} prompt(s) per "
           f"family in its chat template, up to {tokens} new tokens; measured back to back in one process.", ""]

    def block(title: str, fmt, extra: list[tuple[str, callable]] = ()) -> None:
        # Spec-Bench's order: the families, its extra column(s), then Overall
        header = ["Method", *(FAMILIES[f] for f in families), *(name for name, _ in extra), "Overall"]
        body = [[m, *(fmt(c[f]) for f in families), *(cell(c) for _, cell in extra), fmt(c["Overall"])]
                for m, c in cells.items()]
        out.extend([f"### {title}", "", markdown(header, body), ""])

    block("Speedup over our autoregressive engine (wall time, this machine)",
          lambda a: f"{a['speedup_vs_autoregressive']:.2f}x",
          [("#Mean Accepted Tokens", lambda c: f"{c['Overall']['tokens_per_forward']:.2f}")])
    block("Tokens per target forward (mean accepted + 1)", lambda a: f"{a['tokens_per_forward']:.2f}")
    block("Acceptance (accepted / examined drafted tokens)",
          lambda a: "-" if a["acceptance"] is None else f"{a['acceptance']:.2f}")
    block("Speedup over transformers' generate() (wall time, this machine)",
          lambda a: f"{a['speedup_vs_generate']:.2f}x",
          [("Output = generate(do_sample=False)", lambda c: f"{c['Overall']['same']}/{c['Overall']['runs']}")])
    ref_header = ["Spec-Bench (Vicuna-7B-v1.3, RTX 3090, FP16)", *FAMILIES.values(), "#Mean Accepted Tokens",
                  "Overall"]
    ref_body = [[name, *(f"{s:.2f}x" for s in speeds), f"{accepted:.2f}", f"{overall:.2f}x"]
                for name, (speeds, accepted, overall) in SPEC_BENCH_VICUNA_7B.items()]
    out.extend(["### Reference: Spec-Bench Leaderboard, speedup over vanilla decoding on a GPU (not measured here)",
                "", markdown(ref_header, ref_body)])
    return "\n".join(out)


def bench_section(models, quick: bool, per_family_count: int | None = None,
                  new_tokens: int | None = None) -> list[dict]:
    """`python -m engines bench --section tasks`: the default target (SmolLM2 where installed) with the tiny
    draft, printing the tables; returns the rows."""
    per = (1 if quick else 2) if per_family_count is None else per_family_count
    n = (16 if quick else 32) if new_tokens is None else new_tokens
    if per < 1 or n < 1:   # refused before any model loads
        raise ValueError(f"The tasks section needs at least 1 prompt per family and 1 new token, not {per} and {n}.")
    draft = None if models.missing(models.draft) else store.load(models.draft, models.device)
    rows = bench_tasks(models.target, draft, per, n, models.device)
    print(tables(rows), flush=True)
    return rows
