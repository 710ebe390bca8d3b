"""`python -m engines bench-table PATH`: the README's markdown tables from `python -m engines bench --json PATH`.

    python -m engines bench --json assets/bench.json && python -m engines bench-table assets/bench.json

Reads only the JSON, so a table in the README can be regenerated from the file committed beside it, with
the command that measured it. The race is summed over the prompts (forwards, tokens, drafts), its speedups
(the reference's wall time over the method's: above 1 is faster, the direction every view uses) are the mean
of each prompt's own speedup (each measured back to back in one process) with their range; speculative
decoding's speedups over transformers' generate are likewise averaged per method.
"""
from __future__ import annotations

import json
import statistics
from typing import Any

SPEC_REFERENCE = {   # what each speculative row of bench_json was timed against
    "speculative": "transformers' assisted generation (`assistant_model`, constant 4 drafts)",
    "speculative:ngram": "transformers' prompt-lookup generation (`prompt_lookup_num_tokens=4`)",
}


def load(path: str) -> dict[str, Any]:
    """The bench JSON, or a ValueError in one sentence (the CLI prints it and exits 2)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable JSON file ({e}); write one with "
                         f"`python -m engines bench --json {path}`.") from e
    needed = ("command", "target", "max_new_tokens", "race")
    missing = [k for k in needed if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: it was not written by `python -m engines bench --json`.")
    return data


def speedup_cell(wall_ratios: list[float]) -> str:
    """The mean speedup (reference wall / this wall, from each prompt's recorded wall ratio this wall / reference
    wall), and its range over prompts when there are several (the spread is the noise)."""
    speedups = [1 / r for r in wall_ratios]
    mean = f"{statistics.mean(speedups):.2f}x"
    return mean if len(speedups) == 1 else f"{mean} ({min(speedups):.2f}-{max(speedups):.2f})"


def lanes(races: list[dict]) -> dict[str, list[dict]]:
    """Each race lane's rows, one per prompt, in the race's own order."""
    out: dict[str, list[dict]] = {}
    for race in races:
        for r in race["rows"]:
            out.setdefault(r["label"], []).append(r)
    return out


def race_row(label: str, rows: list[dict]) -> str:
    """One lane summed over prompts: what it spent, what it got, how it compares with autoregressive."""
    new = sum(r["new_tokens"] for r in rows)
    target = sum(r["target_forwards"] for r in rows)
    fed = sum(r["tokens_fed_per_forward"] * r["target_forwards"] for r in rows)
    accepted = sum(r["drafts_accepted"] for r in rows)
    examined = sum(r["drafts_examined"] for r in rows)
    acceptance = f"{accepted / examined:.2f} ({accepted}/{examined})" if examined else "–"
    same = sum(bool(r["equals_greedy"]) for r in rows)
    return (f"| {label} | {target} | {sum(r['draft_forwards'] for r in rows)} | {new / max(target, 1):.2f} | "
            f"{fed / max(target, 1):.2f} | {acceptance} | {new / max(sum(r['iterations'] for r in rows), 1):.2f} | "
            f"{speedup_cell([r['wall_ratio'] for r in rows])} | {same}/{len(rows)} |")


def race_table(races: list[dict]) -> str:
    head = ("| method | target forwards | draft forwards | tokens per target forward | tokens fed per forward | "
            "acceptance (accepted/examined) | tokens per iteration | speedup vs autoregressive | "
            "equals greedy (prompts) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    return "\n".join([head] + [race_row(label, rows) for label, rows in lanes(races).items()])


def cost_line(races: list[dict]) -> str:
    """The cost model's two measured inputs, the median over the prompts' races: c and T(n)."""
    costs = [r["cost"] for r in races]
    ns = costs[0]["verify_n"]
    t = [statistics.median(c["verify_cost"][i] for c in costs) for i in range(len(ns))]
    cs = [c["c"] for c in costs if c["c"] is not None]
    draft = f"a draft forward costs c = {statistics.median(cs):.2f} target forwards; " if cs else ""
    ts = ", ".join(f"T({n}) = {x:.2f}" for n, x in zip(ns, t) if n > 1)
    return (f"Cost model (median over {len(costs)} prompt{'s' if len(costs) > 1 else ''}): {draft}a target "
            f"forward over n tokens costs {ts} one-token forwards.")


def speculative_table(rows: list[dict]) -> str:
    head = ("| method | target | against | target forwards per token | acceptance | same output as generate "
            "(prompts) | engine speedup vs transformers | whole Run speedup vs transformers |\n"
            "|---|---|---|---:|---:|---:|---:|---:|")
    by_method: dict[str, list[dict]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    lines = [head]
    for method, rs in by_method.items():
        same = sum(r["same_output_as_generate"] == 1 for r in rs)
        # no acceptance where nothing was drafted (prompt lookup on a prompt with no repeat)
        accepted = [r["acceptance"] for r in rs if r["acceptance"] is not None]
        acceptance = f"{statistics.mean(accepted):.2f}" if accepted else "–"
        lines.append(f"| {method} | {rs[0]['target']} | {SPEC_REFERENCE.get(method, '?')} | "
                     f"{statistics.mean(r['target_forwards_per_token'] for r in rs):.3f} | "
                     f"{acceptance} | {same}/{len(rs)} | "
                     f"{speedup_cell([r['wall_ratio_vs_assisted_generate'] for r in rs])} | "
                     f"{speedup_cell([r['run_wall_ratio_vs_assisted_generate'] for r in rs])} |")
    return "\n".join(lines)


def prompt_heading(race: dict) -> str:
    return (f"Race on {race['prompt']!r}: {race['target']}, draft {race['draft']}, {race['max_new_tokens']} new "
            f"tokens, greedy.")


def tables(data: dict[str, Any], path: str, per_prompt: bool = False) -> str:
    """Everything the README shows from one bench JSON, in markdown, with the commands behind it."""
    races = data["race"]
    prompts = len(races)
    parts = [f"Measured by `{data['command']}`; tables by `python -m engines bench-table {path}`"
             f"{' --per-prompt' if per_prompt else ''}.",
             f"Race: target {data['target']}, draft {races[0]['draft'] if races else '?'}, greedy, "
             f"{prompts} prompt{'s' if prompts != 1 else ''} x {data['max_new_tokens']} new tokens; forwards and "
             "tokens summed over the prompts; speedup = autoregressive's wall time / the method's (above 1 is faster), "
             "the mean of each prompt's own (its range over the prompts in parentheses).",
             race_table(races)]
    if races:
        parts.append(cost_line(races))
    if per_prompt:
        for race in races:
            parts += [prompt_heading(race), race_table([race]), cost_line([race])]
    spec = data.get("speculative_vs_transformers")
    if spec:
        parts += [f"Speculative decoding against transformers' own implementation, greedy, k = 4, "
                  f"{max(r['new_tokens'] for r in spec)} new tokens per prompt, back to back (mean over the prompts, "
                  "range in parentheses; speedup = transformers' wall time / ours, above 1 is faster than "
                  "transformers):",
                  speculative_table(spec)]
    return "\n\n".join(parts)
