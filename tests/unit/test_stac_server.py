"""rustac serve as a local STAC API: the right items for bbox/datetime searches, clean shutdown."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
import warnings
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pystac_client import Client
from shapely.geometry import box, shape

from cubeless.demo.stac_server import RustacNotFound, ServerOptions, find_rustac, serve_scene_set, serve_stac
from cubeless.demo.synthetic import SceneSet, demo_config, generate

pytestmark = pytest.mark.xdist_group("stac_server")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> SceneSet:
    return generate(demo_config(), tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def url(demo: SceneSet):  # type: ignore[no-untyped-def]
    with serve_scene_set(demo) as u:
        yield u


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _expected(demo: SceneSet, bbox: tuple[float, float, float, float], start: datetime, end: datetime) -> list[str]:
    return sorted(
        i["id"]
        for i in demo.items
        if shape(i["geometry"]).intersects(box(*bbox))
        and start <= datetime.fromisoformat(i["properties"]["datetime"].replace("Z", "+00:00")) <= end
    )


def _utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=timezone.utc)


def test_serves_loopback_only(url: str) -> None:
    assert url.startswith("http://127.0.0.1:")


def test_collection_and_items_endpoint(url: str, demo: SceneSet) -> None:
    client = Client.open(url)
    col = client.get_collection("sentinel-2-c1-l2a")
    assert col.id == "sentinel-2-c1-l2a"
    assert col.extent.spatial.bboxes[0] == pytest.approx(demo.collection["extent"]["spatial"]["bbox"][0])
    ids = sorted(i.id for i in col.get_items())
    assert ids == sorted(s.id for s in demo.scenes)


@pytest.mark.parametrize(
    ("bbox", "start", "end", "n"),
    [
        # west of the overlap: zone 31 tile only
        ((5.92, 46.33, 5.94, 46.37), _utc(2024, 5, 1), _utc(2024, 5, 31, 23, 59, 59), 5),
        # east of the overlap: zone 32 tile only
        ((6.06, 46.33, 6.08, 46.37), _utc(2024, 7, 1), _utc(2024, 7, 31, 23, 59, 59), 5),
        # across the zone boundary: both tiles
        ((5.98, 46.32, 6.02, 46.38), _utc(2024, 5, 1), _utc(2024, 7, 31, 23, 59, 59), 20),
        # the empty month
        ((5.90, 46.30, 6.10, 46.40), _utc(2024, 6, 1), _utc(2024, 6, 30, 23, 59, 59), 0),
        # outside the area
        ((7.0, 47.0, 7.1, 47.1), _utc(2024, 5, 1), _utc(2024, 7, 31, 23, 59, 59), 0),
        # a single day
        ((5.90, 46.30, 6.10, 46.40), _utc(2024, 7, 12), _utc(2024, 7, 12, 23, 59, 59), 2),
    ],
)
def test_search_bbox_datetime_returns_the_right_items(url, demo, bbox, start, end, n) -> None:  # type: ignore[no-untyped-def]
    want = _expected(demo, bbox, start, end)
    assert len(want) == n
    dt = f"{start:%Y-%m-%dT%H:%M:%SZ}/{end:%Y-%m-%dT%H:%M:%SZ}"
    client = Client.open(url)
    got = sorted(i.id for i in client.search(collections=["sentinel-2-c1-l2a"], bbox=bbox, datetime=dt).items())
    assert got == want
    # paging: a small page size follows next links to the same result
    paged = sorted(i.id for i in client.search(collections=["sentinel-2-c1-l2a"], bbox=bbox, datetime=dt, limit=3).items())
    assert paged == want


def test_search_keeps_items_intact(url: str, demo: SceneSet) -> None:
    client = Client.open(url)
    items = {i.id: i.to_dict() for i in client.search(collections=["sentinel-2-c1-l2a"], max_items=100).items()}
    for doc in demo.items:
        got = items[doc["id"]]
        assert got["assets"] == doc["assets"]  # local hrefs untouched
        assert got["properties"]["eo:cloud_cover"] == doc["properties"]["eo:cloud_cover"]
        assert got["properties"]["proj:code"] == doc["properties"]["proj:code"]


def test_intersects_post(url: str, demo: SceneSet) -> None:
    point = {"type": "Point", "coordinates": [5.93, 46.35]}
    body = _post(f"{url}/search", {"collections": ["sentinel-2-c1-l2a"], "intersects": point, "limit": 100})
    want = sorted(i["id"] for i in demo.items if shape(i["geometry"]).intersects(shape(point)))
    assert sorted(f["id"] for f in body["features"]) == want and want


def test_cloud_cover_query_and_filter_are_not_supported(url: str) -> None:
    """Documented limitation of the rustac memory backend: clients must filter eo:cloud_cover."""
    conformance = json.loads(urllib.request.urlopen(f"{url}/conformance", timeout=10).read())["conformsTo"]
    client = Client.open(url)
    if any("filter" in c or "#query" in c for c in conformance):  # pragma: no cover - a newer rustac
        pytest.skip("this rustac advertises query/filter; the limitation no longer applies")
    assert not client.conforms_to("QUERY") and not client.conforms_to("FILTER")
    base = {"collections": ["sentinel-2-c1-l2a"], "limit": 100}
    assert _post(f"{url}/search", {**base, "query": {"eo:cloud_cover": {"lt": 40}}})["features"] == []
    cql = {"op": "<", "args": [{"property": "eo:cloud_cover"}, 40]}
    assert _post(f"{url}/search", {**base, "filter": cql, "filter-lang": "cql2-json"})["features"] == []
    assert len(_post(f"{url}/search", {**base, "filter": cql})["features"]) == 20  # ignored
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert list(client.search(collections=["sentinel-2-c1-l2a"], query={"eo:cloud_cover": {"lt": 40}}).items()) == []


def test_server_stops_on_exit(demo: SceneSet) -> None:
    with serve_stac(demo.collection, demo.items[:2]) as u:
        body = json.loads(urllib.request.urlopen(f"{u}/collections/sentinel-2-c1-l2a/items", timeout=10).read())
        assert len(body["features"]) == 2
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"{u}/collections", timeout=2)


def test_two_servers_side_by_side(demo: SceneSet) -> None:
    with serve_stac(demo.collection, demo.items[:1]) as a, serve_stac(demo.collection, demo.items[:3]) as b:
        assert a != b
        n_a = len(json.loads(urllib.request.urlopen(f"{a}/collections/sentinel-2-c1-l2a/items", timeout=10).read())["features"])
        n_b = len(json.loads(urllib.request.urlopen(f"{b}/collections/sentinel-2-c1-l2a/items", timeout=10).read())["features"])
        assert (n_a, n_b) == (1, 3)


def test_missing_rustac_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert find_rustac().name.startswith("rustac")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RustacNotFound, match="rustac is not installed"):
        find_rustac()
    with pytest.raises(RustacNotFound):
        with serve_stac({"id": "x"}, [], options=ServerOptions()):
            pass  # pragma: no cover
