"""compose() on small synthetic COGs with known values: exact medians, counts, fusing, masks.

Scenes are 10 m uint16 bands and a 20 m uint8 SCL layer in UTM 33N; the cube grid is the same
CRS at 20 m, aligned to the SCL pixels, with nearest resampling: every expected value is exact.
Every 20 m target pixel covers a 2x2 block of equal 10 m source pixels.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
import warnings
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.transform import from_origin

from cubeless.compose import Composite, compose
from cubeless.errors import HrefNotAllowed, TaskError
from cubeless.grid import geobox_of, tile_at
from cubeless.hrefs import HrefPolicy
from cubeless.models import Grid, Task
from cubeless.spec import parse_spec
from cubeless.timebins import TimeBin

CRS = "EPSG:32633"
X0, Y0 = 500_000.0, 5_000_000.0  # north-west corner of every scene
N20 = 80  # scene size in 20 m pixels (1600 m); the 10 m bands are 160 x 160
CHUNK = 64
BANDS = ("red", "green")
EXCLUDE = (0, 1, 3, 8, 9, 10)
SCL_CLASSES = np.array([4, 4, 4, 5, 6, 11, 9, 8, 3, 10, 1, 7, 2], np.uint8)  # weighted draw


@dataclass
class Scene:
    """One synthetic scene at 20 m: SCL and per-band values (0 = no data)."""

    id: str
    when: str  # ISO datetime
    scl: np.ndarray  # (N20, N20) uint8
    bands: dict[str, np.ndarray]  # band -> (N20, N20) uint16


def write_tif(path: Path, arr: np.ndarray, res: float, *, overviews: bool) -> None:
    profile = dict(
        driver="GTiff", height=arr.shape[0], width=arr.shape[1], count=1, dtype=arr.dtype.name, crs=CRS,
        transform=from_origin(X0, Y0, res, res), nodata=0, tiled=True, blockxsize=64, blockysize=64,
        compress="deflate",
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr, 1)
        if overviews:
            dst.build_overviews([2, 4], Resampling.nearest)


def asset(href: str, shape: int, res: float, dtype: str, *, epsg_v1: bool, scale: float = 0.0001) -> dict[str, Any]:
    a: dict[str, Any] = {
        "href": href,
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "roles": ["data"],
        "proj:shape": [shape, shape],
        "proj:transform": [res, 0.0, X0, 0.0, -res, Y0],
        "raster:bands": [{"nodata": 0, "data_type": dtype, "scale": scale, "offset": -0.1}
                         if dtype == "uint16" else {"nodata": 0, "data_type": dtype}],
    }
    if epsg_v1:
        a["proj:epsg"] = 32633
    else:
        a["proj:code"] = CRS
    return a


def write_scene(root: Path, scene: Scene, *, epsg_v1: bool = False, base: str | None = None) -> dict[str, Any]:
    """Write the scene's COGs and return its minimal STAC item (hrefs under ``base`` if given)."""
    base = base if base is not None else str(root)
    assets = {}
    for band, arr in scene.bands.items():
        name = f"{scene.id}_{band}.tif"
        write_tif(root / name, np.kron(arr, np.ones((2, 2), arr.dtype)), 10.0, overviews=True)
        assets[band] = asset(f"{base}/{name}", 2 * N20, 10.0, "uint16", epsg_v1=epsg_v1)
    name = f"{scene.id}_scl.tif"
    write_tif(root / name, scene.scl, 20.0, overviews=False)
    assets["scl"] = asset(f"{base}/{name}", N20, 20.0, "uint8", epsg_v1=epsg_v1)
    return {"id": scene.id, "properties": {"datetime": scene.when}, "assets": assets}


def random_scene(rng: np.random.Generator, sid: str, when: str, cover: tuple[slice, slice] | None = None) -> Scene:
    scl = rng.choice(SCL_CLASSES, size=(N20, N20))
    bands = {b: rng.integers(1, 20, (N20, N20), dtype=np.uint16) * 100 + rng.integers(0, 2, dtype=np.uint16)
             for b in BANDS}
    bands["red"][rng.random((N20, N20)) < 0.03] = 0  # a few in-footprint zeros: invalid for red only
    if cover is not None:  # outside the footprint every layer is 0
        inside = np.zeros((N20, N20), bool)
        inside[cover] = True
        scl[~inside] = 0
        for b in bands.values():
            b[~inside] = 0
    return Scene(sid, when, scl, bands)


def fuse(scenes: list[Scene]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """odc-stac's fusing of one solar day: per layer, the first scene's non-zero value wins."""
    scl = scenes[0].scl.copy()
    bands = {b: v.copy() for b, v in scenes[0].bands.items()}
    for s in scenes[1:]:
        scl = np.where(scl != 0, scl, s.scl)
        for b in bands:
            bands[b] = np.where(bands[b] != 0, bands[b], s.bands[b])
    return scl, bands


def expected(days: list[list[Scene]], window: tuple[slice, slice], dilate_r: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Independent reference: np.nanmedian (float64) over valid observations, round half to even."""
    fused = [fuse(d) for d in days]
    ok_scl = []
    for scl, _ in fused:
        ok = ~np.isin(scl, EXCLUDE)
        if dilate_r:
            clouds = np.isin(scl, [c for c in EXCLUDE if c != 0])
            grown = np.zeros_like(clouds)
            for y, x in zip(*np.nonzero(clouds)):
                grown[max(0, y - dilate_r) : y + dilate_r + 1, max(0, x - dilate_r) : x + dilate_r + 1] = True
            ok &= ~grown
        ok_scl.append(ok[window])
    meds = {}
    count = np.zeros(ok_scl[0].shape, np.uint16)
    for b in BANDS:
        vals = np.stack([f[1][b][window] for f in fused]).astype(np.float64)
        ok = np.stack(ok_scl) & (vals != 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
            med = np.nanmedian(np.where(ok, vals, np.nan), axis=0)
        meds[b] = np.nan_to_num(np.round(med), nan=0).astype(np.uint16)
        if b == BANDS[0]:
            count = ok.sum(axis=0).astype(np.uint16)
    return meds, count


def make_task(items: list[dict[str, Any]], *, iy: int = 0, ix: int = 0, grid: Grid | None = None, **spec_kw: Any) -> Task:
    spec = parse_spec({
        "name": "t", "bbox": [15.0, 45.1, 15.03, 45.14], "start": "2020-01-01", "end": "2020-01-31",
        "store": "/tmp/unused.zarr", "crs": CRS, "resolution": 20, "chunk": CHUNK, "bands": list(BANDS),
        "resampling": "nearest", **spec_kw,
    })
    grid = grid or Grid(crs=CRS, transform=(20.0, 0.0, X0, 0.0, -20.0, Y0), height=N20, width=N20)
    tile = tile_at(geobox_of(grid), spec.chunk, iy, ix)
    return Task(run_id="r", spec=spec, grid=grid, tile=tile, bin=TimeBin(start=date(2020, 1, 1), end=date(2020, 2, 1)),
                t=0, items=items)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[Scene]], list[dict[str, Any]]]:
    """Five scenes on four solar days; day 2 has two overlapping scenes (fused); day 4 is partial."""
    import odc.stac  # noqa: F401  (a one-off ~1-3 s import of xarray/dask: not part of any test)

    root = tmp_path_factory.mktemp("cogs")
    rng = np.random.default_rng(42)
    d1 = random_scene(rng, "s2a-1", "2020-01-03T10:00:21Z")
    d2a = random_scene(rng, "s2b-2a", "2020-01-08T10:00:21Z", (slice(None), slice(0, 48)))
    d2b = random_scene(rng, "s2b-2b", "2020-01-08T10:00:25Z", (slice(None), slice(32, None)))
    d3 = random_scene(rng, "s2a-3", "2020-01-13T10:00:21Z")
    d4 = random_scene(rng, "s2b-4", "2020-01-18T10:00:21Z", (slice(0, 40), slice(None)))
    days = [[d1], [d2a, d2b], [d3], [d4]]
    items = [write_scene(root, s, epsg_v1=(i % 2 == 1)) for i, s in enumerate([d1, d2b, d2a, d3, d4])]
    return root, days, items


def assert_composite(comp: Composite, meds: dict[str, np.ndarray], count: np.ndarray) -> None:
    for b in BANDS:
        assert comp.bands[b].dtype == np.uint16 and comp.bands[b].shape == count.shape
        np.testing.assert_array_equal(comp.bands[b], meds[b], err_msg=b)
    assert comp.count.dtype == np.uint16
    np.testing.assert_array_equal(comp.count, count)


def test_full_tile_is_the_exact_per_pixel_median(scenes):
    _, days, items = scenes
    comp = compose(make_task(items))
    meds, count = expected(days, (slice(0, 64), slice(0, 64)))
    assert_composite(comp, meds, count)
    assert comp.items == 5 and comp.observations == 4 and comp.observations_read == 4
    assert comp.valid_fraction == pytest.approx(count.sum() / (4 * 64 * 64))
    assert comp.scale_offset == {"red": (0.0001, -0.1), "green": (0.0001, -0.1)}
    assert set(comp.seconds) >= {"load", "mask", "median", "total"}
    assert comp.bytes_read == 0  # local files are not network reads


@pytest.mark.parametrize("iy,ix,shape", [(0, 1, (64, 16)), (1, 1, (16, 16)), (1, 0, (16, 64))])
def test_edge_tiles_are_smaller_than_a_chunk(scenes, iy, ix, shape):
    _, days, items = scenes
    comp = compose(make_task(items, iy=iy, ix=ix))
    window = (slice(iy * CHUNK, iy * CHUNK + shape[0]), slice(ix * CHUNK, ix * CHUNK + shape[1]))
    meds, count = expected(days, window)
    assert comp.count.shape == shape
    assert_composite(comp, meds, count)


def test_dilation_grows_clouds_but_not_nodata(scenes):
    _, days, items = scenes
    comp = compose(make_task(items, mask={"dilate": 2}))
    meds, count = expected(days, (slice(0, 64), slice(0, 64)), dilate_r=2)
    assert_composite(comp, meds, count)
    plain, _ = expected(days, (slice(0, 64), slice(0, 64)))
    assert not np.array_equal(meds["red"], plain["red"])  # the dilation did change something


def test_bands_loaded_in_groups_give_the_same_result(scenes):
    _, days, items = scenes
    comp = compose(make_task(items), memory_budget=1, io_threads=2, median_threads=1)
    meds, count = expected(days, (slice(0, 64), slice(0, 64)))
    assert_composite(comp, meds, count)


def test_cloudy_observations_are_not_read_for_reflectance(tmp_path):
    rng = np.random.default_rng(7)
    clear = random_scene(rng, "clear", "2020-01-03T10:00:00Z")
    cloudy = random_scene(rng, "cloudy", "2020-01-08T10:00:00Z")
    cloudy.scl[:] = 9
    items = [write_scene(tmp_path, s) for s in (clear, cloudy)]
    for band in BANDS:  # if compose read a band of the cloudy scene, it would fail
        os.remove(tmp_path / f"cloudy_{band}.tif")
    comp = compose(make_task(items))
    meds, count = expected([[clear], [cloudy]], (slice(0, 64), slice(0, 64)))
    assert_composite(comp, meds, count)
    assert comp.observations == 2 and comp.observations_read == 1


def test_all_cloud_gives_zeros_without_reading_bands(tmp_path):
    rng = np.random.default_rng(8)
    s = random_scene(rng, "c", "2020-01-03T10:00:00Z")
    s.scl[:] = 8
    items = [write_scene(tmp_path, s)]
    comp = compose(make_task(items))
    assert comp.observations == 1 and comp.observations_read == 0
    assert not comp.count.any() and not any(v.any() for v in comp.bands.values())


def test_empty_bin_reads_nothing(monkeypatch):
    def no_reads(*a: Any, **k: Any) -> None:
        raise AssertionError("compose read a file for an empty bin")

    monkeypatch.setattr(rasterio, "open", no_reads)
    comp = compose(make_task([], iy=1, ix=1))
    assert comp.count.shape == (16, 16) and comp.count.dtype == np.uint16 and not comp.count.any()
    assert set(comp.bands) == set(BANDS)
    assert all(v.shape == (16, 16) and v.dtype == np.uint16 and not v.any() for v in comp.bands.values())
    assert comp.items == 0 and comp.observations == 0 and comp.valid_fraction == 0.0


def test_disallowed_href_is_refused_before_any_read(scenes, monkeypatch):
    _, _, items = scenes
    bad = {**items[-1], "id": "evil", "assets": {**items[-1]["assets"]}}
    bad["assets"]["green"] = {**bad["assets"]["green"], "href": "https://evil.example.com/green.tif"}
    opened: list[Any] = []
    monkeypatch.setattr(rasterio, "open", lambda *a, **k: opened.append(a) or (_ for _ in ()).throw(AssertionError))
    with pytest.raises(HrefNotAllowed, match="evil.example.com"):
        compose(make_task([*items, bad]))
    # A policy without local files refuses the local scenes, too.
    with pytest.raises(HrefNotAllowed, match="local file paths are not allowed"):
        compose(make_task(items), policy=HrefPolicy.from_hosts(["sentinel-cogs.s3.us-west-2.amazonaws.com"]))
    assert opened == []


def test_bad_items_are_task_errors(scenes):
    _, _, items = scenes
    no_scl = {**items[0], "assets": {k: v for k, v in items[0]["assets"].items() if k != "scl"}}
    with pytest.raises(TaskError, match="no asset 'scl'"):
        compose(make_task([no_scl]))
    other = {**items[1], "assets": {**items[1]["assets"]}}
    other["assets"]["red"] = {**other["assets"]["red"], "raster:bands": [{"nodata": 0, "scale": 0.0001, "offset": 0.0}]}
    with pytest.raises(TaskError, match="scale/offset of band 'red'"):
        compose(make_task([items[0], other]))
    undated = {**items[0], "properties": {}}
    with pytest.raises(TaskError, match="is not a usable STAC item"):
        compose(make_task([undated]))


def test_unreadable_scene_is_a_task_error(tmp_path):
    rng = np.random.default_rng(9)
    items = [write_scene(tmp_path, random_scene(rng, "gone", "2020-01-03T10:00:00Z"))]
    os.remove(tmp_path / "gone_scl.tif")
    with pytest.raises(TaskError) as missing:
        compose(make_task(items))
    # The href and GDAL's own error, not rasterio's "Read failed. See previous exception ...".
    assert f"reading {tmp_path / 'gone_scl.tif'} failed: " in str(missing.value), missing.value
    assert "No such file or directory" in str(missing.value), missing.value
    # A COG with corrupt tile data opens (its header is whole) and fails at the first block read,
    # where rasterio says only "Read failed. See previous exception for details.".
    items = [write_scene(tmp_path, random_scene(rng, "gone", "2020-01-03T10:00:00Z"))]
    red = tmp_path / "gone_red.tif"
    data = red.read_bytes()
    red.write_bytes(data[: len(data) // 4] + b"\xff" * (len(data) - len(data) // 4))
    with pytest.raises(TaskError) as corrupt:
        compose(make_task(items))
    assert f"reading {red} failed: " in str(corrupt.value), corrupt.value
    assert "TIFFReadEncodedTile() failed" in str(corrupt.value), corrupt.value
    assert "See previous exception" not in str(corrupt.value), corrupt.value


def block_scene(rng: np.random.Generator, sid: str, when: str, block: int) -> Scene:
    """Values constant over block x block target pixels (SCL too)."""
    nb = N20 // block
    scl = rng.choice(SCL_CLASSES, size=(nb, nb))
    bands = {b: rng.integers(1, 50, (nb, nb), dtype=np.uint16) * 10 for b in BANDS}
    up = np.ones((block, block), np.uint8)
    return Scene(sid, when, np.kron(scl, up).astype(np.uint8), {b: np.kron(v, up).astype(np.uint16) for b, v in bands.items()})


def test_geographic_tile_is_reprojected(tmp_path):
    """EPSG:4326 target: interior pixels of 320 m constant blocks get the block's exact median."""
    from pyproj import Transformer

    rng = np.random.default_rng(11)
    block = 16
    scenes_ = [block_scene(rng, f"b{i}", f"2020-01-{3 + 5 * i:02d}T10:00:00Z", block) for i in range(5)]
    items = [write_scene(tmp_path, s) for s in scenes_]
    res = 0.0001  # about 8 x 11 m
    to_ll = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    lon0, lat0 = to_ll.transform(X0 + 100, Y0 - 100)
    lon0, lat0 = np.floor(lon0 / res) * res, np.ceil(lat0 / res) * res
    grid = Grid(crs="EPSG:4326", transform=(res, 0.0, lon0, 0.0, -res, lat0), height=120, width=120)
    comp = compose(make_task(items, grid=grid, crs="EPSG:4326", resolution=res))
    assert comp.count.shape == (64, 64)

    days = [[s] for s in scenes_]
    meds, count = expected(days, (slice(None), slice(None)))  # at 20 m, per source pixel
    to_utm = Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
    yy, xx = np.mgrid[0:64, 0:64]
    lon = lon0 + (xx + 0.5) * res
    lat = lat0 - (yy + 0.5) * res
    ux, uy = to_utm.transform(lon, lat)
    col = (ux - X0) / 20.0
    row = (Y0 - uy) / 20.0
    # Interior: at least 1.5 source (20 m) pixels away from any block edge.
    margin = 1.5
    inner = (
        (np.mod(col, block) > margin) & (np.mod(col, block) < block - margin)
        & (np.mod(row, block) > margin) & (np.mod(row, block) < block - margin)
        & (col > 0) & (row > 0) & (col < N20) & (row < N20)
    )
    assert inner.sum() > 500
    r, c = row.astype(int)[inner], col.astype(int)[inner]
    for b in BANDS:
        np.testing.assert_array_equal(comp.bands[b][inner], meds[b][r, c], err_msg=b)
    np.testing.assert_array_equal(comp.count[inner], count[r, c])


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A static file server that answers byte-range requests, as object stores do."""

    def log_message(self, *args: Any) -> None:
        pass

    def send_head(self):  # type: ignore[override]
        rng = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not rng or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        first, _, last = rng.removeprefix("bytes=").partition("-")
        start = int(first)
        end = min(int(last) if last else size - 1, size - 1)
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._remaining = end - start + 1
        return f

    def copyfile(self, source, outputfile):  # type: ignore[override]
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            return super().copyfile(source, outputfile)
        outputfile.write(source.read(remaining))


def test_https_like_reads_over_http_are_measured(tmp_path):
    rng = np.random.default_rng(12)
    scenes_ = [random_scene(rng, f"h{i}", f"2020-01-{3 + 5 * i:02d}T10:00:00Z") for i in range(2)]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_RangeHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host = f"127.0.0.1:{server.server_port}"
        items = [write_scene(tmp_path, s, base=f"http://{host}") for s in scenes_]
        policy = HrefPolicy.from_hosts([host], schemes=["http"])
        comp = compose(make_task(items), policy=policy)
    finally:
        server.shutdown()
        server.server_close()
    meds, count = expected([[s] for s in scenes_], (slice(0, 64), slice(0, 64)))
    assert_composite(comp, meds, count)
    assert comp.bytes_read > 0 and comp.requests >= len(items) * 3
