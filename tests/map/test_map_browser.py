"""The web map in a real browser: Playwright drives Debian's headless Chromium against the demo cube.

Chromium comes from the repo's setup (`make browser`, run by `make test`); this fixture installs
it with apt-get when it is missing and the tests run as root (CI), and fails otherwise. Playwright
only drives it (``executable_path``): no browser is downloaded at run time. Every check waits for
the page's own readiness signal (``body[data-ready]``, then ``cubeless.whenIdle()``: every visible
tile drawn), never for a fixed time, so a slow or loaded machine changes the wait, not the result.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from cubeless.serve import make_server

pytestmark = [pytest.mark.xdist_group("map"), pytest.mark.e2e]
ARGS = ["--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 900, "height": 600}
SIDEBAR = 300  # px: the map is right of the sidebar
AREA = (slice(40, 560), slice(SIDEBAR + 20, 850))
WAIT_MS = 180_000  # generous: a loaded CI machine renders tiles slowly, and we wait for the page's signal


@pytest.fixture(scope="session")
def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=False, capture_output=True,
                       env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        exe = shutil.which("chromium")
    assert exe, "headless Chromium is missing: run `make browser` (apt-get install chromium)"
    return exe


@pytest.fixture(scope="module")
def base(demo_cube: str) -> Iterator[str]:
    server = make_server(demo_cube, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(chromium: str):  # noqa: ANN201
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser, base: str):  # noqa: ANN001, ANN201
    ctx = browser.new_context(viewport=VIEWPORT)
    pg = ctx.new_page()
    pg.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.base = base  # type: ignore[attr-defined]
    yield pg
    ctx.close()
    assert not errors, f"the page raised: {errors}"


def _open(page, query: str) -> None:  # noqa: ANN001
    page.goto(f"{page.base}/?{query}")
    page.wait_for_selector("body[data-ready=yes]", state="attached")


def _idle_shot(page) -> np.ndarray:  # noqa: ANN001
    page.evaluate("() => cubeless.whenIdle()")
    png = page.screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int64)[AREA]


def test_map_shows_the_cube_and_the_time_slider_changes_it(page) -> None:  # noqa: ANN001
    _open(page, "time=0&preset=truecolor")
    assert page.locator("#timelabel").inner_text().startswith("2024-05")
    may = _idle_shot(page)
    drawn = may.sum(axis=-1) > 30
    assert drawn.mean() > 0.3  # the cube's tiles cover much of the map
    # vegetation in true colour: green above red and blue where the cube is drawn (the synthetic land)
    px = may[drawn]
    assert np.median(px[:, 1]) > np.median(px[:, 0]) and np.median(px[:, 1]) > np.median(px[:, 2])

    page.locator("#time").fill("1")  # the slider, as a user moves it (fires its input event)
    assert page.locator("#timelabel").inner_text().startswith("2024-06")
    june = _idle_shot(page)
    assert (june.sum(axis=-1) <= 30).all()  # June has no scenes: nothing is drawn

    page.locator("#time").fill("2")
    july = _idle_shot(page)
    assert (np.abs(may - july).sum(axis=-1) > 30).mean() > 0.05  # another month, other tiles


def test_clicking_the_map_shows_the_pixels_time_series(page) -> None:  # noqa: ANN001
    _open(page, "time=0&preset=truecolor")
    may = _idle_shot(page)
    drawn = np.argwhere(may.sum(axis=-1) > 30)
    assert drawn.size, "nothing drawn to click on"
    y, x = drawn[len(drawn) // 2]
    page.mouse.click(AREA[1].start + int(x), AREA[0].start + int(y))
    page.wait_for_selector("#point table")
    point = page.evaluate("() => cubeless.state.point")
    # the table shows the server's numbers for that pixel: one row per committed bin, May observed
    rows = page.locator("#point tr[data-time]")
    assert rows.count() == len(point["times"]) == 3
    assert point["values"]["count"][0] > 0
    red_may = page.locator("#point tr[data-time] td[data-var=red]").first.inner_text()
    assert int(red_may) == point["values"]["red"][0] > 0
