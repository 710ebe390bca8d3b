"""Train and evaluate the embedded models on the public-domain corpus in assets/corpus.

    python -m engines.training teacher                  # SmolLM2's top-k next-token log-probs (for distillation)
    python -m engines.training causal tiny-target --hidden 384 --layers 6 --minutes 60
    python -m engines.training causal tiny-draft  --hidden 256 --layers 2 --minutes 40
    python -m engines.training masked tiny-masked --hidden 128 --layers 4 --init-embeddings tiny-draft
    python -m engines.training eval --candidates        # held-out figures of the fresh exports
    python -m engines.training publish tiny-draft       # copy an export that meets its figure into assets/models
    python -m engines.training eval                     # held-out figures -> assets/models/README.md
    python -m engines.training features TARGET          # draft heads: the target's hidden states, cached once
    python -m engines.training heads medusa|hydra|eagle TARGET --minutes 40   # see engines/training/heads.py
    python -m engines.training diffusion | diffusion-export            # see engines/training/diffusion.py
    python -m engines.training cllm collect|train|export|status        # see engines/training/cllm.py

Every command checkpoints under ~/.cache/parallel-decoding-explorer/train/ and resumes where it stopped. The held-out
slice is the last 5% of every book; nothing here ever trains on it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys

from engines.models import presets
from engines.training import cllm as train_cllm
from engines.training import common, tiny
from engines.training import diffusion as train_diffusion
from engines.training import heads as train_heads


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m engines.training", description=__doc__,
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
        c.add_argument("--seq", type=int, default=common.WINDOW)
        c.add_argument("--kd", type=float, default=0.0, help="weight of distillation from SmolLM2")
        common.add_schedule(c, lr=3e-3, steps=3000, minutes=60)
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
    hd = sub.add_parser("heads", help="train Medusa heads, Hydra heads or an EAGLE-3 head on cached features")
    hd.add_argument("kind", choices=("medusa", "hydra", "eagle"))
    hd.add_argument("target")
    hd.add_argument("--vocab", type=int, default=8192, help="draft vocabulary: the most frequent tokens")
    hd.add_argument("--windows", type=int, default=0,
                    help="train on the first this many cached windows only (0: all), so kinds compare on equal data")
    hd.add_argument("--until-step", type=int, default=0,
                    help="stop at this step (0: the schedule's --steps), so kinds compare at equal steps")
    common.add_schedule(hd, lr=2e-3, steps=4000, minutes=40)
    he = sub.add_parser("heads-eval", help="held-out agreement of the trained heads with the target")
    he.add_argument("target")
    hp = sub.add_parser("heads-publish", help="copy the trained heads into assets/models/heads with their figures")
    hp.add_argument("target")
    hp.add_argument("--kinds", nargs="+", choices=("medusa", "hydra", "eagle"), default=("medusa", "hydra", "eagle"),
                    help="which trained heads to publish (the others in assets stay as they are)")
    common.add_schedule(train_diffusion.add_parser(sub), lr=1e-3, steps=20000, minutes=600)
    train_diffusion.add_export_parser(sub)
    train_cllm.add_parser(sub)
    for s in (t, e, f, hd, he, hp, *[sub.choices[k] for k in ("causal", "masked")]):
        s.add_argument("--threads", type=int, default=2)
        s.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    if args.command == "teacher":
        tiny.run_teacher(args)
    elif args.command in ("causal", "masked"):
        tiny.train(args, args.command)
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
    elif args.command == "cllm":
        try:
            train_cllm.run(args)
        except ValueError as e:
            p.exit(2, f"error: {e}\n")
    elif args.command == "heads-eval":
        print(json.dumps(train_heads.evaluate_heads(args.target), indent=1))
    elif args.command == "heads-publish":
        train_heads.publish(args.target, args.kinds)
    elif args.command == "publish":
        shutil.copytree(common.WORK_DIR / args.name / "export", presets.MODELS_DIR / args.name, dirs_exist_ok=True)
        print(f"published {presets.MODELS_DIR / args.name}")
    else:
        tiny.evaluate(args)


if __name__ == "__main__":
    main(sys.argv[1:])
