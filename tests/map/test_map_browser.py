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


def test_dragging_the_slider_with_the_mouse_and_stepping_it_with_the_keys(page) -> None:  # noqa: ANN001
    _open(page, "time=0&preset=truecolor")
    may = _idle_shot(page)
    box = page.locator("#time").bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 3, y)  # the thumb, at the first month
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 3, y, steps=12)  # dragged to the last month
    page.mouse.up()
    assert page.locator("#time").input_value() == "2"
    assert page.locator("#timelabel").inner_text().startswith("2024-07")
    july = _idle_shot(page)
    assert (np.abs(may - july).sum(axis=-1) > 30).mean() > 0.05  # the tiles followed the drag
    page.keyboard.press("ArrowLeft")  # the slider has the focus: one step back
    assert page.locator("#time").input_value() == "1"
    assert page.locator("#timelabel").inner_text().startswith("2024-06")


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


def _map_pixels(page, shot: np.ndarray, n: int = 400) -> list[tuple[int, int, float, float]]:  # noqa: ANN001
    """Up to ``n`` drawn screenshot pixels of AREA, spread out, with the lon/lat MapLibre puts there."""
    drawn = np.argwhere(shot.sum(axis=-1) > 30)
    picks = drawn[np.linspace(0, len(drawn) - 1, min(n, len(drawn))).astype(int)]
    left, top = page.evaluate("() => { const r = cubeless.map.getContainer().getBoundingClientRect(); return [r.left, r.top]; }")
    pts = [[AREA[1].start + int(x) + 0.5 - left, AREA[0].start + int(y) + 0.5 - top] for y, x in picks]
    lonlat = page.evaluate("(pts) => pts.map((p) => { const ll = cubeless.map.unproject(p); return [ll.lng, ll.lat]; })", pts)
    return [(int(y), int(x), lon, lat) for (y, x), (lon, lat) in zip(picks, lonlat)]


def _cube_values(store: str, t: int, var: str, pts: list[tuple[int, int, float, float]]) -> np.ndarray:
    from pyproj import Transformer
    from rasterio.transform import rowcol

    from cubeless.tiles import open_map_cube

    cube = open_map_cube(store)
    x, y = Transformer.from_crs("EPSG:4326", cube.crs, always_xy=True).transform([p[2] for p in pts], [p[3] for p in pts])
    rows, cols = rowcol(cube.transform, x, y)
    data = np.asarray(cube.ds[var][t].values)
    rows, cols = np.asarray(rows), np.asarray(cols)
    # the pixel there and its 8 neighbours (shape 9 x n; index 4 is the pixel itself): the screen
    # resamples tiles that resample the cube, each nearest, so a pixel on an edge may show a neighbour
    return np.stack([
        data[np.clip(rows + dy, 0, data.shape[0] - 1), np.clip(cols + dx, 0, data.shape[1] - 1)]
        for dy in (-1, 0, 1) for dx in (-1, 0, 1)
    ]).astype(np.float64)


def test_screenshot_colours_are_the_cubes_values_at_those_places(page, demo_cube: str) -> None:  # noqa: ANN001
    from cubeless.tiles import REFLECTANCE_RANGE

    _open(page, "time=0&preset=truecolor")
    shot = _idle_shot(page)
    pts = _map_pixels(page, shot)
    assert len(pts) > 100
    lo, hi = REFLECTANCE_RANGE
    got = np.array([shot[y, x] for y, x, _, _ in pts], dtype=np.float64)
    want = np.stack([np.clip((_cube_values(demo_cube, 0, b, pts) - lo) / (hi - lo) * 255, 0, 255)
                     for b in ("red", "green", "blue")], axis=-1)  # 9 x n x 3
    match = (np.abs(got[None] - want) <= 3).all(axis=-1)  # 9 x n
    assert match[4].mean() > 0.75  # most show the very pixel under them
    close = match.any(axis=0)  # and nearly all show it or a neighbour
    assert close.mean() > 0.97, f"only {close.mean():.0%} of {len(pts)} screen pixels show the cube's colour there"
    import os

    if os.environ.get("CUBELESS_SCREENSHOT"):  # the README's picture: `CUBELESS_SCREENSHOT=docs/map.png pytest ...`
        page.screenshot(path=os.environ["CUBELESS_SCREENSHOT"])


def test_count_preset_draws_the_count_in_viridis(page, demo_cube: str) -> None:  # noqa: ANN001
    from rio_tiler.colormap import cmap

    _open(page, "time=0&preset=truecolor")
    page.select_option("#preset", "count")  # as a user switches preset
    shot = _idle_shot(page)
    drawn = shot.sum(axis=-1) > 30
    assert drawn.mean() > 0.3, "the count preset draws nothing"
    max_count = page.evaluate("() => cubeless.state.info.max_count")
    pts = _map_pixels(page, shot)
    counts = _cube_values(demo_cube, 0, "count", pts)
    lut = cmap.get("viridis")
    want = np.array([[lut[int(np.clip(round(c / max_count * 255), 0, 255))][:3] for c in row] for row in counts],
                    dtype=np.float64)  # 9 x n x 3
    got = np.array([shot[y, x] for y, x, _, _ in pts], dtype=np.float64)
    close = (np.abs(got[None] - want) <= 6).all(axis=-1).any(axis=0)
    counts = counts[4]
    assert close.mean() > 0.9, f"only {close.mean():.0%} of the count pixels have the count's viridis colour"
    assert len(np.unique(counts)) > 1  # more than one count on screen: the colours are not all one
