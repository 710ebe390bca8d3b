"""What every trainer shares: the corpus split, its token stream and windows, held-out masked accuracy,
the schedule flags. Checkpoints live under WORK_DIR, outside the work tree."""
from __future__ import annotations

import argparse
import random
import re

import torch
from transformers import AutoTokenizer

from engines.models import adapter, locate, presets

CORPUS_DIR = presets.ASSETS / "corpus"
WORK_DIR = presets.CACHE_DIR / "train"   # outside the work tree, so checkpoints outlive a fresh checkout
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
    return AutoTokenizer.from_pretrained(locate.resolve("smollm2-135m-instruct"))


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
def masked_accuracy(model: adapter.LM, rate: float = 0.15, seed: int = 0, windows: int = 0) -> tuple[float, float]:
    """Top-1 accuracy on held-out masked positions, and that of always guessing the commonest token.

    The logits are the LM's own masked-LM logits (adapter.LM.masked_logits), so a shifted diffusion LM is read as it
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


def add_schedule(parser: argparse.ArgumentParser, lr: float, steps: int, minutes: float) -> None:
    """The flags every training command shares: batch, learning-rate schedule, time limit, checkpoints, seed."""
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--steps", type=int, default=steps, help="length of the learning-rate schedule")
    parser.add_argument("--minutes", type=float, default=minutes)
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)


def draw_mask(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Which tokens to mask and each sequence's ratio t ~ U(0, 1]: each token with probability t, and half the
    sequences only after a random cut (a prompt followed by a span, as decoding sees it). Shared by every
    masked-LM objective here."""
    b, n = x.shape
    # float32 whatever the default dtype: the same seed draws the same masks
    t = 1 - torch.rand(b, 1, generator=generator, dtype=torch.float32)
    masked = torch.rand(b, n, generator=generator, dtype=torch.float32) < t
    suffix_only = torch.rand(b, 1, generator=generator, dtype=torch.float32) < 0.5
    cut = (torch.rand(b, 1, generator=generator, dtype=torch.float32) * n).long()
    masked &= ~suffix_only | (torch.arange(n)[None, :] >= cut)
    return masked, t
