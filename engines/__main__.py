"""Command line: `python -m engines trace|models|bench ...`.

    python -m engines trace --method autoregressive --prompt "Once upon a time" --max-new-tokens 32
    python -m engines trace --method speculative --prompt "What is the capital of France?" --chat on
    python -m engines models
    python -m engines bench
    python -m engines bench --section diffusion --masked tiny-masked,/tmp/diff-export
    python -m engines bench --section tasks --per-family 2 --max-new-tokens 32   # the held-out task suite
    python -m engines bench --section block   # block against token verification, sampled, on the task suite
    python -m engines bench-table bench.json    # the README's markdown tables from `bench --json bench.json`
    python -m engines schema                    # the published trace schema (JSON Schema 2020-12)

Bad input ends with one line on stderr and exit code 2; so does a setting of another method than the one
chosen (it would be ignored).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from engines.config import RunSettings, fields
from engines.methods import METHODS, Method, Run
from engines.models import devices, locate, presets, store
from engines.models.hub import HubPolicy


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message}\n")


def setting_fields() -> dict[str, dataclasses.Field]:
    """Every setting a run can have (the seed, then each method's), once per name."""
    found: dict[str, dataclasses.Field] = {}
    for cls in (RunSettings, *(m.config for m in METHODS.values())):
        for f in fields(cls):
            found.setdefault(f.name, f)
    return found


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def setting_choices() -> dict[str, tuple[str, ...]]:
    """Each choice setting's choices over every method that has it: speculative and tree both have --drafter,
    with different choices (only tree has the suffix drafter), and the flag takes any of them; the chosen
    method's own config then refuses one it does not have, in one sentence."""
    found: dict[str, tuple[str, ...]] = {}
    for cls in (RunSettings, *(m.config for m in METHODS.values())):
        for f in fields(cls):
            for choice in f.metadata.get("choices") or ():
                if choice not in found.get(f.name, ()):
                    found[f.name] = found.get(f.name, ()) + (choice,)
    return found


def add_setting_options(p: argparse.ArgumentParser) -> None:
    """One flag per setting, named after the config field (--max-new-tokens, --k, --seed, ...); None when not
    given, so the config's own default and range apply, and a flag of another method can be told apart."""
    choices = setting_choices()
    for f in setting_fields().values():
        kind = {"int": int, "float": float}.get(str(f.type), str)
        if f.metadata.get("auto") is not None:   # the word 'auto' for the value that means it (--tree-budget auto)
            kind = whole_or_auto(f.metadata["auto"])
        p.add_argument(flag(f.name), dest=f.name, type=kind, default=None, choices=choices.get(f.name),
                       help=f"{f.metadata['help']} (default {f.default})")



def whole_or_auto(auto: int):
    """An argparse type: a whole number, or the word 'auto' for the value that means it."""
    def whole(text: str) -> int:
        return auto if text.strip().lower() == "auto" else int(text)
    whole.__name__ = "whole number or 'auto'"   # argparse names the type so in its one-line refusal
    return whole


def refuse_foreign_settings(args: argparse.Namespace) -> None:
    """A flag the chosen method has no use for is refused in one sentence rather than silently ignored."""
    m = METHODS[args.method]
    own = {f.name for f in (*fields(m.config), *fields(RunSettings))}
    for name in setting_fields():
        if getattr(args, name) is not None and name not in own:
            owners = [x.name for x in METHODS.values() if has_setting(x, name)]
            raise ValueError(f"{flag(name)} is a setting of {' and '.join(owners)}, not of {m.name}; drop it or "
                             f"choose --method {owners[0]}.")
    if args.draft is not None and not m.uses_draft:
        users = [x.name for x in METHODS.values() if x.uses_draft]
        raise ValueError(f"--draft is for {' and '.join(users)}; {m.name} uses no draft model, so drop it.")


def add_chat_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chat", choices=list(CHAT), default=None,
                   help="wrap the prompt in the target's chat template as one user message (default: on for an "
                        "instruct model with a template, off otherwise)")


CHAT = {"on": True, "off": False}


def has_setting(m: Method, name: str) -> bool:
    return any(f.name == name for f in fields(m.config))


def bench_sections() -> list[str]:
    from engines.analysis.bench import SECTIONS, section_name
    return [section_name(s) for s in SECTIONS]


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m engines", description="Parallel decoding engines, from the terminal.")
    p.add_argument("--hub-max-params", type=float, default=0,
                   help="allow Hugging Face ids beyond the presets up to this many parameters, checked before "
                        "download (safetensors only, no remote code); default: presets only")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    t = sub.add_parser("trace", help="decode a prompt and print the JSON trace")
    t.add_argument("--method", required=True, choices=list(METHODS))
    t.add_argument("--prompt", required=True)
    t.add_argument("--target", default=None, help="preset, local folder or hub id (default: SmolLM2 if installed)")
    t.add_argument("--draft", default=None, help="draft model for methods that use one (default tiny-draft)")
    t.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when present)")
    t.add_argument("--dtype", default=None, choices=list(devices.DTYPES),
                   help="weights and activations (default: float32 on CPU, bfloat16 or float16 on CUDA)")
    t.add_argument("--indent", type=int, default=None)
    add_chat_option(t)
    add_setting_options(t)
    sub.add_parser("models", help="list the model presets and whether each is available here")
    sub.add_parser("schema", help="print the published trace schema (JSON Schema 2020-12) that traces follow")
    b = sub.add_parser("bench", help="measure speed and forwards per token of every method")
    b.add_argument("--quick", action="store_true", help="fewer prompts and tokens")
    b.add_argument("--device", default=None)
    b.add_argument("--json", metavar="PATH", default=None,
                   help="write every figure of the race for the bench prompts, and speculative's ratios to "
                        "transformers' assisted and prompt-lookup generation, to PATH as JSON")
    b.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=None,
                   help="with --json: new tokens per race (default 48, 16 with --quick); with --section tasks: "
                        "new tokens per prompt at most (default 32, 16 with --quick)")
    b.add_argument("--section", default=None, choices=bench_sections(),
                   help="run only this section (default: all)")
    b.add_argument("--masked", action="append", default=None, metavar="DIR_OR_PRESET",
                   help="a masked LM for the diffusion section (repeat, or a comma list; default: tiny-masked "
                        "and smollm2-135m-diffusion where available)")
    b.add_argument("--per-family", dest="per_family", type=int, default=None,
                   help="tasks section: prompts per family of the held-out task suite (default 2, 1 with --quick)")
    bt = sub.add_parser("bench-table", help="the README's markdown tables from the JSON of `bench --json PATH`")
    bt.add_argument("path", help="a JSON file written by `python -m engines bench --json PATH`")
    bt.add_argument("--per-prompt", dest="per_prompt", action="store_true",
                    help="also the race table of each prompt")
    r = sub.add_parser("race", help="every causal method on one prompt, greedy, to the same number of tokens")
    r.add_argument("--prompt", required=True)
    r.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=48)
    r.add_argument("--target", default=None, help="preset, local folder or hub id (default: SmolLM2 if installed)")
    r.add_argument("--draft", default=None, help="draft model for the model drafter and trees (default tiny-draft)")
    r.add_argument("--device", default=None)
    r.add_argument("--repeats", type=int, default=1, help="runs per method; the median wall time counts")
    add_chat_option(r)
    r.add_argument("--json", action="store_true", help="print one JSON object with a row per method")
    d = sub.add_parser("diff", help="the first step where two traces of the same method and prompt differ")
    d.add_argument("a", help="a trace .json file")
    d.add_argument("b", help="another trace .json file of the same method and prompt")
    d.add_argument("--tolerance", type=float, default=1e-4, help="floats closer than this count as equal")
    d.add_argument("--json", action="store_true", help="print the difference as one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    locate.set_hub_policy(HubPolicy(max_parameters=int(args.hub_max_params)))
    try:
        if args.command == "models":
            for p in presets.PRESETS.values():
                state = "available" if store.available(p.name) else "missing"
                print(f"{p.name:24s} {p.kind:7s} {state:10s} {p.description}")
        elif args.command == "schema":
            import json

            from engines.schema import trace_schema
            print(json.dumps(trace_schema(), indent=1, ensure_ascii=False))
        elif args.command == "trace":
            refuse_foreign_settings(args)
            settings = {k: v for k, v in vars(args).items() if v is not None and k != "chat"}
            run = Run(args.method, args.prompt, settings, target=args.target, draft=args.draft,
                      device=args.device, dtype=args.dtype, chat=CHAT.get(args.chat))
            print(run.run().to_json(indent=args.indent))
        elif args.command == "bench":
            from engines.analysis.bench import bench, bench_json
            if args.json:
                bench_json(args.json, quick=args.quick, device=args.device, max_new_tokens=args.max_new_tokens)
                print(f"wrote {args.json}")
            else:
                masked = tuple(n.strip() for v in args.masked or [] for n in v.split(",") if n.strip())
                if args.per_family is not None and args.section not in (None, "tasks"):
                    raise ValueError("--per-family is a setting of the tasks section; drop it or choose "
                                     "--section tasks.")
                bench(quick=args.quick, device=args.device, section=args.section, masked=masked,
                      per_family=args.per_family, task_tokens=args.max_new_tokens)
        elif args.command == "bench-table":
            from engines.analysis.bench_table import load, tables
            print(tables(load(args.path), args.path, per_prompt=args.per_prompt))
        elif args.command == "race":
            import json

            from engines.analysis.race import race, table
            result = race(args.prompt, args.max_new_tokens, target=args.target, draft=args.draft,
                          device=args.device, repeats=args.repeats, chat=CHAT.get(args.chat))
            print(json.dumps(result.to_dict(), ensure_ascii=False) if args.json else table(result))
        elif args.command == "diff":
            import json

            from engines.analysis.diff import diff, load
            result = diff(load(args.a), load(args.b), args.tolerance)
            print(json.dumps(result.to_dict(), ensure_ascii=False) if args.json else result.words)
    except (ValueError, presets.ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
