"""The tile function (lambdas/tiles.py): Function URL events (payload 2.0) against a small cube in
moto S3, answered exactly as `cubeless serve` answers the same requests."""

from __future__ import annotations

import base64
import gzip
import io
import json
import threading
import urllib.error
import urllib.request
from typing import Any

import morecantile
import numpy as np
import pytest
from aws_helpers import FakeContext, client
from PIL import Image

from cubeless import store as S
from cubeless.aws import ENV
from cubeless.commit import commit_run
from cubeless.demo.cubes import plan_every_tile
from cubeless.models import TaskResult
from cubeless.spec import parse_spec

TILES_BUCKET = "tiles-test"
CUBE = "cubes~tx"  #: the catalog's id of s3://tiles-test/cubes/tx.zarr
DOMAIN = "abcdefghij0123456789abcdefghij01.lambda-url.us-east-1.on.aws"
TMS = morecantile.tms.get("WebMercatorQuad")
_built: dict[str, str] = {}


@pytest.fixture
def cube(aws: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A 185 x 111 px cube (3 x 2 chunks of 64 px), one month, committed in moto S3 (built once per
    moto server); the function's environment names its bucket."""
    monkeypatch.setenv(ENV["bucket"], TILES_BUCKET)
    from lambdas import tiles

    tiles.catalog.cache_clear()
    if aws not in _built:
        client("s3").create_bucket(Bucket=TILES_BUCKET)
        spec = parse_spec({"name": "tx", "bbox": [10.0, 45.0, 10.05, 45.03], "resolution": 0.00027, "chunk": 64,
                           "start": "2020-01-01", "end": "2020-01-31", "store": f"s3://{TILES_BUCKET}/cubes/tx.zarr"})  # fmt: skip
        run = plan_every_tile(spec)
        for task in run.tasks:
            shape = (task.tile.ny, task.tile.nx)
            yy, xx = np.mgrid[task.tile.y0:task.tile.y0 + shape[0], task.tile.x0:task.tile.x0 + shape[1]]
            values = {b: (1000 + 5 * xx + 7 * yy + 300 * i).astype(np.uint16) for i, b in enumerate(spec.bands)}
            S.write_task(task, values, np.full(shape, 2, np.uint16))
            run.state.mark_done(TaskResult(task_id=task.task_id, status="done"))
        assert commit_run(spec.store, run.run_id).complete
        _built[aws] = spec.store
    yield _built[aws]
    tiles.catalog.cache_clear()


def event(path: str, query: str = "", *, method: str = "GET", headers: dict[str, str] | None = None) -> dict[str, Any]:
    """A Function URL request event, payload format 2.0."""
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": query,
        "headers": {"host": DOMAIN, "x-forwarded-proto": "https", **(headers or {})},
        "requestContext": {"accountId": "anonymous", "apiId": DOMAIN.split(".")[0], "domainName": DOMAIN,
                           "domainPrefix": DOMAIN.split(".")[0], "requestId": "r-1", "routeKey": "$default",
                           "stage": "$default", "time": "01/Jan/2025:00:00:00 +0000", "timeEpoch": 1735689600000,
                           "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1",
                                    "userAgent": "test"}},
        "isBase64Encoded": False,
    }  # fmt: skip


def invoke(ev: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    from lambdas.tiles import handler

    out = handler(ev, FakeContext())
    assert out["isBase64Encoded"] is True and isinstance(out["body"], str)
    return out["statusCode"], out["headers"], base64.b64decode(out["body"])


def _centre_tile(cube_id: str = CUBE) -> morecantile.Tile:
    status, _, body = invoke(event(f"/cubes/{cube_id}/tilejson.json"))
    tj = json.loads(body)
    w, s, e, n = tj["bounds"]
    return TMS.tile((w + e) / 2, (s + n) / 2, tj["maxzoom"])


def test_a_tile_is_a_base64_png(cube: str) -> None:
    t = _centre_tile()
    status, headers, png = invoke(event(f"/cubes/{CUBE}/tiles/{t.z}/{t.x}/{t.y}.png", "time=0&preset=truecolor"))
    assert status == 200 and headers["Content-Type"] == "image/png" and headers["Cache-Control"] == "max-age=60"
    img = np.asarray(Image.open(io.BytesIO(png)))
    assert img.shape == (256, 256, 4) and (img[..., 3] == 255).any()
    status, _, body = invoke(event(f"/cubes/{CUBE}/tiles/3/0/0.png"))  # far from the cube
    assert status == 204 and body == b""


def test_tilejson_points_at_the_function_url_or_at_the_proxy(cube: str) -> None:
    status, headers, body = invoke(event(f"/cubes/{CUBE}/tilejson.json", "preset=count&time=0"))
    tj = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json" and tj["tilejson"] == "3.0.0"
    assert tj["tiles"] == [f"https://{DOMAIN}/cubes/{CUBE}/tiles/{{z}}/{{x}}/{{y}}.png?preset=count&time=0"]
    w, s, e, n = tj["bounds"]
    assert 9.99 < w < e < 10.06 and 44.99 < s < n < 45.04
    proxied = json.loads(invoke(event(f"/cubes/{CUBE}/tilejson.json", headers={"x-cubeless-origin": "http://127.0.0.1:8123"}))[2])
    assert proxied["tiles"][0].startswith(f"http://127.0.0.1:8123/cubes/{CUBE}/tiles/")
    junk = json.loads(invoke(event(f"/cubes/{CUBE}/tilejson.json", headers={"x-cubeless-origin": "javascript:alert(1)"}))[2])
    assert junk["tiles"][0].startswith(f"https://{DOMAIN}/")


def test_point_catalog_and_errors(cube: str) -> None:
    status, _, body = invoke(event(f"/cubes/{CUBE}/point/10.02,45.01"))
    p = json.loads(body)
    assert status == 200 and set(p["values"]) == {"red", "green", "blue", "count"} and p["times"] == ["2020-01-01"]
    assert p["values"]["count"] == [2] and p["values"]["green"][0] == p["values"]["red"][0] + 300
    status, _, body = invoke(event("/api/cubes"))
    (listed,) = [c for c in json.loads(body)["cubes"] if c["id"] == CUBE]
    assert status == 200 and listed["store"] == cube and listed["manifest"]["complete"] is True
    status, _, body = invoke(event(f"/cubes/{CUBE}/point/11.5,45.01"))
    assert status == 404 and "outside the cube" in json.loads(body)["error"]
    assert invoke(event("/cubes/nope/info"))[0] == 404
    assert invoke(event("/api/cubes", method="POST"))[0] == 405
    status, headers, body = invoke(event("/", method="HEAD"))
    assert status == 200 and headers["Content-Type"].startswith("text/html") and body == b""


def test_text_is_gzipped_when_the_client_accepts_it(cube: str) -> None:
    plain = invoke(event("/static/vendor/maplibre-gl.js"))
    status, headers, body = invoke(event("/static/vendor/maplibre-gl.js", headers={"accept-encoding": "gzip, br"}))
    assert status == 200 and headers["Content-Encoding"] == "gzip" and gzip.decompress(body) == plain[2]
    assert len(body) < len(plain[2]) / 2 and "Content-Encoding" not in plain[1]
    t = _centre_tile()
    assert "Content-Encoding" not in invoke(event(f"/cubes/{CUBE}/tiles/{t.z}/{t.x}/{t.y}.png", headers={"accept-encoding": "gzip"}))[1]


def test_the_function_answers_what_cubeless_serve_answers(cube: str) -> None:
    from cubeless.serve import make_server

    server = make_server(f"s3://{TILES_BUCKET}", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    t = _centre_tile()
    requests = [
        ("/", ""), ("/static/app.js", ""), ("/api/cubes", ""), (f"/cubes/{CUBE}/info", ""),
        (f"/cubes/{CUBE}/tilejson.json", "preset=truecolor&time=0"),
        (f"/cubes/{CUBE}/tiles/{t.z}/{t.x}/{t.y}.png", "time=0&preset=truecolor"),
        (f"/cubes/{CUBE}/tiles/{t.z}/{t.x}/{t.y}.png", "bands=red&colormap=viridis&rescale=1000,2500"),
        (f"/tiles/{t.z}/{t.x}/{t.y}.png", "preset=count"),
        (f"/cubes/{CUBE}/point/10.02,45.01", ""), (f"/cubes/{CUBE}/point/10.02%2C45.01", ""),
        (f"/cubes/{CUBE}/tiles/{t.z}/{t.x}/{t.y}.png", "bands=nope"), ("/no/such/route", ""),
    ]  # fmt: skip
    try:
        for path, query in requests:
            try:
                with urllib.request.urlopen(f"{origin}{path}" + (f"?{query}" if query else ""), timeout=30) as r:
                    local = (r.status, r.headers["Content-Type"], r.read())
            except urllib.error.HTTPError as exc:
                local = (exc.code, exc.headers["Content-Type"], exc.read())
            status, headers, body = invoke(event(path, query, headers={"x-cubeless-origin": origin}))
            assert (status, headers["Content-Type"], body) == local, (path, query)
    finally:
        server.shutdown()
        server.server_close()


def test_without_the_bucket_variable_the_function_says_so(aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from cubeless.aws import ConfigError
    from lambdas import tiles

    monkeypatch.delenv(ENV["bucket"], raising=False)
    tiles.catalog.cache_clear()
    with pytest.raises(ConfigError, match="CUBELESS_BUCKET is not set"):
        invoke(event("/api/cubes"))


def test_the_map_through_cubeless_view_and_a_function_url(cube: str) -> None:
    """Browser -> `cubeless view`'s signing proxy -> a stand-in Function URL that hands each request
    to the handler as an event: the page, TileJSON (whose tile URLs come back to the proxy), a tile
    and a point (its comma percent-encoded by the proxy) all arrive."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlsplit

    from botocore.credentials import Credentials

    from cubeless.aws import SignedProxy
    from cubeless.serve import make_http_server

    class FunctionUrl(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKID/")
            status, out, body = invoke(event(url.path, url.query, headers=headers))
            self.send_response(status)
            for k, v in out.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), FunctionUrl)
    proxy = SignedProxy(f"http://127.0.0.1:{upstream.server_address[1]}/", region="us-east-1", credentials=Credentials("AKID", "secret"))
    front = make_http_server(proxy.answer, port=0)
    for s in (upstream, front):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{front.server_address[1]}"
    try:
        proxy.check()
        with urllib.request.urlopen(f"{origin}/", timeout=30) as r:
            assert r.status == 200 and b"/static/vendor/maplibre-gl.js" in r.read()
        with urllib.request.urlopen(f"{origin}/static/vendor/maplibre-gl.js", timeout=30) as r:
            assert r.read() == invoke(event("/static/vendor/maplibre-gl.js"))[2]  # gzip on the way, plain here
        with urllib.request.urlopen(f"{origin}/cubes/{CUBE}/tilejson.json?preset=truecolor", timeout=30) as r:
            tile_url = json.loads(r.read())["tiles"][0]
        assert tile_url.startswith(f"{origin}/cubes/{CUBE}/tiles/")
        t = _centre_tile()
        with urllib.request.urlopen(tile_url.format(z=t.z, x=t.x, y=t.y), timeout=30) as r:
            assert r.headers["Content-Type"] == "image/png" and r.read()[:4] == b"\x89PNG"
        with urllib.request.urlopen(f"{origin}/cubes/{CUBE}/point/10.02,45.01", timeout=30) as r:
            assert json.loads(r.read())["values"]["count"] == [2]
    finally:
        for s in (front, upstream):
            s.shutdown()
            s.server_close()
