"""Issue 12: Draw on a phone. A 390x844 touch screen (Playwright's mobile emulation in Debian's
Chromium), strokes made of real touch events (CDP Input.dispatchTouchEvent: touchStart, touchMove,
touchEnd; Playwright's touchscreen only taps).

Checks outcomes a visitor sees: nothing scrolls sideways; a 1, a 7 and a 0 drawn with a finger are
read as 1, 7 and 0; the whole canvas and the Prediction (digit and confidence) are on screen
together without scrolling; the stroke width, the canvas toolbar and Save sample work by tapping.
Screenshots of the phone layout go to test-artifacts/draw-phone-*.png.
"""
from __future__ import annotations

import pytest

from helpers import (ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, STROKES, assert_no_errors, prediction, require_chromium,
                     screenshot, streamlit_server, wait_until_idle)

PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def phone(tmp_path_factory, mnist_dir):
    """(page, cdp session) on /draw in a touch phone context of a fresh server."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    env = {"MNIST_DIR": str(mnist_dir), "MNIST_LAB_WORKSPACES": str(tmp_path_factory.mktemp("ws"))}
    with streamlit_server(env, tmp_path_factory.mktemp("log") / "server.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=PHONE, has_touch=True, is_mobile=True, device_scale_factor=2,
                                      color_scheme="dark")
        page = context.new_page()
        page.goto(f"{url}/draw")
        wait_until_idle(page, "Draw")
        yield page, context.new_cdp_session(page)
        browser.close()


def touch_draw(cdp, box, strokes, steps: int = 12) -> None:
    """Each stroke as one finger: touchStart, touchMoves along the polyline, touchEnd."""
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]

    def send(kind, pts):
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [
            {"x": x0 + x * w, "y": y0 + y * h, "radiusX": 4, "radiusY": 4, "force": 1, "id": 0} for x, y in pts]})

    for stroke in strokes:
        send("touchStart", [stroke[0]])
        for (ax, ay), (bx, by) in zip(stroke, stroke[1:]):
            for i in range(1, steps + 1):
                send("touchMove", [(ax + (bx - ax) * i / steps, ay + (by - ay) * i / steps)])
        send("touchEnd", [])


def metric_box(page, label: str):
    return page.locator('[data-testid="stMetric"]').filter(has_text=label).first.bounding_box()


def on_screen(box) -> bool:
    return box is not None and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= PHONE["width"] \
        and box["y"] + box["height"] <= PHONE["height"]


def wait_for_prediction(page, want_blank: bool) -> None:
    page.wait_for_function("""(blank) => { const m = [...document.querySelectorAll('[data-testid="stMetric"]')]
        .find(e => e.innerText.includes('Prediction'));
      const v = m && m.querySelector('[data-testid="stMetricValue"]');
      return v && (v.innerText.trim() === '—') === blank; }""", arg=want_blank, timeout=60_000)
    wait_until_idle(page, "Draw")


def no_sideways_scroll(page) -> list[str]:
    """Every scrollable box (the document, Streamlit's main area) wider than what it shows."""
    return page.evaluate("""() => [document.documentElement, document.body,
        ...document.querySelectorAll('[data-testid="stMain"], [data-testid="stAppViewContainer"], [data-testid="stMainBlockContainer"]')]
        .filter(e => e.scrollWidth > Math.max(e.clientWidth, window.innerWidth))
        .map(e => (e.dataset.testid || e.tagName) + ' ' + e.scrollWidth)""")


def test_touch_drawing_on_a_phone(phone):
    page, cdp = phone
    assert no_sideways_scroll(page) == []
    canvas = page.locator("canvas.upper-canvas").first
    box = canvas.bounding_box()
    assert on_screen(box), f"canvas not fully on screen: {box}"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "draw-phone-blank.png"))
    seen, layout = {}, {}
    for digit, strokes in STROKES.items():
        touch_draw(cdp, box, strokes)
        wait_for_prediction(page, want_blank=False)
        seen[digit] = prediction(page)
        assert page.evaluate("() => [window.scrollX, window.scrollY]") == [0, 0]
        layout[digit] = {"canvas": canvas.bounding_box(), "prediction": metric_box(page, "Prediction"),
                         "confidence": metric_box(page, "Confidence")}
        page.screenshot(path=str(ARTIFACTS / f"draw-phone-{digit}.png"))
        # The canvas toolbar shows on touch and its bin clears the canvas with a tap.
        reset = page.locator('button[title*="Reset" i], button[aria-label*="Reset" i]').first
        assert reset.evaluate("b => getComputedStyle(b.closest('.dc-toolbar')).opacity") == "1", \
            "the canvas toolbar is invisible after a touch stroke"
        reset.tap()
        wait_for_prediction(page, want_blank=True)
    assert seen == {d: d for d in STROKES}, f"drawn -> predicted: {seen}"
    for digit, boxes in layout.items():  # drawing and reading without scrolling in between
        assert all(on_screen(b) for b in boxes.values()), (digit, boxes)
    assert no_sideways_scroll(page) == []
    print(f"\nphone layout (y, px): canvas {layout['7']['canvas']['y']:.0f}-"
          f"{layout['7']['canvas']['y'] + layout['7']['canvas']['height']:.0f}, Prediction "
          f"{layout['7']['prediction']['y']:.0f}-{layout['7']['prediction']['y'] + layout['7']['prediction']['height']:.0f}")


def test_stroke_width_and_save_sample_by_tapping(phone):
    page, cdp = phone
    slider = page.locator('[data-testid="stSlider"]').filter(has_text="Stroke width")
    value = slider.locator('[data-testid="stSliderThumbValue"]')
    before = int(value.inner_text())
    track = slider.locator('[role="group"] > div').first
    tb = track.bounding_box()
    assert on_screen(tb), tb
    page.touchscreen.tap(tb["x"] + tb["width"] * 0.9, tb["y"] + tb["height"] / 2)
    page.wait_for_function("([el, before]) => Number(el.innerText) > before", arg=[value.element_handle(), before],
                           timeout=30_000)
    wait_until_idle(page, "Draw")
    canvas = page.locator("canvas.upper-canvas").first
    touch_draw(cdp, canvas.bounding_box(), STROKES["1"])
    wait_for_prediction(page, want_blank=False)
    assert prediction(page) == "1"
    # All ten label pills are on screen (they wrap), none cut off at the edge.
    boxes = page.locator('[data-testid="stButtonGroup"]').filter(has_text="Label").locator("button").evaluate_all(
        "bs => bs.filter(b => /^[0-9]$/.test(b.innerText.trim()))"
        "        .map(b => { const r = b.getBoundingClientRect(); return [b.innerText.trim(), r.left, r.right]; })")
    assert [d for d, _, _ in boxes] == [str(d) for d in range(10)], boxes
    assert all(left >= 0 and right <= PHONE["width"] for _, left, right in boxes), boxes
    save = page.get_by_role("button", name="Save sample")
    save.tap()
    page.get_by_text("Your samples per digit").wait_for(timeout=60_000)
    wait_until_idle(page, "Draw")
    assert "1: 1" in page.get_by_text("Your samples per digit").inner_text()
    assert no_sideways_scroll(page) == []
    assert_no_errors(page, "draw-phone")
    screenshot(page, "draw-phone-full")
