"""The embedded tiny models (tiny-target, tiny-draft, tiny-masked): distillation from SmolLM2, training,
export, held-out evaluation and the models README."""
from __future__ import annotations

import json
import math
import time

import torch
import torch.nn.functional as F
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
)

from engines.models import presets, store
from engines.training import checkpoint, common


def run_teacher(args) -> None:
    """SmolLM2's top-k log-probs at every training position, in resumable shards."""
    torch.set_num_threads(args.threads)
    tok = common.tokenizer()
    data = common.windows(common.token_stream("train", tok))
    order = common.shard_order(len(data))
    teacher = store.load("smollm2-135m-instruct", dtype="bfloat16" if args.bf16 else None).model
    out_dir = common.WORK_DIR / "teacher"
    out_dir.mkdir(parents=True, exist_ok=True)
    n_shards = math.ceil(len(order) / common.WINDOWS_PER_SHARD)
    start = time.time()
    for s in range(min(n_shards, args.shards or n_shards)):
        path = out_dir / f"{s:05d}.pt"
        if path.exists():
            continue
        rows = order[s * common.WINDOWS_PER_SHARD:(s + 1) * common.WINDOWS_PER_SHARD]
        ids, lps = [], []
        with torch.inference_mode():
            for chunk in torch.tensor(rows).split(4):
                logits = teacher(input_ids=data[chunk, :-1]).logits.float()
                top = logits.log_softmax(-1).topk(common.TEACHER_TOPK, dim=-1)
                ids.append(top.indices.to(torch.int32))
                lps.append(top.values.to(torch.float16))
        torch.save({"rows": rows, "ids": torch.cat(ids), "logprobs": torch.cat(lps)}, path)
        done = (s + 1) * common.WINDOWS_PER_SHARD * common.WINDOW
        print(f"shard {s + 1}/{n_shards}  {done / (time.time() - start):.0f} tok/s", flush=True)


def load_teacher() -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """window row -> (top-k ids, top-k log-probs) for every finished shard."""
    table = {}
    for path in sorted((common.WORK_DIR / "teacher").glob("*.pt")):
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
    masked, _ = common.draw_mask(inputs, generator)
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
    trained = store.load(source, device="cpu", dtype="float32").model.get_input_embeddings().weight
    table = model.get_input_embeddings().weight
    centred = trained - trained.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    projected = centred @ v[: table.shape[1]].T
    rows = min(len(projected), len(table))
    table[:rows] = projected[:rows] * (table.std() / projected.std())


def train(args, kind: str) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok = common.tokenizer()
    if kind == "masked":
        tok.add_special_tokens({"mask_token": common.MASK_TOKEN})
        if tok.pad_token is None:
            tok.pad_token = common.SEPARATOR
    length = args.seq
    data = common.windows(common.token_stream("train", tok), length)
    teacher_rows = load_teacher() if kind == "causal" and args.kd > 0 and length == common.WINDOW else {}
    print(f"{len(data)} windows of {length}; teacher covers {len(teacher_rows)}", flush=True)

    model = (masked_model if kind == "masked" else causal_model)(args, tok)
    if getattr(args, "init_embeddings", None):
        warm_start_embeddings(model, args.init_embeddings)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.name}: {params / 1e6:.1f}M parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    ckpt_dir = common.WORK_DIR / args.name
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
    out = common.WORK_DIR / name / "export"
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
    for text in common.books("heldout").values():
        ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
        n_bytes += len(text.encode("utf-8"))
        for start in range(0, len(ids) - 1, common.WINDOW):
            x = ids[start:start + common.WINDOW + 1][None]
            logits = model(input_ids=x[:, :-1]).logits.float()[0]
            total_nats += F.cross_entropy(logits, x[0, 1:], reduction="sum").item()
            argmax.append(logits.argmax(-1))
    return total_nats, n_bytes, torch.cat(argmax)


def candidate(name: str, use_exports: bool) -> str | None:
    """What to evaluate for a model: its fresh export (--candidates), else the preset."""
    export = common.WORK_DIR / name / "export"
    if use_exports and (export / "config.json").exists():
        return str(export)
    return name if store.available(name) else None


def evaluate(args) -> None:
    torch.set_num_threads(args.threads)
    rows, preds = {}, {}
    for name in ("smollm2-135m-instruct", "tiny-target", "tiny-draft"):
        source = candidate(name, args.candidates)
        if source is None:
            print(f"{name}: not available, skipped")
            continue
        model = store.load(source)
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
        model = store.load(source)
        acc, base = common.masked_accuracy(model)
        rows["tiny-masked"] = {"masked_top1_at_15pct": acc, "commonest_token_baseline": base,
                               "parameters_M": sum(p.numel() for p in model.model.parameters()) / 1e6}
        print(f"tiny-masked: top-1 {acc:.1%} at 15% masking vs {base:.1%} for the commonest token")
    out = common.WORK_DIR if args.candidates else presets.MODELS_DIR
    (out / "figures.json").write_text(json.dumps(rows, indent=1))
    (out / "README.md").write_text(models_readme(rows))
    print(json.dumps(rows, indent=1))


GOALS = {"tiny-target": "at most 1.9 bits per byte",
         "tiny-draft": "greedy agreement at least 35% with SmolLM2 and 50% with tiny-target",
         "tiny-masked": "top-1 at 15% masking at least 2x the commonest-token baseline"}


def models_readme(rows: dict) -> str:
    """assets/models/README.md: the held-out figures, as `python -m engines.training eval` measured them."""
    lines = ["# Embedded models", "",
             "Trained by `python -m engines.training` on assets/corpus (public-domain books); held out: the last "
             "5% of every book. Figures below were written by `python -m engines.training eval`.", "",
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


