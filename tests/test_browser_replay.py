"""The Training replay tab in headless Debian Chromium: the slider moves the figures, no console errors,
screenshots at 1400 and 390 px (the shipped adapter's snapshots and assets/cache/replay)."""
import contextlib
import json
import re

import pytest

from test_browser import BASE, SHOTS, TUNED, page, reload  # noqa: F401  (page: the module-scoped browser page fixture)

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


def pick_step(page, step: int) -> None:
    """Click a training step in the snapshot picker (it shows steps; its value is the snapshot's index)."""
    page.locator("#replay-step label").filter(has_text=re.compile(f"^\\s*{step}\\s*$")).click()


def shown_steps(page) -> tuple[list[str], str]:
    """The picker's steps as shown, and the checked one."""
    labels = page.locator("#replay-step label")
    texts = [t.strip() for t in labels.all_inner_texts()]
    checked = [t for t, c in zip(texts, [labels.nth(i).locator("input").is_checked() for i in range(len(texts))]) if c]
    return texts, checked[0] if checked else ""


SIZES_JS = """() => ['replay-curves', 'replay-hist', 'replay-map'].map(id => {
  const p = document.querySelector(`#${id} .js-plotly-plot`);
  return p ? [p._fullLayout.width, p.getBoundingClientRect().width] : null;
})"""


def sizes(page, max_width: int = 100_000) -> list:
    """Each replay figure's [drawn width, box width] (px) once all are drawn as wide as their boxes and at most
    ``max_width`` (plotly draws and resizes a moment after the data or the viewport change: polled up to 30 s on a
    slow machine), else as they are then, for the assertion to show."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    ok = f"() => ({SIZES_JS})().every(s => s && Math.abs(s[0] - s[1]) <= 2 && s[1] <= {max_width})"
    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_function(ok, timeout=30_000)
    return page.evaluate(SIZES_JS)


def steps_of(spec: str) -> list[str]:
    """The training steps of the snapshots a side's adapter lists (its training.json), as the picker shows them."""
    from embedlab.adapters import snapshots
    from embedlab.side import parse_side

    return [str(s.step) for s in snapshots(parse_side(spec).folder)]


def other_tuned() -> str:
    """Another model's tuned side (its pair button's side B): SmolLM2's beside the default Gemma pair."""
    from embedlab.side import model_pairs

    return next(b.spec for a, b in model_pairs() if a.model != BASE)


def test_slider_moves_the_map_the_histogram_and_the_curves(page):
    page.get_by_role("tab", name="Training replay").click()
    page.wait_for_selector("#replay-note >> text=/Step \\d+/", timeout=120_000)
    page.wait_for_selector("#replay-map .js-plotly-plot", timeout=60_000)
    # the picker shows the default adapter's training steps, the last one checked
    steps = steps_of(TUNED)
    assert shown_steps(page) == (steps, steps[-1])
    for size in sizes(page):  # drawn while shown: each figure as wide as its box
        assert size and abs(size[0] - size[1]) <= 2, size
    last = state(page)
    assert last["map"] and len(last["hist"]) == 2  # the final step over the base model
    pick_step(page, 0)  # step 0: the base model
    page.wait_for_selector("#replay-note >> text=Step 0", timeout=60_000)
    page.wait_for_function("() => document.querySelector('#replay-hist .js-plotly-plot').data.length === 1",
                           timeout=30_000)
    first = state(page)
    assert first["map"] != last["map"] and "base model" in first["note"]
    pick_step(page, int(steps[1]))  # the first trained snapshot
    page.wait_for_function("() => document.querySelector('#replay-hist .js-plotly-plot').data.length === 2",
                           timeout=30_000)
    second = state(page)
    assert second["map"] not in (first["map"], None) and second["note"] != first["note"]
    assert shown_steps(page)[1] == steps[1]
    page.wait_for_timeout(1000)  # let plotly draw before the screenshot
    page.screenshot(path=str(SHOTS / "replay.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    phone = sizes(page, max_width=390)
    page.wait_for_timeout(500)  # let plotly finish drawing before the screenshot
    page.screenshot(path=str(SHOTS / "replay_phone.png"), full_page=True)
    for size in phone:  # the map panel is not cut off on a phone
        assert size and size[1] <= 390 and abs(size[0] - size[1]) <= 2, size
    page.set_viewport_size({"width": 1400, "height": 1000})


def test_corpus_change_redraws_at_the_last_step(page):
    reload(page)  # a fresh 1400-px layout after the phone-width screenshot
    page.get_by_role("tab", name="Training replay").click()
    page.locator("#replay-corpus input").click()
    page.get_by_role("option", name="SNLI triplets (900)").click()
    page.wait_for_selector("#replay-note >> text=snli", timeout=60_000)
    assert "Step" in state(page)["note"]


def test_replay_follows_side_b_to_another_model(page):
    """Side B on another model's adapter (SmolLM2's, beside the default Gemma pair) while another tab is shown,
    then the tab opened: that adapter's own snapshots drawn at full size, the curves reaching its last step."""
    from test_browser import pick_side

    other = other_tuned()
    steps = steps_of(other)
    reload(page)
    pick_side(page, "B", other)  # on the Pairs tab: the replay tab is hidden
    page.locator(".side-card details", has_text=other).first.wait_for(state="attached", timeout=60_000)
    page.get_by_role("tab", name="Training replay").click()
    page.wait_for_selector(f"#replay-note >> text=/Step {steps[-1]}/", timeout=300_000)
    drawn = sizes(page)
    assert shown_steps(page) == (steps, steps[-1])
    curves = page.evaluate("""() => { const p = document.querySelector('#replay-curves .js-plotly-plot');
        return p._fullLayout.xaxis.range[1]; }""")
    assert curves >= int(steps[-1]), curves  # the curves reach the last step (they stopped short when drawn hidden)
    for size in drawn:
        assert size and abs(size[0] - size[1]) <= 2, size
    pick_step(page, 0)
    page.wait_for_selector("#replay-note >> text=Step 0", timeout=120_000)
    page.wait_for_function("() => document.querySelector('#replay-hist .js-plotly-plot').data.length === 1",
                           timeout=30_000)
    pick_step(page, int(steps[1]))
    page.wait_for_selector(f"#replay-note >> text=/Step {steps[1]}: after {steps[1]} of {steps[-1]} training steps/",
                           timeout=120_000)
    page.wait_for_timeout(1000)  # let plotly draw before the screenshot
    page.screenshot(path=str(SHOTS / "replay_other_model.png"), full_page=True)
    page.get_by_role("tab", name="Pairs").click()
    pick_side(page, "B", TUNED)  # back to the default for the tests after this one


def test_no_console_errors(page):
    errors = [e for e in page.console_errors if "favicon" not in e]
    assert not errors, errors


