"""Retake the README's screenshot: the real app, mid-run, in headless Debian Chromium.

    python -m explorer.screenshot        # the README's picture: speculative sampling on the tiny pair
    python -m explorer.screenshot --phone   # the same at phone width: assets/screenshot-phone.png
    python -m explorer.screenshot --method Tree --target smollm2-135m-instruct --temperature 0 --steps 6 --out tree.png
    python -m explorer.screenshot --race --target tiny-target --tokens 32   # assets/race.png: the Compare > Race tab

Launches the app on a free local port, drives it with Playwright (never `playwright install`:
it uses /usr/bin/chromium), presses Step a few times and saves a PNG.
"""
from __future__ import annotations

import argparse
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
PHONE_VIEW = (420, 1500)   # px: a phone held upright, and how much of its page the README shows
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(limits=None):
    """The app on 127.0.0.1:<free port>, in this process, under `limits` (ServerLimits; the defaults when
    None); yields its URL."""
    from explorer.limits import ServerLimits, cap_malloc_arenas
    from explorer.ui import build, launch_kwargs, queue_kwargs
    limits = limits or ServerLimits()
    cap_malloc_arenas(limits.malloc_arenas)
    demo = build(limits=limits)
    port = free_port()
    demo.queue(**queue_kwargs(limits)).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                                              quiet=True, **launch_kwargs(limits))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@contextmanager
def browser_page(width: int = 1400, height: int = 1000):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height}, accept_downloads=True)
            yield page
        finally:
            browser.close()


def open_app(page, url: str) -> None:
    """Load the page and wait for the app's own first render (it sets the target for the method), so that
    what a script types afterwards is not overwritten."""
    page.goto(url)
    page.wait_for_function("() => (document.querySelector('#words')?.innerText || '').includes('Press Step')")


def choose_method(page, title: str) -> None:
    page.get_by_role("radio", name=title, exact=True).check()
    page.wait_for_timeout(800)


def iteration(page) -> int:
    """The iteration the page shows (0 before the first)."""
    return int(page.evaluate(
        "() => (/Iteration (\\d+) of/.exec(document.querySelector('#position').innerText) || [0, 0])[1]"))


def press_step(page, times: int = 1) -> None:
    """Press Step and wait until the page shows the next iteration."""
    for _ in range(times):
        expected = iteration(page) + 1
        page.click("#step-btn")
        page.wait_for_function(
            "n => ((/Iteration (\\d+) of/.exec(document.querySelector('#position').innerText) || [0, 0])[1]) == n",
            arg=expected, timeout=120_000)


def race_shot(page, target: str, prompt: str, tokens: int, out: str) -> None:
    """Run the race in the Compare > Race tab and save the part of the page from its settings down to the cost
    figure: the timeline, the table, the outputs and the cost curves, once both figures are drawn."""
    page.get_by_role("tab", name="Race", exact=True).click()
    page.locator("#race-target input").fill(target)
    page.locator("#race-target input").press("Enter")
    page.locator("#race-prompt textarea").fill(prompt)
    page.locator("#race-tokens input").fill(str(tokens))
    page.click("#race-btn")
    page.wait_for_function("() => (document.querySelector('#race-table')?.innerText || '').includes('lookahead')",
                           timeout=1_800_000)   # a loaded 2-core machine may take many minutes
    # the table arrives before Plotly has drawn the figures beside it
    page.wait_for_function("() => ['#race-timeline', '#race-cost'].every("
                           "id => document.querySelector(id + ' .js-plotly-plot')?.data?.length > 0)", timeout=120_000)
    page.wait_for_timeout(1500)
    # a full-page clip is in page coordinates, bounding boxes are in the scrolled viewport's
    top, bottom, left, right = page.evaluate(
        "() => { const a = document.querySelector('#race-prompt').getBoundingClientRect(),"
        " b = document.querySelector('#race-cost').getBoundingClientRect();"
        " return [a.top + scrollY, b.bottom + scrollY, a.left, document.documentElement.clientWidth - a.left]; }")
    page.screenshot(path=out, full_page=True, clip={"x": left - 8, "y": top - 8, "width": right - left + 16,
                                                     "height": bottom - top + 16})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m explorer.screenshot")
    p.add_argument("--method", default="Speculative", help="the method's title as on its tab")
    p.add_argument("--target", default="tiny-target")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--out", default=None, help="default assets/screenshot.png, with --race assets/race.png")
    p.add_argument("--race", action="store_true", help="the Compare > Race tab after a race, instead of a method")
    p.add_argument("--prompt", default="Once upon a time", help="with --race")
    p.add_argument("--tokens", type=int, default=32, help="with --race: new tokens per lane")
    p.add_argument("--phone", action="store_true",
                   help=f"a {PHONE_VIEW[0]} px wide page, its first {PHONE_VIEW[1]} px (default assets/screenshot-phone.png)")
    args = p.parse_args(argv)
    name = "race.png" if args.race else "screenshot-phone.png" if args.phone else "screenshot.png"
    args.out = args.out or str(Path(__file__).resolve().parent.parent / "assets" / name)
    width, height = PHONE_VIEW if args.phone else (1400, 1000)
    with serve() as url, browser_page(width, height) as page:
        open_app(page, url)
        if args.race:
            race_shot(page, args.target, args.prompt, args.tokens, args.out)
            print(args.out)
            return 0
        choose_method(page, args.method)
        page.locator("#target input").fill(args.target)
        page.keyboard.press("Enter")
        temperature = page.locator("#opt-temperature input[type=number]")   # the slider's number box
        temperature.fill(str(args.temperature))
        temperature.press("Enter")
        page.locator("#seed input").fill(str(args.seed))
        press_step(page, args.steps)
        page.wait_for_timeout(1000)
        page.screenshot(path=args.out, full_page=not args.phone)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
