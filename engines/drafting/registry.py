"""Every drafter by name: what it drafts from, whether it drafts chains (speculative decoding) and trees (tree
decoding), whether it needs a draft model, and how a run starts one. The engines, the CLI's `--drafter`, the
UI's drafter choices and the race's lanes all read this table; a new drafter is a module in engines/drafting/
and one line here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from engines.drafting.base import Drafter
from engines.drafting.datastore import target_datastore
from engines.drafting.early_exit import EarlyExitDrafter
from engines.drafting.heads import has_head, head_drafter
from engines.drafting.lookup import LookupDrafter
from engines.drafting.model import ModelDrafter
from engines.drafting.recycling import RecyclingDrafter
from engines.drafting.retrieval import RetrievalDrafter
from engines.drafting.suffix import SuffixDrafter
from engines.models.adapter import LM


@dataclass(frozen=True)
class DrafterSpec:
    name: str             # what --drafter and the UI call it
    summary: str          # what it drafts from, in one clause
    chain: bool           # speculative decoding can use it
    tree: bool            # tree decoding can use it
    draft_model: bool     # needs a draft model loaded beside the target
    start: Callable[[LM, LM | None, Any], Drafter]   # (target, draft model, the method's config) -> the run's drafter
    lanes: tuple[tuple[str, str, dict], ...] = ()    # its lanes in the race: (label, method, settings)
    serves: Callable[[str], bool] = lambda target: True   # whether it can draft for this target (by preset name)
    # a head trained on the target: its q tracks the target's acceptance well enough that the UI's tree budget
    # starts at auto (engines/decoding/tree_size.py) rather than a fixed count
    head: bool = False


def start_model(target: LM, draft: LM | None, cfg: Any) -> ModelDrafter:
    if draft is None:
        raise ValueError("The model drafter needs a draft model: pick one, or choose the ngram drafter.")
    vt, vd = target.model.config.vocab_size, draft.model.config.vocab_size
    if vt != vd:
        raise ValueError(f"The draft '{draft.name}' has {vd} output tokens and the target '{target.name}' {vt}; "
                         f"pick a draft with the target's vocabulary.")
    return ModelDrafter(draft)


DRAFTERS = {spec.name: spec for spec in (
    DrafterSpec("model", "the draft model proposes", chain=True, tree=True, draft_model=True, start=start_model,
                lanes=(("speculative, model k=4", "speculative", {"drafter": "model", "k": 4}),
                       ("tree, dynamic 16", "tree", {"drafter": "model", "tree": "dynamic", "tree_budget": 16,
                                                     "tree_depth": 4, "tree_topk": 3}),
                       ("tree, sparse", "tree", {"drafter": "model", "tree": "sparse"}))),
    DrafterSpec("ngram", "prompt lookup copies what followed the text's last n-gram earlier in the prompt or "
                         "output", chain=True, tree=False, draft_model=False,
                start=lambda target, draft, cfg: LookupDrafter(cfg.lookup_ngram),
                lanes=(("speculative, ngram k=4", "speculative", {"drafter": "ngram", "k": 4, "lookup_ngram": 3}),)),
    DrafterSpec("heads", "Medusa heads on the target's last hidden state (blockwise parallel decoding as a "
                         "chain; each tree level one head's ranks)", chain=True, tree=True, draft_model=False,
                start=lambda target, draft, cfg: head_drafter(target, "heads"),
                lanes=(("tree, Medusa heads 24", "tree", {"drafter": "heads", "tree": "dynamic", "tree_budget": 24,
                                                        "tree_depth": 4, "tree_topk": 4}),),
                serves=lambda target: has_head(target, "heads"), head=True),
    DrafterSpec("hydra", "Hydra heads on the target's last hidden state and the tokens drafted before each guess "
                         "(sequentially dependent Medusa heads)", chain=True, tree=True, draft_model=False,
                start=lambda target, draft, cfg: head_drafter(target, "hydra"),
                lanes=(("tree, Hydra heads 24", "tree", {"drafter": "hydra", "tree": "dynamic", "tree_budget": 24,
                                                       "tree_depth": 4, "tree_topk": 4}),),
                serves=lambda target: has_head(target, "hydra"), head=True),
    DrafterSpec("eagle", "the EAGLE-3 head on the target's fused features, one head forward per token or tree "
                         "level", chain=True, tree=True, draft_model=False,
                start=lambda target, draft, cfg: head_drafter(target, "eagle"),
                lanes=(("tree, EAGLE dynamic 24", "tree", {"drafter": "eagle", "tree": "dynamic", "tree_budget": 24,
                                                           "tree_depth": 6, "tree_topk": 4}),),
                serves=lambda target: has_head(target, "eagle"), head=True),
    DrafterSpec("early-exit", "the target's own first --exit-layer layers and its output head (LayerSkip's "
                              "self-speculation)", chain=True, tree=True, draft_model=False,
                start=lambda target, draft, cfg: EarlyExitDrafter(target, cfg.exit_layer),
                lanes=(("speculative, early exit at half the layers k=4", "speculative",
                        {"drafter": "early-exit", "k": 4, "exit_layer": 0}),)),
    DrafterSpec("suffix", "SuffixDecoding: a frequency-scored tree from a suffix tree over the prompt and output "
                          "(no model)", chain=False, tree=True, draft_model=False,
                start=lambda target, draft, cfg: SuffixDrafter(),
                lanes=(("tree, suffix 24", "tree", {"drafter": "suffix", "tree_budget": 24, "tree_depth": 8}),)),
    DrafterSpec("recycling", "Token Recycling: each token's top-8 successors from the target's verification forwards, "
                             "rejected candidates too, walked as a template tree (no model)", chain=False, tree=True,
                draft_model=False, start=lambda target, draft, cfg: RecyclingDrafter(),
                lanes=(("tree, Token Recycling 64", "tree", {"drafter": "recycling", "tree_budget": 64,
                                                            "tree_depth": 6, "tree_topk": 8}),)),
    DrafterSpec("retrieval", "REST: a frequency-scored tree from what followed the text's longest suffix in a "
                             "datastore of the shipped corpus and chat answers (no model)", chain=False, tree=True,
                draft_model=False, start=lambda target, draft, cfg: RetrievalDrafter(
                    target_datastore(target.tokenizer, target.name)),
                lanes=(("tree, REST 24", "tree", {"drafter": "retrieval", "tree_budget": 24, "tree_depth": 8}),)),
)}


def names(kind: str) -> tuple[str, ...]:
    """The drafters that draft a `kind` ("chain" or "tree"), in table order."""
    return tuple(name for name, spec in DRAFTERS.items() if getattr(spec, kind))


def heads() -> tuple[str, ...]:
    """The drafters that are heads on the target (Medusa, Hydra, EAGLE), in table order."""
    return tuple(name for name, spec in DRAFTERS.items() if spec.head)


def described(kind: str) -> str:
    """'name: summary; ...' for the drafters of a kind: the --drafter help and the UI's info line."""
    return "; ".join(f"{name}: {DRAFTERS[name].summary}" for name in names(kind))


def start(name: str, target: LM, draft: LM | None, cfg: Any) -> Drafter:
    """The run's drafter; an unknown name or a missing draft model is refused in one sentence."""
    spec = DRAFTERS.get(name)
    if spec is None:
        raise ValueError(f"There is no drafter '{name}'; the drafters are {', '.join(DRAFTERS)}.")
    return spec.start(target, draft, cfg)
