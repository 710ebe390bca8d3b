"""Draft heads that read the target's own hidden states: Medusa / blockwise heads, Hydra heads and an EAGLE-3
head.

All are small modules trained by `python -m engines.training heads ...` (engines/training/heads.py) and saved
as a folder with `head.json` (what it is, which target it was trained on) and `model.safetensors`.

- Medusa heads (Stern et al. 2018, blockwise parallel decoding; Cai et al. 2024, arXiv 2401.10774):
  head i is a residual block h + SiLU(W_i h) on the target's last (normed) hidden state h_t, read out by
  the target's own frozen output layer; it guesses the token at t + i + 1.
- Hydra heads (Ankner et al. 2024, arXiv 2402.05109): Medusa heads made sequentially dependent. Head i
  reads h_t and the tokens drafted before it, x_{t+1} (the pending token the target chose) .. x_{t+i+1}:
  h_t + SiLU(W_i [h_t; P e(x_{t+1}); ..; P e(x_{t+i+1})]), e the target's frozen embedding, P a small shared
  projection; it guesses the token at t + i + 2 after that prefix, so each tree node gets its own guess.
- EAGLE-3 head (Li et al. 2025, arXiv 2503.01840): a fusion of a low, a middle and a high layer of the
  target, g_t = W_f [l_t; m_t; h_t], is joined with the embedding of the next token, W_in [e_{t+1}; g_t],
  and one decoder layer runs autoregressively at the feature level; its output a_t is read out over a
  reduced draft vocabulary and stands in for the next feature when the head drafts further.

All read out through rows of the target's frozen output layer restricted to the draft vocabulary (the
corpus's most frequent tokens), so a draft step costs a few percent of a target forward; the mapping
back to target ids is `vocab`. No weights of the target are copied: the head holds references to the
target's embedding and output matrices, handed to it when it is attached.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HEAD_FILE = "head.json"
WEIGHTS_FILE = "model.safetensors"


class HeadMismatchError(ValueError):
    """A head was loaded against a target it was not trained on."""


def fingerprint(model) -> str:
    """A short digest of a causal model's shape and a slice of its embedding matrix: equal only for the same
    weights (up to dtype rounding), so a head refuses every target but its own."""
    cfg = model.config
    emb = model.get_input_embeddings().weight
    probe = emb[:64, :16].detach().float().cpu()
    h = hashlib.sha256()
    h.update(json.dumps([cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers]).encode())
    h.update(torch.round(probe * 64).to(torch.int32).numpy().tobytes())  # bf16 and f32 copies agree
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class HeadSpec:
    kind: str                 # "medusa", "hydra" or "eagle"
    target: str               # the preset it was trained on (for messages)
    target_fingerprint: str
    hidden: int
    vocab_size: int           # the draft vocabulary's size
    n_heads: int = 4          # medusa: heads; eagle: attention heads
    layers: tuple[int, ...] = ()   # eagle: the target's hidden-state indices fused (low, middle, high)
    mlp: int = 0              # eagle: MLP width
    rope_theta: float = 10000.0
    token_width: int = 0      # hydra: width of each drafted token's projected embedding
    training: dict | None = None   # what training reached (held-out figures), for the record

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def fusion_layers(num_layers: int) -> tuple[int, ...]:
    """EAGLE-3's low, middle and high features: indices into hidden_states (0 is the embedding output)."""
    return (min(2, num_layers), max(1, num_layers // 2), max(1, num_layers - 2))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class ResBlock(nn.Module):
    """h + SiLU(W h + b), W zero at the start so each head begins as the target's own next-token guess."""
    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.zeros_(self.linear.weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + F.silu(self.linear(h))


class MedusaHeads(nn.Module):
    def __init__(self, spec: HeadSpec):
        super().__init__()
        self.spec = spec
        self.blocks = nn.ModuleList(ResBlock(spec.hidden) for _ in range(spec.n_heads))
        self.register_buffer("vocab", torch.zeros(spec.vocab_size, dtype=torch.long))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [..., d] -> every head's hidden [heads, ..., d]."""
        return torch.stack([b(h) for b in self.blocks])


class HydraHeads(nn.Module):
    """Head i: h + SiLU(W_i [h; P e_1; ..; P e_{i+1}] + b_i), e_j the target's embeddings of the i + 1 tokens
    that precede its guess (the pending one first); W_i starts at zero, so each head begins as the target's
    own next-token guess. The embeddings are the caller's (the target's frozen matrix), never copied here."""

    def __init__(self, spec: HeadSpec):
        super().__init__()
        self.spec = spec
        d, r = spec.hidden, spec.token_width
        self.project = nn.Linear(d, r, bias=False)
        self.blocks = nn.ModuleList(nn.Linear(d + (i + 1) * r, d) for i in range(spec.n_heads))
        for b in self.blocks:
            nn.init.zeros_(b.weight)
        self.register_buffer("vocab", torch.zeros(spec.vocab_size, dtype=torch.long))

    def forward(self, i: int, h: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Head i's hidden [..., d] from h [..., d] and the embeddings [..., i + 1, d] of the tokens before its
        guess."""
        if embeddings.shape[-2] != i + 1:
            raise ValueError(f"Hydra head {i} reads {i + 1} drafted tokens, not {embeddings.shape[-2]}.")
        x = torch.cat([h, self.project(embeddings).flatten(-2)], -1)
        return h + F.silu(self.blocks[i](x))


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding of x [..., n, heads, head_dim] at integer positions [..., n]."""
    dim = x.shape[-1]
    freq = theta ** (-torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim)
    angle = positions.to(torch.float32)[..., None] * freq            # [..., n, dim/2]
    cos, sin = angle.cos()[..., None, :], angle.sin()[..., None, :]   # broadcast over heads
    x1, x2 = x.float()[..., : dim // 2], x.float()[..., dim // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)


class EagleHead(nn.Module):
    """One decoder layer over [embedding of the next token; fused target features]."""

    def __init__(self, spec: HeadSpec):
        super().__init__()
        d, self.heads = spec.hidden, spec.n_heads
        self.spec, self.head_dim = spec, d // spec.n_heads
        self.fuse = nn.Linear(len(spec.layers) * d, d, bias=False)
        self.embed_norm, self.feature_norm = RMSNorm(d), RMSNorm(d)
        self.join = nn.Linear(2 * d, d, bias=False)
        self.attn_norm, self.mlp_norm, self.out_norm = RMSNorm(d), RMSNorm(d), RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.gate_up = nn.Linear(d, 2 * spec.mlp, bias=False)
        self.down = nn.Linear(spec.mlp, d, bias=False)
        self.register_buffer("vocab", torch.zeros(spec.vocab_size, dtype=torch.long))

    def inputs(self, feature: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """The layer's input from a feature [.., d] (fused target feature or the head's own output) and the
        embedding of the token that follows it."""
        return self.join(torch.cat([self.embed_norm(embedding), self.feature_norm(feature)], -1))

    def qkv_at(self, x: torch.Tensor, positions: torch.Tensor):
        """x [..., n, d] -> rotated queries and keys and values [..., n, heads, head_dim]."""
        q, k, v = self.qkv(self.attn_norm(x)).unflatten(-1, (3, self.heads, self.head_dim)).unbind(-3)
        return rope(q, positions, self.spec.rope_theta), rope(k, positions, self.spec.rope_theta), v

    def finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Residual attention output, then the MLP: the head's output feature a."""
        x = x + self.o(attended.flatten(-2))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, -1)
        return x + self.down(F.silu(gate) * up)

    def step(self, x: torch.Tensor, positions: torch.Tensor, cache: "HeadCache", allowed: torch.Tensor) -> torch.Tensor:
        """Decode-time forward of n new entries x [n, d] at `positions`, appended to `cache`; allowed [n, len
        (cache) + n] says what each may attend to. Returns the output features [n, d]."""
        q, k, v = self.qkv_at(x, positions)
        cache.append(k, v)
        scores = torch.einsum("nhd,mhd->hnm", q.float(), cache.k.float()) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(~allowed[None], float("-inf"))
        attended = torch.einsum("hnm,mhd->nhd", scores.softmax(-1), cache.v.float()).to(x.dtype)
        return self.finish(x, attended)


class HeadCache:
    """The EAGLE head's keys and values, one row per entry (committed entries first, then draft rows)."""

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[0]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k = k if self.k is None else torch.cat([self.k, k])
        self.v = v if self.v is None else torch.cat([self.v, v])

    def crop(self, length: int) -> None:
        if self.k is not None and length < len(self):
            self.k, self.v = self.k[:length], self.v[:length]


def build(spec: HeadSpec) -> MedusaHeads | HydraHeads | EagleHead:
    return {"medusa": MedusaHeads, "hydra": HydraHeads}.get(spec.kind, EagleHead)(spec)


def save(head: MedusaHeads | HydraHeads | EagleHead, folder: Path) -> None:
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.bfloat16) if v.is_floating_point() else v.detach()
             for k, v in head.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / HEAD_FILE).write_text(head.spec.to_json())


def read_spec(folder: Path) -> HeadSpec:
    data = json.loads((folder / HEAD_FILE).read_text())
    data["layers"] = tuple(data.get("layers", ()))
    return HeadSpec(**data)


def load(folder: Path, target_model, device: torch.device, dtype: torch.dtype) -> MedusaHeads | HydraHeads | EagleHead:
    """A head folder -> the module on the target's device, refusing a target it was not trained on."""
    from safetensors.torch import load_file
    spec = read_spec(folder)
    if spec.target_fingerprint != fingerprint(target_model):
        raise HeadMismatchError(f"These {spec.kind} heads were trained on '{spec.target}' and cannot draft for "
                                f"another target; pick '{spec.target}' as the target or another drafter.")
    head = build(spec)
    head.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return head.to(device=device, dtype=dtype).eval()
