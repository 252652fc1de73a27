"""`cubeless serve`: the page, catalog, TileJSON, tiles and points over real HTTP on loopback."""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from cubeless.serve import make_server

pytestmark = pytest.mark.xdist_group("map")  # one worker builds the demo cube once


@pytest.fixture(scope="module")
def base(demo_cube: str):
    server = make_server(demo_cube, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


@pytest.mark.e2e
def test_page_and_bundled_maplibre_are_served(base: str) -> None:
    status, body, ctype = _get(base + "/")
    assert status == 200 and ctype.startswith("text/html") and b"/static/vendor/maplibre-gl.js" in body
    status, js, ctype = _get(base + "/static/vendor/maplibre-gl.js")
    assert status == 200 and len(js) > 100_000 and b"maplibre" in js.lower()
    assert _get(base + "/static/../serve.py")[0] == 404


@pytest.mark.e2e
def test_catalog_lists_the_cube_with_its_manifest(base: str) -> None:
    status, body, _ = _get(base + "/api/cubes")
    cubes = json.loads(body)["cubes"]
    assert status == 200 and [c["id"] for c in cubes] == ["cube"]
    m = cubes[0]["manifest"]
    assert m["complete"] is True and m["bins"] == ["2024-05-01", "2024-06-01", "2024-07-01"]
    assert m["tasks"]["planned"] == m["tasks"]["done"] > 0


@pytest.mark.e2e
def test_tilejson_tiles_and_point(base: str) -> None:
    status, body, _ = _get(base + "/cubes/cube/tilejson.json?preset=count&time=2")
    tj = json.loads(body)
    assert status == 200 and tj["tilejson"] == "3.0.0" and "preset=count" in tj["tiles"][0]
    w, s, e, n = tj["bounds"]
    import morecantile

    t = morecantile.tms.get("WebMercatorQuad").tile((w + e) / 2, (s + n) / 2, tj["maxzoom"])
    status, png, ctype = _get(f"{base}/cubes/cube/tiles/{t.z}/{t.x}/{t.y}.png?time=0")
    assert status == 200 and ctype == "image/png"
    img = np.asarray(Image.open(io.BytesIO(png)))
    assert img.shape == (256, 256, 4) and (img[..., 3] == 255).mean() > 0.5
    assert _get(f"{base}/tiles/0/0/0.png?time=0")[0] in (200, 204)
    status, body, _ = _get(f"{base}/point/{(w + e) / 2},{(s + n) / 2}")
    p = json.loads(body)
    assert status == 200 and set(p["values"]) == {"red", "green", "blue", "count"} and len(p["values"]["red"]) == 3


@pytest.mark.e2e
@pytest.mark.parametrize(
    "path, status, needle",
    [
        ("/tiles/13/0/0.png?time=7", 404, "outside the cube's 3 time steps"),
        ("/tiles/13/0/0.png?bands=nir", 400, "no variable 'nir'"),
        ("/tiles/13/0/0.png?time=x", 400, "query parameter `time`"),
        ("/point/0,0", 404, "outside the cube"),
        ("/cubes/nope/info", 404, "no cube 'nope'"),
        ("/nowhere", 404, "no route"),
    ],
)
def test_bad_requests_get_one_clear_error(base: str, path: str, status: int, needle: str) -> None:
    got, body, _ = _get(base + path)
    assert got == status and needle in json.loads(body)["error"]


def test_serve_refuses_a_folder_without_cubes(tmp_path) -> None:
    from cubeless.errors import UserError

    with pytest.raises(UserError, match="holds no cubeless cube"):
        make_server(str(tmp_path), port=0)


def test_a_folder_of_cubes_is_a_catalog(demo_cube: str) -> None:
    from pathlib import Path

    from cubeless.serve import find_cubes

    folder = Path(demo_cube).parent  # the demo's output: cube.zarr beside scenes/ and PNGs
    assert find_cubes(str(folder)) == {"cube": demo_cube}
    assert find_cubes(demo_cube) == {"cube": demo_cube}
