"""Train and evaluate the embedded models on the public-domain corpus in assets/corpus.

    python -m engines.train teacher                  # SmolLM2's top-k next-token log-probs (for distillation)
    python -m engines.train causal tiny-target --hidden 384 --layers 6 --minutes 60
    python -m engines.train causal tiny-draft  --hidden 256 --layers 2 --minutes 40
    python -m engines.train masked tiny-masked --hidden 128 --layers 4 --init-embeddings tiny-draft
    python -m engines.train eval --candidates        # held-out figures of the fresh exports
    python -m engines.train publish tiny-draft       # copy an export that meets its figure into assets/models
    python -m engines.train eval                     # held-out figures -> assets/models/README.md
    python -m engines.train features TARGET          # draft heads: the target's hidden states, cached once
    python -m engines.train heads medusa|eagle TARGET --minutes 40   # see engines/train_heads.py
    python -m engines.train diffusion | diffusion-export            # see engines/train_diffusion.py

Every command checkpoints under ~/.cache/parallel-decoding-explorer/train/ and resumes where it stopped. The held-out
slice is the last 5% of every book; nothing here ever trains on it.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re
import shutil
import sys
import time

import torch
import torch.nn.functional as F
from transformers import (AutoTokenizer, LlamaConfig, LlamaForCausalLM, ModernBertConfig,
                          ModernBertForMaskedLM)

from engines import checkpoint, lm, train_diffusion, train_heads

CORPUS_DIR = lm.ASSETS / "corpus"
WORK_DIR = lm.CACHE_DIR / "train"   # outside the work tree, so checkpoints outlive a fresh checkout
HELD_OUT = 0.05
WINDOW = 512
TEACHER_TOPK = 32
WINDOWS_PER_SHARD = 16
MASK_TOKEN = "<|mask|>"
SEPARATOR = "<|endoftext|>"


# ----------------------------------------------------------------------------- data

def unwrap(text: str) -> str:
    """Join the hard-wrapped lines of each paragraph; paragraphs stay apart."""
    paragraphs = re.split(r"\n\s*\n", text)
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines() if line.strip()) for p in paragraphs
                       if p.strip())


def books(split: str) -> dict[str, str]:
    """Every book's training part (first 95%) or held-out part (last 5%), split at a paragraph."""
    out = {}
    for path in sorted(CORPUS_DIR.glob("*.txt")):
        raw = path.read_bytes()
        try:
            text = unwrap(raw.decode("utf-8"))
        except UnicodeDecodeError:  # one book has a few Latin-1 accents
            text = unwrap(raw.decode("latin-1"))
        cut = text.find("\n\n", int(len(text) * (1 - HELD_OUT)))
        cut = cut if cut > 0 else int(len(text) * (1 - HELD_OUT))
        out[path.stem] = text[:cut] if split == "train" else text[cut:].lstrip()
    return out


def tokenizer():
    return AutoTokenizer.from_pretrained(lm.resolve("smollm2-135m-instruct"))


def token_stream(split: str, tok) -> torch.Tensor:
    """All books of a split as one stream of ids, each book followed by the separator."""
    path = WORK_DIR / f"{split}_ids.pt"
    if path.exists():
        return torch.load(path)
    sep = tok.convert_tokens_to_ids(SEPARATOR)
    ids: list[int] = []
    for text in books(split).values():
        ids += tok(text, add_special_tokens=False)["input_ids"] + [sep]
    stream = torch.tensor(ids, dtype=torch.int32)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(stream, path)
    return stream


def windows(stream: torch.Tensor, length: int = WINDOW) -> torch.Tensor:
    """Non-overlapping windows of length+1 ids (inputs and their next tokens)."""
    n = (len(stream) - 1) // length
    idx = torch.arange(n)[:, None] * length + torch.arange(length + 1)[None, :]
    return stream[idx].long()


def shard_order(n_windows: int) -> list[int]:
    """A fixed shuffle, so a partial teacher pass covers every book."""
    order = list(range(n_windows))
    random.Random(0).shuffle(order)
    return order


# ----------------------------------------------------------------------------- teacher

def run_teacher(args) -> None:
    """SmolLM2's top-k log-probs at every training position, in resumable shards."""
    torch.set_num_threads(args.threads)
    tok = tokenizer()
    data = windows(token_stream("train", tok))
    order = shard_order(len(data))
    teacher = lm.load("smollm2-135m-instruct", dtype="bfloat16" if args.bf16 else None).model
    out_dir = WORK_DIR / "teacher"
    out_dir.mkdir(parents=True, exist_ok=True)
    n_shards = math.ceil(len(order) / WINDOWS_PER_SHARD)
    start = time.time()
    for s in range(min(n_shards, args.shards or n_shards)):
        path = out_dir / f"{s:05d}.pt"
        if path.exists():
            continue
        rows = order[s * WINDOWS_PER_SHARD:(s + 1) * WINDOWS_PER_SHARD]
        ids, lps = [], []
        with torch.inference_mode():
            for chunk in torch.tensor(rows).split(4):
                logits = teacher(input_ids=data[chunk, :-1]).logits.float()
                top = logits.log_softmax(-1).topk(TEACHER_TOPK, dim=-1)
                ids.append(top.indices.to(torch.int32))
                lps.append(top.values.to(torch.float16))
        torch.save({"rows": rows, "ids": torch.cat(ids), "logprobs": torch.cat(lps)}, path)
        done = (s + 1) * WINDOWS_PER_SHARD * WINDOW
        print(f"shard {s + 1}/{n_shards}  {done / (time.time() - start):.0f} tok/s", flush=True)


def load_teacher() -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """window row -> (top-k ids, top-k log-probs) for every finished shard."""
    table = {}
    for path in sorted((WORK_DIR / "teacher").glob("*.pt")):
        shard = torch.load(path)
        for i, row in enumerate(shard["rows"]):
            table[row] = (shard["ids"][i].long(), shard["logprobs"][i].float())
    return table


# ----------------------------------------------------------------------------- training

def causal_model(args, tok) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.mlp or 3 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
        num_key_value_heads=max(1, args.hidden // 128), max_position_embeddings=2048,
        rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(config)


def masked_model(args, tok) -> ModernBertForMaskedLM:
    """A small ModernBERT (pre-norm, rotary). All but the last layer attend within a local window:
    at initialisation attention is spread evenly over what it can see, and over a whole window of
    256 tokens the neighbours' signal drowns, so a model with only global layers sits on the
    unigram plateau (it did, for 1M tokens); local layers find their neighbours at once."""
    config = ModernBertConfig(
        vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.mlp or 3 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
        layer_types=["sliding_attention"] * (args.layers - 1) + ["full_attention"],
        local_attention=args.window, max_position_embeddings=args.seq,
        pad_token_id=tok.pad_token_id, bos_token_id=None, eos_token_id=None, cls_token_id=None,
        sep_token_id=None, mask_token_id=tok.mask_token_id, tie_word_embeddings=True)
    return ModernBertForMaskedLM(config)


def causal_loss(model, batch, teacher_rows, kd_weight):
    """Cross-entropy on the corpus plus, where the teacher has seen the window, KL to its top-k."""
    inputs, targets, rows = batch
    logits = model(input_ids=inputs).logits.float()
    logp = logits.log_softmax(-1)
    ce = F.nll_loss(logp.flatten(0, 1), targets.flatten())
    have = [i for i, r in enumerate(rows) if r in teacher_rows]
    if not have or kd_weight == 0:
        return ce, ce
    t_ids = torch.stack([teacher_rows[rows[i]][0] for i in have])
    t_lp = torch.stack([teacher_rows[rows[i]][1] for i in have])
    t_p = t_lp.softmax(-1)  # renormalised over the teacher's top-k
    kd = -(t_p * logp[have].gather(-1, t_ids)).sum(-1).mean()
    return (1 - kd_weight) * ce + kd_weight * kd, ce


def masked_loss(model, batch, mask_id, generator):
    """Masked-diffusion objective: mask each token with probability t ~ U(0, 1]; half the time
    only a suffix is masked (a prompt followed by a span to fill), as in decoding."""
    inputs = batch[0]
    b, n = inputs.shape
    masked, _ = train_diffusion.draw_mask(inputs, generator)
    masked[torch.arange(b), torch.randint(n, (b,), generator=generator)] = True   # never an empty loss
    hidden = model.model(input_ids=inputs.masked_fill(masked, mask_id)).last_hidden_state
    # The 49k-way output layer dominates the cost of so small a model: run it on masked rows only.
    logits = model.decoder(model.head(hidden[masked])).float()
    loss = F.cross_entropy(logits, inputs[masked])
    return loss, loss


@torch.no_grad()
def warm_start_embeddings(model: ModernBertForMaskedLM, source: str) -> None:
    """Start the masked LM's (tied) token embeddings from the principal components of a trained
    causal model's embeddings, so it need not rediscover from scratch which tokens are alike (a
    masked LM this small otherwise sits on the unigram plateau for a long time)."""
    trained = lm.load(source, device="cpu", dtype="float32").model.get_input_embeddings().weight
    table = model.get_input_embeddings().weight
    centred = trained - trained.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    projected = centred @ v[: table.shape[1]].T
    rows = min(len(projected), len(table))
    table[:rows] = projected[:rows] * (table.std() / projected.std())


def train(args, kind: str) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok = tokenizer()
    if kind == "masked":
        tok.add_special_tokens({"mask_token": MASK_TOKEN})
        if tok.pad_token is None:
            tok.pad_token = SEPARATOR
    length = args.seq
    data = windows(token_stream("train", tok), length)
    teacher_rows = load_teacher() if kind == "causal" and args.kd > 0 and length == WINDOW else {}
    print(f"{len(data)} windows of {length}; teacher covers {len(teacher_rows)}", flush=True)

    model = (masked_model if kind == "masked" else causal_model)(args, tok)
    if getattr(args, "init_embeddings", None):
        warm_start_embeddings(model, args.init_embeddings)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.name}: {params / 1e6:.1f}M parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    ckpt_dir = WORK_DIR / args.name
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt_dir / "ckpt.pt"
    step, seen = 0, 0
    if ckpt.exists():
        state = torch.load(ckpt)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, seen = state["step"], state["tokens"]
        print(f"resumed at step {step}", flush=True)
    gen = torch.Generator().manual_seed(args.seed + step)
    deadline = time.time() + 60 * args.minutes
    t0, tokens0 = time.time(), seen
    model.train()
    while step < args.steps and time.time() < deadline:
        lr = args.lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        rows = torch.randint(len(data), (args.batch,), generator=gen).tolist()
        x = data[rows]
        batch = (x[:, :-1], x[:, 1:], rows)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            if kind == "masked":
                loss, ce = masked_loss(model, (x[:, :-1],), tok.mask_token_id, gen)
            else:
                loss, ce = causal_loss(model, batch, teacher_rows, args.kd)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seen += x.numel()
        if step % 20 == 0:
            rate = (seen - tokens0) / (time.time() - t0)
            print(f"step {step}  loss {loss.item():.3f}  ce {ce.item():.3f}  lr {lr:.2e}  {rate:.0f} tok/s",
                  flush=True)
        if step % args.save_every == 0:
            checkpoint.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "tokens": seen}, ckpt)
    checkpoint.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "tokens": seen}, ckpt)
    export(model, tok, args.name, {"step": step, "tokens_seen": seen, "args": vars(args)})


def export(model, tok, name: str, info: dict) -> None:
    """save_pretrained in bfloat16 with tied embeddings under the training folder, NAME/export
    (copy into assets/models/ once the figures are met)."""
    out = WORK_DIR / name / "export"
    model.to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(info, indent=1, default=str))
    model.float()
    print(f"exported to {out}", flush=True)


# ----------------------------------------------------------------------------- evaluation

@torch.inference_mode()
def held_out_predictions(model, tok) -> tuple[float, int, torch.Tensor]:
    """Total cross-entropy in nats, number of bytes, and the greedy next token at every position."""
    total_nats, n_bytes, argmax = 0.0, 0, []
    for text in books("heldout").values():
        ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
        n_bytes += len(text.encode("utf-8"))
        for start in range(0, len(ids) - 1, WINDOW):
            x = ids[start:start + WINDOW + 1][None]
            logits = model(input_ids=x[:, :-1]).logits.float()[0]
            total_nats += F.cross_entropy(logits, x[0, 1:], reduction="sum").item()
            argmax.append(logits.argmax(-1))
    return total_nats, n_bytes, torch.cat(argmax)


MASKED_WINDOW = 256   # tiny-masked's positions, and the diffusion adapter's training windows


def heldout_chunks(tok, length: int, windows: int = 0) -> list[torch.Tensor]:
    """Every held-out book cut into chunks of `length` ids (the last of a book shorter), in book order; with
    `windows` > 0 only that many, spread evenly over the whole list (so every book has its share)."""
    chunks = []
    for text in books("heldout").values():
        ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
        chunks += [ids[start:start + length] for start in range(0, len(ids), length)]
    if windows and windows < len(chunks):
        chunks = chunks[::len(chunks) // windows][:windows]
    return chunks


@torch.inference_mode()
def masked_accuracy(model: lm.LM, rate: float = 0.15, seed: int = 0, windows: int = 0) -> tuple[float, float]:
    """Top-1 accuracy on held-out masked positions, and that of always guessing the commonest token.

    The logits are the LM's own masked-LM logits (lm.LM.masked_logits), so a shifted diffusion LM is read as it
    decodes: token i at position i - 1, every position visible. Its first position has nothing before it to be
    predicted from and is never masked (as in training). `windows` > 0: that many chunks (heldout_chunks)."""
    gen = torch.Generator().manual_seed(seed)
    train_ids = token_stream("train", tokenizer())
    commonest = torch.bincount(train_ids.long()).argmax().item()
    hits, base, count = 0, 0, 0
    for ids in heldout_chunks(model.tokenizer, min(model.max_positions or MASKED_WINDOW, MASKED_WINDOW), windows):
        x = ids[None]
        masked = torch.rand(x.shape, generator=gen, dtype=torch.float32) < rate
        if model.shifted:
            masked[:, 0] = False
        logits = model.masked_logits(x.masked_fill(masked, model.mask_id)).cpu()
        hits += (logits[masked].argmax(-1) == x[masked]).sum().item()
        base += (x[masked] == commonest).sum().item()
        count += masked.sum().item()
    return hits / count, base / count


def candidate(name: str, use_exports: bool) -> str | None:
    """What to evaluate for a model: its fresh export (--candidates), else the preset."""
    export = WORK_DIR / name / "export"
    if use_exports and (export / "config.json").exists():
        return str(export)
    return name if lm.available(name) else None


def evaluate(args) -> None:
    torch.set_num_threads(args.threads)
    rows, preds = {}, {}
    for name in ("smollm2-135m-instruct", "tiny-target", "tiny-draft"):
        source = candidate(name, args.candidates)
        if source is None:
            print(f"{name}: not available, skipped")
            continue
        model = lm.load(source)
        nats, n_bytes, argmax = held_out_predictions(model.model, model.tokenizer)
        preds[name] = argmax
        rows[name] = {"bits_per_byte": nats / math.log(2) / n_bytes,
                      "parameters_M": sum(p.numel() for p in model.model.parameters()) / 1e6}
        print(f"{name}: {rows[name]['bits_per_byte']:.3f} bits/byte", flush=True)
    if "tiny-draft" in preds:
        for target in ("smollm2-135m-instruct", "tiny-target"):
            if target in preds:
                agree = (preds["tiny-draft"] == preds[target]).float().mean().item()
                rows["tiny-draft"][f"agreement_with_{target}"] = agree
                print(f"tiny-draft agrees with {target} greedy on {agree:.1%} of held-out positions")
    source = candidate("tiny-masked", args.candidates)
    if source is not None:
        model = lm.load(source)
        acc, base = masked_accuracy(model)
        rows["tiny-masked"] = {"masked_top1_at_15pct": acc, "commonest_token_baseline": base,
                               "parameters_M": sum(p.numel() for p in model.model.parameters()) / 1e6}
        print(f"tiny-masked: top-1 {acc:.1%} at 15% masking vs {base:.1%} for the commonest token")
    out = WORK_DIR if args.candidates else lm.MODELS_DIR
    (out / "figures.json").write_text(json.dumps(rows, indent=1))
    (out / "README.md").write_text(models_readme(rows))
    print(json.dumps(rows, indent=1))


GOALS = {"tiny-target": "at most 1.9 bits per byte",
         "tiny-draft": "greedy agreement at least 35% with SmolLM2 and 50% with tiny-target",
         "tiny-masked": "top-1 at 15% masking at least 2x the commonest-token baseline"}


def models_readme(rows: dict) -> str:
    """assets/models/README.md: the held-out figures, as `python -m engines.train eval` measured them."""
    lines = ["# Embedded models", "",
             "Trained by `python -m engines.train` on assets/corpus (public-domain books); held out: the last "
             "5% of every book. Figures below were written by `python -m engines.train eval`.", "",
             "| model | parameters | held-out figure | goal |", "| --- | --- | --- | --- |"]
    for name, r in rows.items():
        if "bits_per_byte" in r:
            figure = f"{r['bits_per_byte']:.3f} bits/byte"
            agree = [f"agrees with {k.removeprefix('agreement_with_')} on {v:.1%}" for k, v in r.items()
                     if k.startswith("agreement_with_")]
            figure = "; ".join([figure, *agree])
        else:
            figure = (f"top-1 {r['masked_top1_at_15pct']:.1%} at 15% masking "
                      f"(commonest token: {r['commonest_token_baseline']:.1%})")
        lines.append(f"| {name} | {r['parameters_M']:.1f}M | {figure} | {GOALS.get(name, 'reference')} |")
    return "\n".join(lines) + "\n"


def add_schedule(parser: argparse.ArgumentParser, lr: float, steps: int, minutes: float) -> None:
    """The flags every training command shares: batch, learning-rate schedule, time limit, checkpoints, seed."""
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--steps", type=int, default=steps, help="length of the learning-rate schedule")
    parser.add_argument("--minutes", type=float, default=minutes)
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m engines.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("teacher")
    t.add_argument("--shards", type=int, default=0, help="stop after this many shards (0: all)")
    for kind in ("causal", "masked"):
        c = sub.add_parser(kind)
        c.add_argument("name")
        c.add_argument("--hidden", type=int, default=256)
        c.add_argument("--layers", type=int, default=2)
        c.add_argument("--mlp", type=int, default=0)
        c.add_argument("--seq", type=int, default=WINDOW)
        c.add_argument("--kd", type=float, default=0.0, help="weight of distillation from SmolLM2")
        add_schedule(c, lr=3e-3, steps=3000, minutes=60)
    sub.choices["masked"].add_argument("--window", type=int, default=32,
                                       help="attention window of every layer but the last (global)")
    sub.choices["masked"].add_argument("--init-embeddings", metavar="MODEL",
                                       help="warm-start the token embeddings from this trained causal model")
    e = sub.add_parser("eval")
    e.add_argument("--candidates", action="store_true",
                   help="evaluate the fresh exports under the training folder (before publishing them)")
    pub = sub.add_parser("publish", help="copy an export into assets/models/ (once it meets its figure)")
    pub.add_argument("name")
    f = sub.add_parser("features", help="cache a target's hidden states and top-k for training draft heads")
    f.add_argument("target")
    f.add_argument("--windows", type=int, default=2400, help="training windows of 256 tokens to cache")
    f.add_argument("--dtype", default="bfloat16")
    hd = sub.add_parser("heads", help="train Medusa heads or an EAGLE-3 head on cached features")
    hd.add_argument("kind", choices=("medusa", "eagle"))
    hd.add_argument("target")
    hd.add_argument("--vocab", type=int, default=8192, help="draft vocabulary: the most frequent tokens")
    add_schedule(hd, lr=2e-3, steps=4000, minutes=40)
    he = sub.add_parser("heads-eval", help="held-out agreement of the trained heads with the target")
    he.add_argument("target")
    hp = sub.add_parser("heads-publish", help="copy the trained heads into assets/models/heads with their figures")
    hp.add_argument("target")
    add_schedule(train_diffusion.add_parser(sub), lr=1e-3, steps=20000, minutes=600)
    train_diffusion.add_export_parser(sub)
    for s in (t, e, f, hd, he, hp, *[sub.choices[k] for k in ("causal", "masked")]):
        s.add_argument("--threads", type=int, default=2)
        s.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    if args.command == "teacher":
        run_teacher(args)
    elif args.command in ("causal", "masked"):
        train(args, args.command)
    elif args.command == "features":
        train_heads.cache_features(args)
    elif args.command == "heads":
        train_heads.train_head(args)
    elif args.command == "diffusion":
        train_diffusion.train(args)
    elif args.command == "diffusion-export":
        try:
            train_diffusion.export_latest(args)
        except ValueError as e:
            p.exit(2, f"error: {e}\n")
    elif args.command == "heads-eval":
        print(json.dumps(train_heads.evaluate_heads(args.target), indent=1))
    elif args.command == "heads-publish":
        train_heads.publish(args.target)
    elif args.command == "publish":
        shutil.copytree(WORK_DIR / args.name / "export", lm.MODELS_DIR / args.name, dirs_exist_ok=True)
        print(f"published {lm.MODELS_DIR / args.name}")
    else:
        evaluate(args)


if __name__ == "__main__":
    main(sys.argv[1:])
