"""Hosting on Spaces and GPUs, checked on the CPU: the hub presets, the checks on an arbitrary hub id (the hub
client faked at its boundary with the hub's own ModelInfo records, the checks real), the device_map decision,
the clock, and the ZeroGPU path (one call computes the whole trace, stepping replays it)."""
from __future__ import annotations

import json

import httpx
import pytest
import torch
from huggingface_hub import ModelInfo
from huggingface_hub.errors import NotASafetensorsRepoError, RepositoryNotFoundError

from engines.models import convert, devices, locate, presets, store
from engines.models.hub import HubPolicy
from explorer import zerogpu
from explorer.session import Sessions
from tests.conftest import PROMPTS, untimed

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
GOOD_FILES = [{"rfilename": "config.json"}, {"rfilename": "model.safetensors", "size": 2_000_000}]


class FakeHub:
    """The two HfApi calls the checks make, answering with what the hub would say about one repo."""

    def __init__(self, config=LLAMA, files=GOOD_FILES, parameters: int | None = 360_000_000, tags=(),
                 header_parameters: int | None = None):
        self.payload = {"id": "someone/model", "config": dict(config), "siblings": list(files), "tags": list(tags),
                        **({"safetensors": {"parameters": {"BF16": parameters}, "total": parameters}}
                           if parameters is not None else {})}
        self.header_parameters = header_parameters
        self.asked: list[str] = []

    def model_info(self, repo_id: str, *, files_metadata: bool = False) -> ModelInfo:
        self.asked.append(repo_id)
        return ModelInfo(**self.payload)

    def get_safetensors_metadata(self, repo_id: str):
        if self.header_parameters is None:
            raise NotASafetensorsRepoError("no safetensors header")
        return type("Meta", (), {"parameter_count": {"BF16": self.header_parameters}})()


class MissingRepo(FakeHub):
    def model_info(self, repo_id: str, *, files_metadata: bool = False) -> ModelInfo:
        url = f"https://huggingface.co/api/models/{repo_id}"
        raise RepositoryNotFoundError("404", response=httpx.Response(404, request=httpx.Request("GET", url)))


@pytest.fixture
def allowed():
    """Hub ids allowed up to 1B parameters, as app.py sets it from its environment; put back afterwards."""
    before = locate.hub_policy()
    locate.set_hub_policy(HubPolicy(max_parameters=1_000_000_000))
    yield
    locate.set_hub_policy(before)


def refusal_of(api: FakeHub) -> str:
    with pytest.raises(presets.ModelLoadError) as refused:
        locate.check_hub_id("someone/model", api)
    return str(refused.value)


# ----------------------------------------------------------------------------- hub presets

def test_every_hub_preset_names_a_hub_id_and_a_draft_preset_of_its_kind():
    hub = [p for p in presets.PRESETS.values() if p.hub_id]
    assert {p.name for p in hub} >= {"smollm2-360m-instruct", "smollm2-1.7b-instruct", "qwen2.5-0.5b-instruct",
                                     "qwen2.5-1.5b-instruct"}
    for p in presets.PRESETS.values():
        if p.draft:
            assert presets.PRESETS[p.draft].kind == p.kind == "causal"
            assert p.draft.split("-")[0] == p.name.split("-")[0]   # one family, one tokenizer


@pytest.mark.parametrize("reachable", [True, False])
def test_hub_presets_are_available_only_where_the_hub_is_reachable(monkeypatch, reachable):
    monkeypatch.setattr(locate, "hub_reachable", lambda timeout=2.0: reachable)
    assert store.available("qwen2.5-1.5b-instruct") is reachable
    assert locate.identify("smollm2-1.7b-instruct").key == "HuggingFaceTB/SmolLM2-1.7B-Instruct"
    if not reachable:
        with pytest.raises(presets.ModelLoadError, match="hub is unreachable"):
            locate.resolve("qwen2.5-0.5b-instruct")


def test_hub_presets_are_not_subject_to_the_policy_for_arbitrary_ids(monkeypatch):
    monkeypatch.setattr(locate, "hub_reachable", lambda timeout=2.0: True)
    assert not locate.hub_policy().allows_any_id
    assert locate.resolve("qwen2.5-0.5b-instruct") == "Qwen/Qwen2.5-0.5B-Instruct"


def test_the_ui_lists_hub_presets_only_where_the_hub_is_reachable(monkeypatch):
    from explorer import controls as ui
    for reachable in (False, True):
        monkeypatch.setattr(locate, "hub_reachable", lambda timeout=2.0: reachable)
        assert ("smollm2-1.7b-instruct" in ui.model_choices("causal")) is reachable
        assert ("qwen2.5-0.5b-instruct" in ui.draft_choices()) is reachable
        assert "tiny-target" in ui.model_choices("causal") and "tiny-masked" in ui.model_choices("masked")


# ----------------------------------------------------------------------------- arbitrary hub ids

def test_arbitrary_hub_ids_are_off_unless_the_launch_allows_them(monkeypatch):
    monkeypatch.setattr(locate, "hub_reachable", lambda timeout=2.0: True)
    api = FakeHub()
    assert "off on this server" in refusal_of(api)
    assert api.asked == []   # refused without asking the hub
    with pytest.raises(presets.ModelLoadError, match="off on this server"):
        locate.resolve("someone/model")


def test_a_small_safetensors_model_of_a_known_architecture_passes(allowed):
    api = FakeHub()
    locate.check_hub_id("someone/model", api)
    assert api.asked == ["someone/model"]


@pytest.mark.parametrize("api, words", [
    (FakeHub(config={**LLAMA, "auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}}), "its own code"),
    (FakeHub(config={"architectures": ["XForCausalLM"], "model_type": "x"}), "its own code"),
    (FakeHub(tags=["custom_code"]), "its own code"),
    (FakeHub(files=[{"rfilename": "config.json"}, {"rfilename": "pytorch_model.bin"}]), "no safetensors"),
    (FakeHub(parameters=7_000_000_000), "7.00B parameters, more than the 1.00B"),
    (FakeHub(parameters=None), "does not say how many parameters"),
    (MissingRepo(), "no public model"),
], ids=["auto_map", "custom-architecture", "custom-code-tag", "pickle-only", "oversize", "size-unknown", "missing"])
def test_hub_ids_are_refused_in_one_sentence(allowed, api, words):
    sentence = refusal_of(api)
    assert words in sentence and sentence.count(". ") == 0 and sentence.endswith(".")


def test_the_parameter_count_falls_back_to_the_safetensors_headers(allowed):
    locate.check_hub_id("someone/model", FakeHub(parameters=None, header_parameters=500_000_000))
    assert "more than" in refusal_of(FakeHub(parameters=None, header_parameters=2_000_000_000))


def test_no_load_asks_for_remote_code():
    import inspect
    source = "".join(inspect.getsource(m) for m in (store, convert, locate))
    assert "trust_remote_code=True" not in source and source.count("trust_remote_code=False") >= 3


# ----------------------------------------------------------------------------- GPUs

@pytest.mark.parametrize("weights, free, spread", [
    (3 * 2 ** 30, 80 * 2 ** 30, False),    # a 1.5B model in bf16 on an 80 GB GPU
    (14 * 2 ** 30, 16 * 2 ** 30, True),    # a 7B model in bf16 on a 16 GB GPU: no room left for the cache
    (12 * 2 ** 30, 16 * 2 ** 30, False),
    (1, 0, True),                          # a full GPU
])
def test_a_model_spreads_over_gpus_only_when_one_gpu_cannot_hold_it(weights, free, spread):
    assert store.spreads_over_gpus(weights, free) is spread


def test_placement_on_the_cpu_reads_no_config_and_spreads_nothing():
    assert store.gpu_placement("/nowhere", torch.float32, torch.device("cpu")) == {}


def test_parameter_bytes_counts_an_empty_copy(tiny_target):
    params = sum(p.numel() for p in tiny_target.model.parameters())
    assert store.parameter_bytes(tiny_target.source, torch.bfloat16) == 2 * params


def test_the_clock_waits_for_nothing_on_the_cpu():
    devices.synchronize(torch.device("cpu"))
    first = devices.clock(torch.device("cpu"))
    assert devices.clock(torch.device("cpu")) >= first
    assert devices.default_dtype(torch.device("cpu")) == torch.float32


# ----------------------------------------------------------------------------- ZeroGPU

WANTED = {"method": "speculative", "prompt": PROMPTS[0], "target": "tiny-target", "draft": "tiny-draft", "seed": 3,
          "settings": {"max_new_tokens": 10, "temperature": 0.8, "k": 3}}


class CountingGPU:
    """Stands where spaces.GPU stands on a ZeroGPU Space: wraps the function, here counting its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, fn):
        def on_gpu(*args):
            self.calls += 1
            return fn(*args)
        return on_gpu


@pytest.fixture
def embedded_pair(tiny_target, tiny_draft):
    if not (store.available("tiny-target") and store.available("tiny-draft")):
        pytest.skip("the embedded pair is not in assets/models")


def plain(steps) -> list[dict]:
    """Steps as JSON carries them (tuples become lists), their timings left out."""
    return [untimed(json.loads(json.dumps(s.to_dict()))) for s in steps]


def test_one_gpu_call_computes_the_whole_trace_and_stepping_replays_it(embedded_pair):
    gpu = CountingGPU()
    start = zerogpu.recorded_starter(gpu)
    session = start(WANTED)
    assert gpu.calls == 1 and session.run is None and session.cursor == -1 and session.trace.finished
    live = zerogpu.live_trace(WANTED)
    shown = []
    while session.step():
        shown.append(session.current)
    assert gpu.calls == 1
    assert plain(shown) == plain(live.steps)
    assert session.at_end and not session.step()


def test_sessions_start_a_recorded_run_and_walk_it(embedded_pair):
    gpu = CountingGPU()
    start = zerogpu.recorded_starter(gpu)
    sessions = Sessions()
    first, moved = sessions.advance("speculative", WANTED, lambda: start(WANTED))
    again, moved_again = sessions.advance("speculative", WANTED, lambda: start(WANTED))
    assert moved and moved_again and first is again and again.cursor == 1 and gpu.calls == 1
    changed = {**WANTED, "seed": 4}
    new, _ = sessions.advance("speculative", changed, lambda: start(changed))
    assert new is not first and gpu.calls == 2 and "the seed" in new.note


def test_without_spaces_the_launch_chooses_the_live_path():
    assert zerogpu.gpu_decorator() is None   # the spaces package is not installed here


def test_the_dockerfile_runs_modules_and_names_that_exist():
    """The Dockerfile's build step imported engines.lm, a module the restructure (issue 22) had moved: every
    `python -m` module and every `from X import Y` of its `python -c` commands must exist."""
    import importlib
    import importlib.util
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parent.parent / "Dockerfile").read_text()
    modules = re.findall(r"python -m ([\w.]+)", text)
    imports = [(m, n.strip()) for code in re.findall(r'python -c "([^"]+)"', text)
               for m, names in re.findall(r"from ([\w.]+) import ([\w, ]+)", code) for n in names.split(",")]
    assert modules and imports
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module
    for module, name in imports:
        assert hasattr(importlib.import_module(module), name), f"{module}.{name}"
