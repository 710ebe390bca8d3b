"""Self-speculative early-exit drafting: the target's own first L decoder layers, then its final norm and output
head, draft for the whole target (LayerSkip, Elhoushi et al. 2024, arXiv 2404.16710, section 4; Draft & Verify,
Zhang et al. 2023, arXiv 2309.08168, which skips layers inside the model instead of exiting early).

The drafter is a second model object built around the target's own modules: the embeddings, layers[:L], the
final norm, the rotary embedding and the output head are the target's (shared, no copy of a weight), inside a
skeleton of the target's class whose config says L layers. The target object itself is never touched: nothing is
set on it, no attribute is swapped for the duration of a call. transformers' `generate(assistant_early_exit=L)`
instead sets `num_hidden_layers = L` on the target's config around each drafting call (candidate_generator.py,
EarlyExitCandidateGenerator), which a second thread using the same model would see half-way.

The drafter keeps its own transformers DynamicCache of L layers (engines.models.adapter.KV): one new token per
draft forward, the prefix never re-run, and after each verification it is cropped to what the target kept, as
the draft model's is (engines/drafting/model.py does the drafting; this module only builds the model it drafts
with). LayerSkip's shared cache, where verification reuses the draft's first-L-layer keys and values and runs only
layers L+1..N on the drafted tokens, is NOT done here: the target verifies with its own full forward and cache,
so the first L layers of every drafted token are computed twice (once to draft, once to verify).

SmolLM2 and the tiny models were not trained with LayerSkip's layer dropout and early-exit loss, so their
intermediate layers read through the final head are weaker drafters than LayerSkip's checkpoints'.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Sequence

import torch
from torch import nn

from engines.drafting.base import EarlyExitRecord
from engines.drafting.model import ModelDrafter
from engines.models.adapter import LM


def layer_count(target: LM) -> int:
    return int(target.model.config.num_hidden_layers)


def exit_layer_of(target: LM, requested: int) -> int:
    """The layer the draft exits after: `requested`, or half the target's layers for 0; refused in one sentence
    unless 1 <= L < the target's layer count (L = all layers would be the target drafting for itself)."""
    n = layer_count(target)
    exit_layer = requested or n // 2
    if not 1 <= exit_layer < n:
        raise ValueError(f"The exit layer must be between 1 and {n - 1} for '{target.name}', which has {n} "
                         f"layers (0 takes half of them), not {requested}.")
    return exit_layer


def decoder_layers(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """The decoder stack (model.model, say) and its layer list; refused for an architecture without one."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"The early-exit drafter needs a decoder with a list of layers (model.layers), which "
                         f"{type(model).__name__} does not have; choose another drafter.")
    return base, layers


def first_layers(target: LM, exit_layer: int) -> LM:
    """The target's first `exit_layer` layers with its final norm and head, as an LM of their own: a skeleton of
    the target's class made on the meta device (no memory), whose children are then the target's modules."""
    model = target.model
    base, layers = decoder_layers(model)
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = exit_layer
    if getattr(config, "layer_types", None):   # per-layer attention kinds (sliding or full) also size the cache
        config.layer_types = list(config.layer_types[:exit_layer])
    with torch.device("meta"):
        view = type(model)(config)
    view.train(False)   # before the target's modules go in, so their own (eval) state is never written
    view_base = getattr(view, model.base_model_prefix)
    for name, child in base.named_children():
        setattr(view_base, name, nn.ModuleList(layers[:exit_layer]) if name == "layers" else child)
    for name, child in model.named_children():
        if name != model.base_model_prefix:
            setattr(view, name, child)
    left = [name for name, t in (*view.named_parameters(), *view.named_buffers()) if t.is_meta]
    if left:
        raise ValueError(f"The early-exit drafter cannot reuse every part of {type(model).__name__} "
                         f"({left[0]} has no counterpart in the target); choose another drafter.")
    return dataclasses.replace(target, name=f"{target.name} layers 1-{exit_layer}", model=view)


class EarlyExitDrafter(ModelDrafter):
    """The target's first L layers as the draft model: chains token by token, trees level by level, with a
    cache of its own cropped to what the target kept (ModelDrafter), and the exit layer in every step record."""
    name = "early-exit"

    def __init__(self, target: LM, exit_layer: int):
        self.exit_layer = exit_layer_of(target, exit_layer)
        self.target_layers = layer_count(target)
        super().__init__(first_layers(target, self.exit_layer))

    def record(self) -> EarlyExitRecord:
        return EarlyExitRecord(exit_layer=self.exit_layer, target_layers=self.target_layers)

    def chain_record(self, target_tokens: Sequence[int]) -> dict:
        return {**super().chain_record(target_tokens), "early_exit": self.record()}

    def tree_record(self, target_tokens: Sequence[int]) -> dict:
        return {"early_exit": self.record()}
