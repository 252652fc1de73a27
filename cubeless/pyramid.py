"""Reduced-resolution levels of the cube (a GeoZarr ``multiscales`` pyramid), built by the pipeline.

Layout (``docs/design.md``, "Pyramid"): level ``k`` (``k >= 1``) is the child group ``"{k}"`` of
the cube's root group. It holds every band and ``count`` with the same dims as the full-resolution
arrays (``time, y, x``), its own ``y``/``x`` coordinates and ``spatial_ref`` (so
``xr.open_zarr(store, group="2")`` is a georeferenced dataset), and shares the root's time axis
(its arrays grow with it at each commit). Level ``k`` has ``2**k`` times the pixel size of level 0
and ``ceil(H / 2**k) x ceil(W / 2**k)`` pixels; the last level is the first that fits a 512 px
tile. Level 0 is the root's own arrays (every reader keeps seeing the full-resolution cube where it
always was), so the root's ``multiscales`` layout names level 0 ``"."``.

Reduction (each level from the one below, 2 x 2 pixels -> 1): a band's value is the mean of the
valid pixels (DN != 0) weighted by their ``count``, rounded half to even (so the result equals the
count-weighted mean of the full-resolution medians it covers); ``count`` is summed (the valid
observations the coarse pixel stands for), stored as ``uint32`` at the reduced levels. A pixel
without any valid observation stays 0 (no data). Bands stay ``uint16`` DNs with the root's CF
``scale_factor``/``add_offset``: the mean is linear, so it is the mean of the reflectances too.

Who builds what:

* the **local levels** (``local: true``): level ``k``'s chunk is the cube chunk / ``2**k``, so one
  task's tile is exactly one chunk of each of them; the worker reduces its own tile in memory
  right after writing it (:func:`write_local_levels`), as long as that chunk stays at least
  :data:`MIN_LOCAL_CHUNK` px (smaller chunks make a middle-zoom tile read dozens of them: bench 8);
* the **cross-tile levels**: chunk = the cube chunk; one of their chunks spans several tasks'
  tiles, so they are reduced after every task is done, by the commit step, before it publishes the
  bins (:func:`build_cross_levels`: level by level, each level's chunks fanned out on a pool).

Chunks of unpublished time steps are invisible to readers like the tasks' own (the shapes grow at
the commit), so a bin's pyramid is committed atomically with the bin.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import zarr

    from .models import Grid

#: The coarsest level is the first whose larger side is at most this many pixels (a 512 px tile).
TOP_SIZE = 512
#: A level is written by the tasks while its chunk (cube chunk / 2**k) is at least this many px.
MIN_LOCAL_CHUNK = 256
#: What the levels' ``resampling_method`` says (the reduction is documented in this module).
RESAMPLING = "count_weighted_mean"
COUNT_DTYPE = "uint32"

CONVENTIONS = [
    {
        "schema_url": "https://raw.githubusercontent.com/zarr-conventions/multiscales/refs/tags/v1/schema.json",
        "spec_url": "https://github.com/zarr-conventions/multiscales/blob/v1/README.md",
        "uuid": "d35379db-88df-4056-af3a-620245f8e347",
        "name": "multiscales",
        "description": "Multiscale layout of zarr datasets",
    },
    {
        "schema_url": "https://raw.githubusercontent.com/zarr-experimental/geo-proj/refs/tags/v1/schema.json",
        "spec_url": "https://github.com/zarr-experimental/geo-proj/blob/v1/README.md",
        "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
        "name": "proj:",
        "description": "Coordinate reference system information for geospatial data",
    },
    {
        "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v1/schema.json",
        "spec_url": "https://github.com/zarr-conventions/spatial/blob/v1/README.md",
        "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
        "name": "spatial",
        "description": "Spatial coordinate information",
    },
]


class Level(BaseModel):
    """One reduced level of the pyramid (recorded in the cube's ``cubeless.pyramid`` attribute)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    level: int  #: k >= 1; the group is named str(k)
    factor: int  #: 2**k: pixel size relative to level 0
    height: int
    width: int
    chunk: int
    local: bool  #: written by the tasks (one chunk per task), else by the commit step

    @property
    def path(self) -> str:
        return str(self.level)


def plan_levels(height: int, width: int, chunk: int) -> list[Level]:
    """The reduced levels of a ``height x width`` grid with ``chunk`` px chunks (none if it fits a tile)."""
    levels: list[Level] = []
    k, local = 0, True
    h, w = height, width
    while max(h, w) > TOP_SIZE:
        k += 1
        f = 2**k
        h, w = -(-height // f), -(-width // f)
        local = local and chunk % f == 0 and chunk // f >= MIN_LOCAL_CHUNK
        levels.append(Level(level=k, factor=f, height=h, width=w, chunk=chunk // f if local else chunk, local=local))
    return levels


def levels_of(attrs: Mapping[str, Any]) -> list[Level]:
    """The levels a cube records (its ``cubeless`` attributes); [] for a cube without a pyramid."""
    return [Level.model_validate(v) for v in (attrs.get("pyramid") or {}).get("levels", [])]


# -- metadata ---------------------------------------------------------------------------------------
def level_transform(transform: Iterable[float], factor: int) -> list[float]:
    a, b, c, d, e, f = (float(v) for v in transform)
    return [a * factor, b * factor, c, d * factor, e * factor, f]


def spatial_attrs(grid: "Grid", dims: tuple[str, str], *, factor: int = 1, shape: tuple[int, int] | None = None) -> dict[str, Any]:
    """GeoZarr ``proj:`` and ``spatial:`` attributes of level ``factor`` of ``grid``."""
    from pyproj import CRS

    h, w = shape or (grid.height, grid.width)
    t = level_transform(grid.transform, factor)
    a, _, c, _, e, f = t
    x0, x1 = sorted((c, c + a * w))
    y0, y1 = sorted((f, f + e * h))
    crs = CRS.from_user_input(grid.crs)
    auth = crs.to_authority()
    out: dict[str, Any] = {"proj:code": f"{auth[0]}:{auth[1]}"} if auth else {"proj:wkt2": crs.to_wkt()}
    out.update({
        "spatial:dimensions": list(dims),
        "spatial:transform": t,
        "spatial:shape": [h, w],
        "spatial:bbox": [x0, y0, x1, y1],
        "spatial:registration": "pixel",
    })
    return out


def multiscales_attrs(grid: "Grid", levels: list[Level]) -> dict[str, Any]:
    """The root group's ``multiscales`` attribute (level 0 is the root's own arrays: asset ``"."``)."""
    layout: list[dict[str, Any]] = [{
        "asset": ".",
        "transform": {"scale": [1.0, 1.0], "translation": [0.0, 0.0]},
        "spatial:shape": [grid.height, grid.width],
        "spatial:transform": level_transform(grid.transform, 1),
    }]
    prev = "."
    for lv in levels:
        layout.append({
            "asset": lv.path,
            "derived_from": prev,
            "transform": {"scale": [2.0, 2.0], "translation": [0.0, 0.0]},
            "resampling_method": RESAMPLING,
            "spatial:shape": [lv.height, lv.width],
            "spatial:transform": level_transform(grid.transform, lv.factor),
        })
        prev = lv.path
    return {"layout": layout, "resampling_method": RESAMPLING}


# -- reduction --------------------------------------------------------------------------------------
def reduce2(bands: Mapping[str, np.ndarray], count: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One 2 x 2 -> 1 reduction: count-weighted mean of each band's valid pixels, count summed.

    Odd sizes are padded with no-data pixels (weight 0). Returns uint16 bands and uint32 count.
    """
    h, w = count.shape
    H, W = -(-h // 2), -(-w // 2)

    def blocks(a: np.ndarray) -> np.ndarray:
        if a.shape != (2 * H, 2 * W):
            a = np.pad(a, ((0, 2 * H - h), (0, 2 * W - w)))
        return a.reshape(H, 2, W, 2)

    n = blocks(np.asarray(count).astype(np.float64))
    out_count = n.sum(axis=(1, 3))
    out: dict[str, np.ndarray] = {}
    for name, v in bands.items():
        vb = blocks(np.asarray(v).astype(np.float64))
        wgt = np.where(vb != 0, n, 0.0)
        ws = wgt.sum(axis=(1, 3))
        s = (vb * wgt).sum(axis=(1, 3))
        r = np.zeros((H, W), dtype=np.uint16)
        ok = ws > 0
        r[ok] = np.clip(np.rint(s[ok] / ws[ok]), 1, 65535).astype(np.uint16)
        out[name] = r
    return out, np.minimum(out_count, np.iinfo(np.uint32).max).astype(np.uint32)


# -- writing ----------------------------------------------------------------------------------------
def _handles(group: "zarr.Group", lv: Level, names: Iterable[str], length: int) -> dict[str, "zarr.Array"]:
    from .store import _extended

    g = group[lv.path]
    return {n: _extended(g[n], length) for n in names}  # type: ignore[arg-type, index]


def _write(handles: Mapping[str, "zarr.Array"], sel: tuple[Any, ...], data: Mapping[str, np.ndarray]) -> None:
    from zarr.core.sync import sync

    async def _all() -> None:
        results = await asyncio.gather(*(handles[k].async_array.setitem(sel, data[k]) for k in data), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    sync(_all())


def write_local_levels(
    group: "zarr.Group", levels: list[Level], t: int, y0: int, x0: int,
    bands: Mapping[str, np.ndarray], count: np.ndarray,
) -> float:
    """Write the local levels of one task's tile (its full-resolution DNs at ``(y0, x0)``); returns seconds.

    Each level's chunk at time ``t`` is exactly this tile reduced (whole chunks: nothing is read).
    """
    from .store import COUNT

    t0 = time.perf_counter()
    cur_b, cur_c = dict(bands), np.asarray(count)
    for lv in levels:
        if not lv.local:
            break
        cur_b, cur_c = reduce2(cur_b, cur_c)
        ly, lx = y0 // lv.factor, x0 // lv.factor
        sel = (t, slice(ly, ly + cur_c.shape[0]), slice(lx, lx + cur_c.shape[1]))
        data = {**cur_b, COUNT: cur_c}
        _write(_handles(group, lv, data, t + 1), sel, data)
    return time.perf_counter() - t0


def _reduce_chunk(group: "zarr.Group", src: Level | None, dst: Level, names: tuple[str, ...], t: int, iy: int, ix: int) -> None:
    from .store import COUNT, _extended

    c = dst.chunk
    y0, x0 = iy * c, ix * c
    y1, x1 = min(y0 + c, dst.height), min(x0 + c, dst.width)
    # the source window: twice the chunk, clipped to the source level
    sh = group.attrs["cubeless"]["grid"]["height"] if src is None else src.height
    sw = group.attrs["cubeless"]["grid"]["width"] if src is None else src.width
    sy = slice(2 * y0, min(2 * y1, sh))
    sx = slice(2 * x0, min(2 * x1, sw))
    base = group if src is None else group[src.path]
    read = {n: _extended(base[n], t + 1) for n in (*names, COUNT)}  # type: ignore[arg-type, index]
    vals = {n: np.asarray(read[n][t, sy, sx]) for n in names}
    cnt = np.asarray(read[COUNT][t, sy, sx])
    if not cnt.any():
        out_b = {n: np.zeros((y1 - y0, x1 - x0), dtype=np.uint16) for n in names}
        out_c = np.zeros((y1 - y0, x1 - x0), dtype=np.uint32)
    else:
        out_b, out_c = reduce2(vals, cnt)
    data = {**out_b, COUNT: out_c}
    _write(_handles(group, dst, data, t + 1), (t, slice(y0, y1), slice(x0, x1)), data)


def _stored_chunks(group: "zarr.Group", path: str, t: int) -> set[tuple[int, int]]:
    """(row, col) of the chunks stored at time index ``t`` of array ``path`` (one listing)."""
    from zarr.core.sync import sync

    store = group.store_path.store
    base = f"{group.store_path.path}/{path}".strip("/")
    prefix = f"{base}/c/{t}/"

    async def _list() -> list[str]:
        return [k async for k in store.list_prefix(prefix)]

    out: set[tuple[int, int]] = set()
    for key in sync(_list()):
        parts = key[len(prefix):].split("/")
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            out.add((int(parts[0]), int(parts[1])))
    return out


def _delete_chunks(group: "zarr.Group", lv: Level, names: Iterable[str], t: int, cells: Iterable[tuple[int, int]]) -> None:
    from zarr.core.sync import sync

    store = group.store_path.store
    base = f"{group.store_path.path}/{lv.path}".strip("/")
    keys = [f"{base}/{n}/c/{t}/{iy}/{ix}" for n in names for iy, ix in cells]

    async def _rm() -> None:
        await asyncio.gather(*(store.delete(k) for k in keys))

    if keys:
        sync(_rm())


def _jobs(src_chunks: set[tuple[int, int]], src_chunk: int, dst: Level) -> set[tuple[int, int]]:
    """The chunks of ``dst`` over at least one stored source chunk (the others have no data)."""
    out = set()
    for sy, sx in src_chunks:
        # source chunk (sy, sx) covers source rows sy*c .. (sy+1)*c - 1 -> dst rows / 2
        for iy in range((sy * src_chunk) // 2 // dst.chunk, ((sy + 1) * src_chunk - 1) // 2 // dst.chunk + 1):
            for ix in range((sx * src_chunk) // 2 // dst.chunk, ((sx + 1) * src_chunk - 1) // 2 // dst.chunk + 1):
                out.add((iy, ix))
    return out


def build_cross_levels(store: str, indices: Iterable[int], *, workers: int = 4) -> dict[str, float]:
    """Reduce the cross-tile levels of time indices ``indices`` (not yet published), level by level.

    Every chunk of a level is one job on a thread pool of ``workers`` (zarr's codecs and numpy
    release the GIL); a level starts when the one below is complete. Idempotent (rewriting a chunk
    stores identical bytes). Returns {"pyramid_cross_seconds", "pyramid_cross_chunks"}.
    """
    from . import fs
    from .store import _cube_attrs, _open_group

    t0 = time.perf_counter()
    store = fs.normalize(store)
    group = _open_group(store, writable=True)
    attrs = _cube_attrs(group, store)
    levels = levels_of(attrs)
    names = tuple(attrs["identity"]["bands"])
    from .store import COUNT

    idx = sorted(set(indices))
    jobs_done = 0
    prev: Level | None = None
    base_chunk = int(attrs["identity"]["chunk"])
    for lv in levels:
        if lv.local:
            prev = lv
            continue
        jobs: list[tuple[int, int, int]] = []
        src_path = COUNT if prev is None else f"{prev.path}/{COUNT}"
        src_chunk = base_chunk if prev is None else prev.chunk
        for t in idx:
            # only chunks over stored source chunks have data (a task whose tile had no valid
            # observation stores none); stale chunks of an earlier attempt elsewhere are removed
            cells = _jobs(_stored_chunks(group, src_path, t), src_chunk, lv)
            stale = _stored_chunks(group, f"{lv.path}/{COUNT}", t) - cells
            _delete_chunks(group, lv, (*names, COUNT), t, stale)
            jobs += [(t, iy, ix) for iy, ix in sorted(cells)]
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for f in [pool.submit(_reduce_chunk, group, prev, lv, names, *j) for j in jobs]:
                f.result()
        jobs_done += len(jobs)
        prev = lv
    return {"pyramid_cross_seconds": round(time.perf_counter() - t0, 3), "pyramid_cross_chunks": float(jobs_done)}
