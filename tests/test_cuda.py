"""The same engines on a GPU: skipped where there is none (as on the CI machine), run wherever there is one.

Float32 on CUDA must stay exact against generate(); bfloat16 (the GPU default) must run every method
end to end, with the seeded draws still taken on the CPU generator so traces stay reproducible.
"""
import pytest
import torch

from engines.methods import METHODS, Run
from engines.models import devices, presets, store
from tests.conftest import PROMPTS, greedy_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CAUSAL = ["autoregressive", "speculative", "tree", "jacobi", "lookahead"]


@pytest.fixture(scope="module")
def pair():
    if not (store.available("tiny-target") and store.available("tiny-draft")):
        pytest.skip("the embedded pair is not in assets/models")
    return store.load("tiny-target", "cuda", "float32"), store.load("tiny-draft", "cuda", "float32")


@pytest.mark.parametrize("method", CAUSAL)
def test_greedy_on_cuda_equals_generate(pair, method):
    target, draft = pair
    assert target.device.type == "cuda"
    trace = Run(method, PROMPTS[1], {"max_new_tokens": 24}, target=target.source, draft=draft.source,
                device="cuda", dtype="float32").run()
    assert trace.output_ids == greedy_reference(target, trace.prompt_ids, 24)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_in_bfloat16_and_the_seed_fixes_the_trace(method):
    m = METHODS[method]
    target = "tiny-masked" if m.model_kind == "masked" else "tiny-target"
    if not store.available(target):
        pytest.skip(f"{target} is not in assets/models")
    settings = {"max_new_tokens": 12, "temperature": 0.0 if method == "jacobi" else 0.8}
    runs = [Run(method, PROMPTS[0], settings, target=target, draft="tiny-draft", device="cuda", dtype="bfloat16",
                seed=3).run() for _ in range(2)]
    assert store.load(target, "cuda", "bfloat16").dtype == torch.bfloat16
    assert runs[0].output_ids == runs[1].output_ids and len(runs[0].steps) > 0


def test_the_zerogpu_path_computes_a_whole_trace_on_the_gpu_in_one_call(pair):
    """The replay path as a ZeroGPU Space runs it, with the decorator replaced by a counting wrapper: the run
    happens inside the one call, on CUDA, and stepping afterwards walks the recorded steps without the model."""
    from explorer import zerogpu
    calls = []

    def gpu(fn):
        def on_gpu(wanted):
            calls.append(torch.cuda.memory_allocated())
            return fn(wanted)
        return on_gpu

    wanted = {"method": "speculative", "prompt": PROMPTS[0], "target": "tiny-target", "draft": "tiny-draft",
              "seed": 0, "settings": {"max_new_tokens": 16, "temperature": 0.0, "k": 4}}
    session = zerogpu.recorded_starter(gpu)(wanted)
    steps = 0
    while session.step():
        steps += 1
    assert len(calls) == 1 and steps == len(session.trace.steps) > 0 and session.trace.finished
    target = store.load("tiny-target")   # default device and dtype: CUDA in bfloat16 here, where the call ran
    assert target.device.type == "cuda" and target.dtype == devices.default_dtype(target.device)
    assert session.trace.output_ids == zerogpu.live_trace(wanted).output_ids


HUB_PAIRS = [(p.name, p.draft) for p in presets.PRESETS.values() if p.hub_id and p.draft]


@pytest.mark.parametrize("target_name, draft_name", HUB_PAIRS)
@pytest.mark.parametrize("method", ["speculative", "tree"])
def test_hub_pairs_on_cuda_equal_greedy_generate(target_name, draft_name, method):
    """The GPU hosts' presets: drafting with the smaller model of the family keeps
    the target's greedy output. Skipped where the hub is unreachable."""
    if not (store.available(target_name) and store.available(draft_name)):
        pytest.skip("the hub presets need the Hugging Face hub")
    target = store.load(target_name, "cuda", "float32")   # exact; bfloat16 may break near ties either way
    trace = Run(method, PROMPTS[2], {"max_new_tokens": 24}, target=target_name, draft=draft_name,
                device="cuda", dtype="float32").run()
    assert trace.output_ids == greedy_reference(target, trace.prompt_ids, 24)
