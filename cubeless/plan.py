"""The planner: spec -> grid, time bins to fill, land tiles, ONE catalog search, tasks.

:func:`make_plan` is pure planning (it reads the catalog, writes nothing):

1. **bins**: the spec's bins minus the cube's committed ones (:func:`bins_to_fill`). A cube only
   grows forward without gaps: a spec starting before the cube's first bin, or after the bin that
   follows its last committed one, is refused with a one-line :class:`PlanError`.
2. **tiles**: the cube grid's tiles touching land and the region (:mod:`cubeless.land`).
3. **search**: one search for the whole region and the new bins' whole date range.
4. **assignment**: an item goes to task (tile, bin) when its datetime (UTC) falls in the bin and
   its lon/lat footprint intersects the tile's lon/lat footprint. All tile footprints go in one
   shapely ``STRtree`` queried with all item footprints at once.

Every (land tile, bin) gets a task, **including those no item touches**: the worker writes the
empty chunk (nothing, as an all-fill chunk is not stored) and a done marker quickly, and the commit
needs no notion of "intentionally empty" chunks; re-running such a task still removes a stale chunk.
The task count is therefore known before the search, and ``max_tasks`` is enforced before searching.

Tasks are ordered row-major by tile, then by bin; a task's items by (datetime, id). Items are the
:func:`minimal_item` form, shared (not copied) between the tasks that use them.
"""

from __future__ import annotations

import gc
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import shapely
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from ._load import item_datetime
from .errors import PlanError
from .grid import cube_geobox, grid_of, spec_region, tile_shape
from .land import TileSelection, count_tiles, select_tiles
from .models import Grid, RunRecord, Task, Tile, run_id_for
from .search import SearchStats, cloud_ok, search_items
from .spec import CubeSpec
from .timebins import TimeBin, bin_of_days, bin_start, bins_datetime, complete_bins, next_start, time_bins

#: ``search(spec, region, *, datetime=..., progress=...) -> list[item dict]``
SearchFn = Callable[..., list[dict[str, Any]]]
#: Called with the number of items found so far while the catalog is searched.
Progress = Callable[[int], None]

DEFAULT_MAX_TASKS = 200_000

#: Item properties a worker needs to load and composite a scene (kept by :func:`minimal_item`).
ITEM_PROPERTIES = (
    "datetime",
    "start_datetime",
    "end_datetime",
    "platform",
    "constellation",
    "gsd",
    "eo:cloud_cover",
    "eo:bands",
    "raster:bands",
    "s2:processing_baseline",
    "earthsearch:boa_offset_applied",
    "grid:code",
    "s2:mgrs_tile",
)
#: Asset fields kept (besides every ``proj:*`` and ``raster:*``). ``bands``, ``nodata`` and
#: ``data_type`` are their STAC 1.1 forms.
ASSET_FIELDS = ("href", "type", "roles", "gsd", "eo:bands", "raster:bands", "bands", "nodata", "data_type",
                "unit", "file:size")
#: Fields kept in each ``raster:bands`` entry (what decoding needs; statistics/histograms dropped).
RASTER_BAND_FIELDS = ("nodata", "data_type", "scale", "offset", "unit")
#: Fields kept in each ``eo:bands`` entry.
EO_BAND_FIELDS = ("name", "common_name")
#: Fields kept in each STAC 1.1 ``bands`` entry.
BAND_FIELDS = ("name", "eo:common_name", "nodata", "data_type", "raster:scale", "raster:offset", "unit")
_PROPS_KEPT = frozenset(ITEM_PROPERTIES)
_ASSET_KEPT = frozenset(ASSET_FIELDS)
_BAND_LISTS = {"raster:bands": frozenset(RASTER_BAND_FIELDS), "eo:bands": frozenset(EO_BAND_FIELDS),
               "bands": frozenset(BAND_FIELDS)}
#: Footprint coordinates are rounded to this many decimals (1e-6 degree is about 0.1 m).
GEOMETRY_DECIMALS = 6
#: A footprint with more vertices is replaced by a slightly larger simplified hull (a superset,
#: so a reader never skips a scene that covers its chunk).
MAX_GEOMETRY_VERTICES = 64
#: Only these extension schemas are listed in a minimal item (the others describe dropped fields).
EXTENSION_KEYS = ("/eo/", "/projection/", "/raster/", "/file/")
#: Bytes per pixel assumed when items carry no ``file:size`` (uint16, uncompressed: an upper bound).
BYTES_PER_PIXEL = 2
METRES_PER_DEGREE = 111_320.0
#: The planner Lambda's memory (infra settings ``planner_memory_mb``), for the search's cost.
PLANNER_MEMORY_MB = 4096


# ------------------------------------------------------------------------------------------------
# Items
# ------------------------------------------------------------------------------------------------
def minimal_item(item: Mapping[str, Any], assets: Sequence[str]) -> dict[str, Any]:
    """A valid STAC item dict with only ``assets`` and the properties loading needs.

    Keeps id, collection, geometry (coordinates rounded to 1e-6 degree; a footprint of more than
    :data:`MAX_GEOMETRY_VERTICES` vertices becomes a covering simplified hull), bbox, stac_version,
    the eo/projection/raster/file extension URLs, the properties in :data:`ITEM_PROPERTIES` plus
    every ``proj:*``, and per asset the fields in :data:`ASSET_FIELDS` plus every ``proj:*`` and
    ``raster:*``; ``raster:bands``/``bands`` keep their decoding fields, ``eo:bands`` their names.
    The input is not modified. Raises :class:`PlanError` when an asset is missing, naming it and the assets that
    exist.
    """
    have = item.get("assets") or {}
    for key in assets:
        if key not in have:
            raise PlanError(
                f"band {key!r} not in collection assets [{', '.join(sorted(have))}] "
                f"(item {item.get('id')}); fix `bands` (or `mask.scl_band`)"
            )
    props_in = item.get("properties") or {}
    props = {k: v for k, v in props_in.items() if k in _PROPS_KEPT or (k[:5] == "proj:" and k != "proj:centroid")}
    _trim_bands(props)
    pixels_shifted = _boa_offset_applied(item, props_in)
    out_assets: dict[str, Any] = {}
    for key in assets:
        a = have[key]
        kept = {
            k: v for k, v in a.items()
            if k in _ASSET_KEPT or (k[:5] == "proj:" and k != "proj:centroid") or k[:7] == "raster:"
        }
        if "type" in kept:  # a media type decides what the asset is; roles only repeat it
            kept.pop("roles", None)
        _trim_bands(kept)
        if pixels_shifted:
            _zero_offsets(kept)
        out_assets[key] = kept
    out: dict[str, Any] = {
        "type": "Feature",
        "stac_version": item.get("stac_version", "1.0.0"),
        "stac_extensions": [u for u in item.get("stac_extensions") or [] if any(k in u for k in EXTENSION_KEYS)],
        "id": item.get("id"),
        "geometry": _compact_geometry(item.get("geometry")),
        "bbox": item.get("bbox"),
        "properties": props,
        "links": [],
        "assets": out_assets,
    }
    if "collection" in item:
        out["collection"] = item["collection"]
    return out


#: The processing baseline from which ESA's L2A DN carry the +1000 BOA offset (2022-01-25).
BOA_OFFSET_BASELINE = "04.00"


def _boa_offset_applied(item: Mapping[str, Any], props: Mapping[str, Any]) -> bool:
    """Whether the item's pixels already had ESA's BOA offset removed (``earthsearch:boa_offset_applied``).

    One DN convention per cube: every minimal item's ``raster:bands`` offset is the offset its
    pixels really need, so that DN x scale + offset is surface reflectance for every item. In
    ``sentinel-2-c1-l2a`` (no flag) the metadata is right. In the older ``sentinel-2-l2a``, items
    of baseline >= 04.00 say ``offset: -0.1`` even when Element 84 already shifted the pixels; the
    flag is the truth (Element84/earth-search#9), so their offset becomes 0. Such an item without
    the flag cannot be read right: :class:`PlanError` names the fix.
    """
    flag = props.get("earthsearch:boa_offset_applied")
    if flag is None:
        baseline = str(props.get("s2:processing_baseline") or "")
        if item.get("collection") == "sentinel-2-l2a" and baseline >= BOA_OFFSET_BASELINE:
            raise PlanError(
                f"item {item.get('id')} (sentinel-2-l2a, processing baseline {baseline}) does not say whether its "
                "BOA offset was applied (no earthsearch:boa_offset_applied), so its reflectance is unknown; "
                "use `collection: sentinel-2-c1-l2a`"
            )
        return False
    return bool(flag)


def _zero_offsets(asset: dict[str, Any]) -> None:
    """Offset 0 in an asset's ``raster:bands`` (and STAC 1.1 ``bands``) entries that state one (in place)."""
    for key, field_ in (("raster:bands", "offset"), ("bands", "raster:offset")):
        bands = asset.get(key)
        if isinstance(bands, list):
            asset[key] = [{**b, field_: 0} if isinstance(b, dict) and b.get(field_) else b for b in bands]
    if asset.get("raster:offset"):
        asset["raster:offset"] = 0


def acquisition_key(item: Mapping[str, Any]) -> tuple[str, str, int, int] | None:
    """(tile, datetime, footprint centre in 0.1 degrees) of an item, the same for two items of one
    acquisition; None without a tile code or bbox. (The centre guards against catalogs that reuse a
    tile code for other places.)"""
    p = item.get("properties") or {}
    tile = p.get("grid:code") or p.get("s2:mgrs_tile")
    if not tile and p.get("mgrs:utm_zone") is not None:
        tile = f"{p.get('mgrs:utm_zone')}{p.get('mgrs:latitude_band', '')}{p.get('mgrs:grid_square', '')}"
    when = p.get("datetime")
    b = item.get("bbox")
    if not (tile and when and isinstance(b, (list, tuple)) and len(b) >= 4):
        return None
    half = len(b) // 2
    return str(tile), str(when), round((b[0] + b[half]) * 5), round((b[1] + b[half + 1]) * 5)


def _trim_bands(d: dict[str, Any]) -> None:
    """Keep only the decoding fields of ``raster:bands``/``bands`` and the names in ``eo:bands`` (in place)."""
    for key in _BAND_LISTS.keys() & d.keys():
        bands, fields = d[key], _BAND_LISTS[key]
        if isinstance(bands, list):
            d[key] = [{k: v for k, v in b.items() if k in fields} if isinstance(b, dict) else b for b in bands]


def _compact_geometry(geom: Any) -> Any:
    """The footprint with rounded coordinates; a very detailed one becomes a covering hull."""
    if not isinstance(geom, dict) or "coordinates" not in geom:
        return geom
    coords = geom["coordinates"]
    if geom.get("type") == "Polygon" and len(coords) == 1 and len(coords[0]) <= MAX_GEOMETRY_VERTICES:
        try:  # the common case, fast: one ring of [x, y] pairs
            ring = np.asarray(coords[0], dtype=np.float64)
            if ring.ndim == 2 and ring.shape[1] >= 2:
                return {"type": "Polygon", "coordinates": [np.round(ring[:, :2], GEOMETRY_DECIMALS).tolist()]}
        except (TypeError, ValueError):
            pass
    if _count_positions(coords) > MAX_GEOMETRY_VERTICES:
        hull = shape(geom).convex_hull
        for tol in (1e-4, 1e-3, 1e-2, 1e-1):  # ~10 m .. 10 km
            # Simplifying a convex polygon cuts inwards by at most tol: the buffer keeps it covering.
            g = hull.buffer(tol, quad_segs=2).simplify(tol)
            if shapely.get_num_coordinates(g) <= MAX_GEOMETRY_VERTICES:
                break
        geom = mapping(g)
    return {"type": geom["type"], "coordinates": _round(geom["coordinates"], GEOMETRY_DECIMALS)}


def _count_positions(coords: Any) -> int:
    if isinstance(coords, (list, tuple)) and coords:
        if isinstance(coords[0], (int, float)):
            return 1
        return sum(_count_positions(c) for c in coords)
    return 0


def _round(coords: Any, nd: int) -> Any:
    if isinstance(coords, (list, tuple)):
        if coords and isinstance(coords[0], (int, float)):
            return np.round(np.asarray(coords, dtype=np.float64), nd).tolist()
        return [_round(c, nd) for c in coords]
    return coords


def _footprint(item: Mapping[str, Any]) -> BaseGeometry | None:
    """Lon/lat footprint of one item: its geometry, else its bbox; None when it has neither."""
    geom = item.get("geometry")
    try:
        if geom:
            g = shape(geom)
            return g if g.is_valid else shapely.make_valid(g)
        b = item.get("bbox")
        if b and len(b) >= 4:
            half = len(b) // 2
            return box(b[0], b[1], b[half], b[half + 1])
    except Exception:  # noqa: BLE001 - a malformed footprint cannot be placed; the item is skipped
        return None
    return None


def footprints(items: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Lon/lat footprints of items (object array; None where an item has no usable footprint).

    Single-ring polygons (nearly every STAC item) are built in one vectorised call; the rest one
    by one. Invalid polygons are repaired with ``make_valid``.
    """
    out = np.full(len(items), None, dtype=object)
    rings: list[np.ndarray] = []
    where: list[int] = []
    for i, item in enumerate(items):
        geom = item.get("geometry")
        coords = geom.get("coordinates") if isinstance(geom, dict) and geom.get("type") == "Polygon" else None
        if coords is not None and len(coords) == 1:
            try:
                ring = np.asarray(coords[0], dtype=np.float64)
            except (TypeError, ValueError):
                ring = None
            if ring is not None and ring.ndim == 2 and ring.shape[0] >= 4 and ring.shape[1] >= 2:
                rings.append(ring[:, :2])
                where.append(i)
                continue
        out[i] = _footprint(item)
    if rings:
        lengths = np.fromiter((len(r) for r in rings), dtype=np.int64, count=len(rings))
        ring_offsets = np.concatenate([[0], np.cumsum(lengths)])
        polys = shapely.from_ragged_array(
            shapely.GeometryType.POLYGON,
            np.concatenate(rings),
            (ring_offsets, np.arange(len(rings) + 1, dtype=np.int64)),
        )
        bad = ~shapely.is_valid(polys)
        if bad.any():
            polys[bad] = shapely.make_valid(polys[bad])
        out[np.asarray(where, dtype=np.int64)] = polys
    empty = np.fromiter((g is None or g.is_empty for g in out), dtype=bool, count=len(out))
    out[empty] = None
    return out


def _task_factory(**fields: Any) -> Callable[..., Task]:
    """A fast constructor of already-valid tasks: ``make(tile=..., bin=..., t=..., items=...)``.

    ``Task.model_construct`` costs ~9 us a call (field loop, fields-set bookkeeping); planning
    Brazil builds ~150,000 tasks. This builds one with ``model_construct`` and then stamps out
    copies that differ only in their field values, with the same pydantic slots as that template.
    """
    template = Task.model_construct(
        **fields, tile=Tile(iy=0, ix=0, y0=0, x0=0, ny=1, nx=1), bin=None, t=0, items=[]
    )
    slots = {name: getattr(template, name) for name in ("__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")}
    base = dict(template.__dict__)
    new = Task.__new__
    setattr_ = object.__setattr__

    def make(**values: Any) -> Task:
        task = new(Task)
        setattr_(task, "__dict__", {**base, **values})
        for name, value in slots.items():
            setattr_(task, name, value if not isinstance(value, set) else set(value))
        return task

    return make


# ------------------------------------------------------------------------------------------------
# Bins
# ------------------------------------------------------------------------------------------------
def _fill(spec: CubeSpec, committed: Sequence[TimeBin], origin: date | TimeBin | None) -> tuple[list[TimeBin], int]:
    """(bins this run fills, time index of the first) or a one-line PlanError."""
    iv = spec.interval
    wanted = time_bins(spec.start, spec.end, iv)
    done = sorted(committed, key=lambda b: b.start)
    for b in done:
        if bin_start(b.start, iv) != b.start or next_start(b.start, iv) != b.end:
            raise PlanError(
                f"the cube's time steps are not {iv}s (it holds {b.start}..{b.end}); set `interval` to the cube's"
            )
    for a, b in zip(done, done[1:]):
        if a.end != b.start:
            raise PlanError(f"the cube's committed time steps jump from {a.label} to {b.label}; the store is damaged")
    org = origin.start if isinstance(origin, TimeBin) else origin
    if org is None:
        org = done[0].start if done else wanted[0].start
    if bin_start(org, iv) != org:
        raise PlanError(f"the cube's time origin {org} is not the start of a {iv}; set `interval` to the cube's")
    if done and done[0].start != org:
        raise PlanError(f"the cube's first time step {done[0].label} is not its origin {org}; the store is damaged")
    if wanted[0].start < org:
        raise PlanError(
            f"spec start {spec.start} is before the cube's first time step {org}; cubes only grow forward: "
            f"set `start` to {org} or later, or write a new `store`"
        )
    have = {b.start for b in done}
    # Only complete bins are committed: a bin still in progress (or within its settling delay) would
    # be committed short of scenes and never refilled.
    ready = complete_bins(wanted, iv, datetime.now(timezone.utc).date(), spec.settle_days)
    bins = [b for b in ready if b.start not in have]
    expected = done[-1].end if done else org
    if bins and bins[0].start > expected:
        missing = len(time_bins(expected, bins[0].start, iv)) - 1
        raise PlanError(
            f"spec starts at {bins[0].label} but the cube's next time step is {expected}: that would leave "
            f"a gap of {missing} {iv}(s); set `start` to {expected} or earlier"
        )
    return bins, len(done)


def bins_to_fill(
    spec: CubeSpec, committed: Sequence[TimeBin] = (), origin: date | TimeBin | None = None
) -> list[TimeBin]:
    """The spec's bins the cube has not committed yet (empty: nothing to do). Raises on prepend/gap."""
    return _fill(spec, committed, origin)[0]


# ------------------------------------------------------------------------------------------------
# Plan
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneStats:
    """Scenes per task."""

    min: int = 0
    median: float = 0.0
    max: int = 0
    mean: float = 0.0
    empty_tasks: int = 0  #: tasks no scene touches (they write nothing, quickly)


@dataclass(frozen=True)
class Plan:
    """A planned run: what to fill, where, from which scenes. Built by :func:`make_plan`."""

    spec: CubeSpec
    grid: Grid
    bins: list[TimeBin]  #: bins this run fills, in order
    t0: int  #: time index of ``bins[0]`` on the cube's time axis
    tiles_total: int  #: tiles in the grid
    tiles: list[Tile]  #: tiles on land (and in the AOI), row-major
    items: list[dict[str, Any]]  #: minimal items used by at least one task, by (datetime, id)
    tasks: list[Task]  #: row-major tiles, then bins in order
    run_id: str
    estimated_bytes: int  #: estimated bytes all tasks read
    task_bytes: list[int]  #: estimated bytes each task reads (aligned with ``tasks``)
    scenes: SceneStats
    items_found: int  #: items the search returned (before the cloud / bin filters)
    seconds: dict[str, float] = field(default_factory=dict)  #: land, search, assign, tasks
    #: How the search went (pages, items/s, bytes/item, partitions, halved pages); empty for a custom search.
    search_stats: dict[str, Any] = field(default_factory=dict)


def _asset_res(asset: Mapping[str, Any], item: Mapping[str, Any]) -> float:
    """Native pixel size (metres) of an asset: gsd, raster:bands resolution, proj:transform, 10."""
    for src in (asset, item.get("properties") or {}):
        if src.get("gsd"):
            return float(src["gsd"])
        rb = src.get("raster:bands")
        if rb and isinstance(rb, list) and isinstance(rb[0], dict) and rb[0].get("spatial_resolution"):
            return float(rb[0]["spatial_resolution"])
        tr = src.get("proj:transform")
        if tr and abs(float(tr[0])) > 0.5:  # metres, not degrees
            return abs(float(tr[0]))
    return 10.0


def _overview(target_m: float, native_m: float) -> float:
    """Overview decimation a reader picks: the largest power of two not above target/native."""
    ratio = target_m / native_m
    return float(2 ** math.floor(math.log2(ratio))) if ratio >= 2 else 1.0


def make_plan(
    spec: CubeSpec,
    *,
    committed: Sequence[TimeBin] = (),
    origin: date | TimeBin | None = None,
    search: SearchFn = search_items,
    region: BaseGeometry | None = None,
    max_tasks: int = DEFAULT_MAX_TASKS,
    progress: Progress | None = None,
    stats: SearchStats | None = None,
) -> Plan:
    """Plan the run that fills the spec's uncommitted bins (see the module docstring).

    ``region`` is the lon/lat bbox or AOI (default: from the spec, loading the AOI file).
    ``search`` is called once as ``search(spec, region, datetime=..., progress=progress)``.
    ``stats`` (the default search only) is filled as the search runs: read it in ``progress``
    for a live line (pages, items, items/s, partitions done).
    """
    timings: dict[str, float] = {}
    bins, t0 = _fill(spec, committed, origin)
    region = spec_region(spec, region)
    geobox = cube_geobox(spec, region)
    grid = grid_of(geobox, spec.crs)
    run_id = run_id_for(spec, bins)

    t = time.perf_counter()

    def too_many(n_tiles: int, *, at_least: bool = False) -> PlanError:
        return PlanError(
            f"the plan has {'at least ' if at_least else ''}{n_tiles * len(bins):,} tasks ({n_tiles:,} land tiles x "
            f"{len(bins)} bins), over max_tasks {max_tasks:,}; split the spec (smaller bbox/aoi or date range) "
            "or raise max_tasks"
        )

    nty, ntx = tile_shape(geobox, spec.chunk)
    if bins and nty * ntx * len(bins) > max_tasks:
        # The grid's tiles x bins bound the task count from above; past max_tasks, count the land
        # tiles in blocks first (bounded memory) and refuse as soon as the count passes the limit,
        # before footprints of the whole grid (18 GB for the world at 10 m) are computed.
        allowed = max_tasks // len(bins)
        counted = count_tiles(geobox, spec.chunk, region, stop_above=allowed)
        if counted > allowed:
            raise too_many(counted, at_least=True)
    sel = select_tiles(geobox, spec.chunk, region)
    if len(sel.index) * len(bins) > max_tasks:
        raise too_many(len(sel.index))
    tiles = sel.tiles()
    timings["land"] = time.perf_counter() - t
    n_tasks = len(tiles) * len(bins)
    if not bins or not tiles:
        return Plan(
            spec=spec, grid=grid, bins=bins, t0=t0, tiles_total=sel.tiles_total, tiles=tiles, items=[], tasks=[],
            run_id=run_id, estimated_bytes=0, task_bytes=[], scenes=SceneStats(), items_found=0, seconds=timings,
        )

    t = time.perf_counter()
    stats = stats if stats is not None else SearchStats()
    extra: dict[str, Any] = {"stats": stats} if search is search_items else {}
    # In a list that _assign empties: the items no task uses are freed as soon as it has sorted them.
    found = [search(spec, region, datetime=bins_datetime(bins), progress=progress, **extra)]
    timings["search"] = time.perf_counter() - t

    with _gc_paused():  # the default search returns the items in their minimal form already
        plan = _assign(spec, sel, tiles, bins, t0, grid, run_id, found, n_tasks, timings, already_minimal=search is search_items)
    if not extra:
        return plan
    from dataclasses import replace

    return replace(plan, search_stats={
        "pages": stats.pages, "items": stats.items, "items_per_s": round(stats.items_per_s, 1),
        "bytes_per_item": round(stats.bytes_per_item), "partitions": stats.partitions,
        "halved_pages": stats.halvings, "fields": stats.fields,
    })


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (restored afterwards).

    Assignment allocates ~10^6 small acyclic objects next to the large search result; left on,
    the collector rescans all of it many times over (about 40% of the planning time).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _assign(
    spec: CubeSpec,
    sel: TileSelection,
    tiles: list[Tile],
    bins: list[TimeBin],
    t0: int,
    grid: Grid,
    run_id: str,
    found_box: list[list[dict[str, Any]]],
    n_tasks: int,
    timings: dict[str, float],
    *,
    already_minimal: bool = False,
) -> Plan:
    """Items -> (tile, bin) tasks, minimal items, estimates: the body of :func:`make_plan`.

    ``already_minimal``: the items are :func:`minimal_item` forms of the spec's assets already (as the
    default search returns them); they are used as they are, not copied (a Brazil-year's
    111,554 used items: ~1 GB of copies less at the peak). ``found_box`` holds the search's
    result, which is taken out of it (and dropped once sorted)."""
    t = time.perf_counter()
    assets = [*spec.bands, spec.mask.scl_band]
    # Items in a bin, with a footprint, sorted by (datetime, id): the index is the item's rank.
    dated: list[tuple[datetime, str, Mapping[str, Any]]] = []
    found = found_box.pop()
    items_found = len(found)
    for item in found:
        if cloud_ok(item, spec.max_cloud_cover):
            try:
                dt = item_datetime(item)  # the loader's rule (odc-stac's): the item is loaded at this time
            except ValueError:  # no (valid) datetime: the item cannot be placed in a bin
                continue
            dated.append((dt, str(item.get("id")), item))
    del found
    bin_of = bin_of_days(bins, [d.date() for d, _, _ in dated])
    placed = [(d, iid, int(b), item) for (d, iid, item), b in zip(dated, bin_of.tolist()) if b >= 0]
    placed.sort(key=lambda p: (p[0], p[1]))
    unique: list[tuple[int, Mapping[str, Any]]] = []
    seen: set[str] = set()
    # Duplicate acquisitions (one tile and datetime in several items, e.g. reprocessed) count once:
    # the one of the latest processing baseline (then the greatest id) is kept.
    best: dict[tuple[str, str, int, int], tuple[tuple[str, str], str]] = {}
    for _, iid, _, item in placed:
        k = acquisition_key(item)
        if k is not None:
            rank = (str((item.get("properties") or {}).get("s2:processing_baseline") or ""), iid)
            if k not in best or rank > best[k][0]:
                best[k] = (rank, iid)
    for _, iid, b, item in placed:
        k = acquisition_key(item)
        if iid not in seen and (k is None or best[k][1] == iid):
            seen.add(iid)
            unique.append((b, item))
    shapes = footprints([item for _, item in unique])
    keep = [i for i in range(len(unique)) if shapes[i] is not None]
    geoms = list(shapes[keep]) if keep else []
    item_bin = [unique[i][0] for i in keep]

    tile_polys = sel.footprints.polygons(sel.index)
    nb = len(bins)
    if geoms:
        tree = shapely.STRtree(tile_polys)
        pair_item, pair_tile = tree.query(np.asarray(geoms, dtype=object), predicate="intersects")
    else:
        pair_item = pair_tile = np.zeros(0, dtype=np.int64)
    ibin = np.asarray(item_bin, dtype=np.int64)
    key = pair_tile.astype(np.int64) * nb + ibin[pair_item] if pair_item.size else pair_item.astype(np.int64)
    order = np.lexsort((pair_item, key))
    pair_item, pair_tile, key = pair_item[order], pair_tile[order], key[order]
    counts = np.bincount(key, minlength=n_tasks)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    # Minimal items only for the items some task uses (they are shared by those tasks).
    used = np.unique(pair_item).tolist() if pair_item.size else []
    minimal: list[dict[str, Any]] = [{} for _ in keep]
    for i in used:
        item = unique[keep[i]][1]
        minimal[i] = item if already_minimal else minimal_item(item, assets)  # type: ignore[assignment]
    del dated, placed, unique, shapes

    # Estimated bytes read, per pair (item, tile), summed per task.
    pair_bytes = _pair_bytes(spec, sel, tiles, tile_polys, minimal, used, geoms, assets, pair_item, pair_tile)
    task_bytes_arr = np.bincount(key, weights=pair_bytes, minlength=n_tasks) if key.size else np.zeros(n_tasks)
    timings["assign"] = time.perf_counter() - t

    t = time.perf_counter()
    del key, order, pair_tile
    off = offsets.tolist()
    make = _task_factory(run_id=run_id, spec=spec, grid=grid)
    tasks: list[Task] = []
    # One slice of the pair array per task (pair_item.tolist() at 10 m: 24 M ints, ~0.9 GB).
    for ti, tile in enumerate(tiles):
        for bi, tb in enumerate(bins):
            k = ti * nb + bi
            tasks.append(make(tile=tile, bin=tb, t=t0 + bi, items=[minimal[i] for i in pair_item[off[k] : off[k + 1]].tolist()]))
    timings["tasks"] = time.perf_counter() - t

    task_bytes = [int(round(v)) for v in task_bytes_arr.tolist()]
    stats = SceneStats(
        min=int(counts.min()),
        median=float(np.median(counts)),
        max=int(counts.max()),
        mean=float(counts.mean()),
        empty_tasks=int((counts == 0).sum()),
    )
    return Plan(
        spec=spec,
        grid=grid,
        bins=bins,
        t0=t0,
        tiles_total=sel.tiles_total,
        tiles=tiles,
        items=[minimal[i] for i in used],
        tasks=tasks,
        run_id=run_id,
        estimated_bytes=int(sum(task_bytes)),
        task_bytes=task_bytes,
        scenes=stats,
        items_found=items_found,
        seconds=timings,
    )


def _pair_bytes(
    spec: CubeSpec,
    sel: TileSelection,
    tiles: list[Tile],
    tile_polys: np.ndarray,
    minimal: list[dict[str, Any]],
    used: list[int],
    geoms: list[BaseGeometry],
    assets: list[str],
    pair_item: np.ndarray,
    pair_tile: np.ndarray,
) -> np.ndarray:
    """Estimated bytes one item contributes to one tile's task.

    With ``file:size`` on every needed asset: size x (tile area / item area, at most 1) / d^2;
    otherwise native pixels under the tile / d^2 x 2 bytes x (item area / tile area, at most 1);
    d is the overview decimation a reader picks for the cube resolution (power of two).
    """
    if not pair_item.size:
        return np.zeros(0)
    fp = sel.footprints
    # Tile area (m^2) and cube resolution (m) per tile.
    npx = np.array([t.ny * t.nx for t in tiles], dtype=np.float64)
    if spec.is_geographic:
        lat = np.radians((fp.south[sel.index] + fp.north[sel.index]) / 2.0)
        res_m = spec.resolution * METRES_PER_DEGREE
        tile_m2 = npx * res_m * res_m * np.cos(lat)
    else:
        res_m = spec.resolution
        tile_m2 = npx * res_m * res_m
    tile_deg2 = shapely.area(tile_polys)
    item_deg2 = shapely.area(np.asarray(geoms, dtype=object))
    # Native resolution and read decimation per asset key (fixed within a collection: taken from
    # the first item); per item the scene's bytes (file:size) when every asset states its size.
    first = minimal[used[0]]
    native = {a: _asset_res(first["assets"][a], first) for a in assets}
    dec = {a: _overview(res_m, native[a]) for a in assets}
    per_m2 = sum(BYTES_PER_PIXEL / (native[a] ** 2 * dec[a] ** 2) for a in assets)
    scene_bytes = np.zeros(len(minimal))
    sized = np.zeros(len(minimal), dtype=bool)
    for i in used:
        it = minimal[i]
        sizes = [it["assets"][a].get("file:size") for a in assets]
        if all(isinstance(v, (int, float)) and v > 0 for v in sizes):
            sized[i] = True
            scene_bytes[i] = sum(float(v) / dec[a] ** 2 for v, a in zip(sizes, assets))
    ti, ii = pair_tile, pair_item
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.minimum(1.0, np.nan_to_num(tile_deg2[ti] / item_deg2[ii], nan=1.0, posinf=1.0))
        cover = np.minimum(1.0, np.nan_to_num(item_deg2[ii] / tile_deg2[ti], nan=1.0, posinf=1.0))
    return np.where(sized[ii], scene_bytes[ii] * share, per_m2 * tile_m2[ti] * cover)


def empty_bins(tasks: Iterable[Task]) -> list[str]:
    """Labels of the bins no task has a scene for (one pass: the task list may be streamed).

    Such a bin is still committed (every pixel's count is 0), and plan and run say so: the
    catalog may have had no scene yet, or the spec's filters (``max_cloud_cover``) left none.
    """
    has_scenes: dict[str, bool] = {}
    for t in tasks:
        has_scenes[t.bin.label] = has_scenes.get(t.bin.label, False) or bool(t.items)
    return sorted(label for label, any_scene in has_scenes.items() if not any_scene)


def plan_summary(plan: Plan) -> dict[str, Any]:
    """A flat, JSON-friendly summary of a plan (what ``cubeless plan`` prints): numbers stay numbers."""
    tb = np.asarray(plan.task_bytes, dtype=np.float64)
    s = plan.spec
    return {
        "cube": s.name,
        "run_id": plan.run_id,
        "store": s.store,
        "width": plan.grid.width,  #: pixels
        "height": plan.grid.height,
        "crs": s.crs,
        "resolution": s.resolution,
        "chunk": s.chunk,
        "bins": len(plan.bins),  #: bins this run fills (0: every bin is committed)
        "first_bin": plan.bins[0].label if plan.bins else None,
        "last_bin": plan.bins[-1].label if plan.bins else None,
        "first_time_index": plan.t0,
        "tiles_total": plan.tiles_total,
        "tiles_on_land": len(plan.tiles),
        "tasks": len(plan.tasks),
        "empty_tasks": plan.scenes.empty_tasks,
        "empty_bins": empty_bins(plan.tasks),  #: labels of bins without any scene (committed, count 0)
        "scenes_found": plan.items_found,
        "scenes_used": len(plan.items),
        "scenes_per_task_min": plan.scenes.min,
        "scenes_per_task_median": plan.scenes.median,
        "scenes_per_task_max": plan.scenes.max,
        "estimated_bytes": plan.estimated_bytes,
        "median_task_bytes": int(np.median(tb)) if tb.size else 0,
        "max_task_bytes": int(tb.max()) if tb.size else 0,
        "plan_seconds": round(sum(plan.seconds.values()), 3),
        **{f"search_{k}": v for k, v in plan.search_stats.items()},
        **_cost_summary(plan),
    }


def _cost_summary(plan: Plan) -> dict[str, Any]:
    """Estimated Lambda + Step Functions cost of running the plan on AWS (arm64, default memory)."""
    from .cost import DEFAULT_MEMORY_MB, PRICES, estimate_cost, guess_task_seconds

    if not plan.tasks:
        return {}
    px = plan.spec.chunk * plan.spec.chunk
    seconds = guess_task_seconds(px, int(plan.scenes.median or 0), DEFAULT_MEMORY_MB)
    cost = estimate_cost(seconds, len(plan.tasks), DEFAULT_MEMORY_MB)
    # The search runs in the planner Lambda: its seconds there, at the planner's memory.
    planner_gb = PLANNER_MEMORY_MB / 1024
    search_usd = plan.seconds.get("search", 0.0) * planner_gb * PRICES.lambda_gb_second["arm64"]
    return {
        "estimated_search_usd": round(search_usd, 8),
        "estimated_task_seconds_on_lambda": round(seconds, 2),
        "estimated_cost_usd": round(cost.total_usd + search_usd, 4),
        "estimated_usd_per_1000_tasks": round(cost.usd_per_1000_tasks, 4),
    }


def record_for(plan: Plan, *, tasks_uri: str, lanes: int = 1, created: datetime | None = None) -> RunRecord:
    """The small :class:`~cubeless.models.RunRecord` of a plan (the task list lives at ``tasks_uri``)."""
    return RunRecord(
        run_id=plan.run_id,
        cube=plan.spec.name,
        store=plan.spec.store,
        bins=list(plan.bins),
        task_count=len(plan.tasks),
        tiles_total=plan.tiles_total,
        tiles_on_land=len(plan.tiles),
        items_found=plan.items_found,
        tasks_uri=tasks_uri,
        lanes=lanes,
        created=created or datetime.now(timezone.utc),
        estimated_bytes=plan.estimated_bytes,
    )

