"""The pyramid: levels written by the tasks and the commit, equal to the cube reduced, committed with the bin."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from cubeless import pyramid as P
from cubeless import store as S
from cubeless.commit import commit_run
from cubeless.demo.cubes import plan_every_tile
from cubeless.models import TaskResult
from cubeless.spec import parse_spec

# 185 x 111 px in 64 px chunks: 3 x 2 tiles (edge tiles partial)
BASE = dict(name="pyr", bbox=[10.0, 45.0, 10.05, 45.03], resolution=0.00027, chunk=64)


@pytest.fixture
def small_tiles(monkeypatch):
    """A deep pyramid on a small grid: levels 1-2 local (chunks 32, 16), 3-4 cross-tile (chunk 64)."""
    monkeypatch.setattr(P, "TOP_SIZE", 16)
    monkeypatch.setattr(P, "MIN_LOCAL_CHUNK", 16)


def test_plan_levels_stop_at_a_512_px_tile_and_local_levels_keep_whole_chunks() -> None:
    lv = P.plan_levels(5000, 3000, 1200)
    assert [(v.level, v.height, v.width, v.chunk, v.local) for v in lv] == [
        (1, 2500, 1500, 600, True), (2, 1250, 750, 300, True), (3, 625, 375, 1200, False), (4, 313, 188, 1200, False),
    ]  # 150 px chunks would be too small for tiles: level 3 is reduced by the commit in 1200 px chunks
    assert P.plan_levels(512, 400, 256) == []  # fits one tile: no pyramid
    assert all(not v.local for v in P.plan_levels(4000, 4000, 1024)[2:])  # 1024/4 = 256 px is the smallest task-written chunk
    assert P.plan_levels(4000, 4000, 1024)[1].local


def test_reduce2_is_the_count_weighted_mean_of_valid_pixels_and_sums_count() -> None:
    v = np.array([[100, 200, 7], [0, 400, 9]], dtype=np.uint16)
    n = np.array([[1, 3, 2], [5, 1, 0]], dtype=np.uint16)
    out, cnt = P.reduce2({"b": v}, n)
    # (100*1 + 200*3 + 400*1) / 5 = 220 (the DN 0 pixel has no valid value: no weight); odd column padded
    assert out["b"].tolist() == [[220, 7]] and cnt.tolist() == [[10, 2]] and cnt.dtype == np.uint32
    out, cnt = P.reduce2({"b": np.zeros((2, 2), np.uint16)}, np.zeros((2, 2), np.uint16))
    assert out["b"].tolist() == [[0]] and cnt.tolist() == [[0]]


def _reference(full: np.ndarray, count: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """Level f of a band straight from level 0: mean over each f x f block weighted by count (no rounding steps)."""
    h, w = count.shape
    H, W = -(-h // f), -(-w // f)
    pv = np.zeros((H * f, W * f)); pv[:h, :w] = full
    pn = np.zeros((H * f, W * f)); pn[:h, :w] = count
    wgt = np.where(pv != 0, pn, 0).reshape(H, f, W, f)
    s = (pv.reshape(H, f, W, f) * wgt).sum(axis=(1, 3))
    ws = wgt.sum(axis=(1, 3))
    mean = np.where(ws > 0, s / np.maximum(ws, 1), 0)
    return mean, pn.reshape(H, f, W, f).sum(axis=(1, 3))


def test_the_pipeline_builds_every_level_and_commits_it_with_the_bin(tmp_path: Path, small_tiles) -> None:
    spec = parse_spec({**BASE, "start": "2020-01-01", "end": "2020-02-29", "store": str(tmp_path / "c.zarr")})
    run = plan_every_tile(spec)
    grid, state, tasks, run_id = run.grid, run.state, run.tasks, run.run_id
    levels = P.levels_of(json.loads((tmp_path / "c.zarr" / "zarr.json").read_text())["attributes"]["cubeless"])
    assert [(v.level, v.chunk, v.local) for v in levels] == [(1, 32, True), (2, 16, True), (3, 64, False), (4, 64, False)]

    rng = np.random.default_rng(7)
    for task in tasks:
        shape = (task.tile.ny, task.tile.nx)
        count = rng.integers(0, 4, shape).astype(np.uint16)
        bands = {b: np.where(count > 0, rng.integers(1000, 5000, shape), 0).astype(np.uint16) for b in spec.bands}
        S.write_task(task, bands, count)
        state.mark_done(TaskResult(task_id=task.task_id, status="done"))

    # written but not visible: every level's time axis is still empty
    for lv in levels:
        assert xr.open_zarr(spec.store, group=lv.path, consolidated=True, chunks=None).sizes["time"] == 0

    m = commit_run(spec.store, run_id)
    assert m.complete and m.timings["pyramid_cross_chunks"] == 2 * 2  # 2 bins x (1 chunk of level 3 + 1 of level 4)

    full = S.open_cube(spec.store, raw=True)
    for lv in levels:
        ds = S.open_cube(spec.store, raw=True, group=lv.path)
        assert ds.sizes == {"time": 2, "y" if "y" in ds.dims else "latitude": lv.height,
                            "x" if "x" in ds.dims else "longitude": lv.width}
        # georeferenced on its own (its own coordinates and spatial_ref): the level's transform
        import rioxarray  # noqa: F401

        a, b, c, d, e, f = grid.transform
        assert ds[spec.bands[0]].rio.transform().almost_equals(type(ds[spec.bands[0]].rio.transform())(a * lv.factor, 0, c, 0, e * lv.factor, f))
        for t in range(2):
            cnt0 = np.asarray(full["count"][t].values)
            want_n = _reference(cnt0, cnt0, lv.factor)[1]
            assert np.array_equal(np.asarray(ds["count"][t].values), want_n), lv  # count summed exactly
            for band in spec.bands:
                want, _ = _reference(np.asarray(full[band][t].values), cnt0, lv.factor)
                got = np.asarray(ds[band][t].values).astype(np.float64)
                assert ((got == 0) == (want == 0)).all()
                # rounded once per level: within half a DN per level of the exact weighted mean
                assert np.abs(got - want).max() <= 0.5 * lv.level + 1e-9, (lv, band)

    root = json.loads((tmp_path / "c.zarr" / "zarr.json").read_text())["attributes"]
    assert {c["name"] for c in root["zarr_conventions"]} == {"multiscales", "proj:", "spatial"}
    assert root["proj:code"] == "EPSG:4326" and root["spatial:shape"] == [grid.height, grid.width]
    layout = root["multiscales"]["layout"]
    assert [e["asset"] for e in layout] == [".", "1", "2", "3", "4"]
    assert layout[3]["derived_from"] == "2" and layout[3]["spatial:shape"] == [levels[2].height, levels[2].width]
