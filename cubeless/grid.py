"""The cube grid: the target GeoBox from the spec, and the chunk-sized tiles that are its tasks.

Pixel edges are anchored to multiples of the resolution, so two cubes with the same CRS and
resolution share one grid. Row 0 is the north edge (negative y resolution).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Iterator

from odc.geo.geobox import GeoBox
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from .errors import SpecError
from .models import Grid, Tile
from .spec import CubeSpec


def load_aoi(ref: str) -> BaseGeometry:
    """Read an AOI GeoJSON (a path, file:// or http(s)/s3 URL) as one lon/lat geometry."""
    import fsspec

    try:
        with fsspec.open(ref, "rt") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise SpecError(f"spec field `aoi`: {ref!r} does not exist; give a GeoJSON file path or URL") from None
    except json.JSONDecodeError:
        raise SpecError(f"spec field `aoi`: {ref!r} is not JSON; give a GeoJSON Polygon, Feature or FeatureCollection") from None
    except OSError as exc:
        raise SpecError(f"spec field `aoi`: cannot read {ref!r} ({exc.__class__.__name__}); check the path or URL") from None
    return aoi_geometry(doc, ref)


def aoi_geometry(doc: object, ref: str = "aoi") -> BaseGeometry:
    """Union of the polygons in a GeoJSON geometry, Feature or FeatureCollection, validated."""
    from shapely.ops import unary_union

    def fail(why: str) -> SpecError:
        return SpecError(f"spec field `aoi`: {ref!r} {why}")

    if not isinstance(doc, dict) or "type" not in doc:
        raise fail("is not GeoJSON; give a Polygon, MultiPolygon, Feature or FeatureCollection")
    kind = doc["type"]
    if kind == "FeatureCollection":
        geoms = [f.get("geometry") for f in doc.get("features") or []]
    elif kind == "Feature":
        geoms = [doc.get("geometry")]
    else:
        geoms = [doc]
    geoms = [g for g in geoms if g]
    if not geoms:
        raise fail("has no geometry; add a Polygon feature")
    try:
        shapes = [shape(g) for g in geoms]
    except Exception:  # shapely raises several types for malformed coordinates
        raise fail("has malformed coordinates; check the GeoJSON") from None
    if any(s.geom_type not in ("Polygon", "MultiPolygon") for s in shapes):
        raise fail("must contain only Polygon or MultiPolygon geometries (an area, not points or lines)")
    geom = unary_union([s if s.is_valid else s.buffer(0) for s in shapes])
    if geom.is_empty or geom.area == 0:
        raise fail("encloses no area; check the polygon")
    w, s, e, n = geom.bounds
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= 90 and -90 <= n <= 90):
        raise fail("has coordinates outside lon -180..180 / lat -90..90; GeoJSON is lon/lat (EPSG:4326)")
    if e - w > 180:
        raise fail(
            "spans more than 180 degrees of longitude, which usually means it crosses the antimeridian; "
            "split it into two cubes, one each side of 180"
        )
    return geom


def spec_region(spec: CubeSpec, aoi: BaseGeometry | None = None) -> BaseGeometry:
    """The lon/lat region of the cube: the bbox, or the AOI geometry."""
    if spec.bbox is not None:
        return box(*spec.bbox)
    return aoi if aoi is not None else load_aoi(spec.aoi or "")


def cube_geobox(spec: CubeSpec, region: BaseGeometry | None = None) -> GeoBox:
    """The target grid covering the spec's region, in its CRS at its resolution."""
    return _geobox(spec.crs, spec.resolution, spec_region(spec, region).bounds)


@lru_cache(maxsize=16)
def _geobox(crs: str, resolution: float, lonlat_bounds: tuple[float, float, float, float]) -> GeoBox:
    from odc.geo.geom import BoundingBox

    bb = BoundingBox(*lonlat_bounds, crs="EPSG:4326").to_crs(crs)
    return GeoBox.from_bbox(bb, crs=crs, resolution=resolution)


def tile_shape(geobox: GeoBox, chunk: int) -> tuple[int, int]:
    """Number of tile rows and columns."""
    ny, nx = geobox.shape.yx
    return (-(-ny // chunk), -(-nx // chunk))


def tile_at(geobox: GeoBox, chunk: int, iy: int, ix: int) -> Tile:
    """Tile (iy, ix); edge tiles are clipped to the grid but keep their true offset iy*chunk, ix*chunk."""
    ny, nx = geobox.shape.yx
    y0, x0 = iy * chunk, ix * chunk
    if not (0 <= y0 < ny and 0 <= x0 < nx):
        raise IndexError(f"tile ({iy}, {ix}) is outside a {tile_shape(geobox, chunk)} tile grid")
    return Tile(iy=iy, ix=ix, y0=y0, x0=x0, ny=min(chunk, ny - y0), nx=min(chunk, nx - x0))


def iter_tiles(geobox: GeoBox, chunk: int) -> Iterator[Tile]:
    """Every tile, row-major."""
    nty, ntx = tile_shape(geobox, chunk)
    for iy in range(nty):
        for ix in range(ntx):
            yield tile_at(geobox, chunk, iy, ix)


def tile_geobox(geobox: GeoBox, tile: Tile) -> GeoBox:
    """The GeoBox of one tile: the cube grid's pixels [y0:y0+ny, x0:x0+nx]."""
    return geobox[tile.y0 : tile.y0 + tile.ny, tile.x0 : tile.x0 + tile.nx]


def grid_of(geobox: GeoBox, crs: str) -> Grid:
    """The plain-number form of a GeoBox (carried by every task, stored in the cube's attributes)."""
    a = geobox.affine
    ny, nx = geobox.shape.yx
    return Grid(crs=crs, transform=(a.a, a.b, a.c, a.d, a.e, a.f), height=ny, width=nx)


def geobox_of(grid: Grid) -> GeoBox:
    """Rebuild the GeoBox of a :class:`Grid`."""
    from affine import Affine

    return GeoBox((grid.height, grid.width), Affine(*grid.transform), grid.crs)
