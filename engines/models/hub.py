"""Which Hugging Face models this process may download beyond its presets, and the checks made before it does.

Arbitrary hub ids are off unless a launch setting (app.py's environment, the CLI's flag) gives a parameter cap.
A repo is then read through the hub's model info only (no weights move) and refused, in one sentence, if it
would run code from the repo, has no safetensors weights, or is larger than the cap. `trust_remote_code` is
never set anywhere in this project, so a refused repo could not run its code anyway: the check says so early.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import transformers
from huggingface_hub.errors import NotASafetensorsRepoError, SafetensorsParsingError
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES


@dataclass(frozen=True)
class HubPolicy:
    """Hub ids beyond the presets: allowed only up to `max_parameters` parameters (0: not at all)."""
    max_parameters: int = 0

    @property
    def allows_any_id(self) -> bool:
        return self.max_parameters > 0


class ModelInfoSource(Protocol):
    """The part of huggingface_hub's HfApi these checks use; tests pass a fake at this boundary."""
    def model_info(self, repo_id: str, *, files_metadata: bool = False) -> Any: ...
    def get_safetensors_metadata(self, repo_id: str) -> Any: ...


def default_api() -> ModelInfoSource:
    from huggingface_hub import HfApi  # only where a hub id is really checked
    return HfApi()


def refusal(repo_id: str, policy: HubPolicy, api: ModelInfoSource) -> str:
    """Why `repo_id` may not be downloaded here ('' when it may), asking the hub about its files only."""
    if not policy.allows_any_id:
        return (f"Hugging Face ids other than the presets are off on this server, so '{repo_id}' cannot be "
                f"loaded; pick a preset.")
    info = api.model_info(repo_id, files_metadata=True)
    return (remote_code_refusal(repo_id, info.config or {}, info.tags or [])
            or safetensors_refusal(repo_id, [s.rfilename for s in info.siblings or []])
            or size_refusal(repo_id, parameter_count(repo_id, info, api), policy.max_parameters))


def remote_code_refusal(repo_id: str, config: dict, tags: list[str]) -> str:
    """A repo whose config maps to its own classes (auto_map), or names an architecture or model type that the
    installed transformers does not know, would need its own code run."""
    architectures = config.get("architectures") or []
    unknown = [a for a in architectures if not hasattr(transformers, a)]
    model_type = config.get("model_type")
    if config.get("auto_map") or "custom_code" in tags or unknown or (model_type and model_type not in
                                                                        CONFIG_MAPPING_NAMES):
        return (f"'{repo_id}' needs its own code to run ({', '.join(unknown) or model_type or 'auto_map'}), and "
                f"this server never runs code from a model repo; pick a model that transformers supports.")
    return ""


def safetensors_refusal(repo_id: str, filenames: list[str]) -> str:
    """Pickled weights (.bin, .pt) can run code when read; only safetensors are loaded."""
    if not any(name.endswith(".safetensors") for name in filenames):
        return (f"'{repo_id}' has no safetensors weights, and this server loads no other format; pick a model "
                f"published as safetensors.")
    return ""


def size_refusal(repo_id: str, parameters: int | None, max_parameters: int) -> str:
    if parameters is None:
        return f"The hub does not say how many parameters '{repo_id}' has, so it is not loaded here; pick a preset."
    if parameters > max_parameters:
        return (f"'{repo_id}' has {parameters / 1e9:.2f}B parameters, more than the {max_parameters / 1e9:.2f}B "
                f"this server loads; pick a smaller model.")
    return ""


def parameter_count(repo_id: str, info: Any, api: ModelInfoSource) -> int | None:
    """Parameters counted from the safetensors headers: the hub's summary, else the headers themselves."""
    summary = getattr(info, "safetensors", None)
    if summary is not None and summary.total:
        return int(summary.total)
    try:
        counts = api.get_safetensors_metadata(repo_id).parameter_count
    except (OSError, NotASafetensorsRepoError, SafetensorsParsingError):   # no readable safetensors header
        return None
    return sum(counts.values()) or None
