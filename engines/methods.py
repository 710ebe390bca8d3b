"""The methods the explorer knows, and `Run`: one decoding run, stepped one iteration at a time.

Engines know token ids only; `Run` is where text meets ids (prompt encoding, token
texts for the trace), so the CLI, the UI and a notebook share it.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch

from engines import lm
from engines.autoregressive import AutoregressiveConfig, autoregressive
from engines.config import DecodeConfig, build
from engines.jacobi import JacobiConfig, jacobi
from engines.lookahead import LookaheadConfig, lookahead
from engines.mask_predict import MaskPredictConfig, mask_predict
from engines.speculative import SpeculativeConfig, speculative
from engines.trace import Step, Trace
from engines.tree import TreeConfig, tree


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    config: type[DecodeConfig]
    start: Callable[..., Iterator[Step]]   # (target, draft, prompt_ids, cfg, rng) -> steps
    uses_draft: bool = False
    model_kind: str = "causal"
    lossless: str = ""                      # what the output equals, if anything
    paper: str = ""
    summary: str = ""


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("autoregressive", "Autoregressive", AutoregressiveConfig,
           lambda target, draft, ids, cfg, rng: autoregressive(target, ids, cfg, rng),
           lossless="is the reference: target.generate() with the same settings",
           paper="the baseline every method is measured against",
           summary="One target forward per token. Each step shows the next-token distribution before and "
                   "after temperature / top-k / top-p, and the token that was chosen."),
    Method("speculative", "Speculative", SpeculativeConfig, speculative, uses_draft=True,
           lossless="equals target.generate() under greedy; under sampling it is distributed as the target's "
                    "own sampling",
           paper="Leviathan et al. 2023 (arXiv 2211.17192); Chen et al. 2023 (arXiv 2302.01318)",
           summary="A cheap drafter (the draft model, or prompt lookup of n-grams) proposes k tokens; one target "
                   "forward scores them all. Each drafted token x is kept when u <= min(1, p(x)/q(x)); the first "
                   "rejection is replaced by a draw from norm(max(0, p - q)), and a fully accepted draft earns "
                   "a bonus token from the target."),
    Method("tree", "Tree", TreeConfig, tree, uses_draft=True,
           lossless="equals target.generate() under greedy; under sampling it is distributed as the target's "
                    "own sampling",
           paper="SpecInfer, Miao et al. 2024 (arXiv 2305.09781); Medusa, Cai et al. 2024 (arXiv 2401.10774); "
                 "EAGLE-2, Li et al. 2024 (arXiv 2406.16858)",
           summary="The draft grows a tree of candidate continuations (a fixed shape of top-k ranks, or an "
                   "EAGLE-2 tree grown by draft confidence); one target forward with a tree attention mask "
                   "checks every branch, and the longest accepted path plus one target token is kept."),
    Method("jacobi", "Jacobi", JacobiConfig,
           lambda target, draft, ids, cfg, rng: jacobi(target, ids, cfg, rng),
           lossless="equals target.generate() (greedy only)",
           paper="Santilli et al. 2023, Accelerating Transformer Inference for Translation via Parallel "
                 "Decoding (arXiv 2305.10427)",
           summary="A block of guessed future tokens is refined in parallel: one forward replaces every guess by "
                   "the target's argmax given the guesses before it. The matching prefix and the first "
                   "corrected token are committed (at least one per forward), and the block slides on."),
    Method("lookahead", "Lookahead", LookaheadConfig,
           lambda target, draft, ids, cfg, rng: lookahead(target, ids, cfg, rng),
           lossless="equals target.generate() under greedy; under sampling it is distributed as the target's "
                    "own sampling",
           paper="Fu et al. 2024, Break the Sequential Dependency of LLM Inference Using Lookahead Decoding "
                 "(arXiv 2402.02057)",
           summary="One forward runs a Jacobi step over a 2D window of past guesses (W positions x N-1 levels) "
                   "whose diagonals become n-grams in a pool, and verifies up to G pooled n-grams that start "
                   "with the last committed token; the longest verified prefix plus one target token is kept."),
    Method("mask-predict", "Mask-predict", MaskPredictConfig,
           lambda target, draft, ids, cfg, rng: mask_predict(target, ids, cfg, rng), model_kind="masked",
           paper="Ghazvininejad et al. 2019, Mask-Predict (arXiv 1904.09324); LLaDA, Nie et al. 2025 "
                 "(arXiv 2502.09992)",
           summary="A span of masks after the prompt is filled in over T forwards of a masked LM: mask-predict "
                   "re-masks the least confident tokens each time; masked diffusion commits the most confident "
                   "and never re-masks, optionally block by block."),
)}

DEFAULT_TARGET = "smollm2-135m-instruct"
FALLBACK_TARGET = "tiny-target"
DEFAULT_DRAFT = "tiny-draft"


def default_target() -> str:
    return DEFAULT_TARGET if lm.available(DEFAULT_TARGET) else FALLBACK_TARGET


def method_default_target(name: str) -> str:
    """The model a method runs on unless told otherwise: a masked LM for the masked family."""
    return "tiny-masked" if method(name).model_kind == "masked" else default_target()


def method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"Unknown method '{name}': choose one of {', '.join(METHODS)}.")
    return METHODS[name]


class Run:
    """One decoding run: its trace so far and the live engine that extends it."""

    def __init__(self, method_name: str, prompt: str, settings: dict[str, Any], *, target: str | None = None,
                 draft: str | None = None, seed: int = 0, device: str | None = None, dtype: str | None = None):
        m = method(method_name)
        if not prompt.strip():
            raise ValueError("The prompt is empty: type a few words for the model to continue.")
        cfg = build(m.config, settings)
        self.target = lm.load(target or method_default_target(method_name), device, dtype)
        # a deterministic drafter (prompt lookup) needs no draft model
        needs_draft = m.uses_draft and getattr(cfg, "drafter", "model") == "model"
        self.draft = lm.load(draft or DEFAULT_DRAFT, device, dtype) if needs_draft else None
        if m.model_kind == "masked" and not self.target.is_masked:
            raise lm.ModelLoadError(f"{m.title} needs a masked LM such as tiny-masked, not '{self.target.name}'.")
        if m.model_kind == "causal" and self.target.is_masked:
            raise lm.ModelLoadError(f"{m.title} needs a causal LM; '{self.target.name}' is a masked LM.")
        if self.draft is not None:
            lm.check_same_tokenizer(self.target, self.draft)
        prompt_ids = self.target.encode(prompt)
        models = {"target": self.target.source}
        if self.draft is not None:
            models["draft"] = self.draft.source
        self.trace = Trace(method=m.name, config={**asdict(cfg), "seed": seed}, models=models, prompt=prompt,
                           prompt_ids=prompt_ids)
        self._note_texts(prompt_ids)
        rng = torch.Generator().manual_seed(seed)
        self._steps = m.start(self.target, self.draft, prompt_ids, cfg, rng)

    @property
    def finished(self) -> bool:
        return self.trace.finished

    def step(self) -> Step | None:
        """Run one iteration; None once the method has finished."""
        if self.trace.finished:
            return None
        step = next(self._steps, None)
        if step is None:
            self.trace.finished = True
            return None
        self.trace.steps.append(step)
        self._note_texts(_ids_in(step))
        self.trace.output_text = self.target.decode(self.trace.output_ids)
        self.trace.finished = step.final   # so the last step already says "finished", with no extra call
        return step

    def run(self, time_limit_s: float | None = None) -> Trace:
        start = time.perf_counter()
        while self.step() is not None:
            if time_limit_s is not None and time.perf_counter() - start > time_limit_s:
                break
        return self.trace

    def _note_texts(self, ids) -> None:
        for i in ids:
            if i not in self.trace.token_texts:
                self.trace.token_texts[i] = self.target.token_text(i)


def _ids_in(step: Step) -> set[int]:
    """Every token id a step mentions (committed, drafted, top-k lists), for the trace's text table."""
    found: set[int] = set(step.committed_ids)

    def walk(value: Any, key: str = "") -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, (list, tuple)):
            if key.endswith(("top", "_ids", "tokens")) or key in ("top", "tokens"):
                for v in value:
                    if isinstance(v, int):
                        found.add(v)
                    elif isinstance(v, (list, tuple)) and v and isinstance(v[0], int):
                        found.add(v[0])
                    else:
                        walk(v, key)
            else:
                for v in value:
                    walk(v, key)
        elif isinstance(value, int) and key.endswith(("token", "chosen")):
            found.add(value)

    walk(step.detail)
    return found
