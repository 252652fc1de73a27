"""The Zarr v3 cube: creation, identity checks, whole-chunk task writes, publishing time steps."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from cubeless import fs
from cubeless import store as S
from cubeless.errors import PlanError, TaskError
from cubeless.grid import cube_geobox, grid_of, iter_tiles
from cubeless.models import Task
from cubeless.spec import parse_spec
from cubeless.timebins import TimeBin, time_bins

GEO = dict(name="s", bbox=[10.0, 45.0, 10.05, 45.03], resolution=0.00027, chunk=64)  # 112 x 186 px
UTM = dict(name="u", bbox=[15.0, 45.0, 15.012, 45.01], crs="EPSG:32633", resolution=10, chunk=64)


def make(tmp_path: Path, name: str = "c.zarr", **kw):
    doc = {**GEO, "start": "2020-01-01", "end": "2020-03-31", "store": str(tmp_path / name), **kw}
    spec = parse_spec(doc)
    gb = cube_geobox(spec)
    return spec, gb, grid_of(gb, spec.crs)


def tasks_for(spec, gb, grid, bin: TimeBin, t: int) -> list[Task]:
    return [Task(run_id="r", spec=spec, grid=grid, tile=tile, bin=bin, t=t) for tile in iter_tiles(gb, spec.chunk)]


def value_of(task: Task) -> int:
    return 1000 * (task.t + 1) + 10 * task.tile.iy + task.tile.ix


def write(task: Task, value: int | None = None) -> int:
    v = value_of(task) if value is None else value
    arr = np.full((task.tile.ny, task.tile.nx), v, dtype=np.uint16)
    return S.write_task(task, {b: arr + i for i, b in enumerate(task.spec.bands)}, np.full_like(arr, 3))


def chunk_files(store: str) -> dict[str, bytes]:
    out = {}
    for root, _, files in os.walk(store):
        for f in files:
            p = os.path.join(root, f)
            rel = os.path.relpath(p, store)
            if rel.split("/")[0] in ("red", "green", "blue", "count") and "/c/" in rel:
                out[rel] = Path(p).read_bytes()
    return out


# -- creation ---------------------------------------------------------------------------------------
def test_ensure_cube_creates_a_cf_zarr_v3_layout(tmp_path):
    spec, gb, grid = make(tmp_path)
    info = S.ensure_cube(spec, grid)
    assert info.created and info.committed_bins == [] and info.origin == date(2020, 1, 1)
    assert info.interval == "month" and info.length == 0

    root = json.loads((tmp_path / "c.zarr" / "zarr.json").read_text())
    assert root["zarr_format"] == 3 and root["node_type"] == "group"
    cm = root["consolidated_metadata"]["metadata"]
    assert {"red", "green", "blue", "count", "time", "latitude", "longitude", "spatial_ref"} <= set(cm)
    red = cm["red"]
    assert red["shape"] == [0, grid.height, grid.width]
    assert red["data_type"] == "uint16" and red["fill_value"] == 0
    assert red["chunk_grid"]["configuration"]["chunk_shape"] == [1, 64, 64]
    assert red["dimension_names"] == ["time", "latitude", "longitude"]
    assert red["attributes"]["grid_mapping"] == "spatial_ref"
    assert red["attributes"]["scale_factor"] == 0.0001 and red["attributes"]["add_offset"] == -0.1
    assert red["attributes"]["_FillValue"] == 0 and "nodata" not in red["attributes"]
    # 0 observations is a value: count has no fill value, scale or nodata attribute.
    assert not {"scale_factor", "_FillValue", "nodata"} & set(cm["count"]["attributes"])
    assert cm["time"]["attributes"]["bounds"] == "time_bnds" and cm["time_bnds"]["dimension_names"] == ["time", "bnds"]
    assert cm["time"]["attributes"]["units"] == "days since 1970-01-01"
    assert cm["time"]["data_type"] == "int64"
    ref = cm["spatial_ref"]["attributes"]
    assert ref["grid_mapping_name"] == "latitude_longitude" and "GEOGCRS" in ref["crs_wkt"]
    a, b, c, d, e, f = grid.transform
    assert [float(v) for v in ref["GeoTransform"].split()] == [c, a, b, f, d, e]
    attrs = root["attributes"]["cubeless"]
    assert attrs["grid"] == grid.model_dump(mode="json")
    assert attrs["origin"] == "2020-01-01" and attrs["interval"] == "month"
    assert attrs["fingerprint"] == S.fingerprint(S.identity(spec, grid))

    ds = S.open_cube(spec.store, raw=True)
    assert ds.sizes == {"time": 0, "latitude": grid.height, "longitude": grid.width, "bnds": 2}
    assert ds.red.dtype == np.uint16
    np.testing.assert_allclose(ds.longitude.values[:2], [c + a / 2, c + 1.5 * a])
    np.testing.assert_allclose(ds.latitude.values[0], f + e / 2)
    assert ds.latitude.attrs["units"] == "degrees_north" and ds.longitude.attrs["standard_name"] == "longitude"


def test_projected_cube_uses_y_x_and_metres(tmp_path):
    spec, gb, grid = make(tmp_path, **UTM)
    S.ensure_cube(spec, grid)
    ds = S.open_cube(spec.store)
    assert ds.red.dims == ("time", "y", "x")
    assert ds.x.attrs["standard_name"] == "projection_x_coordinate" and ds.x.attrs["units"] == "m"
    assert ds.spatial_ref.attrs["grid_mapping_name"] == "transverse_mercator"


def test_ensure_cube_again_verifies_and_reports_committed_bins(tmp_path):
    spec, gb, grid = make(tmp_path)
    S.ensure_cube(spec, grid)
    before = (tmp_path / "c.zarr" / "zarr.json").read_bytes()
    info = S.ensure_cube(spec, grid)
    assert not info.created and info.committed_bins == []
    assert (tmp_path / "c.zarr" / "zarr.json").read_bytes() == before  # verify only, no write
    S.publish_bins(spec.store, 2)
    # A later spec (other dates, other run settings) extends the same cube; max_cloud_cover is identity (issue 9).
    spec2, _, grid2 = make(tmp_path, start="2020-03-01", end="2020-05-31", settle_days=0)
    info = S.ensure_cube(spec2, grid2)
    assert [b.label for b in info.committed_bins] == ["2020-01-01", "2020-02-01"]
    assert info.origin == date(2020, 1, 1)
    assert S.committed_bins(spec.store) == info.committed_bins
    assert S.cube_state(spec2) == (info.committed_bins, date(2020, 1, 1))


def test_cube_state_of_a_new_store(tmp_path):
    spec, _, _ = make(tmp_path, start="2020-02-11")
    assert S.cube_state(spec) == ([], date(2020, 2, 1))
    assert S.committed_bins(spec.store) == [] and S.cube_info(spec.store) is None


@pytest.mark.parametrize(
    "change, field",
    [
        ({"bands": ["red", "nir"]}, "bands"),
        ({"chunk": 128}, "chunk"),
        ({"crs": "EPSG:3857", "resolution": 30}, "crs"),
        ({"resampling": "nearest"}, "resampling"),
        ({"interval": "week"}, "interval"),
        ({"mask": {"dilate": 2}}, "mask"),
        ({"collection": "sentinel-2-l2a"}, "collection"),
        ({"max_cloud_cover": 20}, "max_cloud_cover"),  # issue 9: it changes which scenes enter the median
        ({"bbox": [10.0, 45.0, 10.1, 45.03]}, "grid"),
    ],
)
def test_mismatching_spec_is_refused_with_one_line(tmp_path, change, field):
    spec, gb, grid = make(tmp_path)
    S.ensure_cube(spec, grid)
    other, _, ogrid = make(tmp_path, **change)
    with pytest.raises(PlanError) as err:
        S.ensure_cube(other, ogrid)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"with {field} " in msg and "choose another store or match the existing cube" in msg
    if field != "grid":
        with pytest.raises(PlanError, match=field):
            S.cube_state(other)


def test_a_foreign_zarr_group_is_refused(tmp_path):
    import zarr

    zarr.create_group(str(tmp_path / "c.zarr"), zarr_format=3)
    spec, _, grid = make(tmp_path)
    with pytest.raises(PlanError, match="not a cubeless cube; choose another store"):
        S.ensure_cube(spec, grid)


def test_interrupted_creation_is_finished(tmp_path):
    import zarr

    spec, _, grid = make(tmp_path)
    S.ensure_cube(spec, grid)
    # Simulate a crash before consolidation: drop the consolidated metadata and one array.
    g = zarr.open_group(spec.store, mode="r+", use_consolidated=False)
    root = tmp_path / "c.zarr" / "zarr.json"
    doc = json.loads(root.read_text())
    doc.pop("consolidated_metadata", None)
    root.write_text(json.dumps(doc))
    del g["count"]
    info = S.ensure_cube(spec, grid)
    assert info.committed_bins == []
    assert "count" in S.open_cube(spec.store)


def test_time_index():
    o = date(2020, 1, 1)
    assert S.time_index(o, TimeBin(start=date(2020, 1, 1), end=date(2020, 2, 1)), "month") == 0
    assert S.time_index(o, date(2021, 3, 1), "month") == 14
    assert S.time_index(o, date(2021, 4, 1), "quarter") == 5
    assert S.time_index(o, date(2023, 1, 1), "year") == 3
    assert S.time_index(date(2019, 12, 30), date(2020, 1, 13), "week") == 2
    with pytest.raises(PlanError, match="before the cube's first bin"):
        S.time_index(o, date(2019, 12, 1), "month")
    with pytest.raises(ValueError):
        S.time_index(o, date(2020, 1, 15), "month")
    bins = time_bins(date(2020, 1, 1), date(2020, 12, 31), "month")
    assert [S.time_index(o, b, "month") for b in bins] == list(range(12))
    assert S.bins_from(o, 12, "month") == bins


# -- chunk writes -----------------------------------------------------------------------------------
class Calls(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "Calling " in msg:
            self.calls.append(msg.split("Calling ", 1)[1].split(".", 1)[1])


@pytest.fixture
def logged(monkeypatch):
    """Record every call the cube's zarr store receives."""
    from zarr.storage import LoggingStore

    handler = Calls()
    orig = fs.zarr_store

    def wrapped(url, *, read_only=False):
        ls = LoggingStore(orig(url, read_only=read_only), log_level="INFO", log_handler=handler)
        if handler not in ls.logger.handlers:  # LoggingStore skips it when the root logger has one
            ls.logger.addHandler(handler)
        return ls

    monkeypatch.setattr(fs, "zarr_store", wrapped)
    return handler


def test_edge_tile_lands_at_its_true_offset_with_whole_chunk_writes_only(tmp_path, logged):
    spec, gb, grid = make(tmp_path)
    assert grid.height % 64 and grid.width % 64  # real edge tiles
    S.ensure_cube(spec, grid)
    bins = time_bins(spec.start, spec.end, "month")
    tiles = list(iter_tiles(gb, 64))
    last = tiles[-1]
    assert (last.ny, last.nx) == (grid.height - last.y0, grid.width - last.x0) and last.ny < 64 and last.nx < 64
    task = Task(run_id="r", spec=spec, grid=grid, tile=last, bin=bins[0], t=0)
    logged.calls.clear()
    assert write(task, 777) == 4
    calls = logged.calls
    # One metadata read (the consolidated root), then one set per variable: no chunk is read, no
    # metadata is written.
    assert [c for c in calls if c.startswith("get")] == ["get(zarr.json)"]
    sets = sorted(c for c in calls if c.startswith("set"))
    assert sets == sorted(f"set({v}/c/0/{last.iy}/{last.ix})" for v in ("red", "green", "blue", "count"))
    assert not [c for c in calls if c.startswith(("delete", "get_partial"))]

    S.publish_bins(spec.store, 1)
    ds = S.open_cube(spec.store, raw=True)
    red = ds.red.isel(time=0).values
    expected = np.zeros((grid.height, grid.width), np.uint16)
    expected[last.y0 : last.y0 + last.ny, last.x0 : last.x0 + last.nx] = 777
    np.testing.assert_array_equal(red, expected)
    assert ds.green.isel(time=0).values[-1, -1] == 778 and ds["count"].isel(time=0).values[-1, -1] == 3
    # Not at an offset computed from the tile's own (smaller) shape:
    assert red[grid.height - 64 : last.y0, :].max() == 0


def test_written_steps_are_invisible_until_published(tmp_path):
    spec, gb, grid = make(tmp_path)
    S.ensure_cube(spec, grid)
    bins = time_bins(spec.start, spec.end, "month")
    for t, b in enumerate(bins[:2]):
        for task in tasks_for(spec, gb, grid, b, t):
            write(task)
    root_before = (tmp_path / "c.zarr" / "zarr.json").read_bytes()
    assert S.open_cube(spec.store).sizes["time"] == 0
    assert xr.open_zarr(spec.store).sizes["time"] == 0
    assert (tmp_path / "c.zarr" / "red" / "zarr.json").exists()
    assert json.loads((tmp_path / "c.zarr" / "red" / "zarr.json").read_text())["shape"][0] == 0
    assert (tmp_path / "c.zarr" / "zarr.json").read_bytes() == root_before

    assert [b.label for b in S.publish_bins(spec.store, 2)] == ["2020-01-01", "2020-02-01"]
    ds = xr.open_zarr(spec.store, mask_and_scale=False)
    assert list(ds.time.values.astype("datetime64[D]").astype(str)) == ["2020-01-01", "2020-02-01"]
    assert S.time_values(spec.store) == [date(2020, 1, 1), date(2020, 2, 1)]
    for task in tasks_for(spec, gb, grid, bins[1], 1):
        tl = task.tile
        block = ds.blue.isel(time=1).values[tl.y0 : tl.y0 + tl.ny, tl.x0 : tl.x0 + tl.nx]
        assert (block == value_of(task) + 2).all()
    # Publishing again is a no-op.
    assert len(S.publish_bins(spec.store, 2)) == 2
    with pytest.raises(Exception, match="shrink"):
        S.publish_bins(spec.store, 1)


def test_writing_a_task_twice_gives_identical_bytes_and_empty_chunks_are_removed(tmp_path):
    spec, gb, grid = make(tmp_path)
    S.ensure_cube(spec, grid)
    b = time_bins(spec.start, spec.end, "month")[0]
    tasks = tasks_for(spec, gb, grid, b, 0)
    for task in tasks:
        write(task)
    first = chunk_files(spec.store)
    assert len(first) == 4 * len(tasks)
    for task in reversed(tasks):
        write(task)
    assert chunk_files(spec.store) == first
    digest = {k: hashlib.sha256(v).hexdigest() for k, v in first.items()}
    assert len(set(digest.values())) > 1
    # An all-fill rewrite deletes the stale chunk (and reports nothing stored).
    t0 = tasks[0]
    empty = np.zeros((t0.tile.ny, t0.tile.nx), np.uint16)
    assert S.write_task(t0, {k: empty for k in spec.bands}, empty) == 0
    assert len(chunk_files(spec.store)) == 4 * len(tasks) - 4


def test_a_failed_chunk_write_returns_only_after_its_siblings_settle(tmp_path, monkeypatch):
    """One variable's chunk write fails while another is still writing: write_task raises only once
    every write has finished, so a process torn down for the retry leaves no temporary file."""
    import asyncio

    from zarr.storage import LocalStore

    spec, gb, grid = make(tmp_path)
    S.ensure_cube(spec, grid)
    task = tasks_for(spec, gb, grid, time_bins(spec.start, spec.end, "month")[0], 0)[0]
    (Path(spec.store) / "red/c/0/0/0/in-the-way").mkdir(parents=True)  # red's rename fails: EISDIR
    real_set = LocalStore.set

    async def slow_count(self, key, value):  # the count chunk is still being written when red fails
        if key.startswith("count/"):
            await asyncio.sleep(0.5)
        return await real_set(self, key, value)

    monkeypatch.setattr(LocalStore, "set", slow_count)
    with pytest.raises(IsADirectoryError):
        write(task)
    written = chunk_files(spec.store)
    assert "count/c/0/0/0" in written, sorted(written)
    assert not [k for k in written if ".partial" in k]


def test_committed_time_index_is_never_written(tmp_path):
    spec, gb, grid = make(tmp_path)
    S.ensure_cube(spec, grid)
    b = time_bins(spec.start, spec.end, "month")[0]
    task = tasks_for(spec, gb, grid, b, 0)[0]
    write(task)
    S.publish_bins(spec.store, 1)
    before = chunk_files(spec.store)
    with pytest.raises(TaskError, match="already committed"):
        write(task, 5)
    assert chunk_files(spec.store) == before


def test_task_that_does_not_fit_the_cube_is_refused(tmp_path):
    spec, gb, grid = make(tmp_path)
    S.ensure_cube(spec, grid)
    bins = time_bins(spec.start, spec.end, "month")
    task = tasks_for(spec, gb, grid, bins[0], 0)[0]
    with pytest.raises(TaskError, match="time index"):
        write(task.model_copy(update={"t": 1}))
    with pytest.raises(TaskError, match="not one whole chunk"):
        write(task.model_copy(update={"tile": task.tile.model_copy(update={"ny": 10})}))
    other, _, ogrid = make(tmp_path, chunk=128)
    with pytest.raises(TaskError, match="another cube"):
        write(task.model_copy(update={"spec": other, "grid": ogrid}))
    arr = np.ones((task.tile.ny, task.tile.nx), np.uint16)
    with pytest.raises(ValueError, match="missing"):
        S.write_task(task, {"red": arr}, arr)
    with pytest.raises(ValueError, match="shape"):
        S.write_task(task, {b: arr[:5] for b in spec.bands}, arr)


def test_float_values_and_source_scale_offset(tmp_path):
    """Floats round half to even; a source scaling that differs from the cube's is re-expressed."""
    spec, gb, grid = make(tmp_path)
    S.ensure_cube(spec, grid)  # sentinel-2-c1-l2a: scale 0.0001, offset -0.1
    b = time_bins(spec.start, spec.end, "month")[0]
    task = tasks_for(spec, gb, grid, b, 0)[0]
    shape = (task.tile.ny, task.tile.nx)
    red = np.full(shape, 1234.5, np.float32)
    red[0, 0] = np.nan
    red[0, 1] = 0.2
    green = np.full(shape, 500, np.uint16)
    green[1, 1] = 0
    blue = np.full(shape, 70000.0)
    S.write_task(
        task,
        {"red": red, "green": green, "blue": blue},
        np.full(shape, 2.0),
        # green comes from an older processing baseline without the -0.1 offset.
        scale_offset={"red": (0.0001, -0.1), "green": {"scale": 0.0001, "offset": 0.0}, "blue": (1.0, 0.0)},
    )
    S.publish_bins(spec.store, 1)
    ds = S.open_cube(spec.store, raw=True).isel(time=0)
    r = ds.red.values
    assert r[0, 0] == 0 and r[0, 1] == 1 and r[5, 5] == 1234  # half to even
    g = ds.green.values
    assert g[5, 5] == 1500 and g[1, 1] == 0  # re-expressed in the cube's convention, fill kept
    assert ds.blue.values[5, 5] == 65535  # clipped; (1.0, 0.0) means "unknown": no conversion
    assert ds["count"].values[5, 5] == 2


def test_unknown_source_scale_leaves_dns_unchanged(tmp_path):
    spec, gb, grid = make(tmp_path)
    S.ensure_cube(spec, grid)
    task = tasks_for(spec, gb, grid, time_bins(spec.start, spec.end, "month")[0], 0)[0]
    arr = np.full((task.tile.ny, task.tile.nx), 1234, np.uint16)
    S.write_task(task, {b: arr for b in spec.bands}, arr, scale_offset={b: (1.0, 0.0) for b in spec.bands})
    S.publish_bins(spec.store, 1)
    assert S.open_cube(spec.store, raw=True).red.values[0, 0, 0] == 1234


@pytest.mark.parametrize("kw, epsg", [(GEO, 4326), (UTM, 32633)])
def test_rioxarray_reads_the_crs_and_transform(tmp_path, kw, epsg):
    import rioxarray  # noqa: F401

    spec, gb, grid = make(tmp_path, **kw)
    S.ensure_cube(spec, grid)
    b = time_bins(spec.start, spec.end, "month")[0]
    for task in tasks_for(spec, gb, grid, b, 0):
        write(task)
    S.publish_bins(spec.store, 1)
    ds = xr.open_zarr(spec.store)
    assert ds.red.rio.crs.to_epsg() == epsg
    assert "spatial_ref" in ds.red.coords
    assert ds.red.rio.transform() == pytest.approx(gb.affine)
    assert ds.rio.crs.to_epsg() == epsg


@pytest.mark.parametrize("kw, epsg", [(GEO, 4326), (UTM, 32633)])
def test_default_open_gives_reflectance_nan_where_no_observation_and_bin_bounds(tmp_path, kw, epsg):
    """xr.open_zarr's default mask_and_scale gives DN * scale + offset, NaN where count is 0 (count
    itself stays an integer with real zeros); time_bnds holds each bin's [start, end); rioxarray,
    odc-geo and GDAL still find the CRS and transform."""
    import rasterio
    import rioxarray  # noqa: F401
    from odc.geo.xr import ODCExtensionDa  # noqa: F401

    spec, gb, grid = make(tmp_path, **kw)
    S.ensure_cube(spec, grid)
    bins = time_bins(spec.start, spec.end, "month")[:2]
    for t, b in enumerate(bins):
        for task in tasks_for(spec, gb, grid, b, t):
            shape = (task.tile.ny, task.tile.nx)
            dn = np.full(shape, 2500, np.uint16)
            cnt = np.full(shape, 3, np.uint16)
            dn[0, :] = 0  # no valid observation in the first row of every tile
            cnt[0, :] = 0
            S.write_task(task, {band: dn for band in spec.bands}, cnt)
    S.publish_bins(spec.store, 2)

    ds = xr.open_zarr(spec.store, chunks=None)
    red, count = ds.red.values, ds["count"].values
    assert red.dtype.kind == "f" and count.dtype == np.uint16
    assert (count == 0).any() and np.isnan(red[count == 0]).all()
    np.testing.assert_allclose(red[count > 0], 2500 * 0.0001 - 0.1)
    assert "_FillValue" not in ds["count"].encoding and "scale_factor" not in ds["count"].encoding
    raw = xr.open_zarr(spec.store, chunks=None, mask_and_scale=False)
    assert raw.red.dtype == np.uint16 and (raw.red.values[count == 0] == 0).all()
    assert raw["count"].rio.nodata is None  # not "0 = nodata"

    bnds = ds.time_bnds.values.astype("datetime64[D]").astype(str).tolist()
    assert bnds == [["2020-01-01", "2020-02-01"], ["2020-02-01", "2020-03-01"]]
    assert ds.time.attrs["bounds"] == "time_bnds"

    assert ds.red.rio.crs.to_epsg() == epsg and ds.red.rio.transform() == pytest.approx(gb.affine)
    assert ds.red.odc.geobox.crs.epsg == epsg and ds.red.odc.geobox.affine == pytest.approx(gb.affine)
    with rasterio.open(f'ZARR:"{spec.store}":/red:0') as src:  # GDAL's Zarr driver, time index 0
        assert src.crs.to_epsg() == epsg and src.transform == pytest.approx(gb.affine)
        assert src.scales == (0.0001,) and src.offsets == (-0.1,) and src.nodata == 0
        assert (src.read(1) == raw.red.values[0]).all()


def test_write_task_timing(tmp_path):
    spec, gb, grid = make(tmp_path, bbox=[10.0, 45.0, 10.5, 45.3], chunk=1024)
    S.ensure_cube(spec, grid)
    b = time_bins(spec.start, spec.end, "month")[0]
    task = tasks_for(spec, gb, grid, b, 0)[0]
    rng = np.random.default_rng(0)
    bands = {k: rng.integers(1, 10000, (1024, 1024), dtype=np.uint16) for k in spec.bands}
    cnt = rng.integers(0, 30, (1024, 1024), dtype=np.uint16)
    S.write_task(task, bands, cnt)
    t0 = time.perf_counter()
    n = 5
    for _ in range(n):
        S.write_task(task, bands, cnt)
    dt = (time.perf_counter() - t0) / n
    print(f"\nwrite_task: 1024x1024 tile, 3 bands + count, local disk: {dt * 1000:.1f} ms")
    assert dt < 5


def test_a_new_cube_is_never_created_in_a_non_empty_folder(tmp_path):
    (tmp_path / "c.zarr").mkdir()
    (tmp_path / "c.zarr" / "notes.txt").write_text("mine")
    spec, _, grid = make(tmp_path)
    with pytest.raises(PlanError, match="not empty and holds no cube"):
        S.ensure_cube(spec, grid)
    (tmp_path / "file.zarr").write_text("x")
    spec, _, grid = make(tmp_path, name="file.zarr")
    with pytest.raises(PlanError, match="is a file"):
        S.ensure_cube(spec, grid)
