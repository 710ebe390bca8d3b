"""`python -m engines bench --json PATH` on the tiny pair with short settings: every race figure per prompt, and
speculative decoding's ratios to transformers' assisted and prompt-lookup generation."""
import json

from engines.bench import PROMPTS, bench_json
from engines.race import Row


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
