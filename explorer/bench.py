"""`python -m explorer.bench`: how live the explorer feels, per method.

For every method: p95 time of one Step as the UI does it (engine + recording + figures +
trace serialisation), p95 of the part that is not the engine (render + serialisation),
and the largest figure JSON of any step. Engines live in engines/, so this bench of the
UI lives here (engines/ imports no Plotly).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from engines.methods import METHODS, Run, method_default_target
from engines.models import store
from explorer.render import figure_bytes, render
from explorer.session import Session

PROMPT = "Alice was beginning to get very tired of sitting by her sister on the bank, and"


def p95(values: list[float]) -> float:
    values = sorted(values)
    return values[max(0, int(round(0.95 * len(values))) - 1)]


def measure(method: str, target: str, steps: int) -> dict:
    run = Run(method, PROMPT, {"max_new_tokens": steps}, target=target)
    session = Session.start(run)
    render(session, method)                              # warm the figure code once
    total, outside_engine, biggest = [], [], 0
    while True:
        start = time.perf_counter()
        if not session.step():
            break
        screen = render(session, method)
        elapsed = time.perf_counter() - start
        total.append(elapsed)
        outside_engine.append(elapsed - session.current.wall_s)
        biggest = max(biggest, figure_bytes(screen.main), figure_bytes(screen.side))
    return {"method": method, "target": target, "steps": len(total),
            "p95_step_ms": 1000 * p95(total), "p95_outside_engine_ms": 1000 * p95(outside_engine),
            "mean_step_ms": 1000 * statistics.mean(total), "max_figure_kb": biggest / 1000}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m explorer.bench", description=__doc__)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--targets", nargs="*", default=["tiny-target", "smollm2-135m-instruct"])
    args = p.parse_args(argv)
    for name, m in METHODS.items():
        targets = [method_default_target(name)] if m.model_kind == "masked" else args.targets
        for target in targets:
            missing = [x for x in (target, "tiny-draft" if m.uses_draft else None) if x and not store.available(x)]
            if missing:
                print(f"{name:16s} {target:24s} skipped: {', '.join(missing)} not available here")
                continue
            r = measure(name, target, args.steps)
            print(f"{name:16s} {target:24s} steps {r['steps']:3d}  p95 step {r['p95_step_ms']:6.1f} ms  "
                  f"p95 outside engine {r['p95_outside_engine_ms']:5.1f} ms  mean {r['mean_step_ms']:6.1f} ms  "
                  f"largest figure {r['max_figure_kb']:.1f} KB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
