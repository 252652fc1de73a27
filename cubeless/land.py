"""Which tiles of the cube grid touch land (and the AOI): ocean-only tiles are never tasks.

Land comes from the ``global-land-mask`` package (GLOBE, a 30 arc-second = 1/120 degree global
raster; lakes count as land). Nothing is downloaded: the package's ``.npz`` is streamed once,
reduced to 8 x 8 cell blocks ("any land in the block", 2700 x 5400 booleans, 14.6 MB) and kept
in memory (and, as 1.8 MB of packed bits, in a user cache directory so the next process skips the
~1 s decompression).

A tile is kept when any block overlapping its lon/lat bounds, widened by :data:`MARGIN_DEG`,
holds a land cell. Queries are O(1) per tile on a 2-D prefix sum (integral image) of the blocks
inside the query window. The filter is conservative with respect to the mask: it never drops a
tile that touches a land cell; because blocks are coarser than cells it keeps some coastal tiles
whose nearest land is up to one block (8/120 degree, about 7 km) plus the margin away.

Tile footprints (lon/lat) come from the tile edges, densified in projected CRSs and transformed in
one vectorised pyproj call per edge family. Tiles crossing the antimeridian are split in two lon
ranges, a tile holding a pole extends to it, and tiles wholly outside the projection's domain (no
finite lon/lat, e.g. beyond the poles) are dropped without error. Tiles only partly inside the
domain are kept (conservative).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import struct
import threading
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from odc.geo.geobox import GeoBox
from pydantic import TypeAdapter
from shapely.geometry.base import BaseGeometry

from .grid import tile_shape
from .models import Tile

log = logging.getLogger(__name__)

#: Mask cells per degree (GLOBE 30 arc-seconds).
CELLS_PER_DEG = 120
#: Block side in mask cells. 8 makes one ``uint64`` word per block row: the reduction is cheap.
BLOCK = 8
#: Blocks per degree.
BLOCKS_PER_DEG = CELLS_PER_DEG // BLOCK
#: Widen every tile by this much (one mask cell) before the query: the 1 km mask is coarse.
MARGIN_DEG = 1.0 / CELLS_PER_DEG
#: Points per tile edge used to bound tiles of projected (or non-WGS84 geographic) grids.
DENSIFY = 8
#: Environment variable naming the cache directory; an empty value disables the disk cache.
CACHE_ENV = "CUBELESS_CACHE_DIR"

_MASK_FILE = "globe_combined_mask_compressed.npz"
_MASK_SHAPE = (180 * CELLS_PER_DEG, 360 * CELLS_PER_DEG)
_CACHE_VERSION = 1
_lock = threading.Lock()
_TILES = TypeAdapter(list[Tile])


# ------------------------------------------------------------------------------------------------
# The block mask
# ------------------------------------------------------------------------------------------------
def _mask_path() -> Path:
    """The package's ``.npz``, found without importing ``global_land_mask`` (its import loads 1 GB)."""
    spec = importlib.util.find_spec("global_land_mask")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the global-land-mask package is not installed; pip install global-land-mask")
    return Path(list(spec.submodule_search_locations)[0]) / _MASK_FILE


def _cache_dir() -> Path | None:
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return Path(env) if env else None
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "cubeless"


class _MemberReader:
    """Read the decompressed bytes of one zip member sequentially, ``read(n)`` at a time.

    Inflates the raw deflate stream directly: about 2x faster than ``ZipFile.open`` (no CRC pass,
    no intermediate buffering), and the 933 MB member is never in memory at once.
    """

    def __init__(self, path: Path, name: str) -> None:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(name)
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            head = f.read(30)
            if head[:4] != b"PK\x03\x04":
                raise RuntimeError(f"{path} is not a valid zip file")
            name_len, extra_len = struct.unpack("<HH", head[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            self._pending = f.read(info.compress_size)
        if info.compress_type == zipfile.ZIP_STORED:
            self._inflater = None
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            self._inflater = zlib.decompressobj(-15)
        else:
            raise RuntimeError(f"{path}:{name} uses zip compression {info.compress_type}; expected deflate")

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or fewer at the end of the member."""
        if self._inflater is None:
            out, self._pending = self._pending[:n], self._pending[n:]
            return out
        parts: list[bytes] = []
        have = 0
        while have < n:
            piece = self._inflater.decompress(self._pending, n - have)
            self._pending = self._inflater.unconsumed_tail
            if not piece:
                break
            parts.append(piece)
            have += len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _check_axes(path: Path) -> None:
    """The mask's rows must run south from 90N and its columns east from 180W, 1/120 degree apart."""
    with np.load(path) as z:
        lat, lon = z["lat"], z["lon"]
    step = 1.0 / CELLS_PER_DEG
    ok = (
        lat.shape == (_MASK_SHAPE[0],) and lon.shape == (_MASK_SHAPE[1],)
        and abs(lat[0] - 90.0) < 1e-9 and abs(lon[0] + 180.0) < 1e-9
        and abs(lat[1] - lat[0] + step) < 1e-9 and abs(lon[1] - lon[0] - step) < 1e-9
    )
    if not ok:
        raise RuntimeError(f"{path}: unexpected mask axes (lat from {lat[0]}, lon from {lon[0]}); update cubeless.land")


def _build_blocks(path: Path) -> np.ndarray:
    """Reduce the GLOBE mask to ``BLOCK`` x ``BLOCK`` blocks: True where any cell is land."""
    _check_axes(path)
    reader = _MemberReader(path, "mask.npy")
    # .npy: magic (6 bytes), version (2), header length (2 in v1, 4 in v2+), dict literal, data.
    pre = reader.read(8)
    if pre[:6] != b"\x93NUMPY":
        raise RuntimeError(f"{path}: mask.npy is not a .npy array")
    hlen_size = 2 if pre[6] == 1 else 4
    hlen = int.from_bytes(reader.read(hlen_size), "little")
    header = reader.read(hlen).decode("latin1")
    if "'|b1'" not in header or str(_MASK_SHAPE) not in header or "'fortran_order': False" not in header:
        raise RuntimeError(f"{path} holds an unexpected mask ({header.strip()}); expected bool {_MASK_SHAPE}")
    nrow, ncol = _MASK_SHAPE
    out = np.empty((nrow // BLOCK, ncol // BLOCK), dtype=bool)
    rows_per_read = BLOCK * 100
    for row in range(0, nrow, rows_per_read):
        want = min(rows_per_read, nrow - row) * ncol
        buf = reader.read(want)
        if len(buf) != want:
            raise RuntimeError(f"{path}: mask.npy ended after {row} of {nrow} rows")
        _reduce_rows(buf, out, row // BLOCK)
    return out


def _reduce_rows(buf: bytes, out: np.ndarray, row: int) -> None:
    """OR-reduce ``BLOCK`` x ``BLOCK`` cells of ocean-flag bytes into land blocks ``out[row:]``.

    The mask is True over OCEAN; eight ocean bytes read as one uint64 are 0x0101010101010101, so
    a block is all ocean exactly when the AND of its eight row words equals that.
    """
    all_ocean = np.uint64(0x0101010101010101)
    words = np.frombuffer(buf, dtype=np.uint64).reshape(-1, BLOCK, _MASK_SHAPE[1] // BLOCK)
    acc = words[:, 0].copy()
    for k in range(1, BLOCK):
        np.bitwise_and(acc, words[:, k], out=acc)
    n = acc.shape[0]
    np.not_equal(acc, all_ocean, out=out[row : row + n])


def _cache_key(path: Path) -> str:
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("mask.npy")
    key = f"{info.CRC:08x}-{info.file_size}-{BLOCK}-{_CACHE_VERSION}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def block_mask() -> np.ndarray:
    """The global block mask (read-only bool array, rows from 90N southwards, cols from 180W).

    Loaded once per process: from the disk cache when present, else built from the package data
    (about 1 s) and then cached on disk (best effort; failures to write are ignored).
    """
    with _lock:
        path = _mask_path()
        cache = _cache_dir()
        shape = (_MASK_SHAPE[0] // BLOCK, _MASK_SHAPE[1] // BLOCK)
        cached = cache / f"land-blocks-{_cache_key(path)}.npy" if cache else None
        if cached is not None and cached.exists():
            try:
                packed = np.load(cached, allow_pickle=False)
                mask = np.unpackbits(packed, axis=1, count=shape[1]).astype(bool)
                if mask.shape == shape:
                    mask.setflags(write=False)
                    return mask
            except (OSError, ValueError):
                log.debug("ignoring unreadable land cache %s", cached)
        mask = _build_blocks(path)
        mask.setflags(write=False)
        if cached is not None:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_name(f"{cached.name}.{os.getpid()}.{threading.get_ident()}.tmp")
                with open(tmp, "wb") as f:
                    np.save(f, np.packbits(mask, axis=1), allow_pickle=False)
                os.replace(tmp, cached)
            except OSError:
                log.debug("cannot write land cache %s", cached)
        return mask


def any_land(west: Any, south: Any, east: Any, north: Any, *, margin: float = MARGIN_DEG) -> np.ndarray:
    """Vectorised: does the lon/lat box [west, east] x [south, north] (degrees) touch land?

    Conservative: true whenever a land cell of the mask touches the box widened by ``margin``.
    Boxes must not cross the antimeridian (split them); NaN boxes answer False.
    """
    w, s, e, n = (np.asarray(v, dtype=np.float64) for v in (west, south, east, north))
    w, s, e, n = np.broadcast_arrays(w, s, e, n)
    out = np.zeros(w.shape, dtype=bool)
    ok = np.isfinite(w) & np.isfinite(s) & np.isfinite(e) & np.isfinite(n)
    if not ok.any():
        return out
    mask = block_mask()
    nrow, ncol = mask.shape
    j0 = np.clip(np.floor((w[ok] - margin + 180.0) * BLOCKS_PER_DEG), 0, ncol - 1).astype(np.int64)
    j1 = np.clip(np.floor((e[ok] + margin + 180.0) * BLOCKS_PER_DEG), 0, ncol - 1).astype(np.int64)
    i0 = np.clip(np.floor((90.0 - n[ok] - margin) * BLOCKS_PER_DEG), 0, nrow - 1).astype(np.int64)
    i1 = np.clip(np.floor((90.0 - s[ok] + margin) * BLOCKS_PER_DEG), 0, nrow - 1).astype(np.int64)
    # Integral image of only the window the queries touch (all of it for a world grid).
    r0, r1, c0, c1 = int(i0.min()), int(i1.max()) + 1, int(j0.min()), int(j1.max()) + 1
    sat = np.zeros((r1 - r0 + 1, c1 - c0 + 1), dtype=np.int32)
    np.cumsum(mask[r0:r1, c0:c1], axis=0, dtype=np.int32, out=sat[1:, 1:])
    np.cumsum(sat[1:, 1:], axis=1, out=sat[1:, 1:])
    i0 -= r0
    i1 -= r0 - 1
    j0 -= c0
    j1 -= c0 - 1
    total = sat[i1, j1] - sat[i0, j1] - sat[i1, j0] + sat[i0, j0]
    out[ok] = total > 0
    return out


# ------------------------------------------------------------------------------------------------
# Tile footprints
# ------------------------------------------------------------------------------------------------
def _is_wgs84_lonlat(crs: Any) -> bool:
    from pyproj import CRS

    c = CRS.from_user_input(crs)
    return c.is_geographic and c.equals(CRS.from_epsg(4326), ignore_axis_order=True)


def _fine_axis(n: int, chunk: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Tile boundaries along one axis (``nt + 1`` pixel offsets) and ``k`` points per tile edge."""
    nt = -(-n // chunk)
    starts = np.arange(nt, dtype=np.float64) * chunk
    ends = np.minimum(starts + chunk, n)
    bounds = np.append(starts, float(n))
    fine = (starts[:, None] + (ends - starts)[:, None] * (np.arange(k) / k)).ravel()
    return bounds, np.append(fine, float(n))


@dataclass(frozen=True)
class TileFootprints:
    """Lon/lat footprints of every tile of a grid, as flat arrays in row-major tile order.

    ``rings`` holds each tile's boundary (``4 * k`` lon/lat points, densified edges, not closed).
    ``west``..``north`` bound it; for a tile crossing the antimeridian ``west > east`` (it covers
    lon >= west and lon <= east); a tile holding a pole spans all longitudes up to the pole.
    """

    shape: tuple[int, int]  #: tile rows, tile columns
    chunk: int
    rings: np.ndarray  #: (n, 4k, 2) float64 lon/lat, NaN where outside the CRS domain
    west: np.ndarray
    south: np.ndarray
    east: np.ndarray
    north: np.ndarray
    valid: np.ndarray  #: every boundary point has finite lon/lat
    partial: np.ndarray  #: some, not all, boundary points are finite (kept, bounds approximate)
    crosses: np.ndarray  #: crosses the antimeridian (``west > east``)
    pole: np.ndarray  #: holds a pole

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def usable(self) -> np.ndarray:
        """Tiles with at least some finite footprint (the others are off the Earth)."""
        return self.valid | self.partial

    def polygons(self, index: np.ndarray) -> np.ndarray:
        """Lon/lat shapely geometries of tiles ``index`` (flat row-major indices).

        Ordinary tiles are their densified ring; antimeridian tiles two boxes, one per side; pole
        tiles the box from their far latitude to the pole; partial tiles their finite bounding box.
        """
        index = np.asarray(index, dtype=np.int64)
        out = np.empty(len(index), dtype=object)
        plain = self.valid[index] & ~self.crosses[index] & ~self.pole[index]
        if plain.any():
            out[plain] = shapely.polygons(self.rings[index[plain]])
        special = np.flatnonzero(~plain)
        for pos in special:
            i = index[pos]
            w, s, e, n = self.west[i], self.south[i], self.east[i], self.north[i]
            if not (self.valid[i] or self.partial[i]):
                out[pos] = shapely.Polygon()
            elif self.crosses[i] and not self.pole[i]:
                out[pos] = shapely.MultiPolygon([shapely.box(w, s, 180.0, n), shapely.box(-180.0, s, e, n)])
            else:
                out[pos] = shapely.box(w, s, e, n)
        return out

    def boxes(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Bounds of tiles ``index`` as (west, south, east, north) arrays (antimeridian: west > east)."""
        return self.west[index], self.south[index], self.east[index], self.north[index]


def tile_footprints(geobox: GeoBox, chunk: int, densify: int | None = None) -> TileFootprints:
    """Lon/lat footprints of every tile of ``geobox`` cut in ``chunk``-pixel tiles (vectorised)."""
    from pyproj import CRS, Transformer

    crs = geobox.crs
    crs_in = str(crs) if crs is not None else "EPSG:4326"
    lonlat = _is_wgs84_lonlat(crs_in)
    k = densify if densify is not None else (1 if lonlat else DENSIFY)
    ny, nx = geobox.shape.yx
    nty, ntx = tile_shape(geobox, chunk)
    yb, yf = _fine_axis(ny, chunk, k)
    xb, xf = _fine_axis(nx, chunk, k)
    a = geobox.affine

    # Row lines: every tile-row boundary, densified along x; column lines likewise along y.
    rx, ry = xf[None, :], yb[:, None]
    row_x = a.a * rx + a.b * ry + a.c
    row_y = a.d * rx + a.e * ry + a.f
    cx, cy = xb[:, None], yf[None, :]
    col_x = a.a * cx + a.b * cy + a.c
    col_y = a.d * cx + a.e * cy + a.f
    pole_tiles: list[int] = []
    if not lonlat:
        to_ll = Transformer.from_crs(CRS.from_user_input(crs_in), CRS.from_epsg(4326), always_xy=True)
        row_x, row_y = to_ll.transform(row_x, row_y, errcheck=False)
        col_x, col_y = to_ll.transform(col_x, col_y, errcheck=False)
        from_ll = Transformer.from_crs(CRS.from_epsg(4326), CRS.from_user_input(crs_in), always_xy=True)
        inv = ~a
        for lat in (90.0, -90.0):
            px, py = from_ll.transform(0.0, lat, errcheck=False)
            if np.isfinite(px) and np.isfinite(py):
                col, row = inv @ (px, py)
                if 0 <= row < ny and 0 <= col < nx:
                    pole_tiles.append(int(row // chunk) * ntx + int(col // chunk))
    row_x, row_y, col_x, col_y = (np.asarray(v, dtype=np.float64) for v in (row_x, row_y, col_x, col_y))
    for arr in (row_x, row_y, col_x, col_y):
        arr[~np.isfinite(arr)] = np.nan
    if lonlat:
        np.clip(row_y, -90.0, 90.0, out=row_y)
        np.clip(col_y, -90.0, 90.0, out=col_y)

    iy, ix = np.divmod(np.arange(nty * ntx, dtype=np.int64), ntx)
    j = np.arange(k, dtype=np.int64)
    top = (iy[:, None], ix[:, None] * k + j)
    right = (ix[:, None] + 1, iy[:, None] * k + j)
    bottom = (iy[:, None] + 1, ix[:, None] * k + k - j)
    left = (ix[:, None], iy[:, None] * k + k - j)
    lon = np.concatenate([row_x[top], col_x[right], row_x[bottom], col_x[left]], axis=1)
    lat = np.concatenate([row_y[top], col_y[right], row_y[bottom], col_y[left]], axis=1)
    rings = np.stack([lon, lat], axis=-1)

    finite = np.isfinite(lon) & np.isfinite(lat)
    nfin = finite.sum(axis=1)
    valid = nfin == lon.shape[1]
    partial = (nfin > 0) & ~valid
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: tiles off the Earth
        west = np.nanmin(lon, axis=1)
        east = np.nanmax(lon, axis=1)
        south = np.nanmin(lat, axis=1)
        north = np.nanmax(lat, axis=1)
        crosses = (east - west) > 180.0
        if crosses.any():
            # Across the antimeridian: west edge = smallest positive lon, east = largest negative.
            sub = lon[crosses]
            west[crosses] = np.nanmin(np.where(sub >= 0, sub, np.inf), axis=1)
            east[crosses] = np.nanmax(np.where(sub < 0, sub, -np.inf), axis=1)
    pole = np.zeros(len(lon), dtype=bool)
    for t in pole_tiles:
        pole[t] = True
        lat_t = lat[t][np.isfinite(lat[t])]
        up = float(np.mean(lat_t)) >= 0 if lat_t.size else True
        west[t], east[t] = -180.0, 180.0
        if up:
            north[t] = 90.0
        else:
            south[t] = -90.0
    crosses &= ~pole
    return TileFootprints(
        shape=(nty, ntx),
        chunk=chunk,
        rings=rings,
        west=west,
        south=south,
        east=east,
        north=north,
        valid=valid,
        partial=partial,
        crosses=crosses,
        pole=pole,
    )


def footprints_on_land(fp: TileFootprints, index: np.ndarray | None = None) -> np.ndarray:
    """Boolean per tile (all, or ``index``): does the tile touch land? Partial tiles: True."""
    idx = np.arange(fp.size) if index is None else np.asarray(index, dtype=np.int64)
    w, s, e, n = fp.west[idx], fp.south[idx], fp.east[idx], fp.north[idx]
    cross = fp.crosses[idx]
    # Antimeridian tiles: query [west, 180] and [-180, east] separately.
    e1 = np.where(cross, 180.0, e)
    land = any_land(w, s, e1, n)
    if cross.any():
        land[cross] |= any_land(np.full(cross.sum(), -180.0), s[cross], e[cross], n[cross])
    land |= fp.partial[idx]
    land &= fp.valid[idx] | fp.partial[idx]
    return land


# ------------------------------------------------------------------------------------------------
# Selection
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TileSelection:
    """The tiles of a grid that touch land (and the AOI), as flat row-major tile indices."""

    footprints: TileFootprints
    index: np.ndarray  #: int64, increasing (row-major)
    geobox: GeoBox

    @property
    def tiles_total(self) -> int:
        return self.footprints.size

    def tiles(self) -> list[Tile]:
        """The selected tiles as :class:`~cubeless.models.Tile` (row-major; edge tiles clipped)."""
        ny, nx = self.geobox.shape.yx
        chunk = self.footprints.chunk
        ntx = self.footprints.shape[1]
        iy, ix = np.divmod(self.index, ntx)
        y0, x0 = iy * chunk, ix * chunk
        rows = zip(
            iy.tolist(),
            ix.tolist(),
            y0.tolist(),
            x0.tolist(),
            np.minimum(chunk, ny - y0).tolist(),
            np.minimum(chunk, nx - x0).tolist(),
        )
        return _TILES.validate_python(
            [{"iy": a, "ix": b, "y0": c, "x0": d, "ny": e, "nx": f} for a, b, c, d, e, f in rows]
        )


def select_tiles(geobox: GeoBox, chunk: int, region: BaseGeometry | None = None) -> TileSelection:
    """Tiles touching land and, when ``region`` (lon/lat) is given, intersecting it."""
    fp = tile_footprints(geobox, chunk)
    idx = np.flatnonzero(fp.usable)
    if region is not None and idx.size:
        w, s, e, n = region.bounds
        # Cheap bounding-box pass first, exact polygon test on the survivors.
        tw, ts, te, tn = fp.boxes(idx)
        lon_hit = np.where(fp.crosses[idx], (e >= tw) | (w <= te), (te >= w) & (tw <= e))
        keep = fp.pole[idx] | fp.partial[idx] | (lon_hit & (tn >= s) & (ts <= n))
        idx = idx[keep]
    if idx.size:
        idx = idx[footprints_on_land(fp, idx)]
    if region is not None and idx.size:
        shapely.prepare(region)
        idx = idx[shapely.intersects(region, fp.polygons(idx))]
    return TileSelection(footprints=fp, index=idx, geobox=geobox)


def land_tiles(geobox: GeoBox, chunk: int, region: BaseGeometry | None = None) -> list[Tile]:
    """The tiles (edge tiles included, row-major) that touch land and intersect ``region`` if given.

    ``region`` is a lon/lat shapely geometry (the AOI or the bbox). See the module docstring for
    how conservative the land test is.
    """
    return select_tiles(geobox, chunk, region).tiles()


#: Tiles whose footprints are computed at once by :func:`count_tiles` (bounds its memory: about
#: 300 B per tile of a lon/lat grid, 1.5 KB of a projected one).
COUNT_BLOCK_TILES = 131_072


def count_tiles(geobox: GeoBox, chunk: int, region: BaseGeometry | None = None, *, stop_above: int | None = None) -> int:
    """How many tiles :func:`select_tiles` would select, computed in blocks of tile rows (memory
    bounded by :data:`COUNT_BLOCK_TILES`, whatever the grid's size); with ``stop_above`` it stops
    as soon as the count exceeds it and returns the count so far (a lower bound, > ``stop_above``).
    """
    ny, _ = geobox.shape.yx
    nty, ntx = tile_shape(geobox, chunk)
    rows = max(1, COUNT_BLOCK_TILES // max(1, ntx))
    total = 0
    for r0 in range(0, nty, rows):
        sub = geobox[r0 * chunk : min(ny, (r0 + rows) * chunk), :]
        total += int(select_tiles(sub, chunk, region).index.size)
        if stop_above is not None and total > stop_above:
            break
    return total
