"""What every bench section shares: the prompts, the models of one bench run, and timing a whole run."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engines.methods import Run
from engines.models import devices, store
from engines.models.chat import Prompt
from engines.trace import Trace

PROMPTS = [
    "Once upon a time",
    "Alice was beginning to get very tired of sitting by her sister on the bank, and",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "The little red hen found a grain of wheat. \"Who will plant this wheat?\" said the little red hen.",
]


@dataclass
class Models:
    target: str            # the default target (SmolLM2 where installed)
    tiny_target: str
    draft: str
    device: str | None
    masked: tuple[str, ...] = ()   # the masked LMs of the diffusion section (presets or folders)
    new_tokens: int | None = None  # tokens per run where the caller sets them; else each section's own

    def missing(self, *names: str) -> list[str]:
        return [n for n in names if not (store.available(n) or Path(n).is_dir())]


def timed(fn: Callable[[], object], repeats: int = 1) -> tuple[float, object]:
    """Median wall time of fn over repeats, and its last result."""
    times, out = [], None
    for _ in range(repeats):
        start = devices.clock()   # devices.clock waits for every GPU: generate() and the engines queue CUDA work
        out = fn()
        times.append(devices.clock() - start)
    return statistics.median(times), out


def run_trace(method: str, prompt: Prompt, settings: dict, target: str, draft: str | None,
              device: str | None, chat: bool | None = None) -> Trace:
    """A whole recorded run, as the CLI and the UI make it (`chat` as Run takes it: None reads the prompt as the
    target reads prompts by default)."""
    return Run(method, prompt, settings, target=target, draft=draft, device=device, chat=chat).run()


def timed_trace(method: str, prompt: str, settings: dict, target: str, draft: str | None, device: str | None,
                repeats: int = 1) -> tuple[float, Trace]:
    """Median wall time of a run's decoding, and its trace. Loading, tokenizing and the cost model's calibration
    happen before the clock starts: the calibration is timed once per model pair and would bill the first run."""
    runs = iter([Run(method, prompt, settings, target=target, draft=draft, device=device, calibrate_first=True)
                 for _ in range(repeats)])
    return timed(lambda: next(runs).run(), repeats)


def baseline(models: Models, target: str, prompt: str, n: int, repeats: int = 1) -> tuple[float, Trace]:
    """Wall time and trace of n autoregressive tokens: what the other methods are measured against."""
    return timed_trace("autoregressive", prompt, {"max_new_tokens": n}, target, None, models.device,
                       repeats)
