"""Readability in a real browser (issue 15): the phone-width layout, the draft model control, dark mode.

Measured on the tiny models at 420 x 900 px: before the narrow layout the first figure (#main-plot) began
2,018 px down the page (autoregressive), under the header, the method tabs and about 1,400 px of settings; with
it, 929 px (autoregressive) and 942 px (speculative). The method's two-sentence introduction and the glossary's
line (issue 21) then added about 150 px: 1,096 px for speculative, the longest introduction. The bound below
leaves some room for a longer text so far.
"""
import pytest

from explorer.screenshot import browser_page, open_app, press_step

PHONE = 420               # px: a phone held upright
FIRST_RESULT_BOUND = 1150  # px from the top of the page to the top of the first figure at PHONE width


@pytest.fixture(scope="module")
def url(chromium, app_url):
    return app_url


@pytest.fixture(scope="module")
def phone(url, tiny_target):
    with browser_page(width=PHONE, height=900) as p:
        open_app(p, url)
        choose_option(p, "target", tiny_target.source)
        p.locator("#chat input").uncheck()   # tiny-target learnt plain text (a folder keeps the box as it was)
        yield p


@pytest.fixture(scope="module")
def dark(url, phone, tiny_target):
    """A desktop-width page in Gradio's dark theme, in the phone page's browser (Playwright's sync API runs one
    browser session per thread)."""
    p = phone.context.browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        open_app(p, url + "?__theme=dark")
        choose_option(p, "target", tiny_target.source)
        yield p
    finally:
        p.close()


def choose_method(page, title: str) -> None:
    """Switch tabs and wait until the tab's own options show (a tab keeps its last run on screen, so its words
    need not change)."""
    from engines.methods import METHODS
    name = next(m.name for m in METHODS.values() if m.title == title)
    tab = page.get_by_role("radio", name=title, exact=True)
    if not tab.is_checked():
        tab.check()
    if name == "autoregressive":     # no options of its own: another tab's go
        page.locator("#opt-speculative-k").wait_for(state="hidden", timeout=120_000)
    else:
        page.locator(f"[id^='opt-{name}-']").first.wait_for(state="visible", timeout=120_000)


def choose_option(page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id} input").fill(value)
    page.locator(f"#{elem_id} input").press("Enter")


def restart_and_step(page, steps: int = 1) -> None:
    """A new run of the tab on screen, `steps` steps in, its figure drawn. Where a draft model is used, the target
    drafts for itself: what is measured here is the page, not the drafting."""
    if page.locator("#draft input").is_visible():
        choose_option(page, "draft", page.locator("#target input").input_value())
    page.click("#reset-btn")
    page.wait_for_function("() => document.querySelector('#position').innerText.includes('Before the first')",
                           timeout=120_000)
    press_step(page, steps)
    page.wait_for_function("() => document.querySelector('#main-plot .js-plotly-plot')?.data?.length > 0",
                           timeout=60_000)


def top(page, selector: str) -> float:
    """The top of an element in page coordinates (px from the top of the page, whatever the scroll)."""
    return page.evaluate("s => document.querySelector(s).getBoundingClientRect().top + window.scrollY", selector)


def overflowing(page) -> list[str]:
    """The page's horizontal overflow and the visible elements that reach past the viewport's right edge. Text
    inside a figure is left out: Plotly clips it to the figure (a long figure title is cut, not overflowing)."""
    return page.evaluate("""() => {
        const width = document.documentElement.clientWidth, out = [];
        if (document.documentElement.scrollWidth > width) out.push(`page ${document.documentElement.scrollWidth}px`);
        for (const el of document.querySelectorAll('.workspace *')) {
            const r = el.getBoundingClientRect();
            if (r.width && r.right > width + 1 && el.checkVisibility() && !el.closest('svg'))
                out.push(`${el.tagName.toLowerCase()}#${el.id}.${el.className?.baseVal ?? el.className} ${Math.round(r.right)}px`);
        }
        return out.slice(0, 10); }""")


# ----------------------------------------------------------------------------- phone width

@pytest.mark.parametrize("title", ["Autoregressive", "Speculative"])
def test_at_phone_width_the_results_come_before_the_settings(phone, title):
    choose_method(phone, title)
    restart_and_step(phone)
    first = top(phone, "#main-plot")
    assert first < FIRST_RESULT_BOUND, f"the first figure starts {first:.0f} px down at {PHONE} px wide"
    assert top(phone, "#step-btn") < first
    assert top(phone, "#settings") > top(phone, "#words")     # the settings follow the step's words
    assert top(phone, "#prompt") < top(phone, "#step-btn")    # the prompt stays above Step
    assert overflowing(phone) == []


def test_at_phone_width_the_coin_labels_keep_apart(phone):
    """Speculative sampling draws a coin per drafted token, each on a u axis from 0 to 1 in a narrow column; the
    axis labels ran together ("0 0.5 10 0.5 1") at phone width."""
    choose_method(phone, "Speculative")
    temperature = phone.locator("#opt-temperature input[type=number]")
    temperature.fill("0.8")
    temperature.press("Enter")
    restart_and_step(phone, 2)
    overlaps = phone.evaluate("""() => {
        const boxes = [...document.querySelectorAll('#main-plot .xaxislayer-above text')]
            .filter(t => ['0', '0.5', '1'].includes(t.textContent.trim()) && t.checkVisibility())
            .map(t => [t.textContent, t.getBoundingClientRect()]);
        const out = [];
        for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
            const [a, ra] = boxes[i], [b, rb] = boxes[j];
            const x = Math.min(ra.right, rb.right) - Math.max(ra.left, rb.left);
            const y = Math.min(ra.bottom, rb.bottom) - Math.max(ra.top, rb.top);
            if (x > 2 && y > 2) out.push(`${a} / ${b}`);
        }
        return out; }""")
    assert overlaps == []


def test_at_phone_width_the_figures_are_drawn_for_a_phone(phone, monkeypatch):
    """The page tells the server it is phone-width as it loads, and the figures of its steps are laid out for a
    phone (stacked panels); the dark desktop page below is drawn wide."""
    from explorer import handlers
    seen = []
    real = handlers.render
    monkeypatch.setattr(handlers, "render", lambda session, method, narrow=False:
                        seen.append(narrow) or real(session, method, narrow))
    choose_method(phone, "Autoregressive")
    restart_and_step(phone, 1)
    assert seen and seen[-1] is True


# ----------------------------------------------------------------------------- the draft model control

@pytest.mark.parametrize("title, drafter, shown", [("Speculative", "ngram", False), ("Speculative", "heads", False),
                                                   ("Speculative", "model", True), ("Tree", "eagle", False),
                                                   ("Tree", "suffix", False), ("Tree", "model", True)])
def test_the_draft_model_shows_only_for_the_model_drafter(phone, title, drafter, shown):
    choose_method(phone, title)
    name = title.lower()
    choose_option(phone, f"opt-{name}-drafter", drafter)
    phone.locator("#draft").wait_for(state="visible" if shown else "hidden", timeout=60_000)


def test_the_draft_model_follows_the_tab_and_its_drafter(phone):
    """Each tab keeps its own drafter: switching tabs shows the draft model by the new tab's choice."""
    choose_method(phone, "Speculative")
    choose_option(phone, "opt-speculative-drafter", "ngram")
    phone.locator("#draft").wait_for(state="hidden", timeout=60_000)
    choose_method(phone, "Tree")
    choose_option(phone, "opt-tree-drafter", "model")
    phone.locator("#draft").wait_for(state="visible", timeout=60_000)
    choose_method(phone, "Speculative")
    phone.locator("#draft").wait_for(state="hidden", timeout=60_000)
    choose_method(phone, "Jacobi")
    phone.locator("#draft").wait_for(state="hidden", timeout=60_000)


# ----------------------------------------------------------------------------- dark mode

def contrast(a: list[float], b: list[float]) -> float:
    """WCAG contrast ratio of two sRGB colours given as 0-255 channels."""
    def luminance(rgb):
        c = [x / 255 for x in rgb[:3]]
        c = [x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4 for x in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]
    hi, lo = sorted([luminance(a), luminance(b)], reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_dark_mode_figures_have_readable_text(dark):
    """The figures' plain text (ticks, titles, legends: drawn in figures.common's mid-grey on a transparent paper)
    is recoloured for the theme, and reads against the block behind it."""
    restart_and_step(dark)
    colours = dark.evaluate("""() => {
        const rgb = s => (s.match(/[\\d.]+/g) || []).map(Number);
        let el = document.querySelector('#main-plot'), bg = [0, 0, 0, 0];
        while (el && (bg.length < 3 || bg[3] === 0)) { bg = rgb(getComputedStyle(el).backgroundColor); el = el.parentElement; }
        const texts = [...document.querySelectorAll('#main-plot .main-svg text[style*="fill: rgb(138, 138, 138)"]')]
            .filter(t => t.textContent.trim());
        return {background: bg, dark: document.body.classList.contains('dark'),
                fills: texts.map(t => [t.textContent, rgb(getComputedStyle(t).fill)])}; }""")
    assert colours["dark"]
    assert sum(colours["background"][:3]) < 3 * 80, f"not a dark page: {colours['background']}"
    assert len(colours["fills"]) > 5          # ticks, the axis title, the legend, the figure's title
    for text, fill in colours["fills"]:
        assert contrast(fill, colours["background"]) >= 4.5, f"{text!r} in {fill} on {colours['background']}"


def test_a_fresh_page_teaches_before_any_press(url, phone):
    """Issue 21: above the fold at 1280 x 800, the selected method in two sentences and a glossary one click away;
    the example prompts follow the method; no plot box stands empty anywhere on the page."""
    p = phone.context.browser.new_page(viewport={"width": 1280, "height": 800})   # one browser per thread
    try:
        open_app(p, url)
        p.wait_for_timeout(1000)
        intro = p.locator("#intro")
        assert "Autoregressive." in intro.inner_text() and intro.bounding_box()["y"] + 40 < 800
        assert p.locator("#glossary").bounding_box()["y"] < 800
        empty_plots = p.evaluate("""() => [...document.querySelectorAll('.gradio-container [id]')]
            .filter(el => el.querySelector(':scope > .empty, :scope .empty') && el.offsetParent !== null
                    && /plot|timeline|race-cost/.test(el.id) && !el.querySelector('.js-plotly-plot'))
            .map(el => el.id)""")
        assert empty_plots == []
        boxes = p.evaluate("""() => [...document.querySelectorAll('[id$="-plot"], #race-timeline, #race-cost')]
            .filter(el => el.offsetParent !== null && el.getBoundingClientRect().height > 0).map(el => el.id)""")
        assert boxes == [], f"plot boxes shown with nothing drawn: {boxes}"
        p.get_by_role("radio", name="Jacobi", exact=True).check()
        p.wait_for_function("() => document.querySelector('#intro').innerText.includes('Jacobi.')", timeout=60_000)
        examples = p.locator("#examples").inner_text()
        assert "Count from 1 to 30" in examples
        p.locator("#examples button").first.click()
        p.wait_for_function("() => document.querySelector('#prompt textarea').value.startsWith('Count from 1')",
                            timeout=30_000)
    finally:
        p.close()
