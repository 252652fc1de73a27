"""Compose one task: the cloud-free median of one tile over one time bin.

:func:`compose` turns a :class:`~cubeless.models.Task` into a :class:`Composite`:

1. **check** every href it will read against the :class:`~cubeless.hrefs.HrefPolicy` (before any
   read; a refused href raises :class:`~cubeless.errors.HrefNotAllowed`);
2. **load the SCL band** of every item onto the tile's GeoBox (nearest, no overviews), one
   observation per solar day (the key of odc-stac's ``groupby="solar_day"``: local solar date at
   the tile centre). odc-stac fuses the items of one day layer by layer: each pixel is taken from
   the first item, in (time, id) order, that is not nodata (0) there;
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
   values, rounded half to even; no valid observation gives 0.

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

from . import _load
from ._median import dilate, masked_median
from .errors import TaskError
from .grid import geobox_of, tile_geobox
from .hrefs import HrefPolicy
from .models import Task

__all__ = ["Composite", "compose", "configure_gdal", "masked_median"]

configure_gdal = _load.configure_gdal

#: Default peak size (bytes) of the reflectance stack loaded at once; above it bands load in groups.
DEFAULT_MEMORY_BUDGET = 2 * 1024**3


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
    :param memory_budget: bytes of reflectance stack to load at once; more bands load in groups.
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
    gbox = tile_geobox(geobox_of(task.grid), task.tile)
    if gbox.shape.yx != (task.tile.ny, task.tile.nx):  # pragma: no cover - guarded by the grid module
        raise TaskError(f"tile {task.task_id} is outside the grid {task.grid.height}x{task.grid.width}")

    import pystac
    import rasterio.errors

    _load.ensure_gdal()
    remote = any(_load.is_remote(h) for h in _load.hrefs_to_read(task.items, keys))
    threads = io_threads or _load.default_io_threads(remote=remote)
    items = []
    for i, d in enumerate(task.items):
        try:
            items.append(pystac.Item.from_dict(_load.normalise_item(d)))
        except (KeyError, TypeError, ValueError, pystac.STACError) as exc:
            raise TaskError(f"item {d.get('id', f'#{i}')!r} is not a usable STAC item ({type(exc).__name__}: {exc})") from exc
    ((mid_lon, _),) = gbox.extent.centroid.to_crs("EPSG:4326").points
    key = _load.SolarDayKey(mid_lon)

    def guard(url: str) -> str:
        policy.check(url)
        return url

    seconds = {"load": 0.0, "mask": 0.0, "median": 0.0}
    _load.reset_net_stats()
    try:
        # 1. SCL of every observation.
        t0 = time.perf_counter()
        scl = _load.load_stack(
            items, [scl_band], gbox,
            groupby=key, resampling={scl_band: "nearest"}, dtype={scl_band: "uint8"},
            threads=threads, use_overviews=False, guard=guard,
        )[scl_band]
        seconds["load"] += time.perf_counter() - t0

        # 2. Valid mask; observations worth reading.
        t0 = time.perf_counter()
        valid = _valid_mask(scl, spec.mask.scl_exclude, spec.mask.dilate)
        del scl
        day_keys = sorted(set(key.keys.values()))
        nobs = valid.shape[0]
        if nobs != len(day_keys):  # pragma: no cover - odc-stac's grouping contract
            raise TaskError(f"odc-stac returned {nobs} observations for {len(day_keys)} solar days")
        useful = valid.reshape(nobs, -1).any(axis=1)
        keep_days = {k for k, u in zip(day_keys, useful) if u}
        if not useful.all():
            valid = valid[useful]  # keep the useful observations only
        seconds["mask"] += time.perf_counter() - t0

        nuse = valid.shape[0]
        shape = (task.tile.ny, task.tile.nx)
        medians: dict[str, np.ndarray] = {}
        count = np.zeros(shape, np.uint16)
        if nuse:
            subset = [it for i, it in enumerate(items) if key.keys[i] in keep_days]
            sub_key = _load.SolarDayKey(mid_lon)
            per_band = max(1, nuse * shape[0] * shape[1] * 2)
            group = max(1, memory_budget // per_band)
            bands = list(spec.bands)
            for g0 in range(0, len(bands), group):
                names = bands[g0 : g0 + group]
                t0 = time.perf_counter()
                stacks = _load.load_stack(
                    subset, names, gbox,
                    groupby=sub_key, resampling={b: spec.resampling for b in names},
                    dtype={b: "uint16" for b in names}, threads=threads, guard=guard,
                )
                seconds["load"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                for b in names:
                    stack = stacks.pop(b)
                    if stack.shape[0] != nuse:  # pragma: no cover - same items, same grouping
                        raise TaskError(f"band {b!r} loaded {stack.shape[0]} observations, expected {nuse}")
                    med, cnt = masked_median(stack, valid, nodata=0, threads=median_threads)
                    del stack
                    medians[b] = med
                    if b == spec.bands[0]:
                        count = cnt
                seconds["median"] += time.perf_counter() - t0
        else:
            medians = {b: np.zeros(shape, np.uint16) for b in spec.bands}
    except rasterio.errors.RasterioError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TaskError(f"reading scenes of task {task.task_id} failed: {first}") from exc

    net = _load.read_net_stats()
    npairs = nobs * shape[0] * shape[1]
    seconds = {k: round(v, 4) for k, v in seconds.items()}
    seconds["total"] = round(time.perf_counter() - t_start, 4)
    return Composite(
        bands=medians,
        count=count,
        scale_offset=scale_offset,
        items=len(items),
        observations=nobs,
        observations_read=nuse,
        valid_fraction=float(count.sum(dtype=np.int64)) / npairs if npairs else 0.0,
        bytes_read=net[0] if net else 0,
        requests=net[1] if net else 0,
        seconds=seconds,
    )
