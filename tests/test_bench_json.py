"""`python -m engines bench --json PATH` on the tiny pair with short settings: every race figure per prompt, and
speculative decoding's ratios to transformers' assisted and prompt-lookup generation."""
import json

from engines.analysis.bench import PROMPTS, bench_json
from engines.analysis.race import Row


def test_bench_json_carries_the_race_and_the_transformers_ratios(tmp_path, tiny_target, tiny_draft):
    path = tmp_path / "bench.json"
    bench_json(str(path), quick=True, max_new_tokens=4, target=tiny_target.source, prompts=PROMPTS[:1])
    data = json.loads(path.read_text())
    assert data["command"] == "python -m engines bench --json bench.json --quick --max-new-tokens 4"
    assert [r["prompt"] for r in data["race"]] == PROMPTS[:1]
    for race in data["race"]:
        assert {r["method"] for r in race["rows"]} >= {"autoregressive", "speculative", "tree", "jacobi", "lookahead"}
        assert all(set(Row.__dataclass_fields__) <= set(r) for r in race["rows"])
        assert race["cost"]["words"]
    spec = {r["method"]: r for r in data["speculative_vs_transformers"]}
    assert spec["speculative"]["wall_ratio_vs_assisted_generate"] > 0
    assert spec["speculative:ngram"]["wall_ratio_vs_assisted_generate"] > 0   # against prompt-lookup generate
    # and the README's tables are made from it
    from engines.analysis.bench_table import tables
    text = tables(data, "bench.json")
    assert data["command"] in text and all(f"| {r['label']} |" in text for r in data["race"][0]["rows"])


# ----------------------------------------------------------------------------- bench-table, on a hand-written file

def race_row(label, method, iterations, target_forwards, draft_forwards, fed_per_forward, wall_ratio, equals,
             accepted=0, examined=0):
    return {"label": label, "method": method, "new_tokens": 8, "iterations": iterations,
            "target_forwards": target_forwards, "draft_forwards": draft_forwards,
            "tokens_fed_per_forward": fed_per_forward, "wall_ratio": wall_ratio, "equals_greedy": equals,
            "acceptance_rate": accepted / examined if examined else None, "drafts_accepted": accepted,
            "drafts_examined": examined}


FIXTURE = {
    "command": "python -m engines bench --json bench.json --max-new-tokens 8", "target": "tiny-target",
    "max_new_tokens": 8,
    "race": [
        {"prompt": "Once upon a time", "target": "tiny-target", "draft": "tiny-draft", "max_new_tokens": 8,
         "rows": [race_row("autoregressive", "autoregressive", 8, 8, 0, 1.0, 1.0, True),
                  race_row("speculative, model k=4", "speculative", 3, 3, 12, 5.0, 1.2, True, 5, 7),
                  race_row("jacobi, block 8", "jacobi", 6, 6, 0, 8.0, 1.5, True, 2, 6)],
         "cost": {"c": 0.8, "verify_n": [1, 2, 5], "verify_cost": [1.0, 1.2, 1.9]}},
        {"prompt": "Alice was", "target": "tiny-target", "draft": "tiny-draft", "max_new_tokens": 8,
         "rows": [race_row("autoregressive", "autoregressive", 8, 8, 0, 1.0, 1.0, True),
                  race_row("speculative, model k=4", "speculative", 4, 4, 16, 5.0, 1.4, False, 4, 8),
                  race_row("jacobi, block 8", "jacobi", 8, 8, 0, 8.0, 1.7, True, 0, 8)],
         "cost": {"c": 0.9, "verify_n": [1, 2, 5], "verify_cost": [1.0, 1.4, 2.1]}}],
    "speculative_vs_transformers": [
        {"method": "speculative", "target": "tiny-target", "new_tokens": 24, "target_forwards_per_token": 0.375,
         "acceptance": 0.7, "same_output_as_generate": 1.0, "wall_ratio_vs_assisted_generate": 0.9,
         "run_wall_ratio_vs_assisted_generate": 1.1},
        {"method": "speculative", "target": "tiny-target", "new_tokens": 24, "target_forwards_per_token": 0.425,
         "acceptance": 0.6, "same_output_as_generate": 1.0, "wall_ratio_vs_assisted_generate": 1.0,
         "run_wall_ratio_vs_assisted_generate": 1.3},
        {"method": "speculative:ngram", "target": "SmolLM2-135M-Instruct", "new_tokens": 24,
         "target_forwards_per_token": 0.59, "acceptance": 0.5, "same_output_as_generate": 0.0,
         "wall_ratio_vs_assisted_generate": 0.92, "run_wall_ratio_vs_assisted_generate": 0.97}]}


def test_bench_table_shows_every_figure_and_the_commands(tmp_path, capsys):
    from engines.__main__ import main
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(FIXTURE))
    assert main(["bench-table", str(path)]) == 0
    text = capsys.readouterr().out
    # the commands: the one that measured, the one that made the tables
    assert "`python -m engines bench --json bench.json --max-new-tokens 8`" in text
    assert f"`python -m engines bench-table {path}`" in text
    assert "2 prompts x 8 new tokens" in text
    # summed over the prompts: forwards, tokens per forward, tokens fed, acceptance, tokens per iteration;
    # the speedup (> 1 faster) is the mean of the prompts' own with its range; greedy equality counted per prompt
    assert "| autoregressive | 16 | 0 | 1.00 | 1.00 | – | 1.00 | 1.00x (1.00-1.00) | 2/2 |" in text
    assert "| speculative, model k=4 | 7 | 28 | 2.29 | 5.00 | 0.60 (9/15) | 2.29 | 0.77x (0.71-0.83) | 1/2 |" in text
    assert "| jacobi, block 8 | 14 | 0 | 1.14 | 8.00 | 0.14 (2/14) | 1.14 | 0.63x (0.59-0.67) | 2/2 |" in text
    assert "c = 0.85 target forwards" in text and "T(2) = 1.30, T(5) = 2.00" in text
    # speculative against transformers' assisted and prompt-lookup generation
    assert "greedy, k = 4, 24 new tokens per prompt" in text
    assert ("| speculative | tiny-target | transformers' assisted generation (`assistant_model`, constant 4 drafts) "
            "| 0.400 | 0.65 | 2/2 | 1.06x (1.00-1.11) | 0.84x (0.77-0.91) |") in text
    assert ("| speculative:ngram | SmolLM2-135M-Instruct | transformers' prompt-lookup generation "
            "(`prompt_lookup_num_tokens=4`) | 0.590 | 0.50 | 0/1 | 1.09x | 1.03x |") in text
    assert "Race on" not in text   # per prompt only when asked

    assert main(["bench-table", str(path), "--per-prompt"]) == 0
    text = capsys.readouterr().out
    assert "Race on 'Alice was': tiny-target, draft tiny-draft, 8 new tokens, greedy." in text
    assert "| speculative, model k=4 | 4 | 16 | 2.00 | 5.00 | 0.50 (4/8) | 2.00 | 0.71x | 0/1 |" in text
    assert "c = 0.90 target forwards" in text


def test_bench_table_refuses_a_file_that_is_not_bench_json(tmp_path, capsys):
    from engines.__main__ import main
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"method": "autoregressive"}))
    assert main(["bench-table", str(path)]) == 2
    assert "not written by `python -m engines bench --json`" in capsys.readouterr().err
    assert main(["bench-table", str(tmp_path / "missing.json")]) == 2
