"""A spec too large to plan is refused from a blocked count of its land tiles, never by the kernel.

The world at 10 m for 11 years was killed after 18 GB: footprints of all 5.6 million tiles were
computed before the task count was compared with max_tasks.
"""

from __future__ import annotations

import pytest

from cubeless import land, plan
from cubeless.errors import PlanError
from cubeless.grid import cube_geobox, spec_region, tile_shape
from cubeless.spec import parse_spec

pytestmark = pytest.mark.filterwarnings(
    "ignore:Use `@` matmul:PendingDeprecationWarning",
    "ignore:The 'shapely.ops.transform:DeprecationWarning",
)


def _spec(bbox, **kw):  # noqa: ANN001, ANN003, ANN202
    doc = {"name": "t", "bbox": list(bbox), "start": "2020-01-01", "end": "2020-01-31", "store": "/tmp/t"}
    doc.update(kw)
    return parse_spec(doc)


@pytest.mark.parametrize("bbox, kw", [
    ((-74.0, -33.8, -34.8, 5.3), {"resolution": 0.0027}),  # Brazil, lon/lat
    ((22.0, 35.0, 28.5, 41.0), {"crs": "EPSG:32635", "resolution": 100}),  # the Aegean, UTM
    ((-180, -85, 180, 85), {"crs": "EPSG:6933", "resolution": 5000}),  # the world, equal-area
])
def test_blocked_count_equals_the_selection(bbox, kw, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    spec = _spec(bbox, **kw)
    geobox, region = cube_geobox(spec), spec_region(spec)
    want = len(land.select_tiles(geobox, 64, region).index)
    _, ntx = tile_shape(geobox, 64)
    monkeypatch.setattr(land, "COUNT_BLOCK_TILES", 3 * ntx + 1)  # blocks of 3 tile rows
    assert want > 0 and land.count_tiles(geobox, 64, region) == want
    assert want > 10 and 10 < land.count_tiles(geobox, 64, region, stop_above=10) <= want


def test_the_world_at_10m_is_refused_before_its_footprints(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec((-180, -90, 180, 90), start="2014-01-01", end="2024-12-31", resolution=0.00009, chunk=1200)
    nty, ntx = tile_shape(cube_geobox(spec), spec.chunk)
    assert nty * ntx > 5_000_000
    largest: list[int] = []
    select = land.select_tiles

    def recording(geobox, chunk, region=None):  # noqa: ANN001, ANN202
        largest.append(tile_shape(geobox, chunk)[0] * tile_shape(geobox, chunk)[1])
        return select(geobox, chunk, region)

    monkeypatch.setattr(land, "select_tiles", recording)
    monkeypatch.setattr(plan, "select_tiles", recording)
    with pytest.raises(PlanError, match=r"the plan has at least [\d,]+ tasks \([\d,]+ land tiles x 132 bins\), over max_tasks 200,000; split"):
        plan.make_plan(spec, search=lambda *a, **k: pytest.fail("searched"))
    assert largest and max(largest) <= land.COUNT_BLOCK_TILES, "footprints of the whole grid were computed"
