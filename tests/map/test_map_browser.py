"""The web map in a real browser: Debian's headless Chromium loads the page against the demo cube.

Chromium comes from the repo's setup (`make browser`, run by `make test`); this fixture installs
it with apt-get when it is missing and the tests run as root (CI), and fails otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cubeless.serve import make_server

pytestmark = [pytest.mark.xdist_group("map"), pytest.mark.e2e]
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--window-size=900,600", "--virtual-time-budget=15000",
]
SIDEBAR = 300  # px: the map is right of the sidebar


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
def base(demo_cube: str):
    server = make_server(demo_cube, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _shot(chromium: str, url: str, tmp: Path, name: str) -> np.ndarray:
    out = tmp / f"{name}.png"
    subprocess.run([chromium, *FLAGS, f"--user-data-dir={tmp / ('profile-' + name)}", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=120)
    return np.asarray(Image.open(out).convert("RGB")).astype(np.int64)


def test_map_shows_the_cube_and_the_time_slider_changes_it(chromium: str, base: str, tmp_path: Path) -> None:
    may = _shot(chromium, f"{base}/?time=0&preset=truecolor", tmp_path, "may")
    june = _shot(chromium, f"{base}/?time=1&preset=truecolor", tmp_path, "june")
    july = _shot(chromium, f"{base}/?time=2&preset=truecolor", tmp_path, "july")
    area = (slice(40, 560), slice(SIDEBAR + 20, 850))
    drawn = may[area].sum(axis=-1) > 30
    assert drawn.mean() > 0.3  # the cube's tiles cover much of the map
    # vegetation in true colour: green above red and blue where the cube is drawn (the synthetic land)
    px = may[area][drawn]
    assert np.median(px[:, 1]) > np.median(px[:, 0]) and np.median(px[:, 1]) > np.median(px[:, 2])
    assert (june[area].sum(axis=-1) <= 30).all()  # June has no scenes: nothing is drawn
    assert (np.abs(may[area] - july[area]).sum(axis=-1) > 30).mean() > 0.05  # another month, other tiles (12% here)

