"""Drafters that read the target's own hidden states: Medusa / blockwise heads, Hydra heads and the EAGLE-3 head.

A head drafter lives beside one run. Each verification forward hands it the hidden states of the
positions it committed (`observe`): nothing else about the target is ever recomputed, so drafting
costs head forwards only, never a target forward. It then proposes either a chain (speculative
decoding; with heads this is Stern et al.'s blockwise parallel decoding) or a token tree level by
level through `root` and `expand`, the same interface as the draft model's tree drafting.

Heads draft deterministically (top ranks of their distribution), so each drafted token has a one-hot
q and the exact rules stay lossless under sampling; the probabilities recorded are the heads' own.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from engines.decoding import trees
from engines.decoding.sampling import Sampling
from engines.decoding.stop import until_eos
from engines.decoding.trees import Node
from engines.drafting.base import Draft, Drafter, HeadsRecord, TreeSettings
from engines.drafting.growth import grow
from engines.models import heads as H
from engines.models.adapter import LM
from engines.models.presets import MODELS_DIR

HEAD_KINDS = ("heads", "hydra", "eagle")     # drafter names -> head folder suffixes below
HEADS_DIR = MODELS_DIR / "heads"
_FOLDER_KIND = {"heads": "medusa", "hydra": "hydra", "eagle": "eagle"}

# model object -> {(folder, device, dtype): head}. Keyed weakly by the target's model itself: an id() key
# would outlive the model (its heads kept after the model cache evicted it) and could be reused by a model
# loaded later at the same address, which would then be handed heads trained for another target.
_loaded: "weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, H.MedusaHeads | H.HydraHeads | H.EagleHead]]" = \
    weakref.WeakKeyDictionary()
_lock = threading.Lock()


def head_folder(target: LM, drafter: str) -> Path:
    return HEADS_DIR / f"{target.name}-{_FOLDER_KIND[drafter]}"


def has_head(target: str, drafter: str) -> bool:
    """Whether a head of this kind was trained for the target preset `target`."""
    return (HEADS_DIR / f"{target}-{_FOLDER_KIND[drafter]}" / H.HEAD_FILE).exists()


def load_head(target: LM, drafter: str, folder: Path | None = None) -> H.MedusaHeads | H.HydraHeads | H.EagleHead:
    """The trained head for this target (once per process), refused in one sentence if there is none or it
    was trained on another target."""
    folder = folder or head_folder(target, drafter)
    if not (folder / H.HEAD_FILE).exists():
        have = sorted(p.name for p in HEADS_DIR.glob("*") if (p / H.HEAD_FILE).exists())
        raise ValueError(f"No {_FOLDER_KIND[drafter]} head was trained for '{target.name}'; heads exist for: "
                         f"{', '.join(have) or 'none'}. Pick one of those targets or another drafter.")
    key = (str(folder), str(target.device), str(target.dtype))
    with _lock:
        heads = _loaded.setdefault(target.model, {})   # a head holds no reference to the model: the key can go
        if key not in heads:
            heads[key] = H.load(folder, target.model, target.device, target.dtype)
        return heads[key]


def head_drafter(target: LM, drafter: str) -> "MedusaDrafter | HydraDrafter | EagleDrafter":
    head = load_head(target, drafter)
    return {"heads": MedusaDrafter, "hydra": HydraDrafter, "eagle": EagleDrafter}[drafter](head, target)


@dataclass
class HeadDrafter(Drafter):
    """What both head drafters share: the head, the target's frozen read-out rows for the draft vocabulary,
    and the per-iteration count of head forwards. Each verification hands them the target's hidden states of
    the positions it made final (`observe`), so drafting costs head forwards only, never a target forward."""
    head: H.MedusaHeads | H.HydraHeads | H.EagleHead
    target: LM
    forwards: int = 0
    fed: list = field(default_factory=list)    # tree nodes fed this iteration (as Drafting.fed)
    ready: bool = False                        # has seen a verification forward's hidden states

    def __post_init__(self):
        out = self.target.model.get_output_embeddings().weight
        self.readout = out.detach()[self.head.vocab.to(out.device)]
        self.vocab = self.head.vocab.to(out.device)
        self.vocab_size = out.shape[0]

    @property
    def layers(self) -> tuple[int, ...]:
        raise NotImplementedError

    def begin(self) -> None:
        """A new iteration: nothing fed to the tree yet, no head forwards counted."""
        self.fed, self.forwards = [], 0

    def draft_chain(self, text: list[int], k: int, s: Sampling, rng: torch.Generator,
                    stop_ids: frozenset[int]) -> Draft:
        """The heads' top choice at each of k positions (one-hot q); their own distributions are recorded as
        q_raw. A step's head forwards are the chain's and the one that reads this step's verification."""
        tokens, probs = self.chain(k, stop_ids)
        return Draft(tokens, q_raw=probs if tokens else None, forwards=self.forwards)

    def draft_tree(self, committed: Sequence[int], cfg: TreeSettings, depth: int) -> tuple[list[Node], list[Node]]:
        if not self.ready:   # heads draft from the first verification on
            return [], []
        return grow(self, committed, cfg, min(depth, self.max_depth))

    def after_chain(self, kept: int, features, start: int, text: Sequence[int]) -> None:
        if features is not None:
            self.observe(features, start, text)

    def after_tree(self, committed: int, rows: list[int], features, start: int, text: Sequence[int]) -> None:
        if features is not None:
            self.observe(features, start, text)

    def chain_record(self, target_tokens: Sequence[int]) -> dict:
        return {"heads": describe(self, target_tokens)}

    def tree_record(self, target_tokens: Sequence[int]) -> dict:
        return {"heads": describe(self, target_tokens)}

    def probabilities(self, hidden: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary read-out of hidden states [n, d] as probabilities over the whole target vocabulary
        [n, V] (zero outside the draft vocabulary), so tree and acceptance code index them by target id."""
        p = (hidden @ self.readout.T).float().softmax(-1)
        full = torch.zeros(p.shape[0], self.vocab_size, device=p.device)
        return full.index_copy_(1, self.vocab, p)

    def in_vocab(self, token: int) -> bool:
        return bool((self.vocab == token).any())

    def sequential_chain(self, k: int, stop_ids: frozenset[int]) -> tuple[list[int], torch.Tensor]:
        """k tokens, each the head's top choice after the ones before it: a one-branch tree, grown with the
        tree's own `expand` (k - 1 head forwards after the root)."""
        if not self.ready or k == 0:
            return [], torch.zeros(0, self.vocab_size)
        rows, tokens, path = [self.root(())], [], ()
        while True:
            tokens.append(int(rows[-1].argmax()))
            if len(tokens) == k or tokens[-1] in stop_ids or len(tokens) == self.max_depth:
                break
            path = path + (0,)
            rows.append(self.expand([ChainNode(path, tokens[-1])])[0])
        return tokens, torch.stack(rows[:len(tokens)])


class MedusaDrafter(HeadDrafter):
    name = "heads"
    """Head i reads h_t, the target's last hidden state at the last committed position, and guesses the
    token i + 1 places after the pending one: a tree level at depth i is head i's ranks, whatever the parent
    (Medusa's Cartesian product)."""
    max_depth: int

    def __post_init__(self):
        super().__post_init__()
        self.max_depth = self.head.spec.n_heads
        self.by_depth: torch.Tensor | None = None

    @property
    def layers(self) -> tuple[int, ...]:
        return (-1,)

    @torch.inference_mode()
    def observe(self, features: torch.Tensor, start: int, text: Sequence[int]) -> None:
        self.by_depth = self.probabilities(self.head(features[-1, -1:].to(self.readout.dtype))[:, 0])
        self.forwards += 1
        self.ready = True

    def root(self, committed: Sequence[int]) -> torch.Tensor:
        return self.by_depth[0]

    def expand(self, nodes: list) -> torch.Tensor:
        depth = len(nodes[0].path)
        for n in nodes:
            n.row = len(self.fed)
            self.fed.append(n)
        return self.by_depth[depth].expand(len(nodes), -1)

    def chain(self, k: int, stop_ids: frozenset[int]) -> tuple[list[int], torch.Tensor]:
        if not self.ready:
            return [], torch.zeros(0, self.vocab_size)
        probs = self.by_depth[:min(k, self.max_depth)]
        tokens = until_eos(probs.argmax(-1).tolist(), stop_ids)
        return tokens, probs[:len(tokens)]


class HydraDrafter(HeadDrafter):
    name = "hydra"
    """Hydra heads: head i reads h_t and the embeddings of the tokens before its guess, the pending token the
    target chose and the i drafted tokens on the node's path, so unlike Medusa every node of a level gets its
    own distribution (one head forward per level, batched over the level's nodes)."""
    max_depth: int

    def __post_init__(self):
        super().__post_init__()
        self.max_depth = self.head.spec.n_heads
        self.embed = self.target.model.get_input_embeddings().weight.detach()
        self.hidden: torch.Tensor | None = None
        self.pending: int | None = None
        self.root_probs: torch.Tensor | None = None
        self.node_tokens: dict[tuple, list[int]] = {}

    @property
    def layers(self) -> tuple[int, ...]:
        return (-1,)

    @torch.inference_mode()
    def heads_at(self, depth: int, prefixes: list[list[int]]) -> torch.Tensor:
        """Head `depth`'s distributions [n, V] after each prefix (the pending token, then `depth` drafts)."""
        ids = torch.tensor(prefixes, device=self.embed.device)
        h = self.hidden.expand(len(prefixes), -1)
        self.forwards += 1
        return self.probabilities(self.head(depth, h, self.embed[ids].to(h.dtype)))

    def observe(self, features: torch.Tensor, start: int, text: Sequence[int]) -> None:
        """h_t of the last committed position and the pending token after it (the target's own choice)."""
        n = features.shape[1]
        self.hidden = features[-1, -1:].to(self.readout.dtype)
        self.pending = int(text[start + n])
        self.node_tokens = {(): [self.pending]}
        self.root_probs = self.heads_at(0, [[self.pending]])[0]
        self.ready = True

    def root(self, committed: Sequence[int]) -> torch.Tensor:
        return self.root_probs

    def expand(self, nodes: list) -> torch.Tensor:
        """Head d over a level of nodes at depth d, each reading the pending token and its own path's tokens."""
        prefixes = []
        for n in nodes:
            n.row = len(self.fed)
            self.fed.append(n)
            self.node_tokens[n.path] = self.node_tokens[n.path[:-1]] + [n.token]
            prefixes.append(self.node_tokens[n.path])
        return self.heads_at(len(nodes[0].path), prefixes)

    def chain(self, k: int, stop_ids: frozenset[int]) -> tuple[list[int], torch.Tensor]:
        return self.sequential_chain(k, stop_ids)


class EagleDrafter(HeadDrafter):
    name = "eagle"
    """The EAGLE-3 head: the cache holds one entry per committed position t, (g_t, e_{t+1}) with g_t the fused
    target features; a drafted token's entry is (a_parent, e_token) with a_parent the head's own output that
    proposed it, placed one position after its parent and seeing only its ancestors."""

    def __post_init__(self):
        super().__post_init__()
        self.max_depth = 16
        self.cache = H.HeadCache()
        self.embed = self.target.model.get_input_embeddings().weight.detach()
        self.root_feature: torch.Tensor | None = None
        self.root_probs: torch.Tensor | None = None
        self.node_feature: dict[tuple, torch.Tensor] = {}

    @property
    def layers(self) -> tuple[int, ...]:
        return self.head.spec.layers

    @torch.inference_mode()
    def observe(self, features: torch.Tensor, start: int, text: Sequence[int]) -> None:
        """Entries for committed positions start .. start + n - 1 from their fused features [L, n, d] and the
        tokens that follow them; draft rows of the last iteration are dropped first."""
        if len(self.cache) < start:
            raise ValueError(f"the EAGLE head missed positions {len(self.cache)}..{start - 1}")
        self.cache.crop(start)
        n = features.shape[1]
        fused = self.head.fuse(features.permute(1, 0, 2).flatten(1).to(self.readout.dtype))
        nxt = torch.tensor(list(text[start + 1:start + n + 1]), device=fused.device)
        x = self.head.inputs(fused, self.embed[nxt])
        positions = torch.arange(start, start + n, device=fused.device)
        allowed = torch.ones(n, start + n, dtype=torch.bool, device=fused.device)
        allowed[:, start:] = torch.ones(n, n, dtype=torch.bool, device=fused.device).tril()
        a = self.head.step(x, positions, self.cache, allowed)
        self.forwards += 1
        self.root_feature = a[-1]
        self.root_probs = self.probabilities(self.head.out_norm(a[-1:]))[0]
        self.committed = start + n
        self.node_feature = {(): self.root_feature}
        self.ready = True

    def root(self, committed: Sequence[int]) -> torch.Tensor:
        return self.root_probs

    @torch.inference_mode()
    def expand(self, nodes: list) -> torch.Tensor:
        """One head forward for a level of nodes, each seeing the committed entries and its ancestors."""
        base = self.committed
        attend = trees.attend([n.path for n in nodes], [n.path for n in self.fed + nodes])
        allowed = torch.cat([torch.ones(len(nodes), base, dtype=torch.bool), attend.bool()], 1)
        feature = torch.stack([self.node_feature[n.path[:-1]] for n in nodes])
        tokens = torch.tensor([n.token for n in nodes], device=feature.device)
        positions = torch.tensor([base - 1 + len(n.path) for n in nodes], device=feature.device)
        a = self.head.step(self.head.inputs(feature, self.embed[tokens]), positions, self.cache,
                           allowed.to(feature.device))
        for n, out in zip(nodes, a):
            n.row = len(self.fed)
            self.fed.append(n)
            self.node_feature[n.path] = out
        self.forwards += 1
        return self.probabilities(self.head.out_norm(a))

    def chain(self, k: int, stop_ids: frozenset[int]) -> tuple[list[int], torch.Tensor]:
        return self.sequential_chain(k, stop_ids)


@dataclass
class ChainNode:
    """A chain draft as a one-branch tree: the same head forward serves both."""
    path: tuple
    token: int
    row: int | None = None


def describe(heads: HeadDrafter, target_tokens: Sequence[int]) -> HeadsRecord:
    """What a step records about its head drafter: which head read which target layers, the size of its
    draft vocabulary, and for each token the target chose whether a head could have drafted it at all."""
    spec = heads.head.spec
    layers = list(spec.layers) if spec.kind == "eagle" else [heads.target.model.config.num_hidden_layers]
    return HeadsRecord(kind=spec.kind, trained_on=spec.target, layers=layers,
                       target_layers=heads.target.model.config.num_hidden_layers, draft_vocab=spec.vocab_size,
                       target_in_vocab=[heads.in_vocab(int(t)) for t in target_tokens])


