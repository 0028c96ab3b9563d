"""The Training replay tab in headless Debian Chromium: the slider moves the figures, no console errors,
screenshots at 1400 and 390 px (the shipped adapter's snapshots and assets/cache/replay)."""
import json

import pytest

from test_browser import SHOTS, page  # noqa: F401  (page: the module-scoped browser page fixture)

pytestmark = [pytest.mark.integration, pytest.mark.browser]

# the x coordinates of the right-hand map (the step's), the histogram's trace names, the note
STATE_JS = """() => {
  const plot = (id) => document.querySelector(`#${id} .js-plotly-plot`);
  const m = plot('replay-map'), h = plot('replay-hist');
  return JSON.stringify({
    map: m ? m._fullData.filter(t => t.xaxis === 'x2').map(t => Array.from(t.x).slice(0, 5)) : null,
    hist: h ? h.data.map(t => t.name) : null,
    note: document.querySelector('#replay-note').innerText,
  });
}"""


def state(page) -> dict:
    return json.loads(page.evaluate(STATE_JS))


def test_slider_moves_the_map_the_histogram_and_the_curves(page):
    page.get_by_role("tab", name="Training replay").click()
    page.wait_for_selector("#replay-note >> text=/Step \\d+/", timeout=120_000)
    page.wait_for_selector("#replay-map .js-plotly-plot", timeout=60_000)
    last = state(page)
    assert last["map"] and len(last["hist"]) == 2  # the final step over the base model
    slider = page.locator("#replay-step input[type=range]")
    slider.focus()
    page.keyboard.press("Home")  # step 0: the base model
    page.wait_for_selector("#replay-note >> text=Step 0", timeout=60_000)
    page.wait_for_function("() => document.querySelector('#replay-hist .js-plotly-plot').data.length === 1",
                           timeout=30_000)
    first = state(page)
    assert first["map"] != last["map"] and "base model" in first["note"]
    page.keyboard.press("ArrowRight")  # the first trained snapshot
    page.wait_for_function("() => document.querySelector('#replay-hist .js-plotly-plot').data.length === 2",
                           timeout=30_000)
    second = state(page)
    assert second["map"] not in (first["map"], None) and second["note"] != first["note"]
    page.wait_for_timeout(1000)  # let plotly draw before the screenshot
    page.screenshot(path=str(SHOTS / "replay.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(1500)
    page.screenshot(path=str(SHOTS / "replay_phone.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1000})


def test_corpus_change_redraws_at_the_last_step(page):
    page.reload()  # a fresh 1400-px layout after the phone-width screenshot
    page.wait_for_selector("text=embedlab", timeout=60_000)
    page.get_by_role("tab", name="Training replay").click()
    page.locator("#replay-corpus input").click()
    page.get_by_role("option", name="SNLI triplets (900)").click()
    page.wait_for_selector("#replay-note >> text=snli", timeout=60_000)
    assert "Step" in state(page)["note"]


def test_replay_follows_side_b_to_gemma(page):
    """Side B on tuned Gemma 3: the tab replays Gemma's own snapshots (0, 10, 25 and 60 of 60 steps)."""
    from test_browser import pick_side

    page.reload()
    page.wait_for_selector("text=embedlab", timeout=60_000)
    # The tab first, then the side: one replay update in flight at a time. (Side, then tab, queues two; on a
    # busy machine the later-finishing one reset the slider to the last step after Home had moved it.)
    page.get_by_role("tab", name="Training replay").click()
    page.wait_for_selector("#replay-note >> text=/Step 300/", timeout=120_000)
    pick_side(page, "B", "gemma3-270m+nli-cft")
    page.wait_for_selector("#replay-note >> text=/Step 60/", timeout=300_000)
    slider = page.locator("#replay-step input[type=range]")
    slider.focus()
    page.keyboard.press("Home")
    page.wait_for_selector("#replay-note >> text=Step 0", timeout=120_000)
    page.wait_for_function("() => document.querySelector('#replay-hist .js-plotly-plot').data.length === 1",
                           timeout=30_000)
    page.keyboard.press("ArrowRight")
    page.wait_for_selector("#replay-note >> text=/Step 10: after 10 of 60 training steps/", timeout=120_000)
    page.wait_for_timeout(1000)  # let plotly draw before the screenshot
    page.screenshot(path=str(SHOTS / "replay_gemma.png"), full_page=True)
    pick_side(page, "B", "smollm2-135m+nli-cft")  # back to the default for the tests after this one


def test_no_console_errors(page):
    errors = [e for e in page.console_errors if "favicon" not in e]
    assert not errors, errors


