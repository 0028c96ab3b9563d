"""The Train tab in headless Chromium: a short run's curve updates, its side joins this page's pickers and compares,
and the zip downloads; screenshots at 1400 px and 390 px (tests/screenshots/train*.png)."""
import re
import zipfile

import pytest

from test_browser import ARGS, B_ROW, SHOTS

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def pick(pg, elem_id: str, value: str) -> None:
    """Choose ``value`` in a Gradio dropdown."""
    box = pg.locator(f"#{elem_id} input")
    box.click()
    box.fill(value)
    pg.locator("ul[role=listbox] li", has_text=value).first.click()


def test_train_tab_runs_watches_and_downloads(app_server, tmp_path):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.goto(app_server.url)
        pg.wait_for_selector(B_ROW, timeout=300_000)  # the first-visit pair: the page is up
        pg.get_by_role("tab", name="Train", exact=True).click()
        pick(pg, "train-model", "smollm2-135m")
        pick(pg, "train-preset", "Advanced")
        pg.locator("#train-advanced").get_by_text("Advanced settings").click()
        for eid, v in (("train-steps", "3"), ("train-batch", "8")):
            box = pg.locator(f"#{eid} input[type=number]")
            box.fill(v)
            box.press("Enter")
        pg.get_by_role("button", name="Train", exact=True).click()
        # the first frame: the base model's dev score, then the loss curve of the first steps
        pg.locator("#train-status", has_text="STS-B dev").wait_for(timeout=300_000)
        pg.locator("#train-curves .js-plotly-plot").wait_for(timeout=300_000)
        # a step past the first frame (3 short steps may pass between two redraws: any of them, not one in particular;
        # or the whole run: a fresh clone's run went from the first frame to done between two redraws)
        pg.locator("#train-status", has_text=re.compile(r"step [123] of 3|is a side now")).wait_for(timeout=300_000)
        pg.screenshot(path=str(SHOTS / "train_running.png"), full_page=True)
        pg.locator("#train-status", has_text="is a side now").wait_for(timeout=600_000)
        pg.locator("#train-map .js-plotly-plot").wait_for(timeout=60_000)
        spec = pg.locator("#train-status code").first.inner_text()
        assert spec.startswith("smollm2-135m+live-")
        assert pg.locator("#side-b input").input_value().startswith(spec)  # side B is the new side now
        pg.wait_for_timeout(1500)
        pg.screenshot(path=str(SHOTS / "train_done.png"), full_page=True)
        with pg.expect_download() as dl:
            pg.locator("#train-zip a").first.click()
        path = tmp_path / "run.zip"
        dl.value.save_as(path)
        assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "training.json",
                "data.csv"} <= set(zipfile.ZipFile(path).namelist())
        # the new side in the picker of this page, and compared on the Pairs tab
        pg.locator("#side-a input").click()
        assert pg.locator("ul[role=listbox] li", has_text="your live run").count() >= 1
        pg.keyboard.press("Escape")
        pg.get_by_role("tab", name="Pairs").click()
        pg.get_by_role("button", name="Compare").click()
        pg.locator("#pair-out", has_text="live-").wait_for(timeout=120_000)
        pg.screenshot(path=str(SHOTS / "train_compare.png"), full_page=True)
        # a phone
        phone = browser.new_page(viewport={"width": 390, "height": 844})
        phone.goto(app_server.url)
        phone.wait_for_selector(B_ROW, timeout=300_000)
        tab = phone.get_by_role("tab", name="Train", exact=True)
        if tab.is_visible():
            tab.click()
        else:
            phone.locator(".overflow-menu button").first.click()
            phone.locator(".overflow-dropdown").get_by_role("button", name="Train", exact=True).click()
        phone.wait_for_timeout(1500)
        phone.screenshot(path=str(SHOTS / "phone_train.png"), full_page=True)
        overflow = phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        browser.close()
    assert overflow <= 0, f"the Train tab is {overflow} px wider than a 390 px window"
    assert not [e for e in errors if "favicon" not in e], errors
