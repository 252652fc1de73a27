"""The Zarr v3 cube: create or verify it, write one task's chunks, publish committed time steps.

Layout and the rules readers rely on are in ``docs/design.md`` ("Store layout", "The commit rule",
"Chunk writes"). In short:

* every variable (``spec.bands`` + ``count``) is ``uint16`` with dims ``spec.dims``, chunks
  ``(1, chunk, chunk)`` and zarr ``fill_value`` 0 (= no valid observation);
* the time axis of every array holds **committed** bins only. Tasks write their chunks at time
  indices past the arrays' visible shape (:func:`write_task`); :func:`publish_bins` (called by the
  commit step) grows the shapes and rewrites the consolidated metadata in the root ``zarr.json``,
  the one object write that switches readers to the new time steps.

Values are stored as raw source digital numbers (DNs) and described with CF attributes, so that
``xr.open_zarr(store)`` (xarray's default ``mask_and_scale=True``) gives reflectance: each band has
``scale_factor``/``add_offset`` (the source's scale/offset, when known) and ``_FillValue: 0``, so a
pixel without a valid observation (``count == 0``) reads as NaN. ``mask_and_scale=False`` gives
the raw uint16 DNs. ``count`` has neither: 0 observations is a value, not missing data (GDAL still
reports the Zarr ``fill_value`` 0 as its nodata). ``time_bnds`` holds each bin's [start, end).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict

from . import fs
from . import icechunk_store as _ic
from .errors import CubelessError, PlanError, TaskError
from .models import Grid, Task
from .spec import CubeSpec
from .timebins import TimeBin, bin_start, bins_from, time_index  # noqa: F401  (store.time_index, store.bins_from)

if TYPE_CHECKING:
    import xarray as xr
    import zarr

    from .state import RunState

#: Days since this date are the stored time values.
EPOCH = date(1970, 1, 1)
TIME_UNITS = "days since 1970-01-01"
#: One chunk holds this many time coordinate values (a weekly cube of 78 years).
TIME_CHUNK = 4096
#: Fill value of the time coordinate: never a real bin start.
TIME_FILL = int(np.iinfo(np.int64).min)
#: Layout version written to the group attributes.
LAYOUT_VERSION = 1
#: Name of the per-pixel valid-observation count variable.
COUNT = "count"
#: Name of the CF grid-mapping variable.
SPATIAL_REF = "spatial_ref"
#: Name of the CF bounds variable of the time axis: each bin's [start, end), in days since the epoch.
TIME_BNDS = "time_bnds"
#: The fill value of every band: no valid observation (valid DNs are 1..65535).
BAND_FILL = 0
#: Identity fields, in the order a mismatch is reported (the grid last: it follows from the others).
IDENTITY_FIELDS = (
    "crs", "resolution", "chunk", "bands", "mask", "resampling", "collection", "interval", "max_cloud_cover", "grid"
)
#: Source scale/offset of collections we know, used when ensure_cube is given none.
KNOWN_SCALE_OFFSET: dict[str, tuple[float, float]] = {
    # Earth Search "Collection 1" L2A: harmonized, every processing baseline has offset -0.1.
    "sentinel-2-c1-l2a": (0.0001, -0.1),
}


class CubeInfo(BaseModel):
    """What :func:`ensure_cube` reports about the cube in the store."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    store: str
    origin: date  #: start of the bin at time index 0
    interval: str
    committed_bins: list[TimeBin]  #: bins readers can see, contiguous from ``origin``
    created: bool = False  #: whether this call created the cube

    @property
    def length(self) -> int:
        """Number of committed time steps (the visible length of the time axis)."""
        return len(self.committed_bins)


# -- identity ---------------------------------------------------------------------------------------
def identity(spec: CubeSpec, grid: Grid) -> dict[str, Any]:
    """The fields that must match for a spec to write into an existing cube (JSON-normal form)."""
    doc = {
        "crs": spec.crs,
        "resolution": spec.resolution,
        "chunk": spec.chunk,
        "bands": list(spec.bands),
        "mask": spec.mask.model_dump(mode="json"),
        "resampling": spec.resampling,
        "collection": spec.collection,
        "interval": spec.interval,
        "max_cloud_cover": spec.max_cloud_cover,  # which scenes enter the median: changes values
        "grid": grid.model_dump(mode="json"),
    }
    normal: dict[str, Any] = json.loads(json.dumps(doc))
    return normal


def fingerprint(ident: Mapping[str, Any]) -> str:
    """Short stable hash of an identity."""
    text = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _show(field: str, value: Any) -> str:
    if field == "grid" and isinstance(value, dict):
        return f"{value.get('width')}x{value.get('height')} px, transform {value.get('transform')}"
    return json.dumps(value)


def _check_identity(store: str, existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    for field in IDENTITY_FIELDS:
        if existing.get(field) != wanted.get(field):
            raise PlanError(
                f"store {store} holds a cube with {field} {_show(field, existing.get(field))} but the spec "
                f"gives {_show(field, wanted.get(field))}; choose another store or match the existing cube"
            )


# -- time -------------------------------------------------------------------------------------------
def days_since_epoch(d: date) -> int:
    return (d - EPOCH).days


# -- opening ----------------------------------------------------------------------------------------
def _open_group(store: str, *, writable: bool = False) -> "zarr.Group":
    """Open the cube's root group from its consolidated metadata (one read of ``zarr.json``).

    In an Icechunk repository (read only): the group as committed on main.
    """
    import zarr

    if not writable and _ic.is_repo(store):
        return _ic.read_group(store)
    return zarr.open_group(
        fs.zarr_store(store, read_only=not writable),
        mode="r+" if writable else "r",
        zarr_format=3,
        use_consolidated=True,
    )


def _cube_attrs(group: "zarr.Group", store: str) -> dict[str, Any]:
    attrs = group.attrs.get("cubeless")
    if not isinstance(attrs, dict) or "identity" not in attrs:
        raise PlanError(
            f"store {store} holds a Zarr group that is not a cubeless cube; choose another store"
        )
    return attrs


def _is_icechunk(group: "zarr.Group") -> bool:
    return type(group.store).__module__.startswith("icechunk")


def _committed_length(group: "zarr.Group") -> int:
    """Visible length of the time axis; 0 for a cube whose creation never reached consolidation.

    An Icechunk group read from main holds committed time steps only: its shape is the length.
    """
    if _is_icechunk(group):
        return int(group["time"].shape[0]) if "time" in group else 0
    if group.metadata.consolidated_metadata is None:
        return 0
    return int(group["time"].shape[0])


def _info(store: str, group: "zarr.Group", *, created: bool) -> CubeInfo:
    attrs = _cube_attrs(group, store)
    origin = date.fromisoformat(attrs["origin"])
    interval = attrs["interval"]
    n = _committed_length(group)
    return CubeInfo(
        store=store, origin=origin, interval=interval, committed_bins=bins_from(origin, n, interval), created=created
    )


def _try_open(store: str) -> "zarr.Group | None":
    import zarr
    from zarr.errors import GroupNotFoundError, NodeTypeValidationError

    if _ic.is_repo(store):
        return _ic.try_group(store)
    try:
        return _open_group(store)
    except (FileNotFoundError, GroupNotFoundError):
        return None
    except ValueError as exc:  # a group without consolidated metadata: foreign, or creation interrupted
        if "onsolidated metadata" not in str(exc):
            raise
        return zarr.open_group(fs.zarr_store(store, read_only=True), mode="r", zarr_format=3, use_consolidated=False)
    except NodeTypeValidationError:
        raise PlanError(f"store {store} holds a Zarr array, not a cubeless cube; choose another store") from None


def committed_bins(store: str) -> list[TimeBin]:
    """The bins readers can see (empty when the store holds no cube yet)."""
    group = _try_open(fs.normalize(store))
    if group is None:
        return []
    return _info(fs.normalize(store), group, created=False).committed_bins


def cube_state(spec: CubeSpec) -> tuple[list[TimeBin], date]:
    """(committed bins, origin) of the cube ``spec`` writes to; for a new cube ([], the spec's first bin).

    Raises :class:`PlanError` when the store holds a cube whose identity (except the grid, which
    :func:`ensure_cube` checks) differs from the spec's.
    """
    store = fs.normalize(spec.store)
    group = _try_open(store)
    if group is None:
        return [], bin_start(spec.start, spec.interval)
    _check_format(store, group, spec)
    attrs = _cube_attrs(group, store)
    wanted = identity(spec, Grid.model_validate(attrs["grid"]))
    _check_identity(store, attrs["identity"], wanted)
    info = _info(store, group, created=False)
    return info.committed_bins, info.origin


def cube_info(store: str) -> CubeInfo | None:
    """The cube in ``store``, or None when there is none."""
    store = fs.normalize(store)
    group = _try_open(store)
    return None if group is None else _info(store, group, created=False)


def store_format(store: str) -> str | None:
    """``"icechunk"``, ``"zarr"``, or None when the store holds no cube."""
    group = _try_open(fs.normalize(store))
    if group is None:
        return None
    return "icechunk" if _is_icechunk(group) else "zarr"


def _check_format(store: str, group: "zarr.Group", spec: CubeSpec) -> None:
    found = "icechunk" if _is_icechunk(group) else "zarr"
    if found != spec.format:
        what = "an Icechunk repository" if found == "icechunk" else "a Zarr cube"
        raise PlanError(
            f"store {store} holds {what} but the spec gives format {spec.format}; set `format: {found}` or choose another store"
        )


# -- creation ---------------------------------------------------------------------------------------
def _coords(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    a, b, c, d, e, f = grid.transform
    if b != 0 or d != 0:
        raise PlanError(f"grid transform {grid.transform} is rotated; cubeless grids are north-up")
    ys = f + e * (np.arange(grid.height, dtype=np.float64) + 0.5)
    xs = c + a * (np.arange(grid.width, dtype=np.float64) + 0.5)
    return ys, xs


def _crs_attrs(grid: Grid) -> dict[str, Any]:
    from pyproj import CRS

    crs = CRS.from_user_input(grid.crs)
    wkt = crs.to_wkt()
    attrs: dict[str, Any] = {}
    try:
        attrs.update(crs.to_cf())
    except Exception:  # pragma: no cover - pyproj raises for CRSs without a CF mapping
        pass
    a, b, c, d, e, f = grid.transform
    attrs["crs_wkt"] = wkt
    attrs["spatial_ref"] = wkt
    attrs["GeoTransform"] = " ".join(repr(float(v)) for v in (c, a, b, f, d, e))
    return json.loads(json.dumps(attrs))


def _axis_attrs(spec: CubeSpec, grid: Grid) -> tuple[dict[str, Any], dict[str, Any]]:
    if spec.is_geographic:
        ya = {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north", "axis": "Y"}
        xa = {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east", "axis": "X"}
    else:
        from pyproj import CRS

        unit = CRS.from_user_input(grid.crs).axis_info[0].unit_name
        units = {"metre": "m", "meter": "m"}.get(unit, unit)
        ya = {"standard_name": "projection_y_coordinate", "long_name": "y coordinate of projection", "units": units, "axis": "Y"}
        xa = {"standard_name": "projection_x_coordinate", "long_name": "x coordinate of projection", "units": units, "axis": "X"}
    return ya, xa


def _data_codecs() -> dict[str, Any]:
    from zarr.codecs import BloscCodec, BytesCodec

    return {"serializer": BytesCodec(endian="little"), "compressors": BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")}


def _layout(
    group: "zarr.Group", spec: CubeSpec, grid: Grid, scale_offset: Mapping[str, tuple[float, float]] | None
) -> None:
    """Create every array that is missing (idempotent) and write the static coordinates."""
    _, ydim, xdim = spec.dims
    existing = set(group.array_keys())
    H, W = grid.height, grid.width
    ya, xa = _axis_attrs(spec, grid)
    ys, xs = _coords(grid)
    codecs = _data_codecs()
    for name, values, attrs, dim in ((ydim, ys, ya, ydim), (xdim, xs, xa, xdim)):
        if name in existing:
            continue
        arr = group.create_array(
            name, shape=values.shape, chunks=values.shape, dtype="float64", fill_value=float("nan"),
            dimension_names=(dim,), attributes=attrs,
        )
        arr[:] = values
    if "time" not in existing:
        group.create_array(
            "time", shape=(0,), chunks=(TIME_CHUNK,), dtype="int64", fill_value=TIME_FILL, dimension_names=("time",),
            attributes={
                "standard_name": "time", "long_name": f"start of the {spec.interval} bin", "axis": "T",
                "units": TIME_UNITS, "calendar": "proleptic_gregorian", "bounds": TIME_BNDS,
            },
        )
    if TIME_BNDS not in existing:
        group.create_array(
            TIME_BNDS, shape=(0, 2), chunks=(TIME_CHUNK, 2), dtype="int64", fill_value=TIME_FILL,
            dimension_names=("time", "bnds"),
            attributes={"long_name": f"start and end of the {spec.interval} bin", "units": TIME_UNITS,
                        "calendar": "proleptic_gregorian"},
        )
    if SPATIAL_REF not in existing:
        ref = group.create_array(SPATIAL_REF, shape=(), dtype="int64", fill_value=0, dimension_names=(), attributes=_crs_attrs(grid))
        ref[()] = 0
    known = KNOWN_SCALE_OFFSET.get(spec.collection)
    so: dict[str, tuple[float, float]] = {b: known for b in spec.bands} if known else {}
    so.update(scale_offset or {})
    common = {"grid_mapping": SPATIAL_REF, "coordinates": SPATIAL_REF}
    for name in (*spec.bands, COUNT):
        if name in existing:
            continue
        if name == COUNT:  # no _FillValue: 0 observations is a value
            attrs = {"long_name": "valid observations in the bin", "units": "1", **common}
        else:
            attrs = {"long_name": f"median {name} ({spec.collection})", "units": "1", "_FillValue": BAND_FILL, **common}
            if name in so:
                scale, offset = so[name]
                attrs["scale_factor"] = float(scale)
                attrs["add_offset"] = float(offset)
        group.create_array(
            name, shape=(0, H, W), chunks=(1, spec.chunk, spec.chunk), dtype="uint16", fill_value=0,
            dimension_names=spec.dims, attributes=attrs, **codecs,
        )
    _level_layout(group, spec, grid)


def _level_layout(group: "zarr.Group", spec: CubeSpec, grid: Grid) -> None:
    """Create the reduced levels' groups and arrays the cube records (idempotent); see :mod:`cubeless.pyramid`."""
    from .pyramid import COUNT_DTYPE, levels_of, spatial_attrs

    levels = levels_of(group.attrs.get("cubeless") or {})
    if not levels:
        return
    _, ydim, xdim = spec.dims
    existing_groups = set(group.group_keys())
    codecs = _data_codecs()
    ya, xa = _axis_attrs(spec, grid)
    for lv in levels:
        shape = (lv.height, lv.width)
        attrs = {"zarr_conventions": [c for c in _conventions() if c["name"] != "multiscales"],
                 **spatial_attrs(grid, (ydim, xdim), factor=lv.factor, shape=shape),
                 "cubeless:level": lv.model_dump(mode="json")}
        g = group[lv.path] if lv.path in existing_groups else group.create_group(lv.path, attributes=attrs)
        have = set(g.array_keys())  # type: ignore[union-attr]
        lgrid = Grid(crs=grid.crs, transform=tuple(_level_transform(grid, lv.factor)), height=lv.height, width=lv.width)  # type: ignore[arg-type]
        ys, xs = _coords(lgrid)
        for name, values, a in ((ydim, ys, ya), (xdim, xs, xa)):
            if name not in have:
                arr = g.create_array(name, shape=values.shape, chunks=values.shape, dtype="float64",  # type: ignore[union-attr]
                                     fill_value=float("nan"), dimension_names=(name,), attributes=a)
                arr[:] = values
        if SPATIAL_REF not in have:
            ref = g.create_array(SPATIAL_REF, shape=(), dtype="int64", fill_value=0, dimension_names=(), attributes=_crs_attrs(lgrid))  # type: ignore[union-attr]
            ref[()] = 0
        for name in (*spec.bands, COUNT):
            if name in have:
                continue
            a = dict(group[name].attrs)
            if name == COUNT:
                a["long_name"] = f"valid observations in the bin, summed over the {lv.factor}x{lv.factor} pixels of level 0"
            g.create_array(  # type: ignore[union-attr]
                name, shape=(0, lv.height, lv.width), chunks=(1, lv.chunk, lv.chunk),
                dtype=COUNT_DTYPE if name == COUNT else "uint16", fill_value=0,
                dimension_names=spec.dims, attributes=a, **codecs,
            )


def _level_transform(grid: Grid, factor: int) -> list[float]:
    from .pyramid import level_transform

    return level_transform(grid.transform, factor)


def _conventions() -> list[dict[str, Any]]:
    from .pyramid import CONVENTIONS

    return [dict(c) for c in CONVENTIONS]


def geozarr_attrs(spec: CubeSpec, grid: Grid, levels: list[Any]) -> dict[str, Any]:
    """The root group's GeoZarr attributes: ``zarr_conventions``, ``proj:``, ``spatial:`` and ``multiscales``."""
    from .pyramid import multiscales_attrs, spatial_attrs

    _, ydim, xdim = spec.dims
    out: dict[str, Any] = {"zarr_conventions": _conventions(), **spatial_attrs(grid, (ydim, xdim))}
    out["multiscales"] = multiscales_attrs(grid, levels)
    return json.loads(json.dumps(out))


def _refuse_foreign_content(store: str) -> None:
    """A new cube goes only where nothing but cubeless state is (never into someone's folder)."""
    if fs.is_remote(store):
        fsys, path = fs.filesystem(store)
        fsys.invalidate_cache(path)
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fsys.ls(path, detail=False)]
        except FileNotFoundError:
            names = []
    else:
        path = fs.local_path(store)
        if os.path.exists(path) and not os.path.isdir(path):
            raise PlanError(f"store {store} is a file; give a directory path or an s3:// URL for the cube")
        names = os.listdir(path) if os.path.isdir(path) else []
    other = sorted(n for n in names if n != "_cubeless")
    if other:
        raise PlanError(
            f"store {store} is not empty and holds no cube (found {', '.join(other[:3])}); choose another store"
        )


def _consolidate(store: str) -> None:
    """Rewrite the root ``zarr.json`` with every node's metadata (one atomic object write)."""
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)
        warnings.filterwarnings("ignore", message="Object at _cubeless is not recognized", category=UserWarning)
        zarr.consolidate_metadata(fs.zarr_store(store), zarr_format=3)


def ensure_cube(
    spec: CubeSpec, grid: Grid, *, scale_offset: Mapping[str, tuple[float, float]] | None = None
) -> CubeInfo:
    """Create the cube in ``spec.store`` if absent, else verify it is the same cube.

    ``scale_offset`` maps band -> (scale, offset) of the source DNs, recorded as the CF attributes
    ``scale_factor``/``add_offset`` (default: known values for the collection, else none).
    Raises :class:`PlanError` (one line naming the differing field) when the store holds another
    cube. Returns the committed bins and the time origin.
    """
    import zarr
    from zarr.errors import ContainsGroupError

    store = fs.normalize(spec.store)
    wanted = identity(spec, grid)
    group = _try_open(store)
    if group is not None:
        _check_format(store, group, spec)
        attrs = _cube_attrs(group, store)
        _check_identity(store, attrs["identity"], wanted)
        if _is_icechunk(group):  # created in one commit: whole or absent
            return _info(store, group, created=False)
        if group.metadata.consolidated_metadata is not None and {*spec.bands, COUNT, "time"} <= set(group.array_keys()):
            return _info(store, group, created=False)
        # An interrupted creation: finish it (nothing was ever committed).
        group = zarr.open_group(fs.zarr_store(store), mode="r+", zarr_format=3, use_consolidated=False)
        _layout(group, spec, grid, scale_offset)
        _consolidate(store)
        return _info(store, _open_group(store), created=True)

    if spec.format == "icechunk":
        if not _ic.is_repo(store):
            _refuse_foreign_content(store)
    else:
        if _ic.is_repo(store):
            raise PlanError(
                f"store {store} holds an Icechunk repository but the spec gives format zarr; "
                "set `format: icechunk` or choose another store"
            )
        _refuse_foreign_content(store)
    origin = bin_start(spec.start, spec.interval)
    from .pyramid import plan_levels

    # Pyramid levels are written by the Zarr format only (not yet through Icechunk forks).
    levels = plan_levels(grid.height, grid.width, spec.chunk) if spec.format == "zarr" else []
    cube_attrs = {
        "version": LAYOUT_VERSION,
        "grid": grid.model_dump(mode="json"),
        "identity": wanted,
        "fingerprint": fingerprint(wanted),
        "interval": spec.interval,
        "origin": origin.isoformat(),
        "dims": list(spec.dims),
        "pyramid": {"levels": [lv.model_dump(mode="json") for lv in levels]},
    }
    from . import __version__

    root_attrs = {
        "cubeless": cube_attrs,
        "Conventions": "CF-1.8",
        "title": spec.name,
        "source": f"cubeless {__version__}: {spec.interval}ly median composites of {spec.collection}",
    }
    if spec.format == "icechunk":
        _ic.create_cube(store, lambda g: _layout(g, spec, grid, scale_offset), root_attrs, spec.name)
        return _info(store, _open_group(store), created=True)
    try:
        group = zarr.create_group(
            fs.zarr_store(store),
            zarr_format=3,
            overwrite=False,
            attributes={**root_attrs, **geozarr_attrs(spec, grid, levels)},
        )
    except ContainsGroupError:  # created concurrently: verify it instead
        return ensure_cube(spec, grid, scale_offset=scale_offset)
    _layout(group, spec, grid, scale_offset)
    _consolidate(store)
    return _info(store, _open_group(store), created=True)


# -- chunk writes -----------------------------------------------------------------------------------
ScaleOffsetLike = Mapping[str, Any] | tuple[float, float] | None


def _as_scale_offsets(obj: ScaleOffsetLike, bands: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """Normalize band -> (scale, offset); accepts one pair for every band or {"scale", "offset"} dicts."""
    if obj is None:
        return {}
    if isinstance(obj, tuple):
        return {b: (float(obj[0]), float(obj[1])) for b in bands}
    out: dict[str, tuple[float, float]] = {}
    for b, v in obj.items():
        if v is None:
            continue
        if isinstance(v, Mapping):
            out[b] = (float(v.get("scale", 1.0)), float(v.get("offset", 0.0)))
        else:
            out[b] = (float(v[0]), float(v[1]))
    return out


def _to_dn(name: str, data: np.ndarray, src: tuple[float, float] | None, dst: tuple[float, float] | None) -> np.ndarray:
    """The cube's uint16 DNs of one band.

    Floats are rounded half to even (NaN -> fill 0, valid values clipped to 1..65535, since 0 is
    the fill). When the source scale/offset ``src`` differs from the cube's ``dst``, values are
    re-expressed in the cube's DN convention: ``(dn * s_src + o_src - o_dst) / s_dst`` (fill stays 0).
    """
    a = np.asarray(data)
    if src is not None and dst is not None and not np.allclose(src, dst, rtol=1e-9, atol=1e-12):
        fill = a == 0 if a.dtype.kind in "iub" else ~np.isfinite(a) | (a == 0)
        f = (a.astype(np.float64) * src[0] + src[1] - dst[1]) / dst[0]
        a = np.where(fill, np.nan, f)
    if a.dtype == np.uint16:
        return a
    if a.dtype.kind == "f":
        valid = np.isfinite(a)
        out = np.zeros(a.shape, dtype=np.uint16)
        out[valid] = np.clip(np.rint(a[valid]), 1, 65535).astype(np.uint16)
        return out
    if a.dtype.kind in "iub":
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"band {name!r} has values outside 0..65535 ({a.min()}..{a.max()}); pass raw DNs")
        return a.astype(np.uint16)
    raise ValueError(f"band {name!r} has dtype {a.dtype}; pass numbers")


def cube_scale_offset(attrs: Mapping[str, Any]) -> tuple[float, float] | None:
    """(scale, offset) that turns a band's stored DNs into reflectance, from its attributes; None if unknown.

    Cubes made before the CF attributes recorded ``source_scale``/``source_offset``; both are read.
    """
    for s, o in (("scale_factor", "add_offset"), ("source_scale", "source_offset")):
        if s in attrs:
            return float(attrs[s]), float(attrs.get(o, 0.0))
    return None


def _extended(arr: "zarr.Array", length: int, *, write_empty_chunks: bool = False) -> "zarr.Array":
    """A handle on ``arr`` whose time axis reaches ``length``, made in memory (no metadata write)."""
    import zarr
    from zarr.core.array import AsyncArray

    meta = arr.metadata.update_shape((length, *arr.shape[1:]))
    aa = AsyncArray(meta, arr.async_array.store_path, config={"write_empty_chunks": write_empty_chunks})
    return zarr.Array(aa)


def write_task(
    task: Task,
    bands: Mapping[str, np.ndarray],
    count: np.ndarray,
    scale_offset: ScaleOffsetLike = None,
) -> int:
    """Write one task's chunks: one whole chunk per variable at time index ``task.t``.

    ``bands`` holds one ``(tile.ny, tile.nx)`` array per spec band of raw source DNs (uint16, or
    float with NaN for no data, rounded); ``count`` the per-pixel number of valid observations.
    ``scale_offset`` is the source's band -> (scale, offset) (from STAC ``raster:bands``); where it
    differs from the cube's recorded ``scale_factor``/``add_offset`` the DNs are re-expressed in
    the cube's convention, so one cube never mixes two scalings. Where it matches, where it is
    ``(1.0, 0.0)`` (what compose reports when the items do not say: unknown, not "unscaled"), or
    where the cube records none, the DNs are written unchanged.

    Only chunk objects are written (no metadata): the time axis is extended in memory, so the
    chunks stay invisible until the commit. Every write covers whole chunks (edge tiles end at the
    array edge), so nothing is read first, and writing the same task twice stores identical bytes.
    An all-fill chunk is not stored (an old one is deleted). Returns the number of chunks stored.
    Raises :class:`TaskError` if ``task.t`` is already committed or the task does not fit the cube.
    """
    store = fs.normalize(task.spec.store)
    if task.spec.format == "icechunk":
        from .state import RunState

        state = RunState(store, task.run_id)
        fork, meta = _ic.task_fork(state)
        import zarr

        group = zarr.open_group(fork.store, mode="r+", zarr_format=3)
        if task.t >= meta.length:
            raise TaskError(f"task {task.task_id} targets time index {task.t}, past the run's staged length {meta.length}; plan the run again")
        chunks = _write_into(group, store, task, bands, count, scale_offset, meta.committed_length, grown=True)
        _ic.save_fork(state, task.task_id, fork)
        return chunks
    group = _open_group(store, writable=True)
    return _write_into(group, store, task, bands, count, scale_offset, _committed_length(group), grown=False)


def _write_into(
    group: "zarr.Group", store: str, task: Task, bands: Mapping[str, np.ndarray], count: np.ndarray,
    scale_offset: ScaleOffsetLike, n: int, *, grown: bool,
) -> int:
    """Check ``task`` against the cube and write its chunks into ``group`` (``n``: committed length;
    ``grown``: the arrays already reach the task's time index, as in an Icechunk run's fork)."""
    from zarr.core.sync import sync

    spec, tile, t = task.spec, task.tile, task.t
    attrs = _cube_attrs(group, store)
    if attrs["identity"] != identity(spec, task.grid):
        raise TaskError(f"task {task.task_id} was planned for another cube than the one in {store}; plan the run again")
    if t < n:
        raise TaskError(
            f"task {task.task_id} targets time index {t}, which is already committed (length {n}); "
            "committed time steps are never rewritten"
        )
    expected_t = time_index(date.fromisoformat(attrs["origin"]), task.bin, attrs["interval"])
    if t != expected_t:
        raise TaskError(f"task {task.task_id} has time index {t} but bin {task.bin.label} is index {expected_t}")
    H, W, c = task.grid.height, task.grid.width, spec.chunk
    if tile.y0 % c or tile.x0 % c or tile.ny != min(c, H - tile.y0) or tile.nx != min(c, W - tile.x0):
        raise TaskError(f"task {task.task_id} tile {tile.model_dump()} is not one whole chunk of a {H}x{W} grid")
    missing = [b for b in spec.bands if b not in bands]
    extra = [b for b in bands if b not in spec.bands]
    if missing or extra:
        raise ValueError(f"write_task needs exactly the bands {list(spec.bands)}; missing {missing}, unexpected {extra}")

    src = {b: so for b, so in _as_scale_offsets(scale_offset, spec.bands).items() if so != (1.0, 0.0)}
    data: dict[str, np.ndarray] = {}
    for b in spec.bands:
        dst = cube_scale_offset(group[b].attrs)
        data[b] = _to_dn(b, bands[b], src.get(b), dst)
    cnt = np.asarray(count)
    if cnt.dtype.kind == "f":
        cnt = np.where(np.isfinite(cnt), cnt, 0)
    data[COUNT] = np.clip(cnt, 0, 65535).astype(np.uint16)
    for name, a in data.items():
        if a.shape != (tile.ny, tile.nx):
            raise ValueError(f"{name} has shape {a.shape}; task {task.task_id} needs ({tile.ny}, {tile.nx})")

    sel = (t, slice(tile.y0, tile.y0 + tile.ny), slice(tile.x0, tile.x0 + tile.nx))
    handles = {name: group[name] if grown else _extended(group[name], t + 1) for name in data}  # type: ignore[misc]

    async def _write_all() -> None:
        # Wait for every write before raising: a sibling still writing when the task's error
        # propagates (and its process is torn down for the retry) would leave a temporary file.
        results = await asyncio.gather(
            *(handles[k].async_array.setitem(sel, data[k]) for k in data), return_exceptions=True
        )
        for r in results:
            if isinstance(r, BaseException):
                raise r

    sync(_write_all())
    from .pyramid import levels_of, write_local_levels

    levels = levels_of(attrs)
    if levels:
        write_local_levels(group, levels, t, tile.y0, tile.x0, {b: data[b] for b in spec.bands}, data[COUNT])
    return sum(1 for a in data.values() if a.any())


# -- publishing (the commit step) -------------------------------------------------------------------
def _time_arrays(group: "zarr.Group") -> list[tuple[str, "zarr.Array"]]:
    """Every array along the time axis, the pyramid levels' too (path, array)."""
    import zarr

    out: list[tuple[str, zarr.Array]] = []
    for path, node in group.members(max_depth=None):
        if isinstance(node, zarr.Array) and node.ndim and (node.metadata.dimension_names or (None,))[0] == "time":
            out.append((path, node))
    return out


def publish_bins(store: str, length: int) -> list[TimeBin]:
    """Make time steps ``[0, length)`` visible: write the time coordinate, grow every array, then
    consolidate (the root ``zarr.json`` write switches readers atomically). Idempotent; never shrinks.

    Returns the committed bins after the call.
    """
    store = fs.normalize(store)
    group = _open_group(store, writable=True)
    attrs = _cube_attrs(group, store)
    origin, interval = date.fromisoformat(attrs["origin"]), attrs["interval"]
    n = _committed_length(group)
    if length < n:
        raise CubelessError(f"cannot shrink the time axis of {store} from {n} to {length}")
    bins = bins_from(origin, length, interval)
    if length > n:
        values = np.array([days_since_epoch(b.start) for b in bins], dtype=np.int64)
        _extended(group["time"], length, write_empty_chunks=True)[:] = values  # type: ignore[arg-type]
        if TIME_BNDS in group:  # cubes made before time_bnds have none
            bounds = np.array([[days_since_epoch(b.start), days_since_epoch(b.end)] for b in bins], dtype=np.int64)
            _extended(group[TIME_BNDS], length, write_empty_chunks=True)[:] = bounds  # type: ignore[arg-type]
    for _path, arr in _time_arrays(group):
        if arr.shape[0] != length:
            arr.resize((length, *arr.shape[1:]))
    _consolidate(store)
    return bins


def grow(group: "zarr.Group", length: int) -> list[TimeBin]:
    """Grow every time-dimensioned array of a writable group to ``length`` and write the time
    coordinate and bounds (the Icechunk run's staging commit; never shrinks)."""
    attrs = _cube_attrs(group, str(group.store))
    origin, interval = date.fromisoformat(attrs["origin"]), attrs["interval"]
    n = int(group["time"].shape[0])  # type: ignore[union-attr]
    if length < n:
        raise CubelessError(f"cannot shrink the time axis from {n} to {length}")
    for name in group.array_keys():
        arr = group[name]
        if arr.ndim and (arr.metadata.dimension_names or (None,))[0] == "time" and arr.shape[0] != length:  # type: ignore[union-attr]
            arr.resize((length, *arr.shape[1:]))  # type: ignore[union-attr]
    bins = bins_from(origin, length, interval)
    if length > n:
        group["time"][n:length] = np.array([days_since_epoch(b.start) for b in bins[n:]], dtype=np.int64)  # type: ignore[index]
        if TIME_BNDS in group:
            group[TIME_BNDS][n:length] = np.array(  # type: ignore[index]
                [[days_since_epoch(b.start), days_since_epoch(b.end)] for b in bins[n:]], dtype=np.int64
            )
    return bins


def stage_run(state: "RunState", bins: list[TimeBin]) -> None:
    """Icechunk format: stage a planned run (its branch, grown time axis, the tasks' fork). Idempotent."""
    info = cube_info(state.store)
    if info is None:
        raise PlanError(f"store {state.store} holds no cube; plan the run again (it creates the cube)")
    length = max((time_index(info.origin, b, info.interval) + 1 for b in bins), default=info.length)
    _ic.stage_run(state, max(length, info.length), grow)


# -- reading ----------------------------------------------------------------------------------------
def open_cube(store: str, *, raw: bool = False, version: str | None = None, **kwargs: Any) -> "xr.Dataset":
    """The committed cube as an xarray Dataset, from the consolidated metadata (lazy, dask-free).

    Bands read as reflectance (float, NaN where there was no valid observation) like
    ``xr.open_zarr(store)``; ``raw=True`` gives the stored uint16 DNs (0 = no observation).
    For an Icechunk cube the Dataset is main's tip, or ``version`` (a tag such as the run id, or a
    snapshot id from ``cubeless history``); the Zarr format has no versions.
    """
    import xarray as xr

    store = fs.normalize(store)
    opts: dict[str, Any] = {"consolidated": True, "zarr_format": 3, "chunks": None}
    if raw:
        opts["mask_and_scale"] = False
    opts.update(kwargs)
    if _ic.is_repo(store):
        opts["consolidated"] = False
        return xr.open_zarr(_ic.read_session(store, version).store, **opts)
    if version is not None:
        raise PlanError(f"store {store} is a Zarr cube, which keeps no versions; drop the version or use format icechunk")
    return xr.open_zarr(fs.zarr_store(store, read_only=True), **opts)


def time_values(store: str) -> list[date]:
    """The stored time coordinate of the committed steps (for checks)."""
    group = _open_group(fs.normalize(store))
    n = _committed_length(group)
    raw = np.asarray(group["time"][:n]) if n else np.array([], dtype=np.int64)  # type: ignore[index]
    return [EPOCH + timedelta(days=int(v)) for v in raw]
