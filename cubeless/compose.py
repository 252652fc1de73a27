"""Compose one task: the cloud-free median of one tile over one time bin.

:func:`compose` turns a :class:`~cubeless.models.Task` into a :class:`Composite`:

1. **check** every href it will read against the :class:`~cubeless.hrefs.HrefPolicy` (before any
   read; a refused href raises :class:`~cubeless.errors.HrefNotAllowed`);
2. **load the SCL band** of every item onto the tile's GeoBox (nearest, no overviews), one
   observation per solar day (odc-stac's ``groupby="solar_day"`` key: the UTC date shifted by
   whole hours of the tile centre's longitude). The items of one day are fused layer by layer:
   each pixel is taken from the first item, in (time, id) order, that is not nodata (0) there
   (odc-stac's rule). Reads are :class:`cubeless._load.Reader`'s: a windowed GDAL ``RasterIO``
   straight from the right overview when the tile is in the scene's CRS, GDAL's warper otherwise;
3. **mask**: an observation of a pixel is valid when its SCL class is not in
   ``spec.mask.scl_exclude`` and is not 0 (no data, always excluded). With ``spec.mask.dilate = r``
   the excluded classes *other than 0* (clouds, shadows, cirrus, saturation) grow by ``r`` target
   pixels (square element); no-data areas (outside a scene's footprint) do not grow, since they
   are edges of the swath, not clouds;
4. **load the reflectance bands** (``spec.resampling``, raw uint16, nodata 0) only for the
   observations that have at least one valid pixel in the tile: an observation that is all cloud
   here costs one SCL read, not a read of every band;
5. **median** per band over the valid observations (:func:`~cubeless._median.masked_median`), where
   a band value of 0 is also invalid for that band. An even count takes the mean of the two middle
   values, rounded half to even; no valid observation gives 0. Bands are read together and each
   band's median runs while the next bands are still being read.

Memory is bounded for every chunk size: when the per-observation arrays of the whole tile (SCL,
valid mask and every band: 8 bytes per observation and pixel for three bands) exceed
``memory_budget``, the tile is processed in strips of rows (the SCL of a strip is read with a halo
of ``dilate`` rows, so the result is the same as in one piece).

``count`` is the number of valid observations per pixel: SCL-valid and non-zero in the **first**
band (bands of one scene share their footprint, so this is the count of every band in practice).

A bin with no items (or where no observation has a valid pixel) gives all-zero bands and a zero
count; without items nothing is read at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from . import _load, fs
from ._median import dilate, masked_median
from .errors import TaskError
from .grid import geobox_of, tile_geobox
from .hrefs import HrefPolicy
from .models import Task

__all__ = ["Composite", "compose", "configure_gdal", "masked_median"]

configure_gdal = _load.configure_gdal

#: Default bytes of per-observation arrays (SCL, valid mask, bands) held at once; a larger tile
#: (chunk up to 4096, many observations) is processed in strips of rows within this budget.
DEFAULT_MEMORY_BUDGET = 512 * 1024**2


@dataclass(frozen=True)
class Composite:
    """The result of one task: per-band medians, the valid-observation count, and measurements."""

    #: band -> (ny, nx) uint16 median of the raw source values (0 = no valid observation).
    bands: dict[str, np.ndarray]
    #: (ny, nx) uint16 number of valid observations (SCL-valid and non-zero in the first band).
    count: np.ndarray
    #: band -> (scale, offset) of the source values, from the items' ``raster:bands``
    #: (physical value = raw * scale + offset); (1.0, 0.0) when the items do not say.
    scale_offset: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: Scenes (STAC items) in the task.
    items: int = 0
    #: Observations (solar days) after grouping the items.
    observations: int = 0
    #: Observations whose reflectance was read (at least one valid pixel in the tile).
    observations_read: int = 0
    #: Share of (observation, pixel) pairs that were valid, over all observations.
    valid_fraction: float = 0.0
    #: Bytes GDAL fetched over the network (http/s3) for this task; local reads are not counted.
    bytes_read: int = 0
    #: Network requests GDAL made for this task.
    requests: int = 0
    #: Seconds per phase: ``load`` (all reads), ``mask`` (SCL -> valid), ``median``, ``total``.
    seconds: dict[str, float] = field(default_factory=dict)


def _empty(task: Task, items: int = 0, observations: int = 0, **kw: Any) -> Composite:
    shape = (task.tile.ny, task.tile.nx)
    return Composite(
        bands={b: np.zeros(shape, np.uint16) for b in task.spec.bands},
        count=np.zeros(shape, np.uint16),
        items=items,
        observations=observations,
        **kw,
    )


def _scale_offsets(items: list[dict[str, Any]], bands: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """band -> (scale, offset), which every item must agree on (a median of mixed encodings is wrong)."""
    out: dict[str, tuple[float, float]] = {}
    for band in bands:
        seen: dict[tuple[float, float], str] = {}
        for item in items:
            so = _load.scale_offset_of(item["assets"][band])
            seen.setdefault(so, str(item.get("id", "?")))
        if len(seen) > 1:
            (a, ia), (b, ib) = list(seen.items())[:2]
            raise TaskError(
                f"items disagree on scale/offset of band {band!r} ({ia}: {a}, {ib}: {b}); "
                "use a harmonized collection (e.g. sentinel-2-c1-l2a) or one processing baseline per cube"
            )
        out[band] = next(iter(seen)) if seen else (1.0, 0.0)
    return out


def _check_items(task: Task, policy: HrefPolicy, keys: tuple[str, ...]) -> None:
    for i, item in enumerate(task.items):
        assets = item.get("assets")
        name = item.get("id", f"#{i}")
        if not isinstance(assets, Mapping):
            raise TaskError(f"item {name!r} has no assets; the planner must keep assets {list(keys)}")
        for k in keys:
            a = assets.get(k)
            if not isinstance(a, Mapping) or "href" not in a:
                raise TaskError(f"item {name!r} has no asset {k!r}; the planner must keep assets {list(keys)}")
            policy.check(a["href"])


def _valid_mask(scl: np.ndarray, exclude: tuple[int, ...], radius: int) -> np.ndarray:
    """(t, y, x) bool: SCL class usable (not excluded, not 0), after growing excluded non-0 classes.

    Works one observation at a time so the temporaries stay in cache.
    """
    grow = sorted({int(c) for c in exclude} - {0})
    valid = np.empty(scl.shape, dtype=bool)
    clouds = np.empty(scl.shape[1:], dtype=bool)
    tmp = np.empty(scl.shape[1:], dtype=bool)
    for i in range(scl.shape[0]):
        s, out = scl[i], valid[i]
        np.equal(s, 0, out=out)  # no data: never valid, never grown
        if grow:
            np.equal(s, grow[0], out=clouds)
            for c in grow[1:]:
                np.equal(s, c, out=tmp)
                clouds |= tmp
            if radius > 0 and clouds.any():
                out |= dilate(clouds, radius)
            else:
                out |= clouds
        np.logical_not(out, out=out)
    return valid


def _strip_rows(ny: int, nx: int, nobs: int, nbands: int, budget: int) -> int:
    """Rows per strip so that the per-observation arrays of one strip fit in ``budget`` bytes:
    SCL (1 byte) and the valid mask (1 byte) of every observation, plus every band (2 bytes)."""
    per_row = max(1, nobs * nx * (2 + 2 * nbands))
    return max(1, min(ny, budget // per_row))


def compose(
    task: Task,
    *,
    policy: HrefPolicy | None = None,
    io_threads: int | None = None,
    median_threads: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Composite:
    """Median composite of ``task``'s tile over its time bin (see the module doc for the rules).

    :param policy: hrefs allowed to be read; default :meth:`HrefPolicy.for_spec` of the task's spec
        (local files, file://, s3://, and https on the STAC API and Sentinel-2 COG hosts).
    :param io_threads: reader threads (default: 4 per CPU, 8..32, for network reads; one per CPU
        when every href is a local file).
    :param median_threads: threads of the median kernel (default: see :func:`masked_median`).
    :param memory_budget: bytes of per-observation arrays (SCL, valid mask, bands) held at once;
        a tile needing more is processed in strips of rows (same result, bounded memory).
    :raises HrefNotAllowed: an asset href is outside the policy (nothing has been read).
    :raises TaskError: an item lacks an asset, items disagree on scale/offset, or a read failed.
    """
    t_start = time.perf_counter()
    spec = task.spec
    policy = policy if policy is not None else HrefPolicy.for_spec(spec)
    scl_band = spec.mask.scl_band
    keys = (*spec.bands, scl_band)
    _check_items(task, policy, keys)
    if not task.items:
        return _empty(task, seconds={"load": 0.0, "mask": 0.0, "median": 0.0, "total": 0.0})

    scale_offset = _scale_offsets(task.items, spec.bands)
    grid_box = geobox_of(task.grid)
    gbox = tile_geobox(grid_box, task.tile)
    if gbox.shape.yx != (task.tile.ny, task.tile.nx):  # pragma: no cover - guarded by the grid module
        raise TaskError(f"tile {task.task_id} is outside the grid {task.grid.height}x{task.grid.width}")

    import rasterio.errors

    ((mid_lon, _),) = gbox.extent.centroid.to_crs("EPSG:4326").points
    try:
        observations = _load.group_observations(task.items, mid_lon)
    except ValueError as exc:
        raise TaskError(str(exc)) from exc
    _load.ensure_gdal()
    remote = any(fs.is_remote(h) for h in _load.hrefs_to_read(task.items, keys))
    threads = io_threads or _load.default_io_threads(remote=remote)

    ny, nx = task.tile.ny, task.tile.nx
    nobs = len(observations)
    radius = spec.mask.dilate
    rows = _strip_rows(ny, nx, nobs, len(spec.bands), memory_budget)
    seconds = {"load": 0.0, "mask": 0.0, "median": 0.0}
    medians = {b: np.zeros((ny, nx), np.uint16) for b in spec.bands}
    count = np.zeros((ny, nx), np.uint16)
    used = np.zeros(nobs, dtype=bool)
    _load.reset_net_stats()
    try:
        # Every read closes what it opened: its decoded blocks are freed at once. (Keeping datasets
        # open across strips would only pay off with a block cache holding a whole block row of
        # every asset, hundreds of MB; a strip boundary re-decodes at most one block row.)
        with _load.Reader(threads, guard=policy.check, keep_open=False) as reader:
            for y0 in range(0, ny, rows):
                y1 = min(ny, y0 + rows)
                # 1. SCL of every observation over the strip and a halo for the dilation.
                h0, h1 = max(0, y0 - radius), min(ny, y1 + radius)
                t0 = time.perf_counter()
                scl = reader.read(
                    observations, scl_band, gbox[h0:h1, :],
                    resampling="nearest", dtype="uint8", use_overviews=False,
                    origin=(grid_box.affine, task.tile.y0 + h0, task.tile.x0),
                )
                seconds["load"] += time.perf_counter() - t0

                # 2. Valid mask; observations worth reading in this strip.
                t0 = time.perf_counter()
                valid = _valid_mask(scl, spec.mask.scl_exclude, radius)[:, y0 - h0 : y1 - h0]
                del scl
                useful = valid.reshape(nobs, -1).any(axis=1)
                used |= useful
                if not useful.all():
                    valid = valid[useful]
                valid = np.ascontiguousarray(valid)
                seconds["mask"] += time.perf_counter() - t0
                if not useful.any():
                    continue

                # 3. Every band of the useful observations, median per band as each arrives.
                subset = [o for o, u in zip(observations, useful) if u]
                strip = gbox[y0:y1, :]
                t0 = time.perf_counter()
                pending = [
                    reader.submit(subset, b, strip, resampling=spec.resampling, dtype="uint16",
                                  origin=(grid_box.affine, task.tile.y0 + y0, task.tile.x0))
                    for b in spec.bands
                ]
                for b, p in zip(spec.bands, pending):
                    t0 = time.perf_counter()
                    stack = p.result()
                    t1 = time.perf_counter()
                    seconds["load"] += t1 - t0
                    med, cnt = masked_median(stack, valid, nodata=0, threads=median_threads)
                    del stack
                    medians[b][y0:y1] = med
                    if b == spec.bands[0]:
                        count[y0:y1] = cnt
                    seconds["median"] += time.perf_counter() - t1
                del valid, pending
    except _load.ReadError as exc:  # names the href and GDAL's error
        raise TaskError(f"task {task.task_id}: {exc}") from exc
    except rasterio.errors.RasterioError as exc:
        raise TaskError(f"reading scenes of task {task.task_id} failed: {_load.gdal_message(exc)}") from exc

    net = _load.read_net_stats()
    npairs = nobs * ny * nx
    seconds = {k: round(v, 4) for k, v in seconds.items()}
    seconds["total"] = round(time.perf_counter() - t_start, 4)
    return Composite(
        bands=medians,
        count=count,
        scale_offset=scale_offset,
        items=len(task.items),
        observations=nobs,
        observations_read=int(used.sum()),
        valid_fraction=float(count.sum(dtype=np.int64)) / npairs if npairs else 0.0,
        bytes_read=net[0] if net else 0,
        requests=net[1] if net else 0,
        seconds=seconds,
    )
