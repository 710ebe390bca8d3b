"""The same engines on a GPU: skipped where there is none (as on the CI machine), run wherever there is one.

Float32 on CUDA must stay exact against generate(); bfloat16 (the GPU default) must run every method
end to end, with the seeded draws still taken on the CPU generator so traces stay reproducible.
"""
import pytest
import torch

from engines import lm
from engines.methods import METHODS, Run
from tests.conftest import PROMPTS, greedy_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CAUSAL = ["autoregressive", "speculative", "tree", "jacobi", "lookahead"]


@pytest.fixture(scope="module")
def pair():
    if not (lm.available("tiny-target") and lm.available("tiny-draft")):
        pytest.skip("the embedded pair is not in assets/models")
    return lm.load("tiny-target", "cuda", "float32"), lm.load("tiny-draft", "cuda", "float32")


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
    if not lm.available(target):
        pytest.skip(f"{target} is not in assets/models")
    settings = {"max_new_tokens": 12, "temperature": 0.0 if method == "jacobi" else 0.8}
    runs = [Run(method, PROMPTS[0], settings, target=target, draft="tiny-draft", device="cuda", dtype="bfloat16",
                seed=3).run() for _ in range(2)]
    assert lm.load(target, "cuda", "bfloat16").dtype == torch.bfloat16
    assert runs[0].output_ids == runs[1].output_ids and len(runs[0].steps) > 0
