"""Tiles read the right pyramid level: a whole-cube view at low zoom reads a handful of chunks."""

from __future__ import annotations

from pathlib import Path

import morecantile
import numpy as np
import pytest
from zarr.storage import LocalStore

from cubeless import pyramid as P
from cubeless import store as S
from cubeless.commit import commit_run
from cubeless.demo.cubes import plan_every_tile
from cubeless.models import TaskResult
from cubeless.spec import parse_spec
from cubeless.tiles import TileQuery, open_map_cube

TMS = morecantile.tms.get("WebMercatorQuad")


@pytest.fixture
def cube(tmp_path: Path, monkeypatch) -> str:
    """A 741 x 371 px cube in 64 px chunks (12 x 6 tiles) with a 4-level pyramid (tops at 47 px)."""
    monkeypatch.setattr(P, "TOP_SIZE", 64)
    monkeypatch.setattr(P, "MIN_LOCAL_CHUNK", 32)
    spec = parse_spec({"name": "lv", "bbox": [10.0, 45.0, 10.2, 45.1], "resolution": 0.00027, "chunk": 64,
                       "start": "2020-01-01", "end": "2020-01-31", "store": str(tmp_path / "c.zarr")})
    run = plan_every_tile(spec)
    state, tasks, run_id = run.state, run.tasks, run.run_id
    for task in tasks:
        shape = (task.tile.ny, task.tile.nx)
        yy, xx = np.mgrid[task.tile.y0:task.tile.y0 + shape[0], task.tile.x0:task.tile.x0 + shape[1]]
        v = (1000 + 3 * xx + yy).astype(np.uint16)  # a smooth ramp: coarse levels keep it
        S.write_task(task, {b: v for b in spec.bands}, np.full(shape, 2, np.uint16))
        state.mark_done(TaskResult(task_id=task.task_id, status="done"))
    assert commit_run(spec.store, run_id).complete
    return spec.store


@pytest.fixture
def chunk_reads(monkeypatch):
    keys: list[str] = []
    orig = LocalStore.get

    async def get(self, key, *a, **kw):  # noqa: ANN001, ANN202
        if "/c/" in f"/{key}":
            keys.append(key)
        return await orig(self, key, *a, **kw)

    monkeypatch.setattr(LocalStore, "get", get)
    return keys


def test_a_low_zoom_tile_reads_the_coarsest_level_a_few_chunks(cube: str, chunk_reads: list[str]) -> None:
    mc = open_map_cube(cube)
    assert [lv.level for lv, _ in mc.levels] == [1, 2, 3, 4]
    w, s, e, n = mc.lonlat_bounds()
    z = 7  # the whole cube (0.2 x 0.1 deg) inside one or two tiles; ~0.0078 deg (29 px) per tile pixel
    tiles = list(TMS.tiles(w, s, e, n, [z]))
    assert len(tiles) <= 2
    chunk_reads.clear()
    for t in tiles:
        mc.render_tile(t.z, t.x, t.y, TileQuery(preset="truecolor"))
    assert {k.split("/")[0] for k in chunk_reads} == {"4"}  # level 4 only (4 x 2**4 px = under one z7 pixel)
    assert len(chunk_reads) <= 3 * len(tiles)  # red, green, blue: one 64 px chunk each (47 x 24 px level)

    # full resolution at a high zoom: level 0 (the root arrays)
    t = TMS.tile((w + e) / 2, (s + n) / 2, 15)
    chunk_reads.clear()
    mc.render_tile(t.z, t.x, t.y, TileQuery(preset="truecolor"))
    assert chunk_reads and all(k.split("/")[0] in ("red", "green", "blue") for k in chunk_reads)
    # the same z7 view from level 0 reads every chunk of the cube (12 x 6 per band)
    assert mc.level_for(z, tiles[0].x, tiles[0].y) == 4


def test_a_reduced_level_tile_shows_the_reduced_values(cube: str) -> None:
    mc = open_map_cube(cube)
    w, s, e, n = mc.lonlat_bounds()
    t = TMS.tile((w + e) / 2, (s + n) / 2, 10)
    k = mc.level_for(t.z, t.x, t.y)
    assert k >= 1
    img = mc.tile_data(t.z, t.x, t.y, 0, ("red", "count"))
    red = img.array[0]
    assert red.count() > 0.1 * red.size
    # the ramp 1000 + 3x + y is linear: its block means stay within the ramp's range, and count per
    # full-resolution pixel is 2 (summed 2 * factor**2, shown divided by factor**2; less on the
    # cube's edge, where a coarse pixel covers fewer full-resolution ones)
    assert 1000 <= red.min() and red.max() <= 1000 + 3 * 741 + 371
    cnt = img.array[1].compressed()
    assert np.median(cnt) == 2.0 and cnt.max() <= 2.0 + 1e-9
