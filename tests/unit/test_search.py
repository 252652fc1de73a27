"""Catalog search against a real ``rustac serve`` on loopback, directly and behind a flaky proxy."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from shapely.geometry import Polygon

from cubeless.errors import PlanError
from cubeless.plan import make_plan
from cubeless.search import SearchOptions, search_items
from cubeless.spec import parse_spec

pytestmark = pytest.mark.xdist_group("rustac-search")

RUSTAC = Path(sys.executable).with_name("rustac")
COLLECTION = "s2-fake"
FAST = SearchOptions(retries=3, backoff=0.05, jitter=0.0, connect_timeout=2, read_timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def item(iid: str, lon: float, lat: float, when: str, cloud: float, size: float = 0.2) -> dict:
    ring = [[lon, lat], [lon + size, lat], [lon + size, lat + size], [lon, lat + size], [lon, lat]]
    assets = {
        b: {"href": f"https://example.com/{iid}/{b}.tif", "type": "image/tiff; application=geotiff",
            "roles": ["data"], "proj:shape": [1000, 1000], "proj:transform": [10, 0, 0, 0, -10, 0]}
        for b in ("red", "green", "blue", "nir", "scl")
    }
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": iid, "collection": COLLECTION,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": [lon, lat, lon + size, lat + size],
        "properties": {"datetime": when, "eo:cloud_cover": cloud, "platform": "sentinel-2a"},
        "links": [], "assets": assets,
    }


# Vermont-ish bbox (-73.4, 42.7, -71.5, 45.0); dates in Jan-Mar 2020.
ITEMS = [
    item("in-jan-a", -73.0, 43.0, "2020-01-05T15:30:00Z", 5.0),
    item("in-jan-b", -72.0, 44.0, "2020-01-31T23:59:59Z", 60.0),
    item("in-feb-a", -72.5, 43.5, "2020-02-01T00:00:00Z", 10.0),
    item("in-feb-b", -71.8, 44.5, "2020-02-15T15:30:00Z", 95.0),
    item("in-mar-a", -73.2, 44.7, "2020-03-10T15:30:00Z", 20.0),
    item("edge-west", -73.5, 43.0, "2020-03-11T15:30:00Z", 1.0),  # straddles the west edge
    item("out-space", 10.0, 10.0, "2020-01-05T10:00:00Z", 1.0),
    item("out-time", -72.5, 43.5, "2020-04-01T00:00:00Z", 1.0),
    item("out-time-b", -72.5, 43.5, "2019-12-31T23:59:59Z", 1.0),
]
IN_RANGE = {"in-jan-a", "in-jan-b", "in-feb-a", "in-feb-b", "in-mar-a", "edge-west"}


def collection_doc() -> dict:
    return {
        "type": "Collection", "stac_version": "1.0.0", "id": COLLECTION, "description": "fake S2",
        "license": "other", "links": [],
        "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                   "temporal": {"interval": [["2019-01-01T00:00:00Z", None]]}},
    }


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rustac serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout} s")


def start_rustac(tmp: Path, addr: str, bind: str | None = None) -> subprocess.Popen:
    (tmp / "collection.json").write_text(json.dumps(collection_doc()))
    (tmp / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": ITEMS}))
    cmd = [str(RUSTAC), "serve", "--addr", addr]
    if bind:
        cmd += ["--bind", bind]
    cmd += [str(tmp / "collection.json"), str(tmp / "items.json")]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def rustac(tmp_path_factory):
    if not RUSTAC.exists() and not shutil.which("rustac"):
        pytest.skip("rustac is not installed")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_rustac(tmp_path_factory.mktemp("rustac"), f"127.0.0.1:{port}")
    try:
        wait_for(url + "/", proc)
        yield url
    finally:
        stop(proc)


class Flaky:
    """A proxy in front of rustac that fails requests on a schedule, then forwards them."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.schedule: list[tuple] = []  # (method, path, action...) consumed in order
        self.log: list[tuple[str, str, int]] = []  # (method, path, status answered)
        self.lock = threading.Lock()

    def next_action(self, method: str, path: str):
        with self.lock:
            for i, entry in enumerate(self.schedule):
                if entry[0] == method and path.startswith(entry[1]):
                    return self.schedule.pop(i)[2:]
        return None


def make_handler(flaky: Flaky):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            flaky.log.append((self.command, self.path, status))

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            action = flaky.next_action(self.command, self.path)
            if action:
                kind = action[0]
                if kind == "sleep":
                    time.sleep(action[1])
                elif kind == "body":  # 200 with this body
                    self._answer(200, action[1], {"Content-Type": "application/json"})
                    return
                else:
                    status, retry_after = kind, action[1]
                    headers = {"Content-Type": "application/json"}
                    if retry_after is not None:
                        headers["Retry-After"] = str(retry_after)
                    self._answer(status, json.dumps({"code": str(status), "description": "injected"}).encode(), headers)
                    return
            req = urllib.request.Request(flaky.upstream + self.path, data=body, method=self.command)
            if body:
                req.add_header("Content-Type", self.headers.get("Content-Type", "application/json"))
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    status, data, ctype = r.status, r.read(), r.headers.get("Content-Type", "application/json")
            except urllib.error.HTTPError as err:
                status, data, ctype = err.code, err.read(), "application/json"
            try:
                self._answer(status, data, {"Content-Type": ctype})
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (read timeout)

        do_GET = do_POST = _handle

    return Handler


@pytest.fixture(scope="module")
def flaky(tmp_path_factory):
    """(proxy URL, Flaky): rustac advertises the proxy's address, so every link goes through it."""
    if not RUSTAC.exists():
        pytest.skip("rustac is not installed")
    up_port, proxy_port = free_port(), free_port()
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    proc = start_rustac(tmp_path_factory.mktemp("rustac-flaky"), proxy_url, bind=f"127.0.0.1:{up_port}")
    f = Flaky(f"http://127.0.0.1:{up_port}")
    server = ThreadingHTTPServer(("127.0.0.1", proxy_port), make_handler(f))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        wait_for(f"http://127.0.0.1:{up_port}/", proc)
        yield proxy_url, f
    finally:
        server.shutdown()
        server.server_close()
        stop(proc)


@pytest.fixture
def proxy(flaky):
    url, f = flaky
    f.schedule.clear()
    f.log.clear()
    return url, f


def spec_for(url: str, **kw) -> object:
    doc = {"name": "vt", "bbox": [-73.4, 42.7, -71.5, 45.0], "start": "2020-01-10", "end": "2020-03-20",
           "store": "/tmp/vt.zarr", "stac_api": url, "collection": COLLECTION}
    doc.update(kw)
    return parse_spec(doc)


def ids(items: list[dict]) -> set[str]:
    return {i["id"] for i in items}


# -- against rustac directly -----------------------------------------------------------------
def test_search_returns_items_in_region_and_whole_bins(rustac):
    got = search_items(spec_for(rustac), options=FAST)
    # Whole bins: start 2020-01-10 still finds 2020-01-05 (the January bin), end 2020-03-20 finds 03-10.
    assert ids(got) == IN_RANGE
    assert all(isinstance(i, dict) and i["assets"] for i in got)


def test_search_pages_and_reports_progress(rustac):
    seen: list[int] = []
    got = search_items(spec_for(rustac), options=SearchOptions(limit=2, retries=1), progress=seen.append)
    assert ids(got) == IN_RANGE and len(got) == len(IN_RANGE)
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] == len(IN_RANGE)


def test_search_max_items(rustac):
    got = search_items(spec_for(rustac), max_items=2, options=SearchOptions(limit=1))
    assert len(got) == 2 and ids(got) <= IN_RANGE


def test_cloud_cover_filtered_client_side(rustac):
    # rustac's memory backend has no `query` conformance (and answers a query search with nothing),
    # so the filter must be applied by cubeless itself.
    got = search_items(spec_for(rustac, max_cloud_cover=50), options=FAST)
    assert ids(got) == IN_RANGE - {"in-jan-b", "in-feb-b"}


def test_aoi_searches_with_intersects(rustac):
    tri = Polygon([(-73.1, 42.9), (-72.9, 42.9), (-73.0, 43.1)])  # only touches in-jan-a
    got = search_items(spec_for(rustac), tri, options=FAST)
    assert ids(got) == {"in-jan-a"}


def test_explicit_datetime(rustac):
    got = search_items(spec_for(rustac), datetime="2020-02-01T00:00:00Z/2020-02-29T23:59:59.999Z", options=FAST)
    assert ids(got) == {"in-feb-a", "in-feb-b"}


def test_missing_collection_is_one_line_plan_error(rustac):
    with pytest.raises(PlanError) as e:
        search_items(spec_for(rustac, collection="sentinel-2-nope"), options=FAST)
    msg = str(e.value)
    assert "\n" not in msg
    assert "'sentinel-2-nope' not found" in msg and rustac in msg and COLLECTION in msg and "fix `collection`" in msg


def test_unreachable_api_is_one_line_plan_error():
    url = f"http://127.0.0.1:{free_port()}"
    t = time.monotonic()
    with pytest.raises(PlanError) as e:
        search_items(spec_for(url), options=SearchOptions(retries=2, backoff=0.01, jitter=0))
    msg = str(e.value)
    assert "\n" not in msg and url in msg and "unreachable" in msg and "stac_api" in msg
    assert time.monotonic() - t < 10


@pytest.mark.parametrize("gai_error, lookups", [
    ((socket.EAI_NONAME, "Name or service not known"), 1),  # the host does not exist: no retry
    ((socket.EAI_AGAIN, "Temporary failure in name resolution"), 3),  # a DNS hiccup: retried
])
def test_an_unresolvable_host_is_not_retried(monkeypatch, gai_error, lookups):
    calls = []

    def getaddrinfo(host, *a, **k):
        calls.append(host)
        raise socket.gaierror(*gai_error)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(PlanError) as e:
        search_items(spec_for("http://no-such-host.invalid/v1"), options=SearchOptions(retries=2, backoff=0.01, jitter=0))
    assert calls.count("no-such-host.invalid") == lookups, calls
    msg = str(e.value)
    assert "is unreachable" in msg and "no-such-host.invalid" in msg and "check `stac_api`" in msg
    assert ("retries" in msg) == (lookups > 1), msg


def test_plan_with_real_search(rustac):
    spec = spec_for(rustac, resolution=0.005, chunk=64)  # 460 x 380 px, 8 x 6 tiles of 0.32 degree
    plan = make_plan(spec)
    assert [b.label for b in plan.bins] == ["2020-01-01", "2020-02-01", "2020-03-01"]
    assert len(plan.tasks) == len(plan.tiles) * 3
    used = {i["id"] for t in plan.tasks for i in t.items}
    assert used == IN_RANGE
    for t in plan.tasks:
        for i in t.items:
            assert t.bin.start.isoformat()[:7] == i["properties"]["datetime"][:7]
            assert set(i["assets"]) == {"red", "green", "blue", "scl"}


# -- behind the flaky proxy -----------------------------------------------------------------
def test_retries_429_and_503_honouring_retry_after_on_post(proxy):
    url, f = proxy
    f.schedule += [("POST", "/search", 429, 1), ("POST", "/search", 503, 1), ("POST", "/search", 502, None)]
    t = time.monotonic()
    got = search_items(spec_for(url), options=FAST)
    elapsed = time.monotonic() - t
    assert ids(got) == IN_RANGE
    posts = [s for m, p, s in f.log if m == "POST" and p.startswith("/search")]
    assert posts[:4] == [429, 503, 502, 200]
    assert elapsed >= 2.0, f"Retry-After not honoured ({elapsed:.2f} s)"


def test_retries_get_of_the_root_and_paging(proxy):
    url, f = proxy
    f.schedule += [("GET", "/", 503, 0), ("GET", "/", 429, 0)]
    f.schedule += [("POST", "/search", 500, None)]
    got = search_items(spec_for(url), options=SearchOptions(limit=2, retries=3, backoff=0.05, jitter=0))
    assert ids(got) == IN_RANGE
    gets = [s for m, p, s in f.log if m == "GET" and p == "/"]
    assert gets[:3] == [503, 429, 200]


def test_read_timeout_is_retried(proxy):
    url, f = proxy
    f.schedule += [("POST", "/search", "sleep", 2.0)]
    opts = SearchOptions(retries=2, backoff=0.05, jitter=0, read_timeout=0.5)
    got = search_items(spec_for(url), options=opts)
    assert ids(got) == IN_RANGE


def test_retries_exhausted_is_one_line_plan_error(proxy):
    url, f = proxy
    f.schedule += [("POST", "/search", 503, 0)] * 10
    with pytest.raises(PlanError) as e:
        search_items(spec_for(url), options=SearchOptions(retries=2, backoff=0.01, jitter=0))
    msg = str(e.value)
    assert "\n" not in msg and url in msg and "HTTP 503" in msg
    assert sum(1 for m, p, s in f.log if m == "POST" and s == 503) == 3  # first try + 2 retries


def test_client_error_is_not_retried(proxy):
    url, f = proxy
    f.schedule += [("POST", "/search", 400, None)] * 3
    with pytest.raises(PlanError) as e:
        search_items(spec_for(url), options=FAST)
    assert "rejected the search (HTTP 400" in str(e.value)
    assert sum(1 for m, p, s in f.log if m == "POST" and s == 400) == 1


def test_plan_progress_can_show_the_live_search_line(rustac):
    # What `cubeless plan` / `run` show while searching: the stats handed to make_plan are filled
    # as pages arrive, so the progress callback reads pages, items, items/s and partitions done.
    from cubeless.search import SearchStats

    stats = SearchStats()
    seen: list[tuple[int, int, str]] = []
    plan = make_plan(spec_for(rustac), progress=lambda n: seen.append((n, stats.pages, stats.line())), stats=stats)
    n, pages, line = seen[-1]
    assert n == stats.kept == len(IN_RANGE) and pages >= 1
    assert line.startswith(f"{pages} pages, {n:,} items") and "items/s" in line and "partitions" in line
    assert plan.search_stats["pages"] == stats.pages and plan.items_found == len(IN_RANGE)


def test_a_page_that_is_not_json_is_one_line_plan_error(proxy):
    url, f = proxy
    f.schedule += [("POST", "/search", "body", b"<html>gateway says hello</html>")]
    with pytest.raises(PlanError) as e:
        search_items(spec_for(url), options=FAST)
    assert "\n" not in str(e.value) and "not JSON" in str(e.value) and url in str(e.value)


def test_sharer_shares_equal_parts_and_keeps_types_apart():
    from cubeless.search import Sharer

    share = Sharer()
    a = share({"id": "a", "properties": {"proj:shape": [10980, 10980], "gsd": 10, "platform": "sentinel-2a"},
               "assets": {"red": {"raster:bands": [{"scale": 0.0001, "offset": -0.1, "nodata": 0}]}}})
    b = share({"id": "b", "properties": {"proj:shape": [10980, 10980], "gsd": 10.0, "platform": "sentinel-2a"},
               "assets": {"red": {"raster:bands": [{"offset": -0.1, "nodata": 0, "scale": 0.0001}]}}})
    assert a["properties"]["proj:shape"] is b["properties"]["proj:shape"]
    assert a["assets"]["red"]["raster:bands"] is b["assets"]["red"]["raster:bands"]  # key order aside
    assert type(a["properties"]["gsd"]) is int and type(b["properties"]["gsd"]) is float  # 10 and 10.0 stay apart
    assert a["id"] == "a" and b["id"] == "b"
