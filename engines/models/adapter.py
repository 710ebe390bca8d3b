"""The one adapter over transformers models.

Only this file knows about transformers' caches and attention masks. Engines see
an `LM` (a causal model with its tokenizer) and a `KV` (a cache together with the
tokens it holds), and call `forward`, `crop` and `keep`.

Cache rule: a `KV` holds committed tokens; a forward appends the tokens it is
given. Engines crop back to what verification kept, so nothing is ever re-run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from engines.models.token_text import token_text

# ----------------------------------------------------------------------------- loading

@dataclass(frozen=True, eq=False)
class LM:
    """A loaded model with its tokenizer. `name` is what messages and traces show (a preset, a hub id or the
    folder's own name); `source` is the folder or hub id it came from, which stays on the server."""
    name: str
    source: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    eos_ids: frozenset[int] = field(default_factory=frozenset)
    vocab_digest: str = ""              # equal digests: the same vocabulary, so draft ids are target ids
    cache_arg: str = "past_key_values"  # the name under which this model's forward takes the KV cache
    # A causal architecture adapted into a masked diffusion LM (Dream, DiffuLLaMA): every position sees every
    # other, and the token at position i is predicted at position i - 1, so the output layer carries over.
    shifted: bool = False

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def is_masked(self) -> bool:
        return self.shifted or type(self.model).__name__.endswith("MaskedLM")

    @property
    def can_cache(self) -> bool:
        """Whether mask-predict may keep a prefix's keys and values: the adapted diffusion LM can (a causal
        architecture under an all-visible mask); ModernBERT and BERT keep no cache in transformers."""
        return self.shifted

    @property
    def bidirectional(self) -> bool:
        """Whether a position attends to the positions after it (so a cached prefix can go stale)."""
        return self.is_masked

    @property
    def mask_id(self) -> int:
        return self.tokenizer.mask_token_id

    @property
    def max_positions(self) -> int | None:
        """How many positions the model can attend over (prompt and everything generated), if it says."""
        cfg = self.model.config
        return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)

    @property
    def weight_bytes(self) -> int:
        """Memory its weights and buffers take (tied weights counted once)."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def token_text(self, token_id: int) -> str:
        """Its text, or the bytes it holds (`<0xF0><0x9F>`) where it is part of a character (models/token_text.py)."""
        return token_text(self.tokenizer, token_id)

    # --------------------------------------------------------------- causal forward with cache
    def new_kv(self) -> "KV":
        return KV(DynamicCache(config=self.model.config), [])

    @torch.inference_mode()
    def forward(self, kv: "KV", ids: Sequence[int], *, depths: Sequence[int] | None = None,
                attend: torch.Tensor | None = None) -> torch.Tensor:
        """Append `ids` to the cache and return their next-token logits, float32 [len(ids), vocab].

        Plain call: the ids continue the cached text causally. Tree call: `attend[i, j]`
        (bool, len(ids) x len(ids)) says whether new token i may see new token j, and
        `depths[i]` is its distance from the cached text, so its position is
        len(kv) + depths[i]. Every new token sees the whole cached text.
        """
        return self._extend(kv, ids, **self._placement(kv, ids, depths, attend)).logits[0].float()

    @torch.inference_mode()
    def forward_features(self, kv: "KV", ids: Sequence[int], layers: Sequence[int], *,
                         depths: Sequence[int] | None = None,
                         attend: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward`, also returning the hidden states that draft heads read, from the same forward:
        [len(layers), len(ids), hidden], where layer 0 is the embedding output and -1 the final normed state."""
        out = self._extend(kv, ids, output_hidden_states=True, **self._placement(kv, ids, depths, attend))
        return out.logits[0].float(), torch.stack([out.hidden_states[i][0] for i in layers])

    def _placement(self, kv: "KV", ids: Sequence[int], depths: Sequence[int] | None,
                   attend: torch.Tensor | None) -> dict:
        """Position ids (and, for a tree, the additive mask) of new tokens after the cached ones."""
        n, past = len(ids), len(kv)
        kwargs = {}
        if attend is not None:
            if depths is None:
                raise ValueError("a tree forward needs the depth of every node")
            kwargs["position_ids"] = (past + torch.as_tensor(depths, device=self.device)).view(1, n)
            kwargs["attention_mask"] = self._additive_mask(attend, past)
        else:
            kwargs["position_ids"] = torch.arange(past, past + n, device=self.device).view(1, n)
        return kwargs

    def _extend(self, kv: "KV", ids: Sequence[int], **kwargs):
        """One forward of `ids` over the cache, which it appends to; the model's output."""
        out = self.model(input_ids=torch.tensor([list(ids)], device=self.device), use_cache=True,
                         **{self.cache_arg: kv.cache}, **kwargs)
        kv.tokens.extend(int(t) for t in ids)
        return out

    def _additive_mask(self, attend: torch.Tensor, past: int) -> torch.Tensor:
        n = attend.shape[0]
        allowed = torch.ones(n, past + n, dtype=torch.bool, device=self.device)
        allowed[:, past:] = attend.to(self.device, torch.bool)
        mask = torch.zeros(n, past + n, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        return mask.view(1, 1, n, past + n)

    @staticmethod
    def crop(kv: "KV", length: int) -> None:
        """Drop everything after the first `length` cached tokens."""
        if length < len(kv):
            kv.cache.crop(length - len(kv))  # negative: "remove n tokens", the form 4.x and 5.x both accept
            del kv.tokens[length:]

    @staticmethod
    @torch.inference_mode()
    def keep(kv: "KV", start: int, rows: Sequence[int]) -> None:
        """Keep cached tokens [0, start) followed by the rows start + rows[i] (an accepted tree path)."""
        index = torch.tensor([start + r for r in rows], dtype=torch.long)
        for layer in kv.cache.layers:
            for name in ("keys", "values"):
                t = getattr(layer, name)
                kept = t.index_select(-2, index.to(t.device))
                t[..., start:start + len(rows), :] = kept
        kept_tokens = [kv.tokens[start + r] for r in rows]
        LM.crop(kv, start + len(rows))
        kv.tokens[start:] = kept_tokens

    @torch.inference_mode()
    def catch_up(self, kv: "KV", ids: Sequence[int]) -> torch.Tensor:
        """Bring the cache to `ids` (crop what differs, feed the rest; at least the last token is fed)
        and return the next-token logits after ids[-1], float32 [vocab]."""
        common = 0
        limit = min(len(kv), len(ids) - 1)
        while common < limit and kv.tokens[common] == ids[common]:
            common += 1
        self.crop(kv, common)
        return self.forward(kv, ids[common:])[-1]

    # --------------------------------------------------------------- masked LM forward
    @torch.inference_mode()
    def masked_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Bidirectional forward of a masked LM: ids [batch, n] -> float32 logits [batch, n, vocab]."""
        if self.shifted:
            return torch.stack(self.masked_logits_rows(ids.tolist()))
        return self.model(input_ids=ids.to(self.device)).logits.float()

    def _all_visible(self, rows: int, queries: int, keys: Sequence[int]) -> torch.Tensor:
        """Additive 4D mask (rows, 1, queries, max(keys)) in which every query sees row r's first keys[r] keys:
        bidirectional attention on a causal architecture, with right padding hidden."""
        width = max(keys)
        hidden = torch.arange(width, device=self.device)[None, :] >= torch.tensor(list(keys), device=self.device)[:, None]
        mask = torch.zeros(rows, 1, queries, width, dtype=self.dtype, device=self.device)
        return mask.masked_fill_(hidden[:, None, None, :], torch.finfo(self.dtype).min)

    @staticmethod
    def _shift(logits: torch.Tensor) -> torch.Tensor:
        """Logits at i -> the prediction of token i (made at i - 1); the first position keeps its own row, as
        Dream does (a prompt position, never decided)."""
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)

    def cacheable(self, start: int) -> int:
        """How many leading positions may stay cached when logits from position `start` on are needed: the
        shifted model predicts token `start` at `start - 1`, which must be fed."""
        return max(0, start - 1) if self.shifted else start

    @torch.inference_mode()
    def masked_logits_cached(self, kv: "KV", row: Sequence[int], start: int) -> torch.Tensor:
        """Feed row[len(kv):] over the cached keys and values, every position seeing every other (cached and
        new), and return the masked-LM logits of row[start:], float32 [len(row) - start, vocab]. The cache then
        holds the whole row; crop it to what should be reused."""
        if not self.can_cache or self.cacheable(start) < len(kv):
            raise ValueError(f"'{self.name}' cannot give logits from position {start} over {len(kv)} cached ones.")
        past, n = len(kv), len(row) - len(kv)
        logits = self._extend(kv, row[past:], attention_mask=self._all_visible(1, n, [past + n]),
                              position_ids=torch.arange(past, past + n, device=self.device).view(1, n)).logits.float()
        # row position p is fed position p - past; its prediction, made at p - 1, is there after the shift
        return self._shift(logits)[0, start - past:]

    # --------------------------------------------------------------- growing a tree level by level
    @torch.inference_mode()
    def forward_tree_level(self, kv: "KV", ids: Sequence[int], *, start: int, depths: Sequence[int],
                           attend: torch.Tensor) -> torch.Tensor:
        """Append one level of a token tree whose upper levels are already cached (a draft growing a tree
        one forward per level) and return their next-token logits, float32 [len(ids), vocab].

        Cached tokens [0, start) are the committed text, which every new token sees. `attend[i, j]`
        (bool, len(ids) x (len(kv) - start + len(ids))) says whether new token i may see tree token j,
        counting the cached tree rows first; `depths[i]` puts it at position start + depths[i].
        """
        n, past = len(ids), len(kv)
        if tuple(attend.shape) != (n, past - start + n):
            raise ValueError(f"a tree level of {n} tokens over {past - start} cached tree rows needs a "
                             f"{n} x {past - start + n} attend matrix, not {tuple(attend.shape)}")
        allowed = torch.ones(n, past + n, dtype=torch.bool, device=self.device)
        allowed[:, start:] = attend.to(self.device, torch.bool)
        mask = torch.zeros(n, past + n, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        return self._extend(kv, ids, attention_mask=mask.view(1, 1, n, past + n),
                            position_ids=(start + torch.as_tensor(depths, device=self.device)).view(1, n)
                            ).logits[0].float()

    @torch.inference_mode()
    def masked_logits_rows(self, rows: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Rows of different lengths in one bidirectional batch (mask-predict's length beam): right-padded,
        the padding hidden from attention, so each row's logits are those of the row run alone.
        Returns float32 [len(row), vocab] for every row."""
        longest = max(len(r) for r in rows)
        limit = self.max_positions
        if limit and longest > limit:
            raise ValueError(f"The prompt and span need {longest} positions but '{self.name}' has {limit}; "
                             f"shorten the prompt or the span length.")
        ids = torch.full((len(rows), longest), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        attend = torch.zeros(len(rows), longest, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
            attend[i, :len(r)] = 1
        if self.shifted:
            mask = self._all_visible(len(rows), longest, [len(r) for r in rows])
            logits = self._shift(self.model(input_ids=ids.to(self.device), attention_mask=mask).logits.float())
        else:
            logits = self.model(input_ids=ids.to(self.device), attention_mask=attend.to(self.device)).logits.float()
        return [logits[i, :len(r)] for i, r in enumerate(rows)]


@dataclass
class KV:
    """A model's KV cache and the tokens it holds (kept in step, so crops are exact)."""
    cache: DynamicCache
    tokens: list[int]

    def __len__(self) -> int:
        return len(self.tokens)


