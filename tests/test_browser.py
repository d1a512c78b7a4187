"""The real app in a real browser: `streamlit run` + headless Debian Chromium.

Opens every page and checks that no exception or error is shown, draws digits
on /draw with the mouse and reads the st.metric "Prediction", and saves a
full-page screenshot of every page to test-artifacts/ (CI uploads them).

Needs /usr/bin/chromium (apt-get install chromium). Without it the test is
skipped locally and fails in CI (where $CI is set): a browser test that
silently never runs would prove nothing.
"""
from __future__ import annotations

import pytest

from helpers import (ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, PAGE_S, STROKES, assert_no_errors, clear, draw,  # noqa: F401
                     prediction, require_chromium, screenshot, streamlit_server, wait_until_idle)

# (url path, the page's title as shown in its h1, screenshot name)
PAGES = [("", "MNIST Lab", "home"), ("data", "Data", "data"), ("train", "Train", "train"),
         ("finetune", "Fine-tune", "finetune"), ("evaluate", "Evaluate", "evaluate"), ("export", "Export", "export"),
         ("insights", "Insights", "insights"), ("draw", "Draw", "draw")]


@pytest.fixture(scope="module")
def app_url(mnist_dir, tmp_path_factory):
    require_chromium()
    env = {"MNIST_DIR": str(mnist_dir), "MNIST_LAB_WORKSPACES": str(tmp_path_factory.mktemp("sessions"))}
    with streamlit_server(env, tmp_path_factory.mktemp("streamlit") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, color_scheme="dark")
    pg = context.new_page()
    yield pg
    context.close()


def test_every_page_renders_without_errors(page, app_url):
    """Home by its URL, then every other page through the sidebar menu, as a visitor browses (one
    session; test_app_shell opens deep links on a fresh server), each page's URL following."""
    from urllib.parse import parse_qs, urlparse

    page.goto(app_url)
    workspaces = set()
    for path, title, name in PAGES:
        if path:
            page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
        wait_until_idle(page, title)
        url = urlparse(page.url)
        assert url.path.rstrip("/") == f"/{path}".rstrip("/"), (page.url, path)
        workspaces.update(parse_qs(url.query).get("ws", []))
        assert_no_errors(page, name)
        screenshot(page, name)
    assert len(workspaces) == 1, workspaces  # the visitor's workspace link follows them everywhere
    # The Data page's lazy tabs are bound to the URL: open the last by its link, then each one as
    # a visitor does, by clicking it (a rerun, not a reload), and the URL follows.
    page.goto(f"{app_url}/data?tab=One+digit")
    wait_until_idle(page, "Data")
    for tab in ("One digit", "Samples", "Class averages", "Pixels", "Embedding"):
        if tab != "One digit":
            page.get_by_role("tab", name=tab).click()
            wait_until_idle(page, "Data")
        assert page.get_by_role("tab", name=tab).get_attribute("aria-selected") == "true", tab
        assert f"tab={tab.replace(' ', '+')}" in page.url or f"tab={tab.replace(' ', '%20')}" in page.url, page.url
        name = f"data-{tab.lower().replace(' ', '-')}"
        assert_no_errors(page, name)
        screenshot(page, name, whole=False)  # the whole Data page is shot above
    assert page.locator('[data-testid="stVegaLiteChart"]').count() >= 1  # the pixel heatmap


def test_embedding_tooltip_shows_the_digit(page, app_url):
    """Hovering a point of the 2-D map shows that digit's image (a PNG data URL in the tooltip)."""
    page.goto(f"{app_url}/data?tab=Embedding")
    wait_until_idle(page, "Data")
    chart = page.locator('[data-testid="stVegaLiteChart"]').first
    box = chart.bounding_box()
    tooltip = page.locator("#vg-tooltip-element img")
    # Sweep the plot area until the pointer lands on a point (2,500 points: it takes a few tries).
    for fy in (0.5, 0.4, 0.6, 0.3, 0.7):
        for fx in [i / 40 for i in range(8, 33)]:
            page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
            page.wait_for_timeout(60)
            if tooltip.count() and tooltip.first.is_visible():
                src = tooltip.first.get_attribute("src")
                assert src.startswith("data:image/png;base64,")
                screenshot(page, "data-embedding-hover")
                return
    raise AssertionError("no tooltip with a digit image appeared over the embedding")


def test_training_runs_live_and_survives_switching_pages(page, app_url):
    page.goto(f"{app_url}/train")
    wait_until_idle(page, "Train")
    # 30 steps at a gentler learning rate than the full-epoch preset: ~94% in seconds.
    for label, value in (("Stop after steps", "30"), ("Learning rate", "0.02")):
        field = page.get_by_role("spinbutton", name=label)
        field.fill(value)
        field.press("Tab")
        wait_until_idle(page, "Train")
    name = page.get_by_role("textbox", name="Run name")
    name.fill("browser run")
    name.press("Tab")
    wait_until_idle(page, "Train")
    page.get_by_role("button", name="Start training").click()
    # The live panel (an st.fragment polling every 2 s while it trains) shows progress, then the result.
    page.locator('[data-testid="stProgress"]').first.wait_for(timeout=60_000)
    # Leave for another page through the menu (same session), and come back.
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Data", exact=True).click()
    wait_until_idle(page, "Data")
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Train", exact=True).click()
    page.get_by_text("Best so far: browser-run", exact=False).wait_for(timeout=PAGE_S * 1000)
    wait_until_idle(page, "Train")
    done = page.locator('[data-testid="stAlertContentSuccess"]').filter(has_text="Saved as run “browser-run”")
    assert done.count() == 1
    accuracy = float(done.inner_text().split("Done:")[1].split("%")[0])
    assert accuracy > 60, done.inner_text()  # it really learned (10% is guessing)
    assert page.locator('[data-testid="stVegaLiteChart"]').count() == 2  # loss and accuracy
    assert_no_errors(page, "train-done")
    screenshot(page, "train-done")


def test_draw_a_digit_with_the_mouse(page, app_url):
    page.goto(f"{app_url}/draw")
    wait_until_idle(page, "Draw")
    assert prediction(page) == "—"  # a blank canvas shows a hint, not a digit
    canvas = page.locator("canvas.upper-canvas").first
    canvas.wait_for(timeout=30_000)
    box = canvas.bounding_box()
    assert box and box["width"] > 100
    seen = {}
    for digit, strokes in STROKES.items():
        draw(page, box, strokes)
        try:
            page.wait_for_function(
                """() => { const m = [...document.querySelectorAll('[data-testid="stMetric"]')]
                             .find(e => e.innerText.includes('Prediction'));
                           const v = m && m.querySelector('[data-testid="stMetricValue"]');
                           return v && v.innerText.trim() !== '—'; }""", timeout=30_000)
        except Exception:  # noqa: BLE001 - report the page state below
            pass
        wait_until_idle(page, "Draw")
        seen[digit] = prediction(page)
        screenshot(page, f"draw-{digit}")
        assert_no_errors(page, f"draw-{digit}")
        clear(page)
        page.wait_for_function(
            """() => { const m = [...document.querySelectorAll('[data-testid="stMetric"]')]
                         .find(e => e.innerText.includes('Prediction'));
                       const v = m && m.querySelector('[data-testid="stMetricValue"]');
                       return v && v.innerText.trim() === '—'; }""", timeout=30_000)
    assert seen == {d: d for d in STROKES}, f"drawn -> predicted: {seen}"
