"""The target's own answers, in its chat template: the chat data that draft heads, the diffusion adapter and
the CLLM train on (EAGLE and Medusa-2 train on the target's own answers, not on human text).

    python -m engines.training.chat_data smollm2-135m-instruct --conversations 13000  # resumable, background
    python -m engines.training.chat_data smollm2-135m-instruct --status

Each shard is a JSON-lines file of conversations: the messages, the token ids exactly as the target saw and wrote
them (`ids`), and the [start, end) spans of the assistant's tokens (`answers`), so a trainer weights the loss on
what the target wrote. Conversation i of `instructions()` always lands in shard i // PER_SHARD, and every 20th
is held out; a shard is written whole or not at all, so a killed run resumes at the first missing shard.
Half the shards are greedy (the decoding the bench measures), half sampled (temperature 0.7, top-p 0.9) for
variety, each from its own seeded generator.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import time
from pathlib import Path

import torch

from engines.models import adapter, presets, store
from engines.training.instructions import instructions

PER_SHARD = 64
BATCH = 32
FIRST_TURN_TOKENS = 192
SECOND_TURN_TOKENS = 128
HELD_OUT_EVERY = 20


def data_dir(target: str) -> Path:
    """In the project, not the cache (presets.chat_data_dir): generating it takes hours on a CPU, and what one
    session wrote the next one resumes from."""
    return presets.chat_data_dir(target)


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}.jsonl.gz"


def templated(tok, messages: list[dict]) -> list[int]:
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)


@torch.inference_mode()
def answer(target: adapter.LM, prompts: list[list[int]], max_new: int, generator: torch.Generator | None) -> list[list[int]]:
    """The target's answers to a batch of tokenized prompts (left-padded), each cut after its first end token."""
    pad = target.tokenizer.pad_token_id
    pad = pad if pad is not None else 0
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=target.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=target.device)
    sampled = generator is not None
    if sampled:   # generate() draws from torch's global generator: seed it from ours, once per batch
        torch.manual_seed(int(torch.randint(1 << 31, (1,), generator=generator)))
    out = target.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=sampled,
                                temperature=0.7 if sampled else None, top_p=0.9 if sampled else None, top_k=None,
                                pad_token_id=pad)
    answers = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in target.eos_ids), len(row))
        answers.append(row[:cut])
    return answers


def conversations(target: adapter.LM, items: list[dict], sampled: bool, seed: int,
                  limits: tuple[int, int] = (FIRST_TURN_TOKENS, SECOND_TURN_TOKENS)) -> list[dict]:
    """Answer the items' first turns in length-sorted batches, then the follow-ups of those that have one."""
    tok = target.tokenizer
    generator = torch.Generator().manual_seed(seed) if sampled else None
    convs = [{"messages": [{"role": "user", "content": it["user"]}], **it} for it in items]
    for turn, limit in enumerate(limits):
        todo = [c for c in convs if turn == 0 or c["follow_up"]]
        if turn == 1:
            for c in todo:
                c["messages"].append({"role": "user", "content": c["follow_up"]})
        prompts = [templated(tok, c["messages"]) for c in todo]
        order = sorted(range(len(todo)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), BATCH):
            batch = order[start:start + BATCH]
            for i, ans in zip(batch, answer(target, [prompts[i] for i in batch], limit, generator)):
                todo[i]["messages"].append({"role": "assistant", "content": target.decode(
                    [t for t in ans if t not in target.eos_ids]), "_ids": ans})
                todo[i]["_prompt"] = prompts[i]
    return [record(tok, c, sampled) for c in convs]


def record(tok, conv: dict, sampled: bool) -> dict:
    """One conversation as stored: the last prompt as the target saw it, then its last answer's own tokens. A
    first answer inside a two-turn prompt keeps its span only where the template re-rendered it token for token."""
    prompt = conv["_prompt"]
    answers = [m.pop("_ids") for m in conv["messages"] if m["role"] == "assistant"]
    ids = prompt + answers[-1]
    spans = [[len(prompt), len(ids)]]
    if len(answers) == 2:
        start = len(templated(tok, conv["messages"][:1]))
        if ids[start:start + len(answers[0])] == answers[0]:
            spans.insert(0, [start, start + len(answers[0])])
    return {"family": conv["family"], "sampled": sampled, "messages": conv["messages"], "ids": ids, "answers": spans}


def check_same_instructions(folder: Path, items: list[dict]) -> None:
    """Shards are numbered by instruction index: resuming over a changed instruction list would mix two lists."""
    manifest = folder / "instructions.json"
    digest = hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]
    if manifest.exists() and json.loads(manifest.read_text())["digest"] != digest:
        raise SystemExit(f"{folder} was generated from another instruction list; move it away to start afresh.")
    manifest.write_text(json.dumps({"digest": digest, "count": len(items)}))


def write_shard(path: Path, rows: list[dict]) -> None:
    """Gzipped JSON lines, written whole or not at all; no timestamp inside, so the same rows give the same bytes."""
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        for row in rows:
            f.write((json.dumps(row) + "\n").encode())
    os.replace(part, path)


def read_shards(folder: Path, split: str | None = None) -> list[dict]:
    """Every conversation written so far (of one split, if given), in index order."""
    rows = [row for path in presets.chat_shards(folder) for row in presets.parse_chat_shard(path.read_bytes())]
    return [r for r in rows if split is None or r["split"] == split]


def generate(target: adapter.LM, folder: Path, items: list[dict], count: int, *, per_shard: int = PER_SHARD,
             limits: tuple[int, int] = (FIRST_TURN_TOKENS, SECOND_TURN_TOKENS), minutes: float = 0.0) -> int:
    """Answer the first `count` items into shards of `per_shard` under `folder`, skipping shards already
    written; stop after `minutes` if set. Returns how many shards this call wrote."""
    if not target.tokenizer.chat_template:
        raise SystemExit(f"{target.name} has no chat template, so it has no chat answers to learn from.")
    folder.mkdir(parents=True, exist_ok=True)
    check_same_instructions(folder, items)
    started, written = time.time(), 0
    for shard in range((min(count, len(items)) + per_shard - 1) // per_shard):
        path = shard_path(folder, shard)
        if path.exists():
            continue
        if minutes and time.time() - started > minutes * 60:
            break
        first = shard * per_shard
        t0 = time.time()
        rows = conversations(target, items[first:min(first + per_shard, count)], sampled=shard % 2 == 1,
                             seed=shard, limits=limits)
        for k, row in enumerate(rows):
            row["index"] = first + k
            row["split"] = "held_out" if (first + k) % HELD_OUT_EVERY == 0 else "train"
        write_shard(path, rows)
        written += 1
        answered = sum(e - s for r in rows for s, e in r["answers"])
        print(f"shard {shard}: {len(rows)} conversations, {answered} answer tokens, "
              f"{answered / (time.time() - t0):.0f} tokens/s", flush=True)
    return written


def status(folder: Path) -> dict:
    rows = read_shards(folder)
    tokens = sum(len(r["ids"]) for r in rows)
    answered = sum(e - s for r in rows for s, e in r["answers"])
    return {"conversations": len(rows), "tokens": tokens, "answer_tokens": answered,
            "multi_turn": sum(len(r["answers"]) > 1 for r in rows),
            "families": {f: sum(r["family"] == f for r in rows) for f in sorted({r["family"] for r in rows})}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m engines.training.chat_data", description=__doc__.split("\n")[0])
    parser.add_argument("target", nargs="?", default=presets.SMOLLM2)
    parser.add_argument("--conversations", type=int, default=13000)
    parser.add_argument("--minutes", type=float, default=0.0, help="stop after this long (0: run to the end)")
    parser.add_argument("--device")
    parser.add_argument("--dtype")
    parser.add_argument("--status", action="store_true", help="print what has been generated and stop")
    args = parser.parse_args(argv)
    folder = data_dir(args.target)
    if args.status:
        print(json.dumps(status(folder), indent=1))
        return
    target = store.load(args.target, device=args.device, dtype=args.dtype)
    generate(target, folder, instructions(), args.conversations, minutes=args.minutes)


if __name__ == "__main__":
    main()
