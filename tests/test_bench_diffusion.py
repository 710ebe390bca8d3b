"""The diffusion section's pieces that need no model: the strategies it runs, the summary and goal lines from
synthetic rows, the training-curve table from a synthetic diffusion.json; and the suite prompts reaching a masked
LM in its chat template."""
import json

from engines.analysis import diffusion_tables as dt
from engines.analysis.bench_diffusion import ITERATED, strategies, suite_set
from engines.decoding.mask_predict import FIXED, STRATEGIES


def row(method: str, ppl: float, d2: float, per_forward: float, target: str = "dlm", prompt_set: str = "bench"):
    strategy = method.removeprefix("dlm:").split(" ")[0]
    return {"method": method, "target": target, "prompt_set": prompt_set, "strategy": strategy,
            "T": int(method.split("T=")[1]) if "T=" in method else None, "gen_ppl": ppl, "distinct2": d2,
            "tokens_per_forward": per_forward}


def test_every_strategy_of_the_engine_but_threshold_runs_at_three_iteration_counts():
    assert set(FIXED) <= set(ITERATED) and set(ITERATED) | {"threshold"} == set(STRATEGIES)
    runs = strategies(32)
    assert {v["iterations"] for k, v in runs.items() if k != "threshold 0.9"} == {32, 16, 8}
    assert len(runs) == 3 * len(ITERATED) + 1 and runs["threshold 0.9"] == {"strategy": "threshold",
                                                                            "threshold": 0.9}


def test_the_suite_set_is_read_in_the_chat_template_and_quick_takes_one_chat_prompt():
    quick, full = suite_set(True), suite_set(False)
    assert quick.chat and full.chat and quick.families == ("multi_turn",)
    assert len(set(full.families)) == 6 and all(p[-1]["role"] == "user" for p in full.prompts)


def test_the_summary_means_over_prompts_per_set_and_model():
    rows = [row("dlm:diffusion T=32", 4.0, 0.6, 1.0), row("dlm:diffusion T=32", 6.0, 0.8, 1.0),
            row("dlm:diffusion T=32", 9.0, 0.5, 1.0, prompt_set="suite"), {"method": "dlm:masked top-1"}]
    bench, suite = dt.summary(rows)
    assert (bench["prompts"], bench["gen_ppl"], bench["distinct2"]) == (2, 5.0, 0.7)
    assert suite["prompt_set"] == "suite" and suite["gen_ppl"] == 9.0
    table = dt.summary_markdown(rows)
    assert "| bench | dlm | diffusion | 32 | 2 | 5.00 | 0.70 | 1.00 |" in table


def test_the_goal_lines_say_met_or_not_with_the_figures():
    rows = [row("ar:greedy", 2.5, 0.8, 1.0, target="smollm2"),
            row("dlm:diffusion T=32", 5.5, 0.72, 1.0), row("dlm:diffusion T=8", 16.0, 0.65, 4.0),
            row("dlm:threshold 0.9", 6.2, 0.7, 1.6)]
    full, quarter, tau = dt.goal_lines(rows, 32)
    assert "T=32" in full and full.endswith("met (5.50, 0.72)") and "NOT" not in full
    assert "T=8" in quarter and "NOT met (16.00, 0.65)" in quarter
    assert "NOT" not in tau and "1.60 tokens per forward" in tau and "<= 6.60" in tau   # 1.2 x 5.5
    slow = rows[:3] + [row("dlm:threshold 0.9", 6.2, 0.7, 1.2)]
    assert "NOT met" in dt.goal_lines(slow, 32)[2]
    assert dt.goal_lines(rows[:1] + [row("dlm:threshold 0.9", 6.2, 0.7, 1.6)], 32)[0].endswith("not measured")


def test_the_curve_table_is_thinned_to_about_15_rows_first_and_last_kept(tmp_path):
    curve = [{"step": 10 * i, "tokens": 20480 * i, "held_out_loss": 5 - i / 100} for i in range(1, 101)]
    curve[-1]["held_out_chat_loss"] = 2.5   # recorded from some point on only
    (tmp_path / "diffusion.json").write_text(json.dumps({"step": 1000, "curve": curve}))
    lines = dt.curve_markdown(tmp_path).splitlines()
    assert lines[0] == "| training tokens | step | held-out loss | held-out chat loss |"
    body = lines[2:]
    assert len(body) == 15 and body[0] == "| 0.02M | 10 | 4.990 | – |" and body[-1] == "| 2.05M | 1000 | 4.000 | 2.500 |"
    assert dt.curve_markdown(tmp_path / "nothing") == ""
    short = tmp_path / "short"
    short.mkdir()
    (short / "diffusion.json").write_text(json.dumps({"curve": curve[:3]}))
    assert len(dt.curve_markdown(short).splitlines()) == 2 + 3 and "chat" not in dt.curve_markdown(short)


def test_a_suite_prompt_reaches_the_masked_lm_in_its_chat_template(tiny_masked):
    from engines.analysis.bench_runs import run_trace
    prompt = suite_set(True).prompts[0]
    trace = run_trace("mask-predict", prompt, {"length": 4, "max_new_tokens": 4, "iterations": 2, "curve": "off",
                                               "strategy": "diffusion"}, tiny_masked.source, None, None, chat=True)
    text = tiny_masked.decode(trace.prompt_ids)
    assert trace.chat and text.rstrip().endswith("assistant") and prompt[-1]["content"] in text


def test_an_unknown_masked_lm_is_refused_in_one_sentence_before_any_run(capsys, tmp_path):
    """`--masked` takes presets and adapter folders, two arms in one process; one that is neither exits 2."""
    from engines.__main__ import main
    assert main(["bench", "--section", "diffusion", "--masked", f"tiny-masked,{tmp_path / 'no-such-export'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-export" in err and "folder" in err
