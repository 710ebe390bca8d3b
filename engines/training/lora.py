"""What the LoRA trainers share (the diffusion adapter, engines/training/diffusion.py, and the CLLM, cllm.py): a
private float32 copy of the base with LoRA on every projection, AdamW over what is trainable, the warm-up then
cosine learning rate, checkpoints that resume a run, and the adapter files they publish."""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from engines.models import store
from engines.training import checkpoint

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def adapt(model, rank: int, token_rows: tuple[int, ...] = ()):
    """`model` with LoRA (alpha = 2 rank) on every projection; the embedding rows `token_rows` trainable too."""
    from peft import LoraConfig, get_peft_model
    extra = {"trainable_token_indices": {"embed_tokens": list(token_rows)}} if token_rows else {}
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(LORA_MODULES), **extra)
    return get_peft_model(model, config)


def private_copy(base: str):
    """A float32 copy of the causal base's module: the shared cache's model must stay the plain causal one."""
    causal = store.load(base, device="cpu", dtype="float32")
    model = type(causal.model)(causal.model.config)
    model.load_state_dict(causal.model.state_dict())
    return model


def optimizer(peft_model, lr: float) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.98),
                             weight_decay=0.0)


def learning_rate(lr: float, step: int, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then a cosine from lr down to lr / 10 at step `total`."""
    return lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / total)))


def set_learning_rate(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def save_state(path: Path, peft_model, opt: torch.optim.Optimizer, **record) -> None:
    """The adapter and optimiser with the run's record (step, tokens, curve, ...), written whole or not at all."""
    from peft import get_peft_model_state_dict
    checkpoint.save({"adapter": get_peft_model_state_dict(peft_model), "opt": opt.state_dict(), **record}, path)


def resume(path: Path, peft_model, opt: torch.optim.Optimizer) -> dict | None:
    """Load a checkpoint into `peft_model` and `opt` and return its record; None when there is none yet."""
    from peft import set_peft_model_state_dict
    if not path.exists():
        return None
    state = read_checkpoint(path)
    set_peft_model_state_dict(peft_model, state["adapter"])
    opt.load_state_dict(state["opt"])
    return state


def read_checkpoint(path: Path, first: str = "train") -> dict:
    """The checkpoint's state; the run writing it may go on, since it replaces the file whole (checkpoint.save).
    `first` names the command that writes one, for the sentence said when there is none."""
    if not path.is_file():
        raise ValueError(f"There is no checkpoint {path.name} in {path.parent}; run `{first}` first.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"{path.name} could not be read ({type(e).__name__}); it is damaged.") from e


def adapter_rank(adapter: dict) -> int:
    """The LoRA rank of a saved adapter state dict: the rows of any lora_A matrix."""
    return next(w.shape[0] for k, w in adapter.items() if "lora_A" in k)


def save_adapter(peft_model, out: Path, base: str) -> None:
    """peft's adapter files, naming `base` (a preset) and in bfloat16."""
    peft_model.save_pretrained(out)
    # peft's blank model card and the base's local path say nothing true about this delta: the json beside it
    # names the base as a preset, and assets/models/README.md holds the figures
    (out / "README.md").unlink(missing_ok=True)
    config = json.loads((out / "adapter_config.json").read_text())
    config.update(base_model_name_or_path=base, target_modules=sorted(config["target_modules"]))
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    # bfloat16 halves the delta in git (19 MB for rank 32); loading casts it back to the base's dtype before the
    # merge, and the rounding is far below what another training step changes
    weights = out / "adapter_model.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})
