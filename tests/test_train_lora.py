"""The LoRA trainers' shared pieces (engines/training/lora.py): a checkpoint resumes the adapter, the optimiser and
the record exactly, the schedule warms up then decays to a tenth, and a missing checkpoint is one sentence."""
import pytest
import torch

from engines.training import lora
from tests.test_train_diffusion import pattern, toy_llama


def one_step(peft_model, opt) -> None:
    loss = peft_model(input_ids=pattern(2), labels=pattern(2)).loss
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_a_resumed_run_takes_the_same_next_step_as_one_never_stopped(tmp_path):
    a = lora.adapt(toy_llama(3), rank=4)
    opt_a = lora.optimizer(a, 1e-2)
    one_step(a, opt_a)
    lora.save_state(tmp_path / "ckpt.pt", a, opt_a, step=1, tokens=48, curve=[{"step": 1}])
    b = lora.adapt(toy_llama(3), rank=4)
    opt_b = lora.optimizer(b, 1e-2)
    record = lora.resume(tmp_path / "ckpt.pt", b, opt_b)
    assert record["step"] == 1 and record["tokens"] == 48 and record["curve"] == [{"step": 1}]
    one_step(a, opt_a)
    one_step(b, opt_b)
    for (name, wa), wb in zip(a.named_parameters(), b.parameters()):
        if wa.requires_grad:
            assert torch.allclose(wa, wb, atol=1e-6), name   # Adam's moments came back too
    assert lora.adapter_rank(record["adapter"]) == 4


def test_no_checkpoint_resumes_nothing_and_reads_as_one_sentence(tmp_path):
    model = lora.adapt(toy_llama(), rank=2)
    assert lora.resume(tmp_path / "ckpt.pt", model, lora.optimizer(model, 1e-3)) is None
    with pytest.raises(ValueError, match=r"^There is no checkpoint ckpt.pt .*; run `go` first\.$"):
        lora.read_checkpoint(tmp_path / "ckpt.pt", "go")
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="damaged"):
        lora.read_checkpoint(tmp_path / "ckpt.pt")


def test_the_learning_rate_warms_up_then_decays_to_a_tenth():
    rates = [lora.learning_rate(1.0, s, 10, 100) for s in range(101)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0, abs=0.02)
    assert max(rates) <= 1.0 and rates[100] == pytest.approx(0.1)
    assert all(x >= y for x, y in zip(rates[10:], rates[11:]))
