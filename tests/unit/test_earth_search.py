"""The synthetic Earth Search API (cubeless.demo.earth_search): real-sized items, 502 over 6 MB, paging, fields."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from pystac_client import Client

from cubeless.demo.earth_search import COLLECTION, MAX_BODY_BYTES, real_items_dir, serve_earth_search

pytestmark = pytest.mark.xdist_group("earth_search")

ROOT = real_items_dir()
BRAZIL = [-74.0, -34.0, -34.7, 5.3]
YEAR = "2024-01-01T00:00:00Z/2024-12-31T23:59:59Z"


@pytest.fixture(scope="module")
def url():  # type: ignore[no-untyped-def]
    if ROOT is None:
        pytest.skip("../shared/real-items is absent (the synthetic Earth Search is built from it)")
    with serve_earth_search(ROOT) as u:
        yield u


def post(url: str, body: dict) -> tuple[int, bytes]:
    req = urllib.request.Request(url + "/search", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def real_sizes() -> list[int]:
    assert ROOT is not None
    out = []
    for p in (ROOT / COLLECTION).glob("*/*.json"):
        doc = json.loads(p.read_text())
        if doc.get("type") == "Feature":
            out.append(len(json.dumps(doc, separators=(",", ":"))))
    return out


def test_items_are_real_sized_and_brazil_year_matches_earth_search_scale(url: str) -> None:
    status, body = post(url, {"collections": [COLLECTION], "bbox": BRAZIL, "datetime": YEAR, "limit": 50})
    assert status == 200
    doc = json.loads(body)
    per_item = len(body) / len(doc["features"])
    sizes = real_sizes()
    assert min(sizes) * 0.97 <= per_item <= max(sizes) * 1.03
    assert 120_000 <= doc["numberMatched"] <= 160_000  # Earth Search: about 137,000
    f = doc["features"][0]
    assert f["properties"]["proj:epsg"] in range(32718, 32726) or f["properties"]["proj:epsg"] in range(32618, 32626)
    assert f["properties"]["grid:code"].endswith(f["id"].split("_")[1][1:])
    assert f["id"] in f["assets"]["red"]["href"] and f["assets"]["red"]["href"].endswith("/B04.tif")
    tr = f["assets"]["red"]["proj:transform"]
    assert tr[0] == 10 and f["assets"]["scl"]["proj:transform"][2] == tr[2]
    times = [x["properties"]["datetime"] for x in doc["features"]]
    assert times == sorted(times, reverse=True)  # newest first, as Earth Search


def test_a_page_over_6_mb_is_answered_502(url: str) -> None:
    status, body = post(url, {"collections": [COLLECTION], "bbox": BRAZIL, "datetime": YEAR, "limit": 1000})
    assert status == 502 and b"Internal server error" in body
    status, body = post(url, {"collections": [COLLECTION], "bbox": BRAZIL, "datetime": YEAR, "limit": 300})
    assert status == 200 and len(body) <= MAX_BODY_BYTES


def test_token_paging_walks_every_item_once(url: str) -> None:
    body = {"collections": [COLLECTION], "bbox": [-50.0, -10.0, -48.0, -8.0], "datetime": "2024-03-01/2024-03-31",
            "limit": 7}
    ids: list[str] = []
    matched = None
    while True:
        status, raw = post(url, body)
        assert status == 200
        doc = json.loads(raw)
        matched = doc["numberMatched"]
        ids += [f["id"] for f in doc["features"]]
        nxt = [link for link in doc["links"] if link["rel"] == "next"]
        if not nxt:
            break
        assert nxt[0]["method"] == "POST" and nxt[0]["body"]["next"].endswith("," + COLLECTION)
        body = nxt[0]["body"]
    assert len(ids) == matched == len(set(ids)) > 7
    # pystac-client follows the same links and finds the same items
    got = [i["id"] for i in Client.open(url).search(collections=[COLLECTION], bbox=[-50.0, -10.0, -48.0, -8.0],
                                                     datetime="2024-03-01/2024-03-31", limit=7).items_as_dicts()]
    assert got == ids


def test_fields_and_cloud_query(url: str) -> None:
    base = {"collections": [COLLECTION], "bbox": [-50.0, -10.0, -48.0, -8.0], "datetime": "2024-03-01/2024-03-31",
            "limit": 100}
    _, full = post(url, base)
    fields = {"include": ["id", "geometry", "properties.datetime", "properties.eo:cloud_cover", "assets.red.href"]}
    _, small = post(url, {**base, "fields": fields})
    a, b = json.loads(full)["features"], json.loads(small)["features"]
    assert [x["id"] for x in a] == [x["id"] for x in b]
    assert set(b[0]) == {"type", "stac_version", "id", "collection", "geometry", "properties", "assets"}
    assert set(b[0]["properties"]) == {"datetime", "eo:cloud_cover"} and b[0]["assets"] == {"red": {"href": a[0]["assets"]["red"]["href"]}}
    assert len(small) * 5 < len(full)
    _, cloudy = post(url, {**base, "query": {"eo:cloud_cover": {"lte": 20}}})
    kept = json.loads(cloudy)["features"]
    want = [x["id"] for x in a if x["properties"]["eo:cloud_cover"] <= 20]
    assert [x["id"] for x in kept] == want and 0 < len(want) < len(a)
    assert any(isinstance(x["properties"]["eo:cloud_cover"], int) for x in a) or len(a) < 30


# -- cubeless.search against it ---------------------------------------------------------------
def spec_at(url: str, **kw):  # type: ignore[no-untyped-def]
    from cubeless.spec import parse_spec

    doc = {"name": "es", "bbox": [-52.0, -12.0, -48.0, -8.0], "start": "2024-01-01", "end": "2024-06-30",
           "store": "/tmp/es.zarr", "stac_api": url, "collection": COLLECTION, "resolution": 0.00027, "chunk": 1200}
    doc.update(kw)
    return parse_spec(doc)


def matched(url: str, spec) -> int:  # type: ignore[no-untyped-def]
    from cubeless.search import bins_datetime
    from cubeless.timebins import time_bins

    body = {"collections": [COLLECTION], "bbox": list(spec.bbox), "limit": 1,
            "datetime": bins_datetime(time_bins(spec.start, spec.end, spec.interval))}
    return int(json.loads(post(url, body)[1])["numberMatched"])


def test_search_halves_a_page_over_6_mb_and_continues(url: str) -> None:
    from cubeless.search import SearchOptions, SearchStats, search_items

    spec = spec_at(url)
    stats = SearchStats()
    # Full items (no fields), a first page of 1,000 (~17 MB): 502, then 500 (~8.8 MB): 502, then 250.
    opts = SearchOptions(use_fields=False, item_bytes=1, page_bytes=10**9, partition_pages=10**6)
    items = search_items(spec, options=opts, stats=stats)
    assert stats.halvings >= 2 and not stats.fields and stats.partitions == 1
    assert len(items) == len({i["id"] for i in items}) == matched(url, spec) > 500
    assert set(items[0]["assets"]) == {"red", "green", "blue", "scl"}  # reduced to the minimal form per page


def test_partitioned_search_with_fields_finds_each_item_once(url: str) -> None:
    from cubeless.search import SearchOptions, SearchStats, search_items

    spec = spec_at(url)
    whole, parted = SearchStats(), SearchStats()
    a = search_items(spec, options=SearchOptions(use_fields=False, partition_pages=10**6), stats=whole)
    b = search_items(spec, options=SearchOptions(partition_pages=1, concurrency=4), stats=parted)
    assert parted.fields and parted.partitions == 6 and parted.partitions_done == 6  # one per monthly bin
    assert len(b) == len({i["id"] for i in b})
    assert {i["id"] for i in a} == {i["id"] for i in b}
    assert parted.bytes_per_item * 3 < whole.bytes_per_item  # fields: a fraction of the bytes
    # the reduced items are the same whether or not fields were used
    by_id = {i["id"]: i for i in a}
    assert all(by_id[i["id"]] == i for i in b[:50])


def test_plan_summary_reports_the_search(url: str) -> None:
    from cubeless.plan import make_plan, plan_summary

    spec = spec_at(url, bbox=[-50.0, -10.0, -49.0, -9.0], end="2024-02-28")
    s = plan_summary(make_plan(spec))
    assert s["search_pages"] >= 1 and s["search_fields"] is True and s["search_items"] >= s["scenes_used"] > 0
    assert s["search_bytes_per_item"] < 8000 and s["estimated_search_usd"] > 0
    assert s["estimated_cost_usd"] >= s["estimated_search_usd"]
