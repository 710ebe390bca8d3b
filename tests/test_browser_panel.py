"""Issue 21, in a real browser: the results panel always shows the run it names (the position line's data-run),
the selected tab's current run, whatever another run, a loaded trace or a tab switch does meanwhile; Stop says
"stopped"; every press of Step is a step.

Runs are long (hundreds of tokens on the tiny models) so that Run to end is still going when the test acts.
"""
import pytest

from engines.methods import METHODS, Run
from explorer.screenshot import browser_page, iteration, open_app, press_step

LONG = "400"    # new tokens: a Run to end that lasts while the test switches tabs


@pytest.fixture(scope="module")
def page(chromium, app_url, tiny_target, tiny_draft):
    with browser_page() as p:
        open_app(p, app_url)
        yield p


@pytest.fixture
def fresh(page, tiny_target, tiny_draft):
    """The page reloaded (a new visitor: no runs), on the tiny models."""
    page.reload()
    page.wait_for_function("() => (document.querySelector('#words')?.innerText || '').includes('Press Step')")
    choose(page, "target", tiny_target.source)     # the draft model's default is tiny-draft
    return page


def choose(page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id} input").fill(value)
    page.locator(f"#{elem_id} input").press("Enter")


def select_method(page, name: str) -> None:
    """Pick a method's tab and wait for the panel to name that tab's run (or its empty state)."""
    page.get_by_role("radio", name=METHODS[name].title, exact=True).check()
    page.wait_for_function("m => (document.querySelector('#position [data-run]')?.dataset.run || '')"
                           ".startsWith(m + ':')", arg=name, timeout=60_000)


def shown_run(page) -> str:
    return page.evaluate("() => document.querySelector('#position [data-run]')?.dataset.run || ''")


def watch_panel(page) -> None:
    """Record every run the panel names from now on, and the words, as the page changes."""
    page.evaluate("""() => {
        window.panelRuns = [];
        const note = () => {
            const run = document.querySelector('#position [data-run]')?.dataset.run || '';
            window.panelRuns.push([run, document.querySelector('#position')?.innerText || '',
                                   document.querySelector('#words')?.innerText || '']);
        };
        window.panelWatch?.disconnect();
        window.panelWatch = new MutationObserver(note);
        for (const id of ['#position', '#words', '#main-plot'])
            window.panelWatch.observe(document.querySelector(id), {subtree: true, childList: true,
                                                                   characterData: true, attributes: true});
    }""")


def seen_runs(page) -> list[list[str]]:
    return page.evaluate("() => window.panelRuns")


def start_long_run(page, method: str) -> None:
    select_method(page, method)
    page.locator("#opt-max_new_tokens input").fill(LONG)
    page.locator("#opt-max_new_tokens input").press("Enter")
    page.click("#reset-btn")
    page.wait_for_function("() => document.querySelector('#position').innerText.includes('Before the first')",
                           timeout=120_000)


def stop_and_settle(page) -> None:
    """Stop whatever runs, so the next test starts on a quiet server."""
    page.click("#stop-btn")
    page.wait_for_timeout(1000)


def test_switching_tabs_during_run_to_end_shows_the_new_tab_and_nothing_of_the_old_run(fresh):
    """Sequence 1: Tree, Run to end, then Jacobi while it runs: the tree run wrote its figure, words and
    'Iteration 10 ... 15 of 24' into the Jacobi tab."""
    start_long_run(fresh, "tree")
    fresh.click("#run-btn")
    fresh.wait_for_function("() => /Iteration ([3-9]|\\d\\d+) of/.test(document.querySelector('#position').innerText)",
                            timeout=120_000)
    tree_run = shown_run(fresh)
    assert tree_run.startswith("tree:") and "running" in fresh.locator("#position").inner_text()
    select_method(fresh, "jacobi")
    watch_panel(fresh)
    fresh.wait_for_timeout(3000)                    # the tree run goes on meanwhile
    assert shown_run(fresh) == "jacobi:none"
    assert "start jacobi decoding" in fresh.locator("#words").inner_text()
    assert "No run yet" in fresh.locator("#position").inner_text()
    assert all(run == "jacobi:none" for run, _, _ in seen_runs(fresh)), seen_runs(fresh)[:3]
    at_switch = iteration(fresh)
    select_method(fresh, "tree")                   # back on Tree: its own run, where the engine is now
    assert shown_run(fresh) == tree_run and iteration(fresh) > at_switch
    stop_and_settle(fresh)


def test_a_tab_switch_racing_the_start_of_run_to_end_leaves_the_new_tab_on_screen(fresh):
    """Run to end and a tab switch in the same moment, before the run's first screen: whichever the server
    answers first, the panel ends on the selected tab and no screen of the run reaches it after the switch."""
    start_long_run(fresh, "speculative")
    watch_panel(fresh)
    fresh.evaluate("""() => {
        document.querySelector('#run-btn').click();
        [...document.querySelectorAll('#method input[type=radio]')].find(r => r.value === 'lookahead').click();
    }""")
    fresh.wait_for_function("() => document.querySelector('#position [data-run]')?.dataset.run === 'lookahead:none'",
                            timeout=60_000)
    fresh.wait_for_timeout(3000)
    runs = [run for run, _, _ in seen_runs(fresh)]
    first = runs.index("lookahead:none")
    assert set(runs[first:]) == {"lookahead:none"}, runs[first:][:5]
    assert "start lookahead decoding" in fresh.locator("#words").inner_text()
    select_method(fresh, "speculative")
    fresh.wait_for_function("() => /Iteration \\d+ of/.test(document.querySelector('#position').innerText)",
                            timeout=60_000)    # the run went on while its tab was not shown
    stop_and_settle(fresh)


def test_loading_a_trace_replaces_the_panel_at_once(fresh, tiny_target, tmp_path):
    """Sequence 2: an autoregressive trace loaded on the Speculative tab: the method and settings switched, but
    the figure, words and position kept the speculative run until the next Step."""
    path = tmp_path / "autoregressive.json"
    trace = Run("autoregressive", "It was a dark and stormy night", {"max_new_tokens": 5},
                target=tiny_target.source).run()
    path.write_text(trace.to_json())
    select_method(fresh, "speculative")
    fresh.click("#reset-btn")
    fresh.wait_for_function("() => document.querySelector('#position').innerText.includes('Before the first')",
                            timeout=120_000)
    press_step(fresh, 2)
    assert shown_run(fresh).startswith("speculative:")
    fresh.locator("input[type=file]").first.set_input_files(str(path))   # the Load trace button's input
    fresh.wait_for_function("() => document.querySelector('#position').innerText.includes('replay of a loaded')",
                            timeout=60_000)
    assert shown_run(fresh).startswith("autoregressive:")
    assert fresh.get_by_role("radio", name=METHODS["autoregressive"].title, exact=True).is_checked()
    assert iteration(fresh) == 5 and "Iteration 5 of 5" in fresh.locator("#position").inner_text()
    assert "The target read" in fresh.locator("#words").inner_text()     # the replay's own words
    assert "draft" not in fresh.locator("#words").inner_text().lower()     # the speculative words are gone
    fresh.wait_for_timeout(1500)                    # and nothing of the speculative run comes back later
    assert shown_run(fresh).startswith("autoregressive:")
    assert "replay of a loaded trace" in fresh.locator("#position").inner_text()


def test_stop_says_stopped_and_the_run_goes_no_further(fresh):
    """Stop left the position line saying 'running'; once the run went on 7 more iterations (4 s)."""
    start_long_run(fresh, "autoregressive")
    fresh.click("#run-btn")
    fresh.wait_for_function("() => /Iteration ([3-9]|\\d\\d+) of/.test(document.querySelector('#position').innerText)",
                            timeout=120_000)
    fresh.click("#stop-btn")
    fresh.wait_for_function("() => document.querySelector('#position').innerText.includes('stopped')",
                            timeout=10_000)
    stopped_at = iteration(fresh)
    assert "running" not in fresh.locator("#position").inner_text()
    fresh.wait_for_timeout(2000)
    assert iteration(fresh) == stopped_at
    press_step(fresh)                                # Step goes on from where it stopped
    assert iteration(fresh) == stopped_at + 1 and "running" in fresh.locator("#position").inner_text()


def test_every_step_press_is_a_step(fresh):
    """Ten fast clicks gave 7 steps and five presses of n gave 1: presses made while a step was under way
    vanished. Each press is now a step, in order."""
    select_method(fresh, "autoregressive")
    fresh.locator("#opt-max_new_tokens input").fill("40")
    fresh.locator("#opt-max_new_tokens input").press("Enter")
    fresh.click("#reset-btn")
    fresh.wait_for_function("() => document.querySelector('#position').innerText.includes('Before the first')",
                            timeout=120_000)
    fresh.evaluate("() => { for (let i = 0; i < 10; i++) document.querySelector('#step-btn').click(); }")
    fresh.wait_for_function("() => document.querySelector('#position').innerText.includes('Iteration 10 of 10')",
                            timeout=120_000)
    watch_panel(fresh)
    fresh.locator("body").click(position={"x": 5, "y": 5})
    for _ in range(5):
        fresh.keyboard.press("n")
    fresh.wait_for_function("() => document.querySelector('#position').innerText.includes('Iteration 15 of 15')",
                            timeout=120_000)
    fresh.wait_for_timeout(1500)
    assert iteration(fresh) == 15, [p for _, p, _ in seen_runs(fresh)]   # no more steps than presses
