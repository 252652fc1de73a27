"""Reading scenes for :func:`cubeless.compose.compose`: GDAL setup, observations, windowed reads.

Each (observation, item, asset) is one read of exactly the part of the target grid the asset
covers, done by a :class:`Reader` on a thread pool (GDAL releases the GIL while it decodes). A read
takes one of two paths:

* **direct** (the usual case for a cube in a scene's own UTM zone): the target grid is in the
  asset's CRS and both grids are north-up rectilinear. The read is one GDAL ``RasterIO`` of a
  (fractional) window of the chosen overview, resampled by GDAL's own kernels straight to the
  target pixels (``out_shape``); nearest is plain indexing of the decoded window. No warper, no
  per-pixel coordinate transform. Measured on the benchmark task it is ~4x cheaper per read than
  the warper (decoding the COG tiles is then the larger part of a read);
* **warped** (another CRS, e.g. EPSG:4326 cubes or a neighbouring UTM zone): as odc-stac does,
  ``odc.geo``'s ``compute_reproject_roi`` for the overlap, then ``rasterio.warp.reproject`` of it,
  but with three changes that make a pixel's value independent of the tile (chunk size) it is
  computed in: GDAL's exact transformer (``tolerance=0``; the default linear approximation is
  fitted per warp chunk), the kernel's scale fixed (``XSCALE``/``YSCALE``; GDAL otherwise derives
  it from each chunk's source window) and the overview chosen from the scale at the source's
  centre rather than at the centre of each tile's overlap.

Tile independence: a cube's values do not depend on its chunk size (tests/unit/test_chunk_size.py):
nearest reads index source pixels from the cube grid's origin and the pixel's index in the grid
(never from the tile's own origin), and every choice above is made per asset, not per tile.

Overviews: the read shrink factor is computed as odc-stac does (``scale`` of target pixels in
source pixels, snapped down to an integer; on the warped path measured at the source's centre) and the largest overview whose factor does not exceed
it is read (e.g. the 2x one for 10 m -> 30 m: 2.25 decoded pixels per target pixel instead of 9).
Overviews hold whatever the producer computed (usually averages), so the SCL class layer is read
without them (``use_overviews=False``, nearest).

Pixels of the target grid whose footprint is not entirely inside an asset's raster are left to
other items of the observation (or nodata) on the direct interpolating path; nearest reads take
every pixel whose centre is inside, like the warper. Within an observation (solar day) items are
fused in (datetime, id) order, layer by layer: each pixel comes from the first item that is not
nodata (0) there, which is odc-stac's rule.

GDAL is configured once per process for cloud reads (:data:`GDAL_OPTIONS`): no directory
listings or side-car probes, HTTP/2 multiplexing, merged range requests, retries. Bytes fetched
over the network are measured with GDAL's own network statistics (``VSINetworkStats*``), reached
through ctypes in the libgdal rasterio already loaded; the pixels decoded are counted by the
reader (:func:`read_stats`). Both are process-wide counters: exact when a process composes one
task at a time (the local runner's worker processes, a Lambda).
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

#: GDAL configuration for reading COGs from object stores / https, set in every reader thread.
GDAL_OPTIONS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing / side-car probes
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_HTTP_VERSION": "2",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",  # the COG header in the first request
    "CPL_VSIL_CURL_USE_HEAD": "NO",  # skip the HEAD before the first range GET
}

#: Use the direct (RasterIO) path where it applies; False forces the warper for every read (for
#: comparisons: the benchmark measures one against the other on the same task).
DIRECT_READS = True

PROJ_EXT = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER_EXT = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"


# -- GDAL configuration ---------------------------------------------------------------------------
class _GdalConfig:
    """Process-wide reader configuration: GDAL options and AWS session arguments."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.configured = False
        self.options: dict[str, Any] = dict(GDAL_OPTIONS)
        self.aws: dict[str, Any] | None = None
        self.generation = 0  # bumped on every (re)configuration: thread sessions are rebuilt


_CFG = _GdalConfig()


def configure_gdal(*, aws: Mapping[str, Any] | None = None, **overrides: str) -> None:
    """Set the process-wide GDAL options of the reader threads.

    Called by :func:`ensure_gdal` on first use with no arguments; call it earlier to pass
    ``aws=`` (``rasterio.session.AWSSession`` arguments, e.g. ``{"aws_unsigned": True}``) or
    extra/overriding GDAL options. Calling again replaces the previous configuration.
    """
    opts: dict[str, Any] = {**GDAL_OPTIONS, **{k: str(v) for k, v in overrides.items()}}
    if "GDAL_CACHEMAX" in opts:  # rasterio takes it as an integer (MB or bytes), not a string
        try:
            opts["GDAL_CACHEMAX"] = int(opts["GDAL_CACHEMAX"])
        except ValueError:
            raise ValueError(f"GDAL_CACHEMAX must be an integer (MB), got {opts['GDAL_CACHEMAX']!r}") from None
    with _CFG.lock:
        _CFG.options = opts
        _CFG.aws = dict(aws) if aws else None
        _CFG.configured = True
        _CFG.generation += 1
    _set_global_options(opts)
    _limit_block_cache(opts)


def _set_global_options(opts: Mapping[str, Any]) -> None:
    """Also set the options process-wide, so that a reader thread leaving its ``rasterio.Env``
    restores them (rasterio reinstates options it found set) instead of clearing them under
    another thread's feet."""
    from rasterio.env import set_gdal_config

    for k, v in opts.items():
        set_gdal_config(k, v)


def _odc_config() -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """(options, aws) if someone called ``odc.stac.configure_rio``/``configure_s3_access``."""
    try:
        from odc.loader._rio import _CFG as odc_cfg  # private, hence the guard

        if not odc_cfg.configured:
            return None
        return dict(odc_cfg._gdal_opts), (dict(odc_cfg._aws) if odc_cfg._aws is not None else None)
    except (ImportError, AttributeError):  # pragma: no cover - odc-loader internals moved
        return None


#: GDAL's block cache (MB) when neither the environment nor :func:`configure_gdal` sets
#: ``GDAL_CACHEMAX`` (GDAL's own default is 5% of the machine's RAM: 1.2 GB on a 24 GB laptop).
DEFAULT_CACHEMAX_MB = 256


def _limit_block_cache(opts: Mapping[str, Any]) -> None:
    if "GDAL_CACHEMAX" in opts or os.environ.get("GDAL_CACHEMAX"):
        return
    lib = _NetStats._load()  # libgdal through ctypes: the cache may be initialised already
    if lib is not None:
        try:
            fn = lib.GDALSetCacheMax64
            fn.argtypes = [ctypes.c_int64]
            fn.restype = None
            fn(DEFAULT_CACHEMAX_MB * 1024 * 1024)
        except AttributeError:  # pragma: no cover - a libgdal without the symbol
            pass


def ensure_gdal() -> None:
    """Configure GDAL once (a caller's :func:`configure_gdal`, or odc-stac configuration made
    through ``odc.stac.configure_rio``, wins), and enable network statistics."""
    if not _CFG.configured:
        odc = _odc_config()
        if odc is not None:
            opts, aws = odc
            configure_gdal(aws=aws, **{k: str(v) for k, v in opts.items()})
        else:
            configure_gdal()
    _NetStats.enable()


class _ThreadSession(threading.local):
    session: Any = None
    generation = -1


_tls = _ThreadSession()


def _env() -> Any:
    """A ``rasterio.Env`` with the configured options and this thread's (cached) session."""
    import rasterio

    if _tls.generation != _CFG.generation or _tls.session is None:
        if _CFG.aws is not None:
            from rasterio.session import AWSSession

            _tls.session = AWSSession(**_CFG.aws)
        else:
            with rasterio.Env() as env:  # the session rasterio infers from the environment
                _tls.session = env.session
        _tls.generation = _CFG.generation
    return rasterio.Env(_tls.session, **_CFG.options)


# -- network statistics -----------------------------------------------------------------------------
class _NetStats:
    """GDAL's process-wide network statistics (bytes and requests of /vsicurl/, /vsis3/ ...)."""

    _lib: Any = None
    _state = 0  # 0 unknown, 1 available, -1 unavailable
    _lock = threading.Lock()

    @classmethod
    def _load(cls) -> Any:
        if cls._state:
            return cls._lib if cls._state > 0 else None
        with cls._lock:
            if cls._state:
                return cls._lib if cls._state > 0 else None
            try:
                import rasterio  # noqa: F401  (loads libgdal into the process)

                path = None
                with open("/proc/self/maps") as f:
                    for line in f:
                        if "libgdal" in line:
                            path = line.split()[-1]
                            break
                if path is None:
                    raise OSError("libgdal is not mapped")
                lib = ctypes.CDLL(path)
                lib.CPLSetConfigOption.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
                lib.CPLSetConfigOption.restype = None
                lib.VSINetworkStatsReset.argtypes = []
                lib.VSINetworkStatsReset.restype = None
                lib.VSINetworkStatsGetAsSerializedJSON.argtypes = [ctypes.c_void_p]
                lib.VSINetworkStatsGetAsSerializedJSON.restype = ctypes.c_void_p
                lib.VSIFree.argtypes = [ctypes.c_void_p]
                lib.VSIFree.restype = None
                lib.CPLSetConfigOption(b"CPL_VSIL_NETWORK_STATS_ENABLED", b"YES")
                cls._lib, cls._state = lib, 1
            except (OSError, AttributeError) as exc:
                log.debug("GDAL network statistics unavailable: %s", exc)
                cls._state = -1
            return cls._lib

    @classmethod
    def enable(cls) -> None:
        cls._load()

    @classmethod
    def reset(cls) -> None:
        lib = cls._load()
        if lib is not None:
            lib.VSINetworkStatsReset()

    @classmethod
    def read(cls) -> tuple[int, int] | None:
        """(bytes downloaded, requests) since the last reset, or None if not measurable."""
        lib = cls._load()
        if lib is None:
            return None
        ptr = lib.VSINetworkStatsGetAsSerializedJSON(None)
        if not ptr:
            return None
        try:
            doc = json.loads(ctypes.string_at(ptr).decode("utf-8") or "{}")
        except ValueError:
            return None
        finally:
            lib.VSIFree(ptr)
        methods = doc.get("methods", {}) if isinstance(doc, dict) else {}
        nbytes = sum(int(m.get("downloaded_bytes", 0)) for m in methods.values())
        nreq = sum(int(m.get("count", 0)) for m in methods.values())
        return nbytes, nreq


def reset_net_stats() -> None:
    """Zero GDAL's network counters (process-wide)."""
    _NetStats.reset()


def read_net_stats() -> tuple[int, int] | None:
    """(bytes downloaded, requests) over the network since :func:`reset_net_stats`, or None."""
    return _NetStats.read()


# -- reader statistics --------------------------------------------------------------------------------
@dataclass
class ReadStats:
    """What the readers did since :func:`reset_read_stats` (process-wide, all threads)."""

    reads: int = 0  #: (item, asset) reads that touched the target
    skipped: int = 0  #: reads skipped because the asset does not overlap the target
    direct: int = 0  #: reads on the direct (RasterIO) path
    warped: int = 0  #: reads on the warper path
    #: Source pixels in the windows read (at the overview level read).
    window_pixels: int = 0
    #: Source pixels in the COG blocks those windows touch: what GDAL decompresses.
    block_pixels: int = 0
    #: Target pixels written.
    target_pixels: int = 0
    #: reads per overview level (``"full"``, ``"1/2"``, ...).
    levels: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


_stats = ReadStats()
_stats_lock = threading.Lock()


def reset_read_stats() -> None:
    """Zero the reader counters (process-wide)."""
    global _stats
    with _stats_lock:
        _stats = ReadStats()


def read_stats() -> ReadStats:
    """A copy of the reader counters since :func:`reset_read_stats`."""
    with _stats_lock:
        return ReadStats(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in _stats.__dict__.items()})


def _count(**kw: Any) -> None:
    with _stats_lock:
        for k, v in kw.items():
            if k == "level":
                _stats.levels[v] = _stats.levels.get(v, 0) + 1
            else:
                setattr(_stats, k, getattr(_stats, k) + v)


# -- items --------------------------------------------------------------------------------------
def _has_prefixed_key(d: Mapping[str, Any], prefix: str) -> bool:
    return any(isinstance(k, str) and k.startswith(prefix) for k in d)


def normalise_item(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A full-enough STAC item dict from a minimal one: defaults for the fields pystac requires,
    ``proj:epsg`` also given as ``proj:code``, and the extension URLs odc-stac looks for."""
    d = dict(doc)
    d.setdefault("type", "Feature")
    d.setdefault("stac_version", "1.1.0")
    d.setdefault("links", [])
    d.setdefault("geometry", None)
    props = dict(d.get("properties") or {})
    assets = {k: dict(v) for k, v in (d.get("assets") or {}).items()}
    for holder in (props, *assets.values()):
        epsg = holder.get("proj:epsg")
        if epsg is not None and holder.get("proj:code") is None:
            holder["proj:code"] = f"EPSG:{int(epsg)}"
    d["properties"], d["assets"] = props, assets
    exts = list(d.get("stac_extensions") or [])
    has_proj = _has_prefixed_key(props, "proj:") or any(_has_prefixed_key(a, "proj:") for a in assets.values())
    if has_proj and not any("/projection/" in e for e in exts):
        exts.append(PROJ_EXT)
    has_raster = _has_prefixed_key(props, "raster:") or any(_has_prefixed_key(a, "raster:") for a in assets.values())
    if has_raster and not any("/raster/" in e for e in exts):
        exts.append(RASTER_EXT)
    d["stac_extensions"] = exts
    return d


def scale_offset_of(asset: Mapping[str, Any]) -> tuple[float, float]:
    """(scale, offset) of an asset's first band from ``raster:bands`` (or STAC 1.1 ``bands`` /
    ``raster:scale``); (1.0, 0.0) when absent."""
    band: Mapping[str, Any] = {}
    rb = asset.get("raster:bands")
    if isinstance(rb, list) and rb and isinstance(rb[0], Mapping):
        band = rb[0]
    else:
        bands = asset.get("bands")
        if isinstance(bands, list) and bands and isinstance(bands[0], Mapping):
            band = {
                "scale": bands[0].get("raster:scale", asset.get("raster:scale")),
                "offset": bands[0].get("raster:offset", asset.get("raster:offset")),
            }
        else:
            band = {"scale": asset.get("raster:scale"), "offset": asset.get("raster:offset")}
    scale = band.get("scale")
    offset = band.get("offset")
    return (float(1.0 if scale is None else scale), float(0.0 if offset is None else offset))


def item_datetime(item: Mapping[str, Any]) -> datetime:
    """The item's nominal time (``datetime``, else ``start_datetime``, else ``end_datetime``), UTC.

    Raises ValueError when the item has none (odc-stac's rule)."""
    props = item.get("properties") or {}
    for key in ("datetime", "start_datetime", "end_datetime"):
        raw = props.get(key)
        if raw:
            dt = datetime.fromisoformat(str(raw).replace("z", "Z"))
            return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)
    raise ValueError("the item has no datetime, start_datetime or end_datetime")


def solar_day(when: datetime, lon: float) -> date:
    """odc-stac's ``groupby="solar_day"`` key: the UTC time shifted by whole hours of longitude."""
    return (when + timedelta(seconds=int(lon / 15) * 3600)).date()


@dataclass(frozen=True)
class Observation:
    """One solar day at the tile: its items in fusing order ((datetime, id))."""

    day: date
    items: tuple[Mapping[str, Any], ...]


def group_observations(items: Sequence[Mapping[str, Any]], lon: float) -> list[Observation]:
    """Items grouped by solar day at longitude ``lon`` (days ascending; items by (datetime, id)).

    Raises ValueError (naming the item) when an item has no usable datetime."""
    keyed = []
    for i, item in enumerate(items):
        try:
            when = item_datetime(item)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"item {item.get('id', f'#{i}')!r} is not a usable STAC item ({exc})") from None
        keyed.append((solar_day(when, lon), when, str(item.get("id", "")), i))
    keyed.sort()
    out: list[Observation] = []
    for day, _, _, i in keyed:
        if out and out[-1].day == day:
            out[-1] = Observation(day, (*out[-1].items, items[i]))
        else:
            out.append(Observation(day, (items[i],)))
    return out


# -- reading ------------------------------------------------------------------------------------
_RESAMPLING = ("nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode")


def _pick_read_scale(scale: float, tol: float = 1e-3) -> int:
    """odc-geo's read shrink: the scale snapped down to an integer (2.9995 -> 3, 2.8 -> 2, 0.3 -> 1)."""
    if scale < 1:
        return 1
    near = round(scale)
    if abs(scale - near) < tol:
        return int(near)
    return int(scale)


def _pick_overview(shrink: int, factors: Sequence[int]) -> int | None:
    """Index of the largest overview whose factor is at most ``shrink`` (odc-loader's rule)."""
    if not factors or shrink < factors[0]:
        return None
    idx = 0
    for i, f in enumerate(factors):
        if f > shrink:
            break
        idx = i
    return idx


def _blocks_touched(c0: int, r0: int, c1: int, r1: int, block: tuple[int, int]) -> int:
    """Pixels of the blocks a [c0, c1) x [r0, r1) window touches."""
    if c1 <= c0 or r1 <= r0:
        return 0
    bh, bw = block
    nby = (r1 - 1) // bh - r0 // bh + 1
    nbx = (c1 - 1) // bw - c0 // bw + 1
    return nby * nbx * bh * bw


@dataclass
class _Meta:
    """What a reader needs to know about an asset's raster (from its full-resolution dataset)."""

    crs: Any
    transform: Any
    shape: tuple[int, int]
    overviews: list[int]
    nodata: float | None
    dtype: str


class _Target:
    """A target grid (tile or strip), with what every read of it needs precomputed."""

    def __init__(self, gbox: Any, origin: tuple[Any, int, int] | None = None) -> None:
        from rasterio.crs import CRS

        self.gbox = gbox
        self.shape: tuple[int, int] = gbox.shape.yx
        a = gbox.affine
        self.affine = a
        #: (affine of the whole cube grid, first row, first column of this target in it): every
        #: per-pixel computation starts from the grid's pixel index, so a pixel's value cannot
        #: depend on which tile or strip it was read in.
        self.grid_affine, self.row0, self.col0 = origin if origin is not None else (a, 0, 0)
        self.rectilinear = a.b == 0 and a.d == 0
        self.crs_str = str(gbox.crs)
        self.rio_crs = CRS.from_user_input(gbox.crs.to_wkt())
        self._same: dict[str, bool] = {}
        self._extent: dict[str, tuple[float, float, float, float] | None] = {}

    def same_crs(self, crs: Any) -> bool:
        key = crs.to_wkt() if hasattr(crs, "to_wkt") else str(crs)
        got = self._same.get(key)
        if got is None:
            got = self._same[key] = bool(crs == self.rio_crs)
        return got

    def bounds_in(self, crs_code: str) -> tuple[float, float, float, float] | None:
        """The target's bounding box in another CRS (for cheap overlap tests), None if unknown."""
        if crs_code not in self._extent:
            try:
                bb = self.gbox.extent.to_crs(crs_code).boundingbox
                self._extent[crs_code] = (bb.left, bb.bottom, bb.right, bb.top)
            except Exception:  # noqa: BLE001 - no overlap test then; the read decides
                self._extent[crs_code] = None
        return self._extent[crs_code]


def _stac_overlaps(asset: Mapping[str, Any], item: Mapping[str, Any], target: _Target) -> bool:
    """False only when the asset's ``proj:*`` metadata proves it misses the target entirely."""
    props = item.get("properties") or {}
    tr = asset.get("proj:transform") or props.get("proj:transform")
    shape = asset.get("proj:shape") or props.get("proj:shape")
    code = asset.get("proj:code") or props.get("proj:code")
    epsg = asset.get("proj:epsg") or props.get("proj:epsg")
    if code is None and epsg is not None:
        code = f"EPSG:{int(epsg)}"
    if not (tr and shape and code) or len(tr) < 6 or len(shape) < 2:
        return True
    try:
        a, b, c, d, e, f = (float(v) for v in tr[:6])
        h, w = int(shape[0]), int(shape[1])
    except (TypeError, ValueError):
        return True
    if b != 0 or d != 0:
        return True
    xs = sorted((c, c + a * w))
    ys = sorted((f, f + e * h))
    box = target.bounds_in(str(code))
    if box is None:
        return True
    left, bottom, right, top = box
    return xs[0] < right and xs[1] > left and ys[0] < top and ys[1] > bottom


#: Target pixels added around a warped read's overlap box (see :meth:`Reader._read_warped`).
_WARP_PAD = 2


def _warp_scales(meta: _Meta, target: _Target) -> tuple[float, float]:
    """Target pixel size in source pixels along the target's x and y axes, at the source's centre.

    Depends on the asset and the grid's CRS and pixel size only, so the overview read and the
    kernel's reach are the same in every tile (odc-geo measures the scale at the centre of each
    tile's overlap instead, which moves from tile to tile)."""
    from pyproj import Transformer

    t = meta.transform
    h, w = meta.shape
    xc, yc = t * (w / 2, h / 2)
    fwd = Transformer.from_crs(meta.crs.to_wkt(), target.rio_crs.to_wkt(), always_xy=True)
    X, Y = fwd.transform(xc, yc)
    A = target.affine
    bx, by = fwd.transform(np.array([X - A.a / 2, X + A.a / 2, X, X]), np.array([Y, Y, Y - A.e / 2, Y + A.e / 2]),
                           direction="INVERSE")
    inv = ~t
    u, v = inv * (np.asarray(bx), np.asarray(by))
    sx = float(math.hypot(u[1] - u[0], v[1] - v[0]))
    sy = float(math.hypot(u[3] - u[2], v[3] - v[2]))
    if not (math.isfinite(sx) and math.isfinite(sy) and sx > 0 and sy > 0):
        raise ValueError(f"cannot relate the grid's pixels to the source's at its centre ({xc:.1f}, {yc:.1f})")
    return sx, sy


def _stac_nodata(asset: Mapping[str, Any]) -> float | None:
    """The nodata value ``raster:bands`` (or STAC 1.1 ``nodata``) gives an asset, if any."""
    rb = asset.get("raster:bands")
    if isinstance(rb, list) and rb and isinstance(rb[0], Mapping) and rb[0].get("nodata") is not None:
        return float(rb[0]["nodata"])
    bands = asset.get("bands")
    if isinstance(bands, list) and bands and isinstance(bands[0], Mapping) and bands[0].get("nodata") is not None:
        return float(bands[0]["nodata"])
    v = asset.get("nodata")
    return float(v) if isinstance(v, (int, float)) else None


def _representable(value: float, dtype: np.dtype) -> bool:
    if math.isnan(value):
        return dtype.kind == "f"
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return float(value).is_integer() and info.min <= value <= info.max
    return True


def _href_for_gdal(href: str) -> str:
    if href.startswith("file://"):
        from urllib.parse import unquote, urlsplit

        return unquote(urlsplit(href).path)
    return href


class ReadError(OSError):
    """Reading an asset failed; the message names the href and GDAL's own error."""


def gdal_message(exc: BaseException) -> str:
    """GDAL's error behind a rasterio exception: rasterio's "Read failed. See previous exception
    for details." chains the CPLE_* error that says what happened (404, bad TIFF, timeout)."""
    msgs: list[str] = []
    e: BaseException | None = exc
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = " ".join(str(e).split())
        if text and "See previous exception" not in text and text not in msgs:
            msgs.append(text)
        e = e.__cause__ or e.__context__
    return "; ".join(reversed(msgs)) or type(exc).__name__


class Reader:
    """Reads assets of observations onto target grids with a thread pool (see the module doc).

    With ``keep_open`` datasets are opened once per (href, overview level) and kept open until
    :meth:`close`, so a tile read in strips decodes each COG block about once (GDAL's block
    cache); without it every read closes what it opened (its decoded blocks are freed at once).
    Use as a context manager. ``guard(href)`` is called before any href is opened (it may raise).
    """

    def __init__(self, threads: int, *, guard: Callable[[str], Any] | None = None, keep_open: bool = True) -> None:
        self.threads = max(1, int(threads))
        self.guard = guard
        self.keep_open = keep_open
        self.direct = DIRECT_READS
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="cubeless-read")
        self._lock = threading.Lock()
        self._handles: dict[tuple[str, str], Any] = {}
        self._meta: dict[str, _Meta] = {}
        self._scales: dict[tuple[Any, ...], tuple[float, float]] = {}

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            handles, self._handles = list(self._handles.values()), {}
        for h in handles:
            try:
                h.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    # -- datasets ---------------------------------------------------------------------------------
    def _open(self, href: str, level: str) -> Any:
        """A dataset handle: ``level`` is "base" (full resolution, overviews visible), "none"
        (full resolution, GDAL may not substitute an overview) or an overview index."""
        key = (href, level)
        with self._lock:
            h = self._handles.get(key)
        if h is not None:
            return h
        import rasterio

        if self.guard is not None:
            self.guard(href)
        path = _href_for_gdal(href)
        if level == "base":
            h = rasterio.open(path, sharing=False)
        elif level == "none":
            h = rasterio.open(path, sharing=False, OVERVIEW_LEVEL="NONE")
        else:
            h = rasterio.open(path, sharing=False, overview_level=int(level))
        with self._lock:
            old = self._handles.setdefault(key, h)
        if old is not h:  # pragma: no cover - another thread opened it first
            h.close()
        return old

    def _meta_of(self, href: str) -> _Meta:
        m = self._meta.get(href)
        if m is None:
            h = self._open(href, "base")
            m = _Meta(
                crs=h.crs,
                transform=h.transform,
                shape=(h.height, h.width),
                overviews=list(h.overviews(1)),
                nodata=h.nodatavals[0],
                dtype=h.dtypes[0],
            )
            self._meta[href] = m
        return m

    # -- one read ---------------------------------------------------------------------------------
    def _read_one(
        self,
        asset: Mapping[str, Any],
        item: Mapping[str, Any],
        target: _Target,
        resampling: str,
        dtype: np.dtype,
        use_overviews: bool,
        dst: np.ndarray | None,
    ) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """Read one asset onto ``target``: (roi, pixels) or None when it does not overlap.

        With ``dst`` given (zero-filled, the target's shape) the pixels are written into it."""
        if not _stac_overlaps(asset, item, target):
            _count(skipped=1)
            return None
        href = str(asset["href"])
        try:
            with _env():
                return self._read_href(href, asset, target, resampling, dtype, use_overviews, dst)
        except Exception as exc:
            from rasterio.errors import RasterioError

            if isinstance(exc, RasterioError):
                raise ReadError(f"reading {href} failed: {gdal_message(exc)}") from exc
            raise
        finally:
            if not self.keep_open:
                self._release(href)

    def _release(self, href: str) -> None:
        with self._lock:
            keys = [k for k in self._handles if k[0] == href]
            handles = [self._handles.pop(k) for k in keys]
            self._meta.pop(href, None)
        for h in handles:
            h.close()

    def _read_href(
        self,
        href: str,
        asset: Mapping[str, Any],
        target: _Target,
        resampling: str,
        dtype: np.dtype,
        use_overviews: bool,
        dst: np.ndarray | None,
    ) -> tuple[tuple[slice, slice], np.ndarray] | None:
        meta = self._meta_of(href)
        direct = (
            self.direct
            and target.rectilinear
            and meta.transform.b == 0
            and meta.transform.d == 0
            and meta.transform.a * target.affine.a > 0
            and meta.transform.e * target.affine.e > 0
            and target.same_crs(meta.crs)
            # GDAL's kernels skip the file's nodata; without one, the warper is told about 0
            and (resampling == "nearest" or meta.nodata is not None)
        )
        if direct:
            got = self._read_direct(href, meta, target, resampling, dtype, use_overviews, dst)
        else:
            got = self._read_warped(href, asset, meta, target, resampling, dtype, use_overviews, dst)
        if got is None:
            _count(skipped=1)
            return None
        _, pix = got
        nodata = meta.nodata
        if nodata is not None and nodata != 0 and _representable(nodata, pix.dtype):
            pix[pix == nodata] = 0  # the target's nodata is 0
        return got

    def _level(self, meta: _Meta, scale: float, use_overviews: bool) -> tuple[int | None, int]:
        shrink = _pick_read_scale(scale)
        idx = _pick_overview(shrink, meta.overviews) if use_overviews and shrink > 1 else None
        return idx, shrink

    def _read_direct(
        self,
        href: str,
        meta: _Meta,
        target: _Target,
        resampling: str,
        dtype: np.dtype,
        use_overviews: bool,
        dst: np.ndarray | None,
    ) -> tuple[tuple[slice, slice], np.ndarray] | None:
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        A = target.affine
        ny, nx = target.shape
        t0 = meta.transform
        scale = min(abs(A.a / t0.a), abs(A.e / t0.e))
        idx, _ = self._level(meta, scale, use_overviews)
        nearest = resampling == "nearest"
        if idx is None:
            # Nearest reads decode an integer window and index it (GDAL never substitutes an
            # overview there); resampled reads must not let GDAL pick an overview on its own.
            h = self._open(href, "base" if nearest else "none")
            level_name = "full"
        else:
            h = self._open(href, str(idx))
            level_name = f"1/{meta.overviews[idx]}"
        t = h.transform
        W, H = h.width, h.height
        su, sv = A.a / t.a, A.e / t.e
        u0, v0 = (A.c - t.c) / t.a, (A.f - t.f) / t.e
        if nearest:
            # Pixel centres from the cube grid's origin and the pixel's index in the grid.
            G = target.grid_affine
            gu0, gv0 = (G.c - t.c) / t.a, (G.f - t.f) / t.e
            uc = gu0 + (target.col0 + np.arange(nx) + 0.5) * su
            vc = gv0 + (target.row0 + np.arange(ny) + 0.5) * sv
            okx = np.flatnonzero((uc >= 0) & (uc < W))
            oky = np.flatnonzero((vc >= 0) & (vc < H))
            if not okx.size or not oky.size:
                return None
            j0, j1, i0, i1 = int(okx[0]), int(okx[-1]) + 1, int(oky[0]), int(oky[-1]) + 1
            cols = np.floor(uc[j0:j1]).astype(np.intp)
            rows = np.floor(vc[i0:i1]).astype(np.intp)
            c0, c1 = int(cols[0]), int(cols[-1]) + 1
            r0, r1 = int(rows[0]), int(rows[-1]) + 1
            win = h.read(1, window=Window(c0, r0, c1 - c0, r1 - r0), out_dtype=dtype)
            cols -= c0
            rows -= r0
            if cols.size == win.shape[1] and rows.size == win.shape[0] and su == 1 and sv == 1:
                pix = win
            else:
                pix = win[rows[:, None], cols[None, :]]
            roi = (slice(i0, i1), slice(j0, j1))
            if dst is not None:
                dst[roi] = pix
                pix = dst[roi]
            _count(reads=1, direct=1, level=level_name, window_pixels=win.size,
                   block_pixels=_blocks_touched(c0, r0, c1, r1, h.block_shapes[0]), target_pixels=pix.size)
            return roi, pix
        # Interpolating kernels: target pixels whose footprint lies inside the raster.
        eps = 1e-6
        j0 = max(0, math.ceil(-u0 / su - eps))
        j1 = min(nx, math.floor((W - u0) / su + eps))
        i0 = max(0, math.ceil(-v0 / sv - eps))
        i1 = min(ny, math.floor((H - v0) / sv + eps))
        if j1 <= j0 or i1 <= i0:
            return None
        window = Window(u0 + j0 * su, v0 + i0 * sv, (j1 - j0) * su, (i1 - i0) * sv)
        roi = (slice(i0, i1), slice(j0, j1))
        out = dst[roi] if dst is not None else np.empty((i1 - i0, j1 - j0), dtype)
        h.read(1, window=window, out=out, resampling=Resampling[resampling])
        # What GDAL decodes: the window widened by the kernel's reach (about one output pixel).
        c0 = max(0, math.floor(window.col_off - su))
        r0 = max(0, math.floor(window.row_off - sv))
        c1 = min(W, math.ceil(window.col_off + window.width + su))
        r1 = min(H, math.ceil(window.row_off + window.height + sv))
        _count(reads=1, direct=1, level=level_name, window_pixels=(c1 - c0) * (r1 - r0),
               block_pixels=_blocks_touched(c0, r0, c1, r1, h.block_shapes[0]), target_pixels=out.size)
        return roi, out

    def _read_warped(
        self,
        href: str,
        asset: Mapping[str, Any],
        meta: _Meta,
        target: _Target,
        resampling: str,
        dtype: np.dtype,
        use_overviews: bool,
        dst: np.ndarray | None,
    ) -> tuple[tuple[slice, slice], np.ndarray] | None:
        import rasterio
        import rasterio.warp
        from odc.geo.geobox import GeoBox
        from odc.geo.overlap import compute_reproject_roi
        from rasterio.enums import Resampling

        src_gbox = GeoBox(meta.shape, meta.transform, meta.crs.to_wkt())
        ttol = 0.9 if resampling == "nearest" else 0.05
        rr = compute_reproject_roi(src_gbox, target.gbox, ttol=ttol)
        ys, xs = rr.roi_dst
        if ys.stop <= ys.start or xs.stop <= xs.start:
            return None
        sy, sx = rr.roi_src
        if sy.stop <= sy.start or sx.stop <= sx.start:
            return None
        ny, nx = target.shape
        if rr.paste_ok and rr.read_shrink == 1:
            # The target is a pixel-aligned window of the source: a plain copy.
            idx, scales = None, None
        else:
            # Overview and kernel scale from the asset and the grid's pixel size only, never from
            # the tile: the same for every tile and strip (see _warp_scales).
            scales = self._warp_scales(href, meta, target)
            idx = None
            if use_overviews:
                shrink = _pick_read_scale(min(scales))
                idx = _pick_overview(shrink, meta.overviews) if shrink > 1 else None
            # The dst region: the overlap with a margin, so that which target pixels the source
            # covers is GDAL's per-pixel decision, not the rounding of a per-tile bounding box.
            pad = _WARP_PAD
            ys, xs = slice(max(0, ys.start - pad), min(ny, ys.stop + pad)), slice(max(0, xs.start - pad), min(nx, xs.stop + pad))
        roi_dst = (ys, xs)
        h = self._open(href, "base" if idx is None else str(idx))
        factor = 1 if idx is None else meta.overviews[idx]
        level_name = "full" if idx is None else f"1/{factor}"
        out = dst[roi_dst] if dst is not None else np.zeros((ys.stop - ys.start, xs.stop - xs.start), dtype)
        if scales is None:
            from rasterio.windows import Window

            h.read(1, window=Window(sx.start, sy.start, sx.stop - sx.start, sy.stop - sy.start), out=out)
        else:
            # tolerance=0: GDAL's exact transformer (its default linear approximation is fitted
            # per warp chunk, so it moved sample points by up to 1/8 pixel from tile to tile);
            # XSCALE/YSCALE: the kernel's scale fixed (GDAL otherwise derives it from the chunk's
            # source window, which differs between a full tile and a 5-pixel-wide edge tile).
            rasterio.warp.reproject(
                rasterio.band(h, 1),
                out,
                src_nodata=meta.nodata if meta.nodata is not None else _stac_nodata(asset),
                dst_crs=target.crs_str,
                dst_transform=target.gbox[roi_dst].transform,
                dst_nodata=0,
                resampling=Resampling[resampling],
                tolerance=0.0,
                XSCALE=repr(factor / scales[0]),
                YSCALE=repr(factor / scales[1]),
            )
        c0, c1 = sx.start // factor, -(-sx.stop // factor)
        r0, r1 = sy.start // factor, -(-sy.stop // factor)
        _count(reads=1, warped=1, level=level_name, window_pixels=(c1 - c0) * (r1 - r0),
               block_pixels=_blocks_touched(c0, r0, c1, r1, h.block_shapes[0]), target_pixels=out.size)
        return roi_dst, out

    def _warp_scales(self, href: str, meta: _Meta, target: _Target) -> tuple[float, float]:
        """(x, y): the length of one target pixel step along each target axis, in full-resolution
        source pixels, measured at the centre of the source raster (cached per href and grid)."""
        key = (href, target.crs_str, target.affine.a, target.affine.e)
        got = self._scales.get(key)
        if got is None:
            got = self._scales[key] = _warp_scales(meta, target)
        return got

    # -- a stack ------------------------------------------------------------------------------------
    def submit(
        self,
        observations: Sequence[Observation],
        key: str,
        gbox: Any,
        *,
        resampling: str,
        dtype: Any,
        use_overviews: bool = True,
        target: _Target | None = None,
        origin: tuple[Any, int, int] | None = None,
    ) -> "PendingStack":
        """Start reading asset ``key`` of every observation onto ``gbox``; returns a handle whose
        :meth:`PendingStack.result` is the (t, y, x) stack (0 = nodata)."""
        if resampling not in _RESAMPLING:
            raise ValueError(f"unknown resampling {resampling!r}; use one of {', '.join(_RESAMPLING)}")
        dt = np.dtype(dtype)
        tgt = target if target is not None and target.gbox is gbox else _Target(gbox, origin)
        ny, nx = tgt.shape
        out = np.zeros((len(observations), ny, nx), dt)
        jobs: list[tuple[int, int, Future]] = []
        for t, obs in enumerate(observations):
            for k, item in enumerate(obs.items):
                asset = item["assets"][key]
                dst = out[t] if k == 0 else None  # later items of a day are fused in order
                fut = self._pool.submit(self._read_one, asset, item, tgt, resampling, dt, use_overviews, dst)
                jobs.append((t, k, fut))
        return PendingStack(out, jobs)

    def read(self, observations: Sequence[Observation], key: str, gbox: Any, **kw: Any) -> np.ndarray:
        """:meth:`submit` and wait: the (t, y, x) stack of asset ``key``."""
        return self.submit(observations, key, gbox, **kw).result()


class PendingStack:
    """Reads in flight for one stack; :meth:`result` waits, fuses, and returns it."""

    def __init__(self, out: np.ndarray, jobs: list[tuple[int, int, Future]]) -> None:
        self._out = out
        self._jobs = jobs

    def result(self) -> np.ndarray:
        first_error: BaseException | None = None
        extra: list[tuple[int, int, tuple[tuple[slice, slice], np.ndarray]]] = []
        for t, k, fut in self._jobs:
            try:
                got = fut.result()
            except BaseException as exc:  # noqa: BLE001 - wait for every read, raise the first error
                first_error = first_error or exc
                continue
            if k > 0 and got is not None:
                extra.append((t, k, got))
        if first_error is not None:
            raise first_error
        for t, _, (roi, pix) in sorted(extra, key=lambda e: (e[0], e[1])):
            dst = self._out[t][roi]
            np.copyto(dst, pix, where=dst == 0)
        return self._out


def default_io_threads(*, remote: bool = True) -> int:
    """Reader threads: network reads wait on latency, so 4 per CPU (8..32); local reads are CPU
    bound (decompression, resampling), so one per CPU."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(8, min(32, 4 * cpus)) if remote else max(1, cpus)


def hrefs_to_read(items: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    """The hrefs of the assets ``keys`` of every item (missing assets skipped)."""
    out: list[str] = []
    for item in items:
        assets = item.get("assets") or {}
        for k in keys:
            a = assets.get(k)
            if isinstance(a, Mapping) and "href" in a:
                out.append(a["href"])
    return out
