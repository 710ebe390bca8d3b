"""What the diffusion adapter's continued training draws: chat rows that mask only the answers, complementary
pairs that partition the maskable positions, mask ratios weighted toward 1, and the published adapter as the
starting point."""
import torch

from engines.models import store
from engines.training import common
from engines.training import diffusion as td
from tests.test_train_diffusion import pattern, toy_llama


def test_complementary_rows_mask_exactly_what_their_pair_left_visible():
    maskable = torch.rand(8, 40, generator=torch.Generator().manual_seed(1)) < 0.8
    maskable[4:] = maskable[:4]                       # draw_batch repeats the texts
    masked, t = td.training_noise(maskable, torch.Generator().manual_seed(2), complementary=True)
    first, second = masked[:4], masked[4:]
    assert not (first & second).any()
    assert torch.equal(first | second, maskable[:4])
    assert torch.allclose(t[4:], (1 - t[:4]).clamp(min=1e-3))
    assert not (masked & ~maskable).any()


def test_high_t_puts_71_percent_of_the_ratios_above_one_half_and_uniform_half():
    g = torch.Generator().manual_seed(0)
    high, uniform = td.draw_t(20000, g, high=True), td.draw_t(20000, g, high=False)
    assert abs((high > 0.5).float().mean().item() - 0.5 ** 0.5) < 0.02
    assert abs((uniform > 0.5).float().mean().item() - 0.5) < 0.02
    assert ((0 < high) & (high <= 1)).all()


def test_chat_rows_mask_answers_and_the_padding_after_them_never_the_prompt():
    tok = store.load("smollm2-135m-instruct").tokenizer
    ids, maskable = td.chat_rows("smollm2-135m-instruct", "held_out", 256, tok.eos_token_id)
    assert ids.shape == maskable.shape and ids.shape[1] == 256 and len(ids) > 0
    opening = tok.encode("<|im_start|>assistant\n")
    for row, may in zip(ids[:20], maskable[:20]):
        first = int(may.nonzero()[0])
        # everything before the first maskable token is the prompt: it ends where the assistant's turn opens
        assert row[:first].tolist()[-len(opening):] == opening
        assert not may[0]


def test_book_rows_never_mask_the_first_position_and_half_only_after_a_cut():
    x = pattern(400, 32)
    may = td.book_maskable(x, torch.Generator().manual_seed(0))
    assert not may[:, 0].any()
    whole = may[:, 1:].all(1).float().mean().item()
    assert 0.4 < whole < 0.65          # the rows without a cut, and cut rows whose cut fell at the start


def test_a_mixed_batch_with_both_tricks_trains_and_lowers_the_loss():
    model = td.adapt(toy_llama(), mask_id=16, rank=4)
    data, held = pattern(64), pattern(8)
    chat = (pattern(32), torch.arange(24)[None, :].expand(32, 24) >= 10)
    mix = td.Mix(chat=chat, chat_share=0.5, high_t=True, complementary=True)
    x, (masked, _) = td.draw_batch(data, mix, 8, torch.Generator().manual_seed(0))
    assert x.shape == (8, 24) and torch.equal(x[:4], x[4:]) and not masked[:2, :10].any()
    before = td.held_out_loss(model, held, 16)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    td.train_steps(model, data, 16, steps=40, batch=8, lr=2e-2, generator=torch.Generator().manual_seed(0),
                   opt=opt, mix=mix)
    assert td.held_out_loss(model, held, 16) < 0.98 * before


def test_the_default_mix_draws_what_the_first_run_drew():
    data = pattern(64)
    x, (masked, t) = td.draw_batch(data, td.Mix(), 8, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    want = data[torch.randint(len(data), (8,), generator=g)]
    want_masked, want_t = td.noise(want, g)
    assert torch.equal(x, want) and torch.equal(masked, want_masked) and torch.equal(t, want_t)


def test_training_starts_from_the_published_adapter_and_goes_on_with_its_curve():
    peft_model = td.fresh_adapter(td.BASE, 32)
    info = td.published_state(peft_model, td.NAME)
    assert info["step"] > 0 and info["curve"]
    published = store.load(td.NAME, device="cpu", dtype="float32")
    x = torch.tensor([common.tokenizer()("The cat sat on the mat and looked at the")["input_ids"]])
    core = peft_model.get_base_model().eval()
    with torch.no_grad():
        hidden = core.model(input_ids=x, attention_mask=td.all_visible(*x.shape, core.dtype)).last_hidden_state
        ours = core.lm_head(hidden)[0]
        theirs = published.masked_logits_rows([x[0].tolist()])[0]
    assert torch.allclose(ours[:-1], theirs[1:], atol=1e-2)     # the published rows read token i at i - 1
