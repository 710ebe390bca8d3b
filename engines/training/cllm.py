"""Consistency-train SmolLM2 for Jacobi decoding, the preset `smollm2-135m-cllm`.

    python -m engines.training cllm collect --minutes 25     # the base's own Jacobi trajectories (resumable)
    python -m engines.training cllm train --minutes 35       # LoRA, consistency + AR loss (resumable)
    python -m engines.training cllm export                   # the latest checkpoint -> assets/models/NAME
    python -m engines.training cllm eval                     # its figures on the held-out suite -> cllm.json

Kou et al. 2024, "CLLMs: Consistency Large Language Models" (arXiv 2403.00835). Jacobi decoding of an n-token
block converges to the greedy continuation y* (its fixed point) but an ordinary LM rarely gets more than one
token right per iteration, because it was never asked to predict a token after a wrong one. A CLLM is the same
model fine-tuned on its own Jacobi trajectories to map any intermediate state y^(j) of a block straight to y*:
- collect: for each chat prompt, run Jacobi block by block (n = 16; a block's first guesses repeat the token
  before it, as engines/decoding/jacobi.py starts them) with a real KV cache: the prefix is cached once, every
  iteration is one forward of the block over it. Every state of the block until it stops changing is kept; the
  last is the fixed point, which then extends the prefix (the greedy continuation, block after block).
- train: the global consistency loss (the paper's eq. 5): the cross-entropy of the model's next-token
  distributions on y^(j) toward its own distributions on y* (no gradient through those), over the block's
  positions from the first one where y^(j) differs from y*; plus the autoregressive loss on y*, the prompt
  excluded (eq. 6). Total: consistency + w * AR, w = 10 as in the authors' trainer (cllm_trainer_global.py).
  Because y* is the base's own greedy text, the AR term pins the model to what it already said (the CLLM paper
  uses it to keep generation quality); the consistency term teaches it to jump ahead.
Only a LoRA delta (peft) is trained and shipped, merged into SmolLM2 at load time (locate.DELTA_FILE).
Nothing here reads the held-out task suite: the prompts are the chat shards' training split, and collect
refuses a prompt that is a suite prompt.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from engines.models import locate, presets, store
from engines.training import chat_data, common, lora

NAME = "smollm2-135m-cllm"
BASE = presets.SMOLLM2
BLOCK = 16
PER_SHARD = 4
MAX_NEW = 128
AR_WEIGHT = 10.0
MAX_DELTA_BYTES = 8 * 2 ** 20


def work_dir(name: str = NAME) -> Path:
    """The checkpoint and the base's evaluation (under ~/.cache)."""
    return common.WORK_DIR / "cllm" if name == NAME else common.WORK_DIR / name


def trajectory_dir(base: str = BASE) -> Path:
    """The collected trajectories, in the project beside the chat data they come from: collecting takes hours of
    CPU, and a later session goes on from what an earlier one wrote (shards are written whole, then skipped)."""
    return presets.CHAT_DATA_ROOT.parent / "cllm" / Path(base).name


# ----------------------------------------------------------------------------- collect

def prompts(target: str = BASE) -> list[list[int]]:
    """The last prompt of every training conversation in the target's chat shards (in its chat template,
    ending where the assistant's answer starts), in a fixed shuffled order so any prefix of it mixes families."""
    rows = check_not_suite(chat_data.read_shards(chat_data.data_dir(target), "train"))
    out = [r["ids"][:r["answers"][-1][0]] for r in rows]
    random.Random(0).shuffle(out)
    return out


def check_not_suite(rows: list[dict]) -> list[dict]:
    """The conversations, refused if any asks a message of the held-out task suite."""
    from engines.analysis import task_suite
    suite = {m["content"] for t in task_suite.load_suite() for m in task_suite.chat_messages(t)}
    for r in rows:
        if any(m["content"] in suite for m in r["messages"] if m["role"] == "user"):
            raise ValueError(f"chat conversation {r['index']} asks a prompt of the held-out task suite.")
    return rows


@torch.inference_mode()
def trajectory(target, prompt: list[int], block: int = BLOCK, max_new: int = MAX_NEW) -> dict:
    """Jacobi on consecutive `block`-token blocks after `prompt` until an end token or `max_new` tokens: every
    block's states, the first being the initial guesses and the last the fixed point. The cache holds the prefix
    but its last token; one forward of [last] + block per iteration, and the converged forward's rows extend it."""
    kv = target.new_kv()
    target.forward(kv, prompt[:-1])
    last, produced, blocks = prompt[-1], [], []
    while len(produced) < max_new:
        state = [last] * block
        states = [state]
        cached = len(kv)
        while True:
            new = target.forward(kv, [last] + state)[:block].argmax(-1).tolist()
            if new == state:
                break
            target.crop(kv, cached)
            state = new
            states.append(state)
        target.crop(kv, cached + block)          # [last] + the fixed point but its last token
        end = next((i for i, t in enumerate(state) if t in target.eos_ids), None)
        blocks.append({"start": len(produced), "states": states, "eos": end})
        produced += state
        last = state[-1]
        if end is not None:
            break
    return {"prompt": prompt, "answer": produced, "blocks": blocks}


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"traj-{index:05d}.jsonl.gz"


def collect(args) -> None:
    """Trajectories of the shuffled prompts, PER_SHARD to a shard, skipping shards already written; stops
    after --minutes (a shard in progress is finished first)."""
    torch.set_num_threads(args.threads)
    folder = trajectory_dir(args.base)
    folder.mkdir(parents=True, exist_ok=True)
    target = store.load(args.base, device="cpu", dtype="float32")
    todo = prompts(args.base)[:args.conversations]
    began = time.time()
    for shard in range((len(todo) + PER_SHARD - 1) // PER_SHARD):
        path = shard_path(folder, shard)
        if path.exists():
            continue
        if time.time() - began > 60 * args.minutes:
            break
        t0 = time.time()
        rows = [trajectory(target, p, args.block, args.max_new) for p in todo[shard * PER_SHARD:(shard + 1) * PER_SHARD]]
        chat_data.write_shard(path, rows)
        iters = sum(len(b["states"]) for r in rows for b in r["blocks"])
        tokens = sum(len(r["answer"]) for r in rows)
        print(f"shard {shard}: {len(rows)} prompts, {tokens} tokens, {tokens / iters:.2f} tokens per Jacobi "
              f"iteration (fixed blocks), {time.time() - t0:.0f} s", flush=True)


def read_trajectories(folder: Path) -> list[dict]:
    paths = sorted(folder.glob("traj-*.jsonl.gz"))
    return [row for path in paths for row in presets.parse_chat_shard(path.read_bytes())]


def status(folder: Path) -> dict:
    rows = read_trajectories(folder)
    blocks = [b for r in rows for b in r["blocks"]]
    return {"prompts": len(rows), "blocks": len(blocks), "answer_tokens": sum(len(r["answer"]) for r in rows),
            "states": sum(len(b["states"]) for b in blocks),
            "iterations_per_block": round(sum(len(b["states"]) for b in blocks) / max(1, len(blocks)), 2)}


# ----------------------------------------------------------------------------- train

def answer_length(row: dict) -> int:
    """The fixed point's tokens up to and with the first end token (a block's slots after it are padding)."""
    last = row["blocks"][-1]
    return last["start"] + last["eos"] + 1 if last["eos"] is not None else len(row["answer"])


def example(row: dict, generator: torch.Generator, per_block: int = 3) -> dict | None:
    """One training sequence from a trajectory: the prompt and the fixed point y*, then for every block that
    took more than one iteration up to `per_block` distinct states y^(j) drawn from its intermediate ones (never
    the fixed point; several per forward since the prompt's cost is shared), each
    seeing the prompt and y* before its block only (a 4D mask), at the positions the block has in the text.
    Returns the ids, positions, mask and which rows give the consistency pairs; None if no block has a state."""
    prompt, answer = row["prompt"], row["answer"][:answer_length(row)]
    p, n_clean = len(prompt), len(prompt) + len(answer)
    ids, pos = prompt + answer, list(range(n_clean))
    spans = []                                  # (first noisy row, block start in the text, tokens kept)
    for b in row["blocks"]:
        states = b["states"]
        keep = min(len(states[0]), len(answer) - b["start"])   # slots up to the end token
        if len(states) < 2 or keep < 2:
            continue
        truth = answer[b["start"]:b["start"] + keep]
        drawn = torch.randperm(len(states) - 1, generator=generator)[:per_block].tolist()
        for j in drawn:
            if states[j][:keep] == truth:      # wrong only after the end token: nothing to learn from it
                continue
            # slot i of the block is predicted by the row of slot i - 1, so the noisy rows are slots 0..keep-2
            spans.append((len(ids), p + b["start"], keep, states[j][:keep]))
            ids += states[j][:keep - 1]
            pos += range(p + b["start"], p + b["start"] + keep - 1)
    if not spans:
        return None
    n = len(ids)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[:n_clean, :n_clean] = torch.ones(n_clean, n_clean, dtype=torch.bool).tril()
    noisy_rows, clean_rows = [], []
    for first, start, keep, state in spans:
        width = keep - 1
        allowed[first:first + width, :start] = True
        allowed[first:first + width, first:first + width] = torch.ones(width, width, dtype=torch.bool).tril()
        truth = answer[start - p:start - p + keep]
        wrong = next(i for i, (a, b) in enumerate(zip(state, truth)) if a != b)
        # slot i (1 <= i < keep) sees state[:i]; where that equals y*[:i] both outputs agree, so only the slots
        # after the first wrong guess carry a consistency term (as the authors' trainer masks them)
        for i in range(max(1, wrong + 1), keep):
            noisy_rows.append(first + i - 1)
            clean_rows.append(start + i - 1)
    return {"ids": torch.tensor(ids), "pos": torch.tensor(pos), "allowed": allowed, "prompt": p,
            "clean": n_clean, "noisy_rows": torch.tensor(noisy_rows, dtype=torch.long),
            "clean_rows": torch.tensor(clean_rows, dtype=torch.long)}


def cllm_losses(model, ex: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(consistency, AR) of one example; `model` is a LlamaForCausalLM-like module. Consistency: the cross-
    entropy of the outputs on the noisy rows toward the (detached) outputs on y* at the same slots. AR: the
    cross-entropy of y* after the prompt."""
    mask = torch.zeros(ex["allowed"].shape, dtype=model.dtype).masked_fill(~ex["allowed"], torch.finfo(model.dtype).min)
    hidden = model.model(input_ids=ex["ids"][None], position_ids=ex["pos"][None],
                         attention_mask=mask[None, None]).last_hidden_state[0]
    p, n_clean = ex["prompt"], ex["clean"]
    ar_logits = model.lm_head(hidden[p - 1:n_clean - 1]).float()
    ar = F.cross_entropy(ar_logits, ex["ids"][p:n_clean])
    if len(ex["noisy_rows"]) == 0:
        return ar * 0, ar
    teacher = ar_logits[ex["clean_rows"] - (p - 1)].detach().softmax(-1)
    student = model.lm_head(hidden[ex["noisy_rows"]]).float().log_softmax(-1)
    return -(teacher * student).sum(-1).mean(), ar


def fresh_adapter(base: str, rank: int):
    """LoRA on every projection of a private float32 copy of the base."""
    return lora.adapt(lora.private_copy(base), rank)


@torch.no_grad()
def held_out_losses(peft_model, rows: list[dict], seed: int = 0) -> dict:
    """Mean consistency and AR losses on fixed trajectories with a fixed draw of states, so two calls compare."""
    peft_model.eval()
    generator = torch.Generator().manual_seed(seed)
    core = peft_model.get_base_model()
    pairs = [cllm_losses(core, ex) for ex in (example(r, generator) for r in rows) if ex is not None]
    peft_model.train()
    return {"consistency": round(sum(c.item() for c, _ in pairs) / max(1, len(pairs)), 4),
            "ar": round(sum(a.item() for _, a in pairs) / max(1, len(pairs)), 4)}


def train(args) -> None:
    """Resumable: the checkpoint holds the adapter, the optimiser, the step and the loss curve. One step is
    --batch trajectories (gradients accumulated); the last 4 collected prompts are held out for the curve."""
    torch.set_num_threads(args.threads)
    folder = work_dir(args.name)
    folder.mkdir(parents=True, exist_ok=True)
    rows = read_trajectories(trajectory_dir(args.base))
    if len(rows) < 8:
        raise ValueError(f"Only {len(rows)} trajectories under {trajectory_dir(args.base)}; "
                         "run `cllm collect` first.")
    held, rows = rows[-4:], rows[:-4]
    peft_model = fresh_adapter(args.base, args.rank)
    opt = lora.optimizer(peft_model, args.lr)
    ckpt = folder / "ckpt.pt"
    step, seen, curve = 0, 0, []
    if state := lora.resume(ckpt, peft_model, opt):
        step, seen, curve = state["step"], state["tokens"], state["curve"]
        print(f"resumed at step {step}", flush=True)
    else:
        curve.append({"step": 0, "tokens": 0, **held_out_losses(peft_model, held)})
        print(f"held-out before training {curve[-1]}", flush=True)
    generator = torch.Generator().manual_seed(args.seed + step)
    core = peft_model.get_base_model()
    deadline, began, seen0 = time.time() + 60 * args.minutes, time.time(), seen

    def save() -> None:
        lora.save_state(ckpt, peft_model, opt, step=step, tokens=seen, curve=curve, rank=args.rank,
                        ar_weight=args.ar_weight, trajectories=len(rows))

    peft_model.train()
    while step < args.steps and time.time() < deadline:
        lora.set_learning_rate(opt, lora.learning_rate(args.lr, step, 20, args.steps))
        opt.zero_grad(set_to_none=True)
        cons_sum = ar_sum = 0.0
        for _ in range(args.batch):
            ex = None
            while ex is None:
                ex = example(rows[int(torch.randint(len(rows), (1,), generator=generator))], generator, args.per_block)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                cons, ar = cllm_losses(core, ex)
            ((cons + args.ar_weight * ar) / args.batch).backward()
            cons_sum, ar_sum = cons_sum + cons.item() / args.batch, ar_sum + ar.item() / args.batch
            seen += len(ex["ids"])
        torch.nn.utils.clip_grad_norm_([p for p in peft_model.parameters() if p.requires_grad], 1.0)
        opt.step()
        step += 1
        if step % 5 == 0:
            print(f"step {step}  consistency {cons_sum:.3f}  ar {ar_sum:.3f}  "
                  f"{(seen - seen0) / (time.time() - began):.0f} tok/s", flush=True)
        if step % args.save_every == 0:
            curve.append({"step": step, "tokens": seen, **held_out_losses(peft_model, held)})
            print(f"held-out {curve[-1]}", flush=True)
            save()
    if not curve or curve[-1]["step"] != step:
        curve.append({"step": step, "tokens": seen, **held_out_losses(peft_model, held)})
        print(f"held-out {curve[-1]}", flush=True)
    save()
    print(f"stopped at step {step}, {seen} tokens, {(time.time() - began) / 60:.1f} minutes", flush=True)


# ----------------------------------------------------------------------------- export

def export(peft_model, out: Path, base: str, info: dict) -> Path:
    """The adapter (peft's files, bfloat16) and cllm.json naming the base, which makes store.load merge it."""
    lora.save_adapter(peft_model, out, base)
    (out / locate.CLLM_FILE).write_text(json.dumps({"base": base, **info}, indent=1))
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    if size > MAX_DELTA_BYTES:
        raise ValueError(f"The adapter is {size / 2 ** 20:.1f} MB, over the 8 MB allowed; lower --rank.")
    return out


def export_latest(args) -> Path:
    """The checkpoint's adapter to --out (default assets/models/NAME), keeping what cllm.json already holds
    beyond the training record (the measured references the Jacobi view draws)."""
    from peft import set_peft_model_state_dict
    ckpt = work_dir(args.name) / "ckpt.pt"
    if not ckpt.is_file():
        raise ValueError(f"There is no checkpoint in {ckpt.parent}; run `python -m engines.training cllm train` first.")
    state = lora.read_checkpoint(ckpt, "python -m engines.training cllm train")
    peft_model = fresh_adapter(args.base, lora.adapter_rank(state["adapter"]))
    set_peft_model_state_dict(peft_model, state["adapter"])
    out = Path(args.out) if args.out else presets.MODELS_DIR / args.name
    out.mkdir(parents=True, exist_ok=True)
    old = json.loads((out / locate.CLLM_FILE).read_text()) if (out / locate.CLLM_FILE).is_file() else {}
    info = {k: v for k, v in old.items() if k not in ("base", "training")}
    info["training"] = {"step": state["step"], "tokens_seen": state["tokens"], "rank": state.get("rank"),
                        "ar_weight": state.get("ar_weight"), "trajectories": state.get("trajectories"),
                        "block": BLOCK, "curve": state["curve"]}
    export(peft_model, out, args.base, info)
    print(f"exported step {state['step']} to {out}", flush=True)
    return out


# ----------------------------------------------------------------------------- evaluate on the held-out suite

JACOBI_SETTINGS = {"block": 8, "init": "repeat"}   # the bench's Jacobi row (engines/analysis/bench.py FIXED_POINT)


@torch.inference_mode()
def perplexity(scorer, prompt: list[int], text: list[int]) -> tuple[float, int]:
    """Summed negative log-likelihood of `text` after `prompt` under `scorer`, and its token count."""
    if not text:
        return 0.0, 0
    logits = scorer.model(torch.tensor([prompt + text])).logits[0, len(prompt) - 1:-1].float()
    return F.cross_entropy(logits, torch.tensor(text), reduction="sum").item(), len(text)


def evaluate(name: str = NAME, base: str = BASE, per_family_count: int = 2, new_tokens: int = 32,
             only_base: bool = False) -> dict:
    """On the held-out task suite (engines/analysis/tasks): Jacobi (block 8) tokens per forward of the CLLM and
    of its base, whether each equals its own generate(), and the generative perplexity of each one's greedy text
    scored by the base. The base's figures are kept under the training folder and reused while the suite and
    settings are the same (they do not change with training)."""
    from engines.analysis import task_suite
    tasks = task_suite.per_family(task_suite.load_suite(), per_family_count)
    scorer = store.load(base, device="cpu")
    out = {"source": f"held-out task suite {task_suite.digest(task_suite.load_suite())}, {len(tasks)} prompts "
                     f"({per_family_count} per family), greedy, {new_tokens} new tokens, Jacobi block "
                     f"{JACOBI_SETTINGS['block']} init {JACOBI_SETTINGS['init']}; `python -m engines.training cllm eval`"}
    kept = work_dir(name) / "eval-base.json"
    for model_name in (base,) if only_base else (base, name):
        if model_name == base and kept.is_file() and json.loads(kept.read_text()).get("source") == out["source"]:
            out[base] = json.loads(kept.read_text())[base]
            print(model_name, out[model_name], "(kept)", flush=True)
            continue
        model = store.load(model_name, device="cpu")
        made = forwards = same = nll = scored = settled = 0
        for task in tasks:
            ids = task_suite.prompt_ids(model, task)
            steps = task_suite.run_engine("jacobi", JACOBI_SETTINGS, model, None, ids, new_tokens)
            text = [t for s in steps for t in s.committed_ids]
            made += len(text)
            forwards += sum(s.target_forwards for s in steps)
            settled += sum(s.detail["settled"] for s in steps)
            same += text == task_suite.greedy_generate(model, ids, new_tokens)
            a, b = perplexity(scorer, ids, text)
            nll, scored = nll + a, scored + b
        out[model_name] = {"jacobi_tokens_per_forward": round(made / forwards, 3),
                           "settled_per_iteration": round(settled / forwards, 3),
                           "same_as_generate": f"{same}/{len(tasks)}",
                           "perplexity_under_base": round(math.exp(nll / max(1, scored)), 3)}
        print(model_name, out[model_name], flush=True)
        if model_name == base:
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text(json.dumps({"source": out["source"], base: out[base]}, indent=1))
    return out


def record_evaluation(folder: Path, measured: dict, base: str = BASE) -> None:
    """Write the figures into cllm.json: the base's Jacobi figure is the reference line the Jacobi view draws."""
    path = folder / locate.CLLM_FILE
    info = json.loads(path.read_text())
    info["reference"] = {"model": base, "tokens_per_forward": measured[base]["jacobi_tokens_per_forward"],
                         "block": JACOBI_SETTINGS["block"], "source": measured["source"]}
    info["measured"] = measured
    path.write_text(json.dumps(info, indent=1))


# ----------------------------------------------------------------------------- command line

def add_parser(sub) -> argparse.ArgumentParser:
    """`python -m engines.training cllm collect|train|export|status ...`."""
    c = sub.add_parser("cllm", help="consistency-train SmolLM2 for Jacobi decoding (CLLM; LoRA)")
    c.add_argument("action", choices=("collect", "train", "export", "eval", "status"))
    c.add_argument("--name", default=NAME)
    c.add_argument("--base", default=BASE, help="the causal model to adapt (a preset or a folder)")
    c.add_argument("--block", type=int, default=BLOCK, help="collect: Jacobi block size n")
    c.add_argument("--max-new", type=int, default=64, help="collect: tokens of greedy continuation per prompt")
    c.add_argument("--conversations", type=int, default=100000, help="collect: at most this many prompts")
    c.add_argument("--rank", type=int, default=12, help="train: LoRA rank (12: a 7 MB delta in bfloat16)")
    c.add_argument("--per-block", type=int, default=3, help="train: intermediate states per block per example")
    c.add_argument("--ar-weight", type=float, default=AR_WEIGHT, help="train: weight of the AR loss on y*")
    c.add_argument("--out", default=None, help="export: where to (default: assets/models/NAME)")
    c.add_argument("--only-base", action="store_true", help="eval: measure the base only (kept for later)")
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False)
    common.add_schedule(c, lr=5e-4, steps=140, minutes=30)
    # one step: --batch trajectories, gradients accumulated (each is a whole conversation's sequence)
    c.set_defaults(batch=2, save_every=10)
    return c


def run(args) -> None:
    if args.action == "collect":
        collect(args)
    elif args.action == "status":
        print(json.dumps(status(trajectory_dir(args.base)), indent=1))
    elif args.action == "train":
        train(args)
    elif args.action == "eval" and args.only_base:
        torch.set_num_threads(args.threads)
        evaluate(args.name, args.base, only_base=True)
    elif args.action == "eval":
        torch.set_num_threads(args.threads)
        folder = Path(args.out) if args.out else presets.MODELS_DIR / args.name
        record_evaluation(folder, evaluate(args.name, args.base), args.base)
    else:
        export_latest(args)
