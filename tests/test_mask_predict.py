"""Mask-predict and masked diffusion: schedules, re-masking rules, toy models with known answers,
the length beam, the real masked LM through Run and the CLI, and the figures."""
import dataclasses
import json
import math
from fractions import Fraction

import plotly.graph_objects as go
import pytest
import torch

from engines.decoding.mask_predict import MaskPredictConfig, candidate_lengths, mask_predict
from engines.decoding.mask_schedule import block_bounds, plan, schedule, spread
from engines.methods import Run
from engines.trace import Trace
from explorer.figures import VIEWS
from tests.conftest import PROMPTS

VOCAB = 12
MASK = VOCAB - 1


# ----------------------------------------------------------------------------- toy masked models

class Toy:
    """A tiny torch module made to look like a masked LM to the engine (mask_id, eos_ids, masked_logits_rows)."""

    def __init__(self, module: torch.nn.Module, eos_ids=frozenset()):
        self.module, self.mask_id, self.eos_ids = module, MASK, frozenset(eos_ids)
        self.batches: list[int] = []

    def masked_logits_rows(self, rows):
        self.batches.append(len(rows))
        return [self.module(torch.tensor(list(r))) for r in rows]


class Table(torch.nn.Module):
    """Logits depend on the position only, so the answer is the argmax at every position."""

    def __init__(self, positions: int = 600, seed: int = 0, sharp_length: int | None = None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.logits = torch.randn(positions, VOCAB, generator=g) * 2
        self.logits[:, MASK] = -1e9
        self.sharp_length = sharp_length   # rows of exactly this length are four times surer

    def forward(self, ids):
        scale = 4.0 if len(ids) == self.sharp_length else 1.0
        return self.logits[: len(ids)] * scale

    def answer(self, start: int, length: int) -> list[int]:
        return self.logits[start:start + length].argmax(-1).tolist()


class Chain(torch.nn.Module):
    """Position j is sure of answer[j] only when answer[j-1] stands on its left; with a mask on its left
    it weakly prefers a wrong token, and after a wrong token it is sure of a wrong token. So the text
    comes out right only when it is filled left to right, which confidence ordering finds."""

    def __init__(self, positions: int = 64, seed: int = 1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.answer = torch.randint(0, MASK, (positions,), generator=g)
        self.wrong = (self.answer + 1) % MASK

    def forward(self, ids):
        n = len(ids)
        logits = torch.zeros(n, VOCAB)
        logits[:, MASK] = -1e9
        left = torch.cat([ids[:1], ids[:-1]])
        right = left == torch.cat([self.answer[:1], self.answer[:n - 1]])
        masked = left == MASK
        rows = torch.arange(n)
        logits[rows[right], self.answer[:n][right]] = 8.0
        logits[rows[masked], self.wrong[:n][masked]] = 1.0
        other = ~right & ~masked
        logits[rows[other], self.wrong[:n][other]] = 8.0
        return logits


def run(model, prompt_ids, seed=0, **settings):
    settings.setdefault("curve", "off")   # the quality curve's extra runs would count as the model's batches
    settings.setdefault("strategy", "mask-predict")   # these tests were written for it; diffusion is the default
    return list(mask_predict(model, prompt_ids, MaskPredictConfig(**settings), torch.Generator().manual_seed(seed)))


def span(step, k=None):
    d = step.detail
    return d["spans"][d["best"] if k is None else k]


# ----------------------------------------------------------------------------- schedules

def test_schedule_hand_checked():
    assert schedule(10, 4, "mask-predict") == [10, 7, 5, 2]      # 10*3/4 = 7.5, 10*2/4 = 5, 10/4 = 2.5
    assert schedule(10, 4, "diffusion") == [10, 7, 4, 2]         # commits 3, 3, 2, 2
    assert schedule(3, 5, "mask-predict") == [3, 2, 1, 1, 0]     # T > N: some iterations re-mask nothing
    assert schedule(3, 5, "diffusion") == schedule(3, 5, "random") == [3, 2, 1, 0, 0]
    assert schedule(7, 1, "mask-predict") == schedule(7, 1, "diffusion") == [7]
    assert spread(10, 4) == [3, 3, 2, 2] and spread(2, 5) == [1, 1, 0, 0, 0]


@pytest.mark.parametrize("n", range(1, 41))
def test_schedule_exact_for_many_lengths_and_iterations(n):
    for t_total in range(1, 61):
        mp = schedule(n, t_total, "mask-predict")
        assert mp == [math.floor(Fraction(n * (t_total - t), t_total)) for t in range(t_total)]
        diff = schedule(n, t_total, "diffusion")
        base, extra = divmod(n, t_total)
        assert diff == [n - t * base - min(t, extra) for t in range(t_total)]
        assert diff[0] == mp[0] == n and all(a >= b for a, b in zip(diff, diff[1:]))


def test_blocks_and_plan():
    assert block_bounds(24, 8) == [(0, 8), (8, 16), (16, 24)]
    assert block_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert block_bounds(10, 0) == block_bounds(10, 32) == [(0, 10)]
    phases = plan(24, 8, 10)
    assert [(p.start, p.end) for p in phases] == [(0, 8)] * 4 + [(8, 16)] * 3 + [(16, 24)] * 3
    assert [(p.t, p.of) for p in phases] == [(0, 4), (1, 4), (2, 4), (3, 4), (0, 3), (1, 3), (2, 3)] + \
        [(0, 3), (1, 3), (2, 3)]


def test_candidate_lengths():
    assert candidate_lengths(MaskPredictConfig(length=24)) == [24]
    assert candidate_lengths(MaskPredictConfig(length=0, max_new_tokens=64, length_beam=5)) == [30, 31, 32, 33, 34]
    assert candidate_lengths(MaskPredictConfig(length=0, max_new_tokens=64, length_beam=1)) == [32]
    assert candidate_lengths(MaskPredictConfig(length=0, max_new_tokens=2, length_beam=5)) == [1, 2]


@pytest.mark.parametrize("settings, says", [
    ({"length": 80}, "span length 80 is more than max new tokens"),
    ({"length": 0, "block": 8}, "set block to 0"),
    ({"length": 24, "block": 2, "iterations": 10}, "12 blocks need at least 12 iterations"),
    ({"strategy": "greedy"}, "strategy must be one of"),
    ({"confidence": "entropy"}, "confidence must be one of"),
    ({"iterations": 0}, "iterations must be between"),
])
def test_bad_settings_say_what_to_change(settings, says):
    with pytest.raises(ValueError, match=says):
        MaskPredictConfig(**settings)


# ----------------------------------------------------------------------------- the engine on toys

CASES = [(n, t, b) for n in (1, 2, 3, 7, 16, 24) for t in (1, 2, 3, 5, 10, 30) for b in (0, 4)
         if len(block_bounds(n, b)) <= t]


@pytest.mark.parametrize("strategy", ["mask-predict", "diffusion", "random", "remdm"])
def test_engine_follows_the_schedule(strategy):
    for n, t_total, b in CASES:
        model = Toy(Table())
        steps = run(model, [1, 2, 3], length=n, iterations=t_total, block=b, strategy=strategy, max_new_tokens=64,
                    remask=0.5)
        assert len(steps) == t_total
        for step in steps:
            r = span(step)
            start, end = r["block"]
            counts = schedule(end - start, r["block_iterations"], strategy)
            t = r["block_iteration"]
            after = counts[t + 1] if t + 1 < len(counts) else 0
            assert len(r["masked_before"]) == counts[t] == r["scheduled_masks"] - (n - end)
            assert r["masks_after"] == after + (n - end)
            assert all(start <= i < end for i in r["masked_before"] + r["unmasked"] + r["remasked"])
            assert all(tok != MASK for tok in r["input_tokens"][:start])      # earlier blocks are done
            assert all(tok == MASK for tok in r["input_tokens"][end:])        # later blocks untouched
            if strategy == "mask-predict":
                assert len(r["remasked"]) == after
            elif strategy == "remdm":   # each re-mask of a committed token buys one more commit
                assert len(r["unmasked"]) == counts[t] - after + len(r["remasked"])
                assert not set(r["remasked"]) & set(r["masked_before"]) and len(r["remasked"]) <= after
            else:
                assert len(r["unmasked"]) == counts[t] - after and r["remasked"] == []
            assert step.target_forwards == (1 if counts[t] else 0)
        assert steps[-1].committed_ids == tuple(span(steps[-1])["tokens"]) and MASK not in steps[-1].committed_ids
        assert all(not s.committed_ids for s in steps[:-1])
        assert model.batches == [1] * sum(s.target_forwards for s in steps)
        plan_masks = span(steps[0])["plan_masks"]
        assert plan_masks == [span(s)["scheduled_masks"] for s in steps]


@pytest.mark.parametrize("strategy", ["mask-predict", "diffusion", "random", "remdm"])
def test_a_toy_with_a_known_argmax_converges_to_it(strategy):
    table = Table(seed=4)
    for n, t_total, b in [(12, 1, 0), (12, 4, 0), (12, 6, 4), (5, 9, 0)]:
        steps = run(Toy(table), [1, 2, 3, 4], length=n, iterations=t_total, block=b, strategy=strategy)
        assert list(steps[-1].committed_ids) == table.answer(4, n)


def test_confidence_ordering_solves_the_chain_and_random_order_does_not():
    chain = Chain()
    prompt = chain.answer[:3].tolist()
    want = chain.answer[3:13].tolist()
    for strategy in ("mask-predict", "diffusion"):
        steps = run(Toy(chain), prompt, length=10, iterations=10, strategy=strategy)
        assert list(steps[-1].committed_ids) == want, strategy
    steps = run(Toy(chain), prompt, length=10, iterations=10, strategy="mask-predict")
    changed = [i for s in steps for i in span(s)["unmasked"] if span(s)["input_tokens"][i] == MASK
               and s.index > 0 and span(steps[s.index - 1])["predicted_tokens"][i] != span(s)["predicted_tokens"][i]]
    assert changed, "mask-predict re-predicts re-masked tokens, and in the chain they change"
    assert list(run(Toy(chain), prompt, length=10, iterations=1, strategy="mask-predict")[-1].committed_ids) != want
    assert list(run(Toy(chain), prompt, length=10, iterations=10, strategy="random", seed=0)[-1]
                .committed_ids) != want


def test_margin_confidence_is_the_gap_to_the_best_other_token():
    table = Table(seed=5)
    steps = run(Toy(table), [1, 2], length=6, iterations=1, confidence="margin")
    probs = table.logits[2:8].softmax(-1)
    top2 = probs.topk(2, dim=-1).values
    assert span(steps[0])["confidence"] == pytest.approx((top2[:, 0] - top2[:, 1]).tolist(), abs=1e-6)
    assert span(steps[0])["p"] == pytest.approx(top2[:, 0].tolist(), abs=1e-6)


def test_length_beam_keeps_the_best_mean_log_probability():
    prompt = [1, 2, 3, 4]
    table = Table(seed=6, sharp_length=len(prompt) + 5)
    model = Toy(table)
    steps = run(model, prompt, length=0, max_new_tokens=10, length_beam=5, iterations=3)
    assert steps[0].detail["lengths"] == [3, 4, 5, 6, 7]
    assert model.batches == [5, 5, 5] and [s.target_forwards for s in steps] == [5, 5, 5]
    means = {}
    for n in (3, 4, 5, 6, 7):                      # each length run alone gives the same mean log-prob
        alone = span(run(Toy(table), prompt, length=n, max_new_tokens=10, iterations=3)[-1])
        means[n] = alone["mean_logprob"]
        beam = steps[-1].detail["spans"][steps[-1].detail["lengths"].index(n)]
        assert beam["tokens"] == alone["tokens"] and beam["mean_logprob"] == alone["mean_logprob"]
        p = alone["p"]
        assert alone["mean_logprob"] == pytest.approx(sum(math.log(x) for x in p) / n, abs=1e-5)
    best = max(means, key=means.get)
    assert best == 5 and span(steps[-1])["length"] == 5
    assert list(steps[-1].committed_ids) == table.answer(len(prompt), 5)


def test_output_stops_at_the_first_end_of_text_token():
    table = Table(seed=7)
    answer = table.answer(2, 8)
    steps = run(Toy(table, eos_ids={answer[3]}), [1, 2], length=8, iterations=2)
    assert list(steps[-1].committed_ids) == answer[:answer.index(answer[3]) + 1]
    assert span(steps[-1])["tokens"] == answer


# ----------------------------------------------------------------------------- the real masked LM

def test_ragged_rows_equal_each_row_alone(tiny_masked):
    rows = [tiny_masked.encode(PROMPTS[0]) + [tiny_masked.mask_id] * 5,
            tiny_masked.encode(PROMPTS[1]) + [tiny_masked.mask_id] * 3]
    together = tiny_masked.masked_logits_rows(rows)
    for row, logits in zip(rows, together):
        alone = tiny_masked.masked_logits(torch.tensor([row]))[0]
        assert logits.shape == alone.shape and torch.allclose(logits, alone, atol=1e-4)
    with pytest.raises(ValueError, match="shorten the prompt"):
        tiny_masked.masked_logits_rows([[5] * 10_000])


@pytest.mark.parametrize("strategy, block", [("diffusion", 4), ("random", 0)])
def test_committed_tokens_are_never_re_masked(tiny_masked, strategy, block):
    ids = tiny_masked.encode(PROMPTS[0])
    steps = run(tiny_masked, ids, seed=3, length=12, iterations=6, block=block, strategy=strategy, temperature=1.0)
    mask = tiny_masked.mask_id
    for a, b in zip(steps, steps[1:]):
        before, after = span(a)["tokens"], span(b)["tokens"]
        assert all(y == x for x, y in zip(before, after) if x != mask)
        assert span(b)["remasked"] == []
    assert list(steps[-1].committed_ids) == span(steps[-1])["tokens"][:len(steps[-1].committed_ids)]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_mask_predict_re_masks_exactly_the_least_confident(tiny_masked, temperature):
    ids = tiny_masked.encode(PROMPTS[2])
    steps = run(tiny_masked, ids, seed=1, length=16, iterations=5, temperature=temperature)
    for k, s in enumerate(steps):
        r = span(s)
        lowest = sorted(range(16), key=lambda i: (r["confidence"][i], i))[:len(r["remasked"])]
        assert sorted(lowest) == r["remasked"]
        kept = [r["confidence"][i] for i in range(16) if i not in r["remasked"]]
        assert all(r["confidence"][i] <= min(kept) for i in r["remasked"])
        if k:   # only re-predicted positions get a new confidence (the paper's update rule)
            prev = span(steps[k - 1])
            assert all(r["confidence"][i] == prev["confidence"][i] for i in range(16) if i not in r["masked_before"])


def test_same_seed_same_trace_through_run(tiny_masked):
    settings = {"length": 10, "iterations": 4, "strategy": "random", "temperature": 1.0}
    traces = [Run("mask-predict", PROMPTS[0], settings, target=tiny_masked.source, seed=s).run() for s in (7, 7, 8)]
    strip = lambda t: [{k: v for k, v in s.to_dict().items() if k != "wall_s"} for s in t.steps]
    assert strip(traces[0]) == strip(traces[1])
    assert strip(traces[0]) != strip(traces[2])


def test_run_on_the_masked_lm_records_a_replayable_trace(tiny_masked):
    trace = Run("mask-predict", PROMPTS[1], {"length": 8, "iterations": 4, "block": 4},
                target=tiny_masked.source).run()
    last = trace.steps[-1]
    assert trace.finished and len(trace.steps) == 4
    assert trace.output_ids == list(last.committed_ids) == span(last)["tokens"][:len(trace.output_ids)]
    assert trace.totals["target_forwards"] == 4 and trace.totals["tokens_fed"] == 4 * (len(trace.prompt_ids) + 8)
    assert tiny_masked.mask_id in trace.token_texts
    assert all(t in trace.token_texts for r in span(trace.steps[0])["top"] for t, _ in r)
    again = Trace.from_json(trace.to_json())
    assert again.to_dict() == trace.to_dict()


def test_length_beam_on_the_masked_lm_is_one_batch_per_iteration(tiny_masked):
    trace = Run("mask-predict", PROMPTS[3], {"length": 0, "length_beam": 3, "iterations": 3, "max_new_tokens": 16},
                target=tiny_masked.source).run()
    d = trace.steps[-1].detail
    assert d["lengths"] == [7, 8, 9] and [s.target_forwards for s in trace.steps] == [3, 3, 3]
    means = [r["mean_logprob"] for r in d["spans"]]
    assert d["best"] == means.index(max(means))
    assert trace.output_ids == d["spans"][d["best"]]["tokens"][:len(trace.output_ids)]


def test_a_causal_model_is_refused(tiny_target):
    with pytest.raises(ValueError, match="needs a masked LM"):
        Run("mask-predict", PROMPTS[0], {}, target=tiny_target.source)


def test_cli(tiny_masked, cli):
    r = cli("trace", "--method", "mask-predict", "--prompt", PROMPTS[0], "--length", "24", "--iterations", "10",
            "--strategy", "diffusion", "--block", "8", "--target", tiny_masked.source)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["totals"]["target_forwards"] == 10 and len(d["steps"]) == 10
    assert d["steps"][0]["spans"][0]["block"] == [0, 8]
    r = cli("trace", "--method", "mask-predict", "--prompt", "x", "--length", "24", "--max-new-tokens", "8",
            "--target", tiny_masked.source)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "span length" in r.stderr


# ----------------------------------------------------------------------------- figures

def toy_trace(length=12, iterations=5, text="tok", **settings) -> Trace:
    settings.setdefault("strategy", "mask-predict")
    cfg = MaskPredictConfig(length=length, iterations=iterations, max_new_tokens=max(64, length), **settings)
    prompt = [1, 2, 3]
    chain = Chain(positions=max(64, length) + 8)
    steps = list(mask_predict(Toy(chain), prompt, cfg, torch.Generator().manual_seed(0)))
    trace = Trace("mask-predict", {**dataclasses.asdict(cfg), "seed": 0}, {}, "p", prompt, steps, finished=True)
    trace.token_texts = {i: f"{text}{i}" for i in range(VOCAB)}
    trace.token_texts[MASK] = "<|mask|>"
    return trace


@pytest.mark.parametrize("settings", [{"strategy": "mask-predict"}, {"strategy": "diffusion", "block": 4},
                                      {"strategy": "random"}, {"length": 0, "length_beam": 3}])
def test_views_work_for_every_step(settings):
    trace = toy_trace(**settings)
    view = VIEWS["mask-predict"]
    for i in range(-1, len(trace.steps)):
        for fig in (view.main(trace, i), view.side(trace, i)):
            assert isinstance(fig, go.Figure) and len(fig.to_json()) < 100_000
        assert isinstance(view.words(trace, i), str) and view.words(trace, i)
        assert isinstance(view.chips(trace, i), list)


def test_heatmap_marks_re_masked_cells_and_draws_the_recorded_schedule():
    trace = toy_trace(length=10, iterations=4)
    view = VIEWS["mask-predict"]
    fig = view.main(trace, 3).to_dict()
    remasked = next(t for t in fig["data"] if t.get("name", "").startswith("re-masked"))
    assert remasked["x"].count(None) == sum(len(span(s)["remasked"]) for s in trace.steps[:4])   # one outline each
    conf = next(t for t in fig["data"] if t.get("name") == "confidence")
    first = span(trace.steps[0])
    assert all(c is not None for c in conf["z"][0])   # iteration 1 predicts every position, re-masked or not
    assert conf["z"][0] == first["confidence"]
    strip = next(t for t in fig["data"] if t.get("name") == "unmasked at iteration")
    entered = [None] * 10                  # the iteration that last unmasked each position, as recorded
    for s in trace.steps[:4]:
        for i in span(s)["unmasked"]:
            entered[i] = s.index + 1
        for i in span(s)["remasked"]:
            entered[i] = None
    assert strip["z"][0] == entered
    side = view.side(trace, 3).to_dict()
    schedule_line = next(t for t in side["data"] if t.get("name") == "schedule")
    assert list(schedule_line["y"]) == first["plan_masks"] == schedule(10, 4, "mask-predict")
    recorded = next(t for t in side["data"] if t.get("name", "").startswith("masks at the start"))
    assert list(recorded["y"]) == [len(span(s)["masked_before"]) for s in trace.steps]


def test_words_and_chips_tell_the_recorded_numbers():
    trace = toy_trace(length=10, iterations=4)
    view = VIEWS["mask-predict"]
    first = span(trace.steps[0])
    text = view.words(trace, 0)
    assert "Re-masked as the least confident" in text and f"{first['masks_after']} masks remain" in text
    chips = view.chips(trace, 0)
    assert [c.status for c in chips].count("rejected") == len(first["remasked"])
    final = view.chips(trace, 3)
    assert [c.token_id for c in final] == list(trace.steps[3].committed_ids)
    assert all(c.status != "masked" and "settled at iteration" in c.hover for c in final)


@pytest.mark.parametrize("length, iterations", [(256, 4), (256, 256), (8, 256), (64, 64)])
def test_one_step_figure_stays_under_100_kb(length, iterations):
    trace = toy_trace(length=length, iterations=iterations, text="a-long-token-text-")
    view = VIEWS["mask-predict"]
    for i in (0, len(trace.steps) // 2, len(trace.steps) - 1):
        assert len(view.main(trace, i).to_json()) < 100_000
        assert len(view.side(trace, i).to_json()) < 100_000


def test_diffusion_heatmap_leaves_masks_grey():
    trace = toy_trace(length=8, iterations=4, strategy="diffusion")
    fig = VIEWS["mask-predict"].main(trace, 1).to_dict()
    conf = next(t for t in fig["data"] if t.get("name") == "confidence")
    assert [sum(c is None for c in row) for row in conf["z"]] == [span(s)["masks_after"] for s in trace.steps[:2]]


def test_progress_line_counts_unmasked_span_positions_not_new_tokens():
    from explorer.render import position_html
    from explorer.session import Session
    trace = toy_trace(length=10, iterations=5, strategy="diffusion")
    session = Session.replay(trace)
    for i, step in enumerate(trace.steps):
        session.seek(i)
        r = step.detail["spans"][0]
        assert f"{10 - r['masks_after']} of 10 span positions unmasked" in position_html(session)
    assert "10 of 10 span positions unmasked" in position_html(session)


# ----------------------------------------------------------------------------- threshold and the cached prefix

@pytest.mark.parametrize("tau", [0.0, 0.2, 0.5, 0.9])
def test_threshold_commits_every_position_at_or_above_tau_and_at_least_one(tau):
    steps = run(Toy(Table(seed=8)), [1, 2, 3], length=16, block=4, strategy="threshold", threshold=tau, eos="allow")
    assert MASK not in steps[-1].committed_ids and steps[-1].final and not any(s.final for s in steps[:-1])
    for s in steps:
        r = span(s)
        sure = [i for i in r["masked_before"] if r["confidence"][i] >= tau]
        best = max(r["masked_before"], key=lambda i: (r["confidence"][i], -i))
        assert r["unmasked"] == (sure or [best])


def test_threshold_above_every_confidence_commits_exactly_one_per_iteration():
    steps = run(Toy(Table(seed=9)), [1, 2], length=10, strategy="threshold", threshold=1.0)
    assert len(steps) == 10 and all(len(span(s)["unmasked"]) == 1 for s in steps)
    assert all(c < 1.0 for s in steps for c in span(s)["confidence"] if c is not None)


def test_end_of_text_is_held_until_the_text_before_it_is_written():
    table = Table(seed=10)
    answer = table.answer(2, 8)
    eos = answer[5]
    steps = run(Toy(table, eos_ids={eos}), [1, 2], length=8, strategy="threshold", threshold=0.0)
    for s in steps:
        r = span(s)
        for i in r["eos_committed"]:
            assert all(r["input_tokens"][j] != MASK for j in range(i))
    assert any(span(s)["eos_held"] for s in steps)


class CausalCache:
    """A left-to-right toy with a real cache: position p's state sums the embeddings of tokens 0..p, computed
    when p is fed and then only read; token p is predicted from state p - 1 (shifted, like the diffusion LM)."""
    mask_id, eos_ids, can_cache, bidirectional = MASK, frozenset(), True, False

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.embed, self.out = torch.randn(VOCAB, 8, generator=g), torch.randn(8, VOCAB, generator=g)
        self.fed = 0

    def states(self, ids, before=None):
        start = before if before is not None else torch.zeros(8)
        return start + torch.cumsum(self.embed[torch.tensor(list(ids))], 0)

    def logits(self, states):
        out = states @ self.out
        out[:, MASK] = -1e9
        return torch.cat([out[:1], out[:-1]])

    def masked_logits_rows(self, rows):
        return [self.logits(self.states(r)) for r in rows]

    def new_kv(self):
        return []

    def cacheable(self, start):
        return start - 1

    def crop(self, kv, n):
        del kv[n:]

    def masked_logits_cached(self, kv, row, start):
        past = len(kv)
        new = self.states(row[past:], kv[-1] if kv else None)
        self.fed += len(row) - past
        kv.extend(new)
        return self.logits(torch.stack(kv))[start:]


@pytest.mark.parametrize("strategy", ["diffusion", "threshold", "mask-predict", "remdm"])
def test_the_cached_prefix_equals_the_exact_forward_where_the_model_is_causal(strategy):
    plain = run(CausalCache(), [1, 2, 3, 4], length=12, iterations=6, block=4, strategy=strategy, threshold=0.5)
    model = CausalCache()
    cached = run(model, [1, 2, 3, 4], length=12, iterations=6, block=4, strategy=strategy, threshold=0.5,
                 cache="prefix")
    assert [span(s)["tokens"] for s in cached] == [span(s)["tokens"] for s in plain]
    assert all(span(s)["drift"] is None or span(s)["drift"] < 1e-4 for s in cached)
    assert all(span(s)["drift_changed"] == [] and "stale" not in span(s)["kv_state"] for s in cached)
    assert any("cached" in span(s)["kv_state"] for s in cached)
    assert sum(s.tokens_fed for s in cached) == model.fed < sum(s.tokens_fed for s in plain)


def test_the_quality_curve_decodes_the_span_at_fewer_iterations():
    steps = run(Toy(Table(seed=11)), [1, 2], length=16, iterations=16, strategy="diffusion", curve="on")
    curve = steps[-1].detail["quality_curve"]
    assert [p["iterations"] for p in curve] == [16, 8, 4, 2] and all(s.detail["quality_curve"] is None
                                                                     for s in steps[:-1])
    assert curve[0]["tokens"] == list(steps[-1].committed_ids) and [p["forwards"] for p in curve] == [16, 8, 4, 2]


def test_the_mask_token_is_never_predicted_even_where_the_model_ranks_it_first():
    """An undertrained model may rank the mask token first; a position 'unmasked' to it would still read as masked."""
    from engines.decoding.mask_predict import Span, predict
    span, mask_id = Span(3, mask_id=5), 5
    logits = torch.zeros(3, 10)
    logits[:, mask_id] = 9.0
    logits[:, 7] = 1.0
    predict(span, logits, [0, 1, 2], 0, MaskPredictConfig(length=3, iterations=3), torch.Generator())
    assert span.predicted == [7, 7, 7] and logits[0, mask_id] == 9.0   # the caller's logits are left as they were


# ----------------------------------------------------------------------------- ReMDM remasking

def decisions(steps, keep_strategy=False) -> list[dict]:
    """Every step as the trace records it, less the wall time, the strategy's name and ReMDM's own record."""
    out = []
    for s in steps:
        d = s.to_dict()
        d.pop("wall_s")
        d["spans"] = [{k: v for k, v in r.items() if k != "remasking"} for r in d["spans"]]
        if not keep_strategy:
            d.pop("strategy")
        out.append(d)
    return out


@pytest.mark.parametrize("settings", [
    {"length": 16, "iterations": 6},
    {"length": 16, "iterations": 8, "block": 4, "temperature": 1.0, "top_k": 5},
    {"length": 0, "length_beam": 3, "iterations": 4, "max_new_tokens": 12, "temperature": 0.7},
    {"length": 12, "iterations": 6, "block": 4, "cache": "prefix"},
    {"length": 16, "iterations": 16, "curve": "on", "remask_schedule": "conf"},
])
def test_eta_zero_is_the_diffusion_strategy_token_for_token(settings):
    """remask = 0: no coin is drawn and nothing is re-masked, so every recorded decision (and, sampled, every draw
    from the generator) is diffusion's, whatever the schedule."""
    model = (lambda: CausalCache()) if settings.get("cache") == "prefix" else (lambda: Toy(Table(seed=12)))
    plain = run(model(), [1, 2, 3], seed=5, strategy="diffusion", **settings)
    remdm = run(model(), [1, 2, 3], seed=5, strategy="remdm", remask=0.0, **settings)
    assert decisions(remdm) == decisions(plain)
    assert all(r["remasking"]["coins"] == [] and r["remasked"] == [] for s in remdm for r in s.detail["spans"])


def test_eta_zero_is_diffusion_on_the_masked_lm(tiny_masked):
    ids = tiny_masked.encode(PROMPTS[0])
    for temperature in (0.0, 1.0):
        plain = run(tiny_masked, ids, seed=2, length=12, iterations=4, strategy="diffusion", temperature=temperature)
        remdm = run(tiny_masked, ids, seed=2, length=12, iterations=4, strategy="remdm", remask=0.0,
                    temperature=temperature)
        assert [s.committed_ids for s in remdm] == [s.committed_ids for s in plain]
        assert decisions(remdm) == decisions(plain)


def replay_remasking(r: dict, block_after: int, mask: int) -> None:
    """Check one recorded iteration against ReMDM's rule, from its own numbers."""
    rm = r["remasking"]
    start, end = r["block"]
    assert rm["decoded"] == [i for i in range(start, end) if r["input_tokens"][i] != mask]
    assert rm["confidence"] == [r["confidence"][i] for i in rm["decoded"]]
    if not rm["decoded"]:
        assert rm["sigma_max"] == rm["sigma"] == 0 and rm["coins"] == [] and r["remasked"] == []
        return
    assert rm["sigma_max"] == pytest.approx(min(1.0, block_after / len(rm["decoded"])), abs=1e-6)
    sigma = rm["eta"] * rm["sigma_max"] if rm["schedule"] == "rescale" else min(rm["eta"], rm["sigma_max"])
    assert rm["sigma"] == pytest.approx(sigma, abs=1e-6)
    if rm["schedule"] == "conf":   # sigma_t spread by softmax(-psi): the least confident most likely
        weights = torch.softmax(-torch.tensor(rm["confidence"], dtype=torch.float64), 0).tolist()
        assert rm["probability"] == pytest.approx([sigma * w for w in weights], abs=1e-6)
        assert sum(rm["probability"]) == pytest.approx(sigma, abs=1e-5)
    else:
        assert rm["probability"] == pytest.approx([sigma] * len(rm["decoded"]), abs=1e-6)
    assert len(rm["coins"]) == (len(rm["decoded"]) if any(rm["probability"]) else 0)
    under = [i for i, u, p in zip(rm["decoded"], rm["coins"], rm["probability"]) if u < p]
    assert sorted(r["remasked"] + rm["no_room"]) == under and len(r["remasked"]) <= block_after
    if rm["no_room"]:   # the schedule was full: the least confident of the coins under went
        assert len(r["remasked"]) == block_after
        assert max(r["confidence"][i] for i in r["remasked"]) <= min(r["confidence"][i] for i in rm["no_room"])
    assert all(r["tokens"][i] == mask for i in r["remasked"])


@pytest.mark.parametrize("schedule", ["cap", "rescale", "conf"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_remdm_records_every_coin_and_follows_the_rule(tiny_masked, schedule, temperature):
    """Each iteration's remasking replays from its record; a re-masked token is masked going into the next
    forward, which predicts it again; the schedule's mask count holds and the last iteration leaves no mask."""
    ids = tiny_masked.encode(PROMPTS[2])
    for block in (0, 8):
        steps = run(tiny_masked, ids, seed=4, length=16, iterations=8, block=block, strategy="remdm", remask=1.0,
                    remask_schedule=schedule, temperature=temperature)
        for k, s in enumerate(steps):
            r = span(s)
            end = r["block"][1]
            counts = schedule_of(r)
            after = counts[r["block_iteration"] + 1] if r["block_iteration"] + 1 < len(counts) else 0
            replay_remasking(r, after, tiny_masked.mask_id)
            assert r["masks_after"] == after + (16 - end)
            if r["remasked"]:
                nxt = span(steps[k + 1])
                assert set(r["remasked"]) <= set(nxt["masked_before"])
                assert all(nxt["top"][i] for i in r["remasked"])   # predicted again by the next forward
        assert tiny_masked.mask_id not in steps[-1].committed_ids and span(steps[-1])["masks_after"] == 0
        assert span(steps[-1])["remasking"]["sigma_max"] == 0
        if schedule != "conf":   # eta 1 remasks plenty; conf only about sigma_t tokens an iteration in all
            assert sum(len(span(s)["remasked"]) for s in steps) >= 4


def schedule_of(r: dict) -> list[int]:
    start, end = r["block"]
    return schedule(end - start, r["block_iterations"], "remdm")


def test_remasked_tokens_can_change_when_predicted_again():
    """On the chain (a token is right only after the right one on its left), a token committed too early is
    wrong; taken back by ReMDM and predicted again after its left neighbour is written, it becomes right."""
    chain = Chain()
    prompt = chain.answer[:3].tolist()
    changed = 0
    for seed in range(4):
        steps = run(Toy(chain), prompt, seed=seed, length=10, iterations=5, strategy="remdm", remask=1.0,
                    remask_schedule="rescale")
        for k, s in enumerate(steps[:-1]):
            for i in span(s)["remasked"]:
                old = span(s)["predicted_tokens"][i]
                changed += span(steps[k + 1])["predicted_tokens"][i] != old
    assert changed


def test_remdm_same_seed_same_trace_and_the_json_replays(tiny_masked):
    settings = {"length": 10, "iterations": 5, "strategy": "remdm", "remask": 0.8, "temperature": 1.0}
    traces = [Run("mask-predict", PROMPTS[0], settings, target=tiny_masked.source, seed=s).run() for s in (7, 7, 8)]
    strip = lambda t: [{k: v for k, v in s.to_dict().items() if k != "wall_s"} for s in t.steps]
    assert strip(traces[0]) == strip(traces[1]) and strip(traces[0]) != strip(traces[2])
    again = Trace.from_json(traces[0].to_json())
    assert again.to_dict() == traces[0].to_dict()
    assert any(span(s)["remasking"]["coins"] for s in again.steps)
    view = VIEWS["mask-predict"]
    for i in range(len(again.steps)):
        assert view.words(again, i) == view.words(traces[0], i)


def test_remdm_cli(tiny_masked, cli):
    r = cli("trace", "--method", "mask-predict", "--prompt", PROMPTS[0], "--length", "12", "--iterations", "6",
            "--strategy", "remdm", "--remask", "0.7", "--remask-schedule", "conf", "--target", tiny_masked.source)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["config"]["strategy"] == "remdm" and d["config"]["remask"] == 0.7
    assert all(s["spans"][0]["remasking"]["schedule"] == "conf" for s in d["steps"])
    assert d["steps"][-1]["spans"][0]["masks_after"] == 0
    r = cli("trace", "--method", "mask-predict", "--prompt", "x", "--strategy", "remdm", "--remask", "1.5",
            "--target", tiny_masked.source)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "remask" in r.stderr


def test_remdm_words_chips_and_heatmap_show_the_remasking():
    trace = toy_trace(length=12, iterations=6, strategy="remdm", remask=1.0, remask_schedule="rescale")
    view = VIEWS["mask-predict"]
    hit = next(s.index for s in trace.steps if span(s)["remasked"])
    r = span(trace.steps[hit])
    text = view.words(trace, hit)
    assert "ReMDM-rescale" in text and "sigma_max = min(1, masks left after / tokens committed) = " in text
    assert f"= min(1, {r['masks_after']} / {len(r['remasking']['decoded'])}) = {r['remasking']['sigma_max']:.3g}" in text
    assert "Re-masked, to be predicted again" in text and "Re-masked as the least confident" not in text
    first = r["remasked"][0]
    k = r["remasking"]["decoded"].index(first)
    assert f"u = {r['remasking']['coins'][k]:.3g} < {r['remasking']['probability'][k]:.3g}" in text
    chips = view.chips(trace, hit)
    assert [i for i, c in enumerate(chips) if c.status == "rejected"] == r["remasked"]
    fig = view.main(trace, hit).to_dict()
    outline = next(t for t in fig["data"] if t.get("name", "").startswith("re-masked"))
    shown = [trace.steps[y - 1] for y in next(t for t in fig["data"] if t.get("name") == "confidence")["y"]]
    assert outline["x"].count(None) == sum(len(span(s)["remasked"]) for s in shown)
    conf = next(t for t in fig["data"] if t.get("name") == "confidence")
    assert "re-mask coin u" in conf["customdata"][-1][first]
    assert "ReMDM: no token of this block was committed" in view.words(trace, 0)
    assert "no coin was drawn (the last iteration" in view.words(trace, len(trace.steps) - 1)
    assert all(c.status != "masked" for c in view.chips(trace, len(trace.steps) - 1))
