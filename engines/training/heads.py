"""Training the draft heads (engines/models/heads.py) on a target's cached hidden states.

    python -m engines.training features smollm2-135m-instruct     # target text + hidden states, cached once
    python -m engines.training heads medusa smollm2-135m-instruct --minutes 40
    python -m engines.training heads hydra smollm2-135m-instruct --minutes 40
    python -m engines.training heads eagle smollm2-135m-instruct --minutes 60
    python -m engines.training heads-eval smollm2-135m-instruct    # held-out figures of all
    python -m engines.training heads-publish smollm2-135m-instruct --kinds hydra

Data: the target's own chat answers (assets/data/chat/<target>/), the corpus's training windows and text the
target writes itself from varied prompts (dialogue, lists, instructions, code; raw and in its chat template;
greedy and sampled), as Medusa-2 and EAGLE recommend.
One target pass stores, per position, the fused low/middle/high features, the last normed hidden state and
the target's top-16 next-token log-probabilities, in shards under ~/.cache (never in the work tree). Heads
are trained by self-distillation against that distribution, and every command resumes where it stopped.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch

from engines.models import adapter, store
from engines.models import heads as H
from engines.training import checkpoint, common

FEATURE_WINDOW = 256
WINDOWS_PER_SHARD = 8
TEACHER_TOPK = 16
DRAFT_VOCAB = 8192
HYDRA_TOKEN_WIDTH = 128   # each drafted token's projected embedding, read by the Hydra heads
TTT_STEPS = 3          # EAGLE-3's training-time test: the head feeds back its own features this many times
HELD_OUT_WINDOWS = 24

PROMPTS = [
    "Hi! How are you today?", "Can you help me plan a trip to Paris?", "What is the capital of France?",
    "Write a short poem about the sea.", "Explain photosynthesis to a child.", "Give me three tips for better sleep.",
    "List five fruits that are high in vitamin C.", "Write a Python function that reverses a string.",
    "def fibonacci(n):", "import numpy as np\n\n", "How do I sort a list in Python?", "What is machine learning?",
    "Tell me a joke about cats.", "Summarize the plot of Romeo and Juliet.", "What are the benefits of exercise?",
    "Write an email to my boss asking for a day off.", "Translate 'good morning' into Spanish and French.",
    "Steps to bake bread:\n1.", "Shopping list:\n-", "Q: Why is the sky blue?\nA:", "Once upon a time",
    "The history of the Roman Empire", "In a small village by the river,", "Dear diary, today I",
    "User: What should I cook for dinner?\nAssistant:", "Here are some ideas for a birthday party:",
    "The best way to learn a new language is", "Write a SQL query that counts users by country.",
    "class Stack:\n    def __init__(self):", "Explain the difference between a list and a tuple.",
    "What is the meaning of life?", "Describe a sunset over the mountains.", "How does the internet work?",
    "My favourite book is", "Recipe for chocolate chip cookies:", "The three laws of motion are",
    "How can I be more productive at work?", "What is 15 times 12?", "Write a haiku about autumn.",
    "Give me a workout plan for beginners.", "Why do leaves change colour in the fall?",
    "Write a story about a robot who learns to paint.", "How do vaccines work?", "What causes rain?",
    "Compare cats and dogs as pets.", "function add(a, b) {", "Hello, my name is", "The weather today is",
    "What are the planets in our solar system?", "Write a thank-you note to a teacher.",
    "Explain what a neural network is in simple words.", "Can you recommend some good movies?",
    "How do I make a cup of tea?", "What is the tallest mountain in the world?", "Pros and cons of remote work:",
    "Write a limerick about a frog.", "Instructions: Write a product description for a water bottle.",
    "Question: What is gravity?\nAnswer:", "Top 10 tips for saving money:\n1.", "The quick brown fox",
]


def work_dir(target: str) -> Path:
    from engines.training.common import WORK_DIR
    return WORK_DIR / "heads" / target.replace("/", "_")


# ----------------------------------------------------------------------------- data

def generated_text(target: adapter.LM, out: Path, per_prompt: int = 1, new_tokens: int = 128) -> list[list[int]]:
    """The target's own continuations of PROMPTS: raw and chat-templated, greedy once and sampled after."""
    if out.exists():
        return torch.load(out)
    tok, model = target.tokenizer, target.model
    starts = []
    for p in PROMPTS:
        starts.append(target.encode(p))
        if tok.chat_template:
            starts.append(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                  tokenize=True, return_dict=False))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    texts: list[list[int]] = []
    gen = torch.Generator().manual_seed(0)
    for round_ in range(per_prompt):
        torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=gen)))
        for batch in [starts[i:i + 16] for i in range(0, len(starts), 16)]:
            width = max(map(len, batch))
            ids = torch.tensor([[pad] * (width - len(b)) + list(b) for b in batch])
            mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch])
            sampled = round_ > 0
            with torch.inference_mode():
                outs = model.generate(input_ids=ids.to(target.device), attention_mask=mask.to(target.device),
                                      max_new_tokens=new_tokens, do_sample=sampled, temperature=0.8 if sampled else None,
                                      top_p=0.95 if sampled else None, top_k=None, pad_token_id=pad)
            for b, row in zip(batch, outs.tolist()):
                texts.append(list(b) + [t for t in row[width:] if t != pad])
            print(f"generated {len(texts)} texts", flush=True)
    torch.save(texts, out)
    return texts


def chat_texts(target: adapter.LM) -> tuple[list[list[int]], list[list[int]]]:
    """(train, held-out) conversations the target answered itself, in its chat template
    (assets/data/chat/<target>/, engines/training/chat_data.py): the data issue 20 wants heads trained on."""
    from engines.training import chat_data
    rows = chat_data.read_shards(chat_data.data_dir(target.name))
    return ([r["ids"] for r in rows if r["split"] == "train"], [r["ids"] for r in rows if r["split"] == "held_out"])


def feature_windows(target: adapter.LM, folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(training windows, held-out windows) of FEATURE_WINDOW ids: the target's chat answers, its own text and
    the corpus interleaved (two chat windows, then one of its own text, then one corpus window), so a partial
    pass covers all three. Held out: the chat data's held-out conversations, 5% of the texts and the corpus's
    held-out slice, a third each."""
    sep = target.tokenizer.convert_tokens_to_ids(common.SEPARATOR)
    texts = generated_text(target, folder / "generated.pt")
    cut = len(texts) - max(1, len(texts) // 20)
    random.Random(0).shuffle(texts)
    chat_train, chat_held = chat_texts(target)

    def stream(rows):
        return torch.tensor([t for r in rows for t in r + [sep]], dtype=torch.int32).reshape(-1)

    def win(rows):
        ids = stream(rows)
        return common.windows(ids, FEATURE_WINDOW - 1) if len(ids) > FEATURE_WINDOW else torch.zeros(
            0, FEATURE_WINDOW, dtype=torch.long)

    corpus = common.windows(common.token_stream("train", target.tokenizer), FEATURE_WINDOW - 1)
    corpus = corpus[torch.randperm(len(corpus), generator=torch.Generator().manual_seed(0))]
    sources = [(win(chat_train), 2), (win(texts[:cut]), 1), (corpus, 1)]
    mixed, taken = [], [0] * len(sources)
    while any(t < len(w) for t, (w, _) in zip(taken, sources)):
        for i, (w, every) in enumerate(sources):
            for _ in range(every):
                if taken[i] < len(w):
                    mixed.append(w[taken[i]]); taken[i] += 1
    third = HELD_OUT_WINDOWS // 3
    held = torch.cat([win(chat_held)[:third], win(texts[cut:])[:third],
                      common.windows(common.token_stream("held_out", target.tokenizer), FEATURE_WINDOW - 1)[:third]])
    return torch.stack(mixed), held


@torch.inference_mode()
def target_features(target: adapter.LM, ids: torch.Tensor, layers: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """One target pass over windows ids [S, T]: fused layers [S, T, L, d], last normed hidden [S, T, d], and the
    top-k of the next-token distribution at every position."""
    out = target.model(input_ids=ids.long().to(target.device), output_hidden_states=True)
    top = out.logits.float().log_softmax(-1).topk(TEACHER_TOPK, dim=-1)
    hs = out.hidden_states
    return {"ids": ids.to(torch.int32).cpu(),
            "fused": torch.stack([hs[i] for i in layers], 2).to(torch.bfloat16).cpu(),
            "last": hs[-1].to(torch.bfloat16).cpu(),
            "top_ids": top.indices.to(torch.int32).cpu(), "top_lp": top.values.to(torch.float16).cpu()}


def cache_features(args) -> None:
    """Shards of target features under the heads work folder; stops after --windows and resumes."""
    torch.set_num_threads(args.threads)
    target = store.load(args.target, dtype=args.dtype)
    folder = work_dir(args.target)
    folder.mkdir(parents=True, exist_ok=True)
    layers = H.fusion_layers(target.model.config.num_hidden_layers)
    train_windows, held = feature_windows(target, folder)
    held_path = folder / "held_out.pt"
    if not held_path.exists():
        torch.save(target_features(target, held, layers), held_path)
    shards = min(math.ceil(len(train_windows) / WINDOWS_PER_SHARD), math.ceil(args.windows / WINDOWS_PER_SHARD))
    start, done = time.time(), 0
    for s in range(shards):
        path = folder / "features" / f"{s:05d}.pt"
        if path.exists():
            continue
        path.parent.mkdir(exist_ok=True)
        rows = train_windows[s * WINDOWS_PER_SHARD:(s + 1) * WINDOWS_PER_SHARD]
        checkpoint.save(target_features(target, rows, layers), path)   # whole or absent: a shard is never redone
        done += rows.numel()
        print(f"shard {s + 1}/{shards}  {done / (time.time() - start):.0f} tok/s", flush=True)


def load_features(folder: Path, limit: int = 0) -> dict[str, torch.Tensor]:
    paths = sorted((folder / "features").glob("*.pt"))[: limit or None]
    if not paths:
        raise SystemExit(f"No cached features under {folder}: run `python -m engines.training features` first.")
    shards = [torch.load(p) for p in paths]
    return {k: torch.cat([s[k] for s in shards]) for k in shards[0]}


def draft_vocab(data: dict[str, torch.Tensor], size: int, extra: set[int]) -> torch.Tensor:
    """The most frequent `size` target tokens of the training data (and the end-of-text ids), sorted."""
    counts = torch.bincount(data["ids"].flatten().long())
    keep = set(counts.topk(min(size, len(counts))).indices.tolist())
    keep = sorted(keep | extra)[:size] if len(keep | extra) > size else sorted(keep | extra)
    return torch.tensor(keep, dtype=torch.long)


# ----------------------------------------------------------------------------- losses

def distill(logits: torch.Tensor, top_ids: torch.Tensor, top_lp: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of draft log-probs over the draft vocabulary against the target's top-k distribution,
    renormalised over the ids the draft vocabulary has. Per position [...]; nan-free where none are in it."""
    mapped = index[top_ids.long()]                       # draft index, or -1 outside the draft vocabulary
    p = top_lp.float().exp() * (mapped >= 0)
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-9)
    logq = logits.float().log_softmax(-1).gather(-1, mapped.clamp_min(0))
    return -(p * logq).sum(-1)


def medusa_logits(heads: H.MedusaHeads, last: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
    """Every head's draft-vocabulary logits [heads, B, T, N] from last hidden states [B, T, d]."""
    return heads(last) @ readout.T


def medusa_loss(heads, batch, readout, index):
    """Head i at position t against the target's distribution at t + i (the token at t + i + 1)."""
    logits = medusa_logits(heads, batch["last"].float(), readout)
    losses = []
    for i in range(heads.spec.n_heads):
        shift = i + 1
        losses.append(distill(logits[i, :, :-shift], batch["top_ids"][:, shift:], batch["top_lp"][:, shift:],
                              index).mean())
    return sum(0.8 ** i * l for i, l in enumerate(losses)), losses


def hydra_logits(heads: H.HydraHeads, i: int, last: torch.Tensor, ids: torch.Tensor, embed: torch.Tensor,
                 readout: torch.Tensor) -> torch.Tensor:
    """Head i's draft-vocabulary logits [B, T - i - 1, N] at every position t that has its i + 1 input tokens
    x_{t+1} .. x_{t+i+1} and a target distribution at t + i + 1; teacher-forced: the inputs are the true
    next tokens, as the pending and accepted tokens are at decode time."""
    n = last.shape[1] - (i + 1)
    emb = embed[ids.long()]
    context = torch.stack([emb[:, 1 + j:1 + j + n] for j in range(i + 1)], -2)   # [B, n, i + 1, d]
    return heads(i, last[:, :n], context) @ readout.T


def hydra_loss(heads, batch, embed, readout, index):
    """Head i at position t, given the tokens t + 1 .. t + i + 1, against the target's distribution at
    t + i + 1 (the token at t + i + 2): Medusa's targets, each head told the tokens before its guess."""
    losses = []
    for i in range(heads.spec.n_heads):
        logits = hydra_logits(heads, i, batch["last"].float(), batch["ids"], embed, readout)
        losses.append(distill(logits, batch["top_ids"][:, i + 1:], batch["top_lp"][:, i + 1:], index).mean())
    return sum(0.8 ** i * l for i, l in enumerate(losses)), losses


def eagle_chain(head: H.EagleHead, fused: torch.Tensor, ids: torch.Tensor, embed: torch.Tensor, steps: int):
    """Training-time test (EAGLE-3): step 1 reads the target's fused features g_t with the next token's
    embedding e_{t+1}; step j reads the head's own output from step j - 1 at t - 1 instead of g_t. A query at
    step j, position t sees step-1 entries up to t - j + 1 (the true prefix) and its own chain's entries
    (step i at t - j + i), exactly what it would see when drafting j tokens ahead. Returns the output
    features of every step [steps][B, T-1, d]; all predict the token at t + 2."""
    B, T = ids.shape
    emb = embed[ids[:, 1:].long()]                                   # e_{t+1}, [B, T-1, d]
    g = head.fuse(fused[:, :-1].flatten(-2).to(emb.dtype))           # g_t
    pos = torch.arange(T - 1, device=ids.device).expand(B, -1)
    scale = 1 / math.sqrt(head.head_dim)
    feature, keys, values, outs = g, [], [], []
    for j in range(1, steps + 1):
        x = head.inputs(feature, emb)
        q, k, v = head.qkv_at(x, pos)                                # [B, T-1, h, hd]
        keys.append(k), values.append(v)
        s1 = torch.einsum("bthd,bshd->bhts", q, keys[0]) * scale
        t_idx = torch.arange(T - 1, device=ids.device)
        s1 = s1.masked_fill(t_idx[None, :] > t_idx[:, None] - (j - 1), float("-inf"))
        diag_k = [shift_right(keys[i - 1], j - i) for i in range(2, j + 1)]
        diag_v = [shift_right(values[i - 1], j - i) for i in range(2, j + 1)]
        sd = [torch.einsum("bthd,bthd->bht", q, dk)[..., None] * scale for dk in diag_k]
        w = torch.cat([s1] + sd, -1).float().softmax(-1).to(q.dtype)
        att = torch.einsum("bhts,bshd->bthd", w[..., :T - 1], values[0])
        for i, dv in enumerate(diag_v):
            att = att + w[..., T - 1 + i].transpose(1, 2)[..., None] * dv
        a = head.finish(x, att)
        outs.append(a)
        feature = shift_right(a, 1)
    return outs


def shift_right(x: torch.Tensor, n: int) -> torch.Tensor:
    """x [B, T, ...] moved n positions later along T, zeros in front."""
    if n == 0:
        return x
    return torch.cat([torch.zeros_like(x[:, :n]), x[:, :-n]], 1)


def eagle_loss(head, batch, embed, readout, index, steps: int = TTT_STEPS):
    outs = eagle_chain(head, batch["fused"], batch["ids"], embed, steps)
    losses = []
    for j, a in enumerate(outs):       # step j + 1 is valid from t = j on; it predicts the token at t + 2
        logits = head.out_norm(a[:, j:]) @ readout.T
        losses.append(distill(logits, batch["top_ids"][:, j + 1:], batch["top_lp"][:, j + 1:], index).mean())
    return sum(0.8 ** j * l for j, l in enumerate(losses)), losses


# ----------------------------------------------------------------------------- training

def frozen_target_matrices(target: adapter.LM, vocab: torch.Tensor):
    """The target's embedding (all ids) and its output layer's rows for the draft vocabulary, float32."""
    embed = target.model.get_input_embeddings().weight.detach().float().cpu()
    readout = target.model.get_output_embeddings().weight.detach().float().cpu()[vocab]
    index = torch.full((embed.shape[0],), -1, dtype=torch.long)
    index[vocab] = torch.arange(len(vocab))
    return embed, readout, index


def new_head(kind: str, target: adapter.LM, vocab: torch.Tensor) -> H.MedusaHeads | H.HydraHeads | H.EagleHead:
    cfg = target.model.config
    d = cfg.hidden_size
    spec = H.HeadSpec(kind=kind, target=target.name, target_fingerprint=H.fingerprint(target.model), hidden=d,
                      vocab_size=len(vocab), n_heads=4 if kind in ("medusa", "hydra") else max(1, d // 64),
                      token_width=HYDRA_TOKEN_WIDTH if kind == "hydra" else 0,
                      layers=H.fusion_layers(cfg.num_hidden_layers) if kind == "eagle" else (),
                      mlp=cfg.intermediate_size if kind == "eagle" else 0,
                      rope_theta=float(getattr(cfg, "rope_parameters", {}).get("rope_theta", 10000.0)
                                       if isinstance(getattr(cfg, "rope_parameters", None), dict)
                                       else getattr(cfg, "rope_theta", 10000.0)))
    head = H.build(spec)
    head.vocab.copy_(vocab)
    return head


def train_head(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    target = store.load(args.target, dtype="float32")
    folder = work_dir(args.target)
    data = load_features(folder, math.ceil(args.windows / WINDOWS_PER_SHARD) if args.windows else 0)
    extra = set(target.eos_ids)
    ckpt = folder / f"{args.kind}.ckpt.pt"
    state = torch.load(ckpt) if ckpt.exists() else None
    vocab = state["vocab"] if state else draft_vocab(data, args.vocab, extra)
    head = new_head(args.kind, target, vocab)
    embed, readout, index = frozen_target_matrices(target, vocab)
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
    step = 0
    if state:
        head.load_state_dict(state["head"]), opt.load_state_dict(state["opt"])
        step = state["step"]
        print(f"resumed at step {step}", flush=True)
    n = len(data["ids"])
    print(f"{args.kind}: {sum(p.numel() for p in head.parameters()) / 1e6:.2f}M parameters, {n} windows "
          f"({n * FEATURE_WINDOW} tokens), draft vocabulary {len(vocab)}", flush=True)
    gen = torch.Generator().manual_seed(args.seed + step)
    deadline, t0 = time.time() + 60 * args.minutes, time.time()
    while step < (args.until_step or args.steps) and time.time() < deadline:
        lr = args.lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        rows = torch.randint(n, (args.batch,), generator=gen)
        batch = {k: v[rows] for k, v in data.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            if args.kind == "medusa":
                loss, parts = medusa_loss(head, batch, readout, index)
            elif args.kind == "hydra":
                loss, parts = hydra_loss(head, batch, embed, readout, index)
            else:
                loss, parts = eagle_loss(head, batch, embed, readout, index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 10 == 0:
            rate = step * args.batch * FEATURE_WINDOW / (time.time() - t0) if not state else 0
            print(f"step {step}  loss {loss.item():.3f}  parts {' '.join(f'{p.item():.2f}' for p in parts)}  "
                  f"lr {lr:.1e}  {rate:.0f} tok/s", flush=True)
        if step % args.save_every == 0:
            checkpoint.save({"head": head.state_dict(), "opt": opt.state_dict(), "step": step, "vocab": vocab}, ckpt)
    checkpoint.save({"head": head.state_dict(), "opt": opt.state_dict(), "step": step, "vocab": vocab}, ckpt)
    H.save(head, folder / f"{args.kind}-export")
    print(f"exported {args.kind} after {step} steps", flush=True)


@torch.inference_mode()
def evaluate_heads(target_name: str, folder: Path | None = None) -> dict[str, dict]:
    """Held-out agreement with the target's greedy token: Medusa and Hydra head i top-1 / top-5 at t + i + 1
    (Hydra given the true tokens before it); EAGLE's drafted token at each training-time-test depth."""
    target = store.load(target_name, dtype="float32")
    work = work_dir(target_name)
    held = torch.load(work / "held_out.pt")
    greedy = held["top_ids"][..., 0].long()          # the target's argmax at every position
    figures = {}
    for kind in ("medusa", "hydra", "eagle"):
        path = (folder or work) / (f"{kind}-export" if folder is None else f"{target_name}-{kind}")
        if not (path / H.HEAD_FILE).exists():
            continue
        head = H.load(path, target.model, torch.device("cpu"), torch.float32)
        embed, readout, _ = frozen_target_matrices(target, head.vocab)
        row = {}
        if kind in ("medusa", "hydra"):
            logits = medusa_logits(head, held["last"].float(), readout) if kind == "medusa" else None
            for i in range(head.spec.n_heads):
                want = greedy[:, i + 1:]
                scores = logits[i, :, :-(i + 1)] if kind == "medusa" else \
                    hydra_logits(head, i, held["last"].float(), held["ids"], embed, readout)
                guess = head.vocab[scores.topk(5, -1).indices]
                row[f"head{i + 1}_top1"] = round(float((guess[..., 0] == want).float().mean()), 4)
                row[f"head{i + 1}_top5"] = round(float((guess == want[..., None]).any(-1).float().mean()), 4)
        else:
            outs = eagle_chain(head, held["fused"].float(), held["ids"], embed, TTT_STEPS)
            for j, a in enumerate(outs):
                guess = head.vocab[(head.out_norm(a[:, j:]) @ readout.T).argmax(-1)]
                row[f"depth{j + 1}_top1"] = round(float((guess == greedy[:, j + 1:]).float().mean()), 4)
        figures[kind] = row
    return figures


def publish(target_name: str, kinds=("medusa", "hydra", "eagle")) -> Path:
    """Copy the exports of `kinds` into assets/models/heads with their held-out figures in head.json, and write
    the heads' README table from every published head."""
    import dataclasses
    import json
    import shutil

    from engines.drafting.heads import HEADS_DIR
    work = work_dir(target_name)
    figures = evaluate_heads(target_name)
    for kind, row in figures.items():
        if kind not in kinds:
            continue
        out = HEADS_DIR / f"{target_name}-{kind}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(work / f"{kind}-export", out)
        step = torch.load(work / f"{kind}.ckpt.pt", weights_only=False)["step"]
        spec = dataclasses.replace(H.read_spec(out), training={"steps": step, "held_out": row,
                                                               "tokens_seen": step * 8 * FEATURE_WINDOW})
        (out / H.HEAD_FILE).write_text(spec.to_json())
    lines = ["# Draft heads", "", "Trained by `python -m engines.training features TARGET` then "
             "`python -m engines.training heads medusa|hydra|eagle TARGET`; figures from `heads-eval` on held-out text "
             "(since Hydra: the chat data's held-out conversations too; before: the corpus's held-out slice and "
             "held-out texts the target wrote), against the target's greedy "
             "token under teacher forcing.", "", "| head | target | steps | tokens seen | held-out figures |",
             "| --- | --- | --- | --- | --- |"]
    for folder in sorted(HEADS_DIR.glob("*")):
        if (folder / H.HEAD_FILE).exists():
            spec = H.read_spec(folder)
            t = spec.training or {}
            shown = ", ".join(f"{k} {v:.3f}" for k, v in t.get("held_out", {}).items())
            lines.append(f"| {spec.kind} | {spec.target} | {t.get('steps', '?')} | {t.get('tokens_seen', '?')} | "
                         f"{shown} |")
    (HEADS_DIR / "README.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(figures, indent=1))
    return HEADS_DIR
