"""The reader behind compose: observations, overview choice, the direct path against the warper,
strips against one piece, and reads skipped from STAC metadata alone."""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from rasterio.enums import Resampling

from cubeless import _load
from cubeless.compose import compose
from cubeless.grid import geobox_of, tile_at
from cubeless.models import Grid, Task
from cubeless.spec import parse_spec
from cubeless.timebins import TimeBin

CRS = "EPSG:32633"
X0, Y0 = 500_000.0, 5_000_040.0
N10 = 600  # 6 km scenes at 10 m


def _write(path: Path, arr: np.ndarray, res: float, overviews: list[int], resampling: Resampling, nodata: int = 0) -> None:
    profile = dict(driver="GTiff", height=arr.shape[0], width=arr.shape[1], count=1, dtype=arr.dtype.name, crs=CRS,
                   transform=Affine(res, 0, X0, 0, -res, Y0), nodata=nodata, tiled=True, blockxsize=128,
                   blockysize=128, compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr, 1)
        if overviews:
            dst.build_overviews(overviews, resampling)


def _asset(href: str, n: int, res: float, dtype: str) -> dict[str, Any]:
    return {"href": href, "proj:code": CRS, "proj:shape": [n, n], "proj:transform": [res, 0.0, X0, 0.0, -res, Y0],
            "raster:bands": [{"nodata": 0, "data_type": dtype}]}


def _scene(root: Path, sid: str, when: str, rng: np.random.Generator, *, strip: int = 0) -> dict[str, Any]:
    """Smooth-ish 10 m bands (blocks of 30 m plus noise), a 20 m SCL; ``strip`` columns of nodata."""
    blocks = rng.integers(500, 5000, (N10 // 3, N10 // 3)).astype(np.uint16)
    scl = rng.choice(np.array([4, 4, 4, 5, 6, 8, 9, 3], np.uint8), (N10 // 2, N10 // 2))
    assets = {}
    for band in ("red", "green"):
        arr = np.kron(blocks, np.ones((3, 3), np.uint16)) + rng.integers(0, 30, (N10, N10)).astype(np.uint16)
        if strip:
            arr[:, :strip] = 0
        _write(root / f"{sid}_{band}.tif", arr, 10.0, [2, 4], Resampling.average)
        assets[band] = _asset(str(root / f"{sid}_{band}.tif"), N10, 10.0, "uint16")
    if strip:
        scl[:, : strip // 2] = 0
    _write(root / f"{sid}_scl.tif", scl, 20.0, [2], Resampling.nearest)
    assets["scl"] = _asset(str(root / f"{sid}_scl.tif"), N10 // 2, 20.0, "uint8")
    return {"id": sid, "properties": {"datetime": when}, "assets": assets}


def _task(items: list[dict[str, Any]], *, res: float = 30.0, chunk: int = 150, dilate: int = 0, resampling: str = "bilinear") -> Task:
    spec = parse_spec({
        "name": "t", "bbox": [15.0, 45.1, 15.03, 45.14], "start": "2020-01-01", "end": "2020-01-31",
        "store": "/tmp/unused.zarr", "crs": CRS, "resolution": res, "chunk": chunk, "bands": ["red", "green"],
        "resampling": resampling, "mask": {"dilate": dilate},
    })
    n = int(N10 * 10 / res)
    grid = Grid(crs=CRS, transform=(res, 0.0, X0, 0.0, -res, Y0), height=n, width=n)
    return Task(run_id="r", spec=spec, grid=grid, tile=tile_at(geobox_of(grid), chunk, 0, 0),
                bin=TimeBin(start=date(2020, 1, 1), end=date(2020, 2, 1)), t=0, items=items)


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    root = tmp_path_factory.mktemp("load")
    rng = np.random.default_rng(3)
    return [
        _scene(root, "a", "2020-01-03T10:00:00Z", rng),
        _scene(root, "b", "2020-01-08T10:00:00Z", rng, strip=60),
        _scene(root, "c", "2020-01-13T10:00:00Z", rng),
    ]


def test_solar_day_groups_and_fusing_order():
    items = [
        {"id": "z", "properties": {"datetime": "2020-01-03T23:30:00Z"}},
        {"id": "a", "properties": {"datetime": "2020-01-03T23:30:00Z"}},
        {"id": "early", "properties": {"datetime": "2020-01-03T10:00:00Z"}},
        {"id": "range", "properties": {"datetime": None, "start_datetime": "2020-01-05T01:00:00Z"}},
    ]
    # 20 deg E: +1 h (odc-stac truncates lon/15 to whole hours): 23:30 UTC is the next solar day
    obs = _load.group_observations(items, 20.0)
    assert [o.day for o in obs] == [date(2020, 1, 3), date(2020, 1, 4), date(2020, 1, 5)]
    assert [i["id"] for i in obs[1].items] == ["a", "z"]  # same time: by id
    assert _load.solar_day(datetime(2020, 1, 3, 23, 30, tzinfo=timezone.utc), -14.9) == date(2020, 1, 3)
    with pytest.raises(ValueError, match="'x' is not a usable STAC item"):
        _load.group_observations([{"id": "x", "properties": {}}], 0.0)


def test_read_scale_and_overview_choice_match_odc():
    from odc.geo.overlap import _pick_read_scale
    from odc.loader._reader import pick_overview

    for s in (0.3, 1.0, 1.5, 1.9995, 2.8, 2.9995, 3.0, 7.2):
        assert _load._pick_read_scale(s) == _pick_read_scale(s)
    for shrink in (1, 2, 3, 4, 5, 9):
        for factors in ([], [2], [2, 4, 8], [4, 16]):
            assert _load._pick_overview(shrink, factors) == pick_overview(shrink, factors)


@pytest.mark.parametrize("resampling", ["bilinear", "nearest", "average"])
def test_direct_reads_equal_the_warper_away_from_nodata(items, resampling, monkeypatch):
    task = _task(items, resampling=resampling)
    direct = compose(task)
    monkeypatch.setattr(_load, "DIRECT_READS", False)
    warped = compose(task)
    np.testing.assert_array_equal(direct.count, warped.count)
    for b in ("red", "green"):
        d = np.abs(direct.bands[b].astype(int) - warped.bands[b].astype(int))
        # scene b's nodata strip covers columns < 60 at 10 m = 20 px at 30 m; the kernels differ
        # only next to it
        far = np.ones(d.shape, bool)
        far[:, 17:23] = False
        assert (d[far] <= 1).all(), (b, int(d[far].max()))
        if resampling == "nearest":
            assert (d == 0).all()
        assert (d[far] == 0).mean() > 0.99


def test_strips_give_the_same_result_as_one_piece(items):
    task = _task(items, dilate=2)
    whole = compose(task)
    strips = compose(task, memory_budget=3 * 150 * 8 * 37)  # about 37 rows per strip
    np.testing.assert_array_equal(whole.count, strips.count)
    for b in ("red", "green"):
        np.testing.assert_array_equal(whole.bands[b], strips.bands[b])
    assert whole.observations == strips.observations == 3


def test_overviews_are_used_for_a_coarser_target(items):
    _load.reset_read_stats()
    compose(_task(items))
    st = _load.read_stats()
    # 30 m from 10 m bands: the 2x overview (20 m); SCL at 20 m stays at full resolution
    assert st.levels == {"1/2": 6, "full": 3}
    assert st.direct == 9 and st.warped == 0


def test_assets_outside_the_tile_are_not_opened(items, monkeypatch):
    far = {**items[0], "id": "far", "assets": {
        k: {**a, "href": "/nonexistent/far.tif", "proj:transform": [a["proj:transform"][0], 0.0, X0 + 100_000, 0.0,
                                                                     a["proj:transform"][4], Y0]}
        for k, a in items[0]["assets"].items()
    }}
    _load.reset_read_stats()
    comp = compose(_task([*items, far]))
    assert comp.items == 4 and _load.read_stats().skipped == 3


def test_nodata_other_than_zero_becomes_zero(tmp_path):
    arr = np.full((N10, N10), 1234, np.uint16)
    arr[:, :30] = 65535
    _write(tmp_path / "r.tif", arr, 10.0, [], Resampling.nearest, nodata=65535)
    gbox = GeoBox((20, 20), Affine(30.0, 0, X0, 0, -30.0, Y0), CRS)
    obs = [_load.Observation(date(2020, 1, 1), ({"id": "r", "assets": {"red": {"href": str(tmp_path / "r.tif")}}},))]
    with _load.Reader(1) as rd:
        for resampling in ("nearest", "bilinear"):
            out = rd.read(obs, "red", gbox, resampling=resampling, dtype="uint16")[0]
            # pixel 9 is all nodata, but a bilinear kernel reaching valid pixels averages those
            edge = 10 if resampling == "nearest" else 9
            assert (out[:, :edge] == 0).all() and (out[:, 10:] == 1234).all(), resampling
            assert set(np.unique(out).tolist()) <= {0, 1234}
