"""Section 8 of ``make bench``: the pyramid's build time and the map server's tile latency.

A cube of ~9,600 x 9,600 px at 0.00027 deg in 1200 px tasks (72 tasks: the bbox rounds to 9,601
rows; one bin, smooth synthetic DNs) is written through the real ``store.write_task`` (which writes each task's local pyramid levels)
and committed with ``commit_run`` (which reduces the cross-tile levels). The tasks' level writes
are timed on their own (``pyramid.write_local_levels`` again on the same tile: identical bytes).
Then ``cubeless serve``'s server runs in this process and tiles are fetched over HTTP at a low zoom
(the whole cube in a few tiles), a middle and the full-resolution zoom, after one warm-up pass;
the chunk objects read per tile are counted at the zarr store.
"""

from __future__ import annotations

import statistics
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np


def build_cube(root: str, tiles: int = 8, chunk: int = 1200) -> dict[str, Any]:
    from cubeless import pyramid as P
    from cubeless import store as S
    from cubeless.commit import commit_run
    from cubeless.demo.cubes import plan_every_tile
    from cubeless.models import TaskResult
    from cubeless.spec import parse_spec

    res = 0.00027
    side = tiles * chunk * res
    spec = parse_spec({"name": "bench-map", "bbox": [10.0, 45.0, 10.0 + side - res / 2, 45.0 + side - res / 2],
                       "resolution": res, "chunk": chunk, "start": "2020-01-01", "end": "2020-01-31",
                       "store": str(Path(root) / "map.zarr")})
    run = plan_every_tile(spec)
    grid, state, tasks, run_id = run.grid, run.state, run.tasks, run.run_id
    group = S._open_group(spec.store, writable=True)
    levels = P.levels_of(group.attrs["cubeless"])
    level_s: list[float] = []
    for task in tasks:
        ny, nx = task.tile.ny, task.tile.nx
        yy, xx = np.mgrid[task.tile.y0:task.tile.y0 + ny, task.tile.x0:task.tile.x0 + nx]
        bands = {b: (1000 + (i + 1) * 200 + (xx % 997) + (yy % 701)).astype(np.uint16) for i, b in enumerate(spec.bands)}
        count = (1 + (xx // 50 + yy // 50) % 5).astype(np.uint16)
        S.write_task(task, bands, count)
        level_s.append(P.write_local_levels(group, levels, task.t, task.tile.y0, task.tile.x0, bands, count))
        state.mark_done(TaskResult(task_id=task.task_id, status="done"))
    m = commit_run(spec.store, run_id)
    assert m.complete
    return {
        "store": spec.store, "tasks": len(tasks), "grid": (grid.height, grid.width),
        "levels": [(lv.level, lv.height, lv.width, lv.chunk, lv.local) for lv in levels],
        "task_levels_s_p50": statistics.median(level_s), "task_levels_s_max": max(level_s),
        "cross_s": m.timings.get("pyramid_cross_seconds", 0.0), "cross_chunks": m.timings.get("pyramid_cross_chunks", 0.0),
    }


def tile_latency(store: str, *, per_zoom: int = 12) -> dict[str, dict[str, float]]:
    import morecantile
    from zarr.storage import LocalStore

    from cubeless.serve import make_server
    from cubeless.tiles import open_map_cube

    reads: list[str] = []
    orig = LocalStore.get

    async def counting_get(self, key, *a, **kw):  # noqa: ANN001, ANN202
        if "/c/" in f"/{key}":
            reads.append(key)
        return await orig(self, key, *a, **kw)

    LocalStore.get = counting_get  # type: ignore[method-assign]
    server = make_server(store, port=0)
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        cube = open_map_cube(store)
        w, s, e, n = cube.lonlat_bounds()
        minz, maxz = cube.zoom_range()
        tms = morecantile.tms.get("WebMercatorQuad")
        low = max(0, minz - 3)
        zooms = {"low": low, "middle": (low + maxz) // 2, "full": maxz}
        out: dict[str, dict[str, float]] = {}
        for label, z in zooms.items():
            all_tiles = list(tms.tiles(w, s, e, n, [z]))
            step = max(1, len(all_tiles) // per_zoom)
            tiles = all_tiles[::step][:per_zoom]
            urls = [f"{base}/tiles/{t.z}/{t.x}/{t.y}.png?preset=truecolor" for t in tiles]
            for u in urls:  # warm: the server's open cube, GDAL/PROJ state, OS page cache
                urllib.request.urlopen(u).read()
            lat, chunks = [], []
            for _ in range(3):
                for u in urls:
                    reads.clear()
                    t0 = time.perf_counter()
                    urllib.request.urlopen(u).read()
                    lat.append(time.perf_counter() - t0)
                    chunks.append(len(reads))
            out[label] = {"zoom": z, "tiles": len(urls), "p50_ms": 1000 * float(np.percentile(lat, 50)),
                          "p95_ms": 1000 * float(np.percentile(lat, 95)), "chunks_per_tile": float(np.mean(chunks)),
                          "level": cube.level_for(tiles[0].z, tiles[0].x, tiles[0].y)}
        return out
    finally:
        server.shutdown()
        server.server_close()
        LocalStore.get = orig  # type: ignore[method-assign]
