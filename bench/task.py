"""The benchmark task: one 1200 x 1200 tile at 30 m in UTM over the 25 cached scenes of May 2024.

The task is planned with the real planner (:func:`cubeless.plan.make_plan`, its catalog search
replaced by a function returning the cached items) and is the full-size tile best covered by
the scene. Both sides of the comparison read it from local disk:

* cubeless: :func:`cubeless.execute.execute_task` (compose + whole-chunk Zarr writes + done marker)
  into a temporary store created by :func:`cubeless.store.ensure_cube`;
* the seed: :func:`bench.seed.seed_compose` + :func:`bench.seed.seed_write` into a temporary Zarr
  array laid out as the seed's (time, y, x, band), with the same full STAC items.

``python -m bench.task cubeless|seed OUT.npz [--resolution R] [--chunk C] [--warp] [--seed-scl nearest]``
runs one side in this (fresh) process and prints one JSON line: wall and CPU seconds of the timed
call, peak RSS of the process, reader statistics; the medians go to OUT.npz (``-``: not saved).
With ``CUBELESS_BENCH_HREF_BASE=http://host:port`` set, the items' hrefs point there (the reading
benchmark serves the scene directory over HTTP range requests and counts what is fetched).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import peak_rss_mb

import numpy as np

CHUNK = 1200
RESOLUTION = 30.0
BANDS = ("red", "green", "blue")
SCL_EXCLUDE = (0, 1, 3, 8, 9, 10)


@dataclass(frozen=True)
class BenchTask:
    task: Any  # cubeless.models.Task
    items: list[dict[str, Any]]  # the full STAC items of the task (what the seed searched)
    coverage: float  # share of the tile inside the scene footprint
    plan_tasks: int


def spec_doc(store: str, resolution: float = RESOLUTION, chunk: int = CHUNK) -> dict[str, Any]:
    from cubeless.demo.synthetic import tile_lonlat_bounds

    from .data import CONFIG

    tile = CONFIG.tiles[0]
    w, s, e, n = tile_lonlat_bounds(tile)
    return {
        "name": "bench",
        "stac_api": "http://127.0.0.1:9/unused",
        "collection": CONFIG.collection_id,
        "bbox": [round(w, 6), round(s, 6), round(e, 6), round(n, 6)],
        "start": "2024-05-01",
        "end": "2024-05-31",
        "interval": "month",
        "crs": tile.crs,
        "resolution": resolution,
        "chunk": chunk,
        "bands": list(BANDS),
        "mask": {"scl_exclude": list(SCL_EXCLUDE), "dilate": 0, "scl_band": "scl"},
        "resampling": "bilinear",
        "store": store,
    }


def scene_items() -> list[dict[str, Any]]:
    """The cached scenes' STAC items; hrefs under ``$CUBELESS_BENCH_HREF_BASE`` when it is set."""
    from .data import scene_set

    ss = scene_set()
    items = [dict(i) for i in ss.items]
    base = os.environ.get("CUBELESS_BENCH_HREF_BASE")
    if base:
        from cubeless.demo.synthetic import rewrite_hrefs

        items = [rewrite_hrefs(i, str(ss.root.resolve()), base) for i in items]
    return items


def bench_task(
    store: str, items: list[dict[str, Any]] | None = None, *, resolution: float = RESOLUTION, chunk: int = CHUNK
) -> BenchTask:
    """Plan the benchmark cube and pick its best-covered full-size task."""
    from cubeless.grid import geobox_of, tile_geobox
    from cubeless.plan import make_plan
    from cubeless.spec import parse_spec

    from .data import CONFIG

    if items is None:
        items = scene_items()
    spec = parse_spec(spec_doc(store, resolution, chunk))
    plan = make_plan(spec, search=lambda *a, **k: items)
    tile_def = CONFIG.tiles[0]
    w, s, e, n = tile_def.bounds
    best, best_cov = None, -1.0
    for task in plan.tasks:
        if (task.tile.ny, task.tile.nx) != (chunk, chunk):
            continue
        gb = tile_geobox(geobox_of(task.grid), task.tile)
        bb = gb.boundingbox
        ix = max(0.0, min(bb.right, e) - max(bb.left, w)) * max(0.0, min(bb.top, n) - max(bb.bottom, s))
        cov = ix / ((bb.right - bb.left) * (bb.top - bb.bottom))
        if cov > best_cov:
            best, best_cov = task, cov
    if best is None:
        raise RuntimeError("the benchmark plan has no full-size task")
    by_id = {i["id"]: i for i in items}
    full = [by_id[i["id"]] for i in best.items]
    return BenchTask(task=best, items=full, coverage=best_cov, plan_tasks=len(plan.tasks))


def _policy(spec: Any) -> Any:
    from urllib.parse import urlsplit

    from cubeless.hrefs import HrefPolicy

    base = os.environ.get("CUBELESS_BENCH_HREF_BASE")
    if base:
        u = urlsplit(base)
        return HrefPolicy.from_hosts([u.netloc], schemes=[u.scheme])
    return HrefPolicy.local(spec)


def run_cubeless(
    out: str | None, tmp: str, *, resolution: float = RESOLUTION, chunk: int = CHUNK, warp: bool = False
) -> dict[str, Any]:
    from cubeless import _load

    _load.DIRECT_READS = not warp
    from cubeless.execute import execute_task
    from cubeless.store import ensure_cube

    store = os.path.join(tmp, "cube.zarr")
    bt = bench_task(store, resolution=resolution, chunk=chunk)
    ensure_cube(bt.task.spec, bt.task.grid)
    policy = _policy(bt.task.spec)
    rss_before = peak_rss_mb()
    _load.reset_read_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    result = execute_task(bt.task, policy=policy)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    stats = _load.read_stats().as_dict()
    if out:
        from cubeless.store import publish_bins

        publish_bins(store, bt.task.t + 1)  # what the commit does; then read it back like a user
        import zarr

        root = zarr.open_group(store, mode="r")
        t, y0, x0 = bt.task.t, bt.task.tile.y0, bt.task.tile.x0
        np.savez(out, **{b: np.asarray(root[b][t, y0 : y0 + chunk, x0 : x0 + chunk]) for b in (*BANDS, "count")})
    return {
        "side": "cubeless",
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before,
        "items": result.items,
        "observations": result.observations,
        "valid_fraction": result.valid_fraction,
        "bytes_read": result.bytes_read,
        "coverage": bt.coverage,
        "read_stats": stats,
        "task_id": bt.task.task_id,
        "chunk": chunk,
        "resolution": resolution,
        "warp": warp,
    }


def run_seed(out: str | None, tmp: str, *, scl_resampling: str = "bilinear") -> dict[str, Any]:
    import zarr

    from cubeless.grid import geobox_of, tile_geobox

    from .seed import seed_compose, seed_write

    bt = bench_task(os.path.join(tmp, "unused.zarr"))
    task = bt.task
    gbox = tile_geobox(geobox_of(task.grid), task.tile)
    target = zarr.create_array(
        store=os.path.join(tmp, "seed.zarr"),
        shape=(1, task.grid.height, task.grid.width, len(BANDS)),
        chunks=(1, CHUNK, CHUNK, len(BANDS)),
        dtype="uint16",
        fill_value=0,
    )
    from cubeless import _load

    _load._NetStats.enable()  # GDAL's network statistics, as cubeless reports them (http reads)
    _load.reset_net_stats()
    rss_before = peak_rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    median = seed_compose(
        bt.items, gbox, bands=BANDS, scl_band="scl", scl_exclude=SCL_EXCLUDE, scl_resampling=scl_resampling
    )
    seed_write(target, (task.tile.iy, task.tile.ix), 0, CHUNK, median)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    net = _load.read_net_stats()
    if out:
        np.savez(out, **{b: median[..., i] for i, b in enumerate(BANDS)})
    return {
        "side": "seed",
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before,
        "items": len(bt.items),
        "coverage": bt.coverage,
        "task_id": task.task_id,
        "scl_resampling": scl_resampling,
        "bytes_read": net[0] if net else 0,
    }


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.task")
    p.add_argument("side", choices=["cubeless", "seed"])
    p.add_argument("--warp", action="store_true", help="cubeless: every read through the warper")
    p.add_argument("out", nargs="?", default="-")
    p.add_argument("--resolution", type=float, default=RESOLUTION)
    p.add_argument("--chunk", type=int, default=CHUNK)
    p.add_argument("--seed-scl", default="bilinear", choices=["bilinear", "nearest"])
    a = p.parse_args(argv)
    out = None if a.out == "-" else a.out
    with tempfile.TemporaryDirectory(prefix=f"cubeless-bench-{a.side}-") as tmp:
        if a.side == "cubeless":
            res = run_cubeless(out, tmp, resolution=a.resolution, chunk=a.chunk, warp=a.warp)
        else:
            res = run_seed(out, tmp, scl_resampling=a.seed_scl)
    sys.stdout.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
