"""The methods the explorer knows, and `Run`: one decoding run, stepped one iteration at a time.

Engines know token ids only; `Run` is where text meets ids (prompt encoding, token
texts for the trace), so the CLI, the UI and a notebook share it.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch

from engines.analysis import calibration, cost
from engines.analysis.theory import Calibration, jacobi_drafts, lookahead_drafts, speculative_drafts, tree_drafts
from engines.config import MAX_PROMPT_TOKENS, DecodeConfig, RunSettings, build
from engines.decoding.autoregressive import AutoregressiveConfig, AutoregressiveDetail, autoregressive
from engines.decoding.jacobi import JacobiConfig, JacobiDetail, jacobi
from engines.decoding.lookahead import LookaheadConfig, LookaheadDetail, lookahead
from engines.decoding.mask_predict import MaskPredictConfig, MaskPredictDetail, mask_predict
from engines.decoding.speculative import MAX_K, SpeculativeConfig, SpeculativeDetail, speculative
from engines.decoding.tree import TreeConfig, TreeDetail, tree
from engines.decoding.trees import SHAPES
from engines.drafting.registry import DRAFTERS
from engines.models import adapter, presets, store
from engines.models import chat as chat_template
from engines.trace import Step, Trace


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    config: type[DecodeConfig]
    start: Callable[..., Iterator[Step]]   # (target, draft, prompt_ids, cfg, rng) -> steps
    uses_draft: bool = False
    model_kind: str = "causal"
    # positions a run may use after the prompt: the new tokens and whatever a forward feeds beyond them
    # (a draft, a tree, a block of guesses, a lookahead window); the prompt and these must fit the model
    reach: Callable[[Any], int] = lambda cfg: cfg.max_new_tokens
    record: type = dict                     # the step record (a TypedDict) its engine builds each Step's detail through
    drafts: Callable[[Step], tuple[int, int]] | None = None   # (accepted, examined) drafts of a step; None: none
    lossless: str = ""                      # what the output equals, if anything
    paper: str = ""
    summary: str = ""
    # its engine takes verify_seconds(n), the run's measured target forward over n tokens (a tree sized to the
    # machine reads it)
    reads_forward_times: bool = False


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("autoregressive", "Autoregressive", AutoregressiveConfig,
           lambda target, draft, ids, cfg, rng: autoregressive(target, ids, cfg, rng), record=AutoregressiveDetail,
           lossless="is the reference: target.generate() with the same settings",
           paper="the baseline every method is measured against",
           summary="One target forward per token. Each step shows the next-token distribution before and "
                   "after temperature / top-k / top-p, and the token that was chosen."),
    Method("speculative", "Speculative", SpeculativeConfig, speculative, uses_draft=True,
           record=SpeculativeDetail, drafts=speculative_drafts,
           reach=lambda cfg: cfg.max_new_tokens + (MAX_K if cfg.schedule == "adaptive" else cfg.k),
           lossless="equals target.generate() under greedy; under sampling it is distributed as the target's "
                    "own sampling",
           paper="Leviathan et al. 2023 (arXiv 2211.17192); Chen et al. 2023 (arXiv 2302.01318)",
           summary="A cheap drafter (the draft model, or prompt lookup of n-grams) proposes k tokens; one target "
                   "forward scores them all. Each drafted token x is kept when u <= min(1, p(x)/q(x)); the first "
                   "rejection is replaced by a draw from norm(max(0, p - q)), and a fully accepted draft earns "
                   "a bonus token from the target."),
    Method("tree", "Tree", TreeConfig, tree, uses_draft=True, record=TreeDetail, drafts=tree_drafts,
           reads_forward_times=True,
           reach=lambda cfg: cfg.max_new_tokens + 1 + max([cfg.tree_depth, *map(len, SHAPES.get(cfg.tree, ()))]),
           lossless="equals target.generate() under greedy; under sampling it is distributed as the target's "
                    "own sampling",
           paper="SpecInfer, Miao et al. 2024 (arXiv 2305.09781); Medusa, Cai et al. 2024 (arXiv 2401.10774); "
                 "EAGLE-2, Li et al. 2024 (arXiv 2406.16858)",
           summary="The draft grows a tree of candidate continuations (a fixed shape of top-k ranks, or an "
                   "EAGLE-2 tree grown by draft confidence); one target forward with a tree attention mask "
                   "checks every branch, and the longest accepted path plus one target token is kept."),
    Method("jacobi", "Jacobi", JacobiConfig,
           lambda target, draft, ids, cfg, rng: jacobi(target, ids, cfg, rng), record=JacobiDetail, drafts=jacobi_drafts,
           reach=lambda cfg: cfg.max_new_tokens + cfg.block,
           lossless="equals target.generate() (greedy only)",
           paper="Santilli et al. 2023, Accelerating Transformer Inference for Translation via Parallel "
                 "Decoding (arXiv 2305.10427)",
           summary="A block of guessed future tokens is refined in parallel: one forward replaces every guess by "
                   "the target's argmax given the guesses before it. The matching prefix and the first "
                   "corrected token are committed (at least one per forward), and the block slides on."),
    Method("lookahead", "Lookahead", LookaheadConfig,
           lambda target, draft, ids, cfg, rng: lookahead(target, ids, cfg, rng), record=LookaheadDetail,
           drafts=lookahead_drafts,
           reach=lambda cfg: cfg.max_new_tokens + cfg.window + cfg.ngram,
           lossless="equals target.generate() under greedy; under sampling it is distributed as the target's "
                    "own sampling",
           paper="Fu et al. 2024, Break the Sequential Dependency of LLM Inference Using Lookahead Decoding "
                 "(arXiv 2402.02057)",
           summary="One forward runs a Jacobi step over a 2D window of past guesses (W positions x N-1 levels) "
                   "whose diagonals become n-grams in a pool, and verifies up to G pooled n-grams that start "
                   "with the last committed token; the longest verified prefix plus one target token is kept."),
    Method("mask-predict", "Mask-predict", MaskPredictConfig,
           lambda target, draft, ids, cfg, rng: mask_predict(target, ids, cfg, rng), model_kind="masked",
           record=MaskPredictDetail,
           reach=lambda cfg: cfg.length or cfg.max_new_tokens,   # the span; the length beam stays within the budget
           paper="Ghazvininejad et al. 2019, Mask-Predict (arXiv 1904.09324); LLaDA, Nie et al. 2025 "
                 "(arXiv 2502.09992); ReMDM, Wang et al. 2025 (arXiv 2503.00307)",
           summary="A span of masks after the prompt is filled in over T forwards of a masked LM: mask-predict "
                   "re-masks the least confident tokens each time; masked diffusion commits the most confident "
                   "and never re-masks, optionally block by block; ReMDM's remasking lets diffusion take a "
                   "committed token back at random, to be predicted again."),
)}

# the methods whose views read the cost model: a run of them records its calibration in the trace
COSTED = ("speculative", "tree")

DEFAULT_TARGET = "smollm2-135m-instruct"
FALLBACK_TARGET = "tiny-target"
DEFAULT_DRAFT = "tiny-draft"
DIFFUSION_TARGET = "smollm2-135m-diffusion"
FALLBACK_MASKED = "tiny-masked"


def default_target() -> str:
    return DEFAULT_TARGET if store.available(DEFAULT_TARGET) else FALLBACK_TARGET


def method_default_target(name: str) -> str:
    """The model a method runs on unless told otherwise: for the masked family the diffusion LM adapted from SmolLM2
    where it is installed (it writes text; tiny-masked mostly shows the mechanics), else tiny-masked."""
    if method(name).model_kind != "masked":
        return default_target()
    return DIFFUSION_TARGET if store.available(DIFFUSION_TARGET) else FALLBACK_MASKED


def method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"Unknown method '{name}': choose one of {', '.join(METHODS)}.")
    return METHODS[name]


class Run:
    """One decoding run: its trace so far and the live engine that extends it.

    Everything is checked before anything is kept (settings, models, prompt length), so a Run that fails to
    start raises one sentence and leaves nothing behind but the models it loaded into the shared cache.

    `prompt` is a text, or a conversation as a list of {"role", "content"} messages. `chat` says whether it is
    wrapped in the target's chat template (True, False, or None: where the target is an instruct model with a
    template; engines/models/chat.py); the trace's prompt_ids then include the template's tokens."""

    def __init__(self, method_name: str, prompt: chat_template.Prompt, settings: dict[str, Any], *,
                 target: str | None = None, draft: str | None = None, seed: int | None = None,
                 device: str | None = None, dtype: str | None = None, max_prompt_tokens: int = MAX_PROMPT_TOKENS,
                 chat: bool | None = None, calibrate_first: bool = False):
        """calibrate_first: without a calibration on disk, sweep before the engine starts (as the bench does, so
        no piece of the sweep lands between the steps it times); by default the run measures as it goes."""
        m = method(method_name)
        if isinstance(prompt, str) and not prompt.strip():
            raise ValueError("The prompt is empty: type a few words for the model to continue.")
        messages = None if isinstance(prompt, str) else chat_template.messages_of(prompt)
        cfg = build(m.config, settings)
        run_settings = build(RunSettings, {**settings, **({} if seed is None else {"seed": seed})})
        target_lm = store.load(target or method_default_target(method_name), device, dtype)
        check_model_kind(m, target_lm)
        prompt_ids, chatted = chat_template.prompt_ids(target_lm, prompt, chat)
        check_prompt_length(len(prompt_ids), max_prompt_tokens)
        check_positions(m, cfg, len(prompt_ids), target_lm)
        # only the model drafter reads a draft model (the drafter registry says which do)
        needs_draft = m.uses_draft and DRAFTERS[getattr(cfg, "drafter", "model")].draft_model
        draft_lm = store.load(draft or DEFAULT_DRAFT, device, dtype) if needs_draft else None
        if draft_lm is not None:
            store.check_same_tokenizer(target_lm, draft_lm)
            check_positions(m, cfg, len(prompt_ids), draft_lm)
        # traces name models as people do (a preset, a hub id, a folder's own name), never by a server path
        models = {"target": target_lm.name, **({"draft": draft_lm.name} if draft_lm is not None else {})}
        self.target, self.draft = target_lm, draft_lm
        self.trace = Trace(method=m.name, config={**asdict(cfg), **asdict(run_settings)}, models=models,
                           prompt=chat_template.prompt_text(prompt), prompt_ids=prompt_ids, chat=chatted,
                           messages=messages)
        self._note_texts(prompt_ids)
        # the cost model's calibration: from disk when an earlier run on this machine measured the pair, else
        # measured while the run goes (never before its first step), or swept now when asked
        self._live: calibration.LiveCalibration | None = None
        if m.name in COSTED:
            found = calibration.load_cached(target_lm, draft_lm)
            if found is None and calibrate_first:   # its forwards are no step's, its caches its own
                found = cost.calibrate(target_lm, draft_lm, prompt_ids)
                calibration.save(target_lm, draft_lm, found)
            if found is not None:
                self.trace.cost = asdict(found)
            else:
                self._live = calibration.LiveCalibration(target_lm, draft_lm, prompt_ids)
        rng = torch.Generator().manual_seed(run_settings.seed)
        timed = {"verify_seconds": self.verify_seconds} if m.reads_forward_times else {}
        self._steps = m.start(self.target, self.draft, prompt_ids, cfg, rng, **timed)

    @property
    def finished(self) -> bool:
        return self.trace.finished

    def step(self) -> Step | None:
        """Run one iteration; None once the method has finished."""
        if self.trace.finished:
            return None
        if self._live is not None and self.trace.steps:   # one piece of the sweep between steps, never before the first
            self._live.measure_next()
        step = next(self._steps, None)
        if step is None:
            self.trace.finished = True
            return None
        self.trace.steps.append(step)
        if self._live is not None:
            self._live.note(step)
            self._record_calibration(step.index)
        self._note_texts(_ids_in(step))
        self.trace.output_text = self.target.decode(self.trace.output_ids)
        self.trace.finished = step.final   # so the last step already says "finished", with no extra call
        return step

    def run(self, time_limit_s: float | None = None) -> Trace:
        start = time.perf_counter()
        while self.step() is not None:
            if time_limit_s is not None and time.perf_counter() - start > time_limit_s:
                break
        self.finish_calibration()
        return self.trace

    def finish_calibration(self) -> None:
        """Time what the calibration still lacks now, after the steps (a whole run's trace should carry it)."""
        while self._live is not None and self._live.measure_next():
            self._record_calibration(self.trace.steps[-1].index if self.trace.steps else None)

    def verify_seconds(self, n: int) -> float | None:
        """Seconds of a target forward over n tokens by the run's calibration as it stands (from disk, or what the
        run has measured so far, interpolated between sizes); None before the one-token forward is timed."""
        cost_record = self.trace.cost or {}
        if "verify_n" not in cost_record:
            return None
        cal = Calibration.from_dict(cost_record)
        return cal.target_forward_s * cal.T(n)

    def _record_calibration(self, at_step: int | None) -> None:
        done = self._live.finish(at_step)
        self.trace.cost = asdict(done) if done is not None else self._live.record(at_step)
        if done is not None:
            self._live = None

    def _note_texts(self, ids) -> None:
        for i in ids:
            if i not in self.trace.token_texts:
                self.trace.token_texts[i] = self.target.token_text(i)


def check_model_kind(m: Method, target: adapter.LM) -> None:
    if m.model_kind == "masked" and not target.is_masked:
        raise presets.ModelLoadError(f"{m.title} needs a masked LM such as tiny-masked, not '{target.name}'.")
    if m.model_kind == "causal" and target.is_masked:
        raise presets.ModelLoadError(f"{m.title} needs a causal LM; '{target.name}' is a masked LM.")


def check_prompt_length(tokens: int, cap: int) -> None:
    """The server's own cap, whatever the widgets allow: a prompt's cost grows with its length."""
    if tokens > cap:
        raise ValueError(f"The prompt is {tokens} tokens, more than the {cap} this app accepts; shorten it.")


def check_positions(m: Method, cfg: DecodeConfig, prompt_tokens: int, model: adapter.LM) -> None:
    """The prompt and everything the run may add after it must fit the positions the model was trained on."""
    limit, reach = model.max_positions, m.reach(cfg)
    if limit and prompt_tokens + reach > limit:
        budget = "the span length" if m.model_kind == "masked" else "max new tokens"
        raise ValueError(f"The prompt ({prompt_tokens} tokens) and the {reach} positions {m.title.lower()} may "
                         f"add after it need {prompt_tokens + reach}, more than the {limit} of '{model.name}'; "
                         f"shorten the prompt or lower {budget}.")


def _ids_in(step: Step) -> set[int]:
    """Every token id a step mentions (committed, drafted, top-k lists), for the trace's text table."""
    found: set[int] = set(step.committed_ids)

    def walk(value: Any, key: str = "") -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, (list, tuple)):
            # before / after: a Token Recycling table row's successors, as read and as rewritten
            if key.endswith(("top", "_ids", "tokens")) or key in ("top", "tokens", "before", "after"):
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
