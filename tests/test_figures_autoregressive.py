"""The baseline's figures and sentences, from a hand-made step (no model)."""
from engines.trace import Step, Trace
from explorer.figures import autoregressive as view
from explorer.figures.common import chips_html
from explorer.render import Screen, figure_bytes, render
from explorer.session import Session


def hand_made_trace() -> Trace:
    step = Step(index=0, committed_ids=(7,), target_forwards=1, tokens_fed=3, wall_s=0.012, detail={
        "chosen": 7, "p_chosen": 0.8, "raw_p_chosen": 0.6, "top": [[7, 0.8], [9, 0.2]],
        "raw_top": [[7, 0.6], [9, 0.3], [4, 0.1]], "cache_len": 3})
    return Trace(method="autoregressive", config={"max_new_tokens": 4, "temperature": 0.7}, models={"target": "x"},
                 prompt="a b c", prompt_ids=[1, 2, 3], steps=[step],
                 token_texts={1: "a", 2: " b", 3: " c", 7: " dog", 9: " cat", 4: "\n"})


def test_distribution_figure_holds_the_recorded_numbers():
    fig = view.distribution(hand_made_trace(), 0).to_plotly_json()
    raw, processed, marker = fig["data"]
    assert list(raw["y"]) == [0.6, 0.3, 0.1] and list(processed["y"]) == [0.8, 0.2, 0]
    assert raw["x"][0] == " dog (7)"
    assert marker["text"] == ["chosen"] and "hovertemplate" in raw
    assert fig["layout"]["uirevision"] == "keep" and fig["layout"]["paper_bgcolor"] == "rgba(0,0,0,0)"


def test_words_give_the_real_numbers():
    text = view.words(hand_made_trace(), 0)
    assert '" dog"' in text and "0.600" in text and "0.800 after processing" in text
    assert '" cat" (0.300)' in text and "temperature 0.7" in text and "12 ms" in text


def test_nothing_yet_has_a_sentence_and_an_empty_figure():
    trace = hand_made_trace()
    assert "Nothing has run yet" in view.words(trace, -1)
    assert view.distribution(trace, -1).to_plotly_json()["data"] == []


def test_chips_mark_the_chosen_token_and_escape_text():
    trace = hand_made_trace()
    trace.token_texts[7] = "<b>"
    html = chips_html(trace, view.chips(trace, 0))
    assert 'class="chip chip-chosen"' in html and "&lt;b&gt;" in html and "<b>" not in html


def test_screen_of_a_step_is_small():
    screen = render(Session.replay(hand_made_trace()), "autoregressive")
    assert isinstance(screen, Screen) and screen.history_max == 1 and screen.history_value == 1
    assert figure_bytes(screen.main) < 100_000 and figure_bytes(screen.side) < 100_000
