"""The planner on the real Earth Search items of ../shared/real-items (read there, never copied)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from shapely.geometry import shape

from cubeless.demo.earth_search import real_items_dir
from cubeless.errors import PlanError
from cubeless.plan import make_plan, minimal_item
from cubeless.search import cloud_ok
from cubeless.spec import parse_spec

pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")

ROOT = real_items_dir()
ASSETS = ["red", "green", "blue", "nir", "scl"]


def load(group: str) -> list[dict]:
    if ROOT is None:
        pytest.skip("../shared/real-items is absent (real Earth Search item fixtures)")
    out = []
    for p in sorted(Path(ROOT, group).glob("*/*.json")):
        doc = json.loads(p.read_text())
        if doc.get("type") == "Feature":
            out.append(doc)
    return out


def red_offset(item: dict) -> float:
    return item["assets"]["red"]["raster:bands"][0]["offset"]


def test_every_real_item_reduces_with_its_grid() -> None:
    items = load("sentinel-2-c1-l2a") + load("sentinel-2-l2a")
    assert len(items) == 102
    for it in items:
        m = minimal_item(it, ASSETS)
        assert m["properties"]["proj:epsg"] == it["properties"]["proj:epsg"]  # item level only
        assert m["properties"]["grid:code"].startswith("MGRS-")
        for a in ASSETS:
            assert m["assets"][a]["proj:transform"] == it["assets"][a]["proj:transform"]
            assert m["assets"][a]["proj:shape"] == it["assets"][a]["proj:shape"]
        assert cloud_ok(m, 50.0) == (float(it["properties"]["eo:cloud_cover"]) <= 50.0)  # int or float
        assert m["assets"]["red"]["raster:bands"][0]["scale"] == 0.0001


def test_one_dn_convention_offsets_say_what_the_pixels_need() -> None:
    c1 = {i["id"]: i for i in load("sentinel-2-c1-l2a")}
    l2a = load("sentinel-2-l2a")
    assert all(red_offset(minimal_item(i, ASSETS)) == -0.1 for i in c1.values())  # ESA DN, +1000 built in
    for it in l2a:
        m = minimal_item(it, ASSETS)
        applied = it["properties"]["earthsearch:boa_offset_applied"]
        baseline = it["properties"]["s2:processing_baseline"]
        # pre-04.00 pixels never had the offset; flagged ones had it removed: both read with offset 0
        assert red_offset(m) == (0 if applied or baseline < "04.00" else -0.1)
        assert m["assets"]["scl"].get("raster:bands", [{}])[0].get("offset") is None
    assert any(red_offset(i) == -0.1 and i["properties"]["earthsearch:boa_offset_applied"] for i in l2a)  # the trap


def test_l2a_item_without_the_flag_is_refused_with_the_fix() -> None:
    it = copy.deepcopy(next(i for i in load("sentinel-2-l2a") if i["properties"]["s2:processing_baseline"] >= "04.00"))
    del it["properties"]["earthsearch:boa_offset_applied"]
    with pytest.raises(PlanError) as e:
        minimal_item(it, ASSETS)
    assert "\n" not in str(e.value) and "sentinel-2-c1-l2a" in str(e.value) and it["id"] in str(e.value)


def series_spec(**kw):  # type: ignore[no-untyped-def]
    items = load("sentinel-2-c1-l2a")
    tde = [i for i in items if "T13TDE" in i["id"]]
    w, s, e, n = shape(tde[0]["geometry"]).bounds
    doc = {"name": "tde", "bbox": [w + 0.3, s + 0.3, w + 0.5, s + 0.5], "start": "2024-04-01", "end": "2024-04-30",
           "store": "/tmp/tde.zarr", "resolution": 0.00027, "chunk": 256, "stac_api": "http://127.0.0.1:1",
           "collection": "sentinel-2-c1-l2a", "bands": ["red", "green", "blue"]}
    doc.update(kw)
    return parse_spec(doc), tde


def test_plan_on_the_real_time_series_and_a_duplicate_acquisition_counts_once() -> None:
    spec, tde = series_spec()
    dup = copy.deepcopy(tde[0])
    dup["id"] = tde[0]["id"].replace("_L2A", "_L2A_reprocessed")  # same tile and datetime, another item
    found = tde + [dup]
    plan = make_plan(spec, search=lambda *a, **k: found)
    assert [b.label for b in plan.bins] == ["2024-04-01"]
    region = shape({"type": "Polygon", "coordinates": [[[spec.bbox[0], spec.bbox[1]], [spec.bbox[2], spec.bbox[1]],
                                                         [spec.bbox[2], spec.bbox[3]], [spec.bbox[0], spec.bbox[3]],
                                                         [spec.bbox[0], spec.bbox[1]]]]})
    want = {i["id"] for i in tde if i["properties"]["datetime"][:7] == "2024-04" and shape(i["geometry"]).intersects(region)}
    used = {i["id"] for t in plan.tasks for i in t.items}
    pair = {tde[0]["id"], dup["id"]}
    assert tde[0]["id"] in want and len(want) >= 5  # the March 31 item is in no bin
    assert len(used & pair) == 1 and used - pair == want - pair  # the duplicate acquisition counts once
    for t in plan.tasks:
        keys = [(i["properties"]["grid:code"], i["properties"]["datetime"]) for i in t.items]
        assert len(keys) == len(set(keys))
        assert all(i["properties"]["proj:epsg"] == 32613 for i in t.items)
