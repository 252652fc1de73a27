"""Map tiles, TileJSON and point queries of a committed cube (what ``cubeless serve`` answers).

The tile math is rio-tiler's: every band of one time step is a 2-D ``xarray.DataArray`` read by
:class:`rio_tiler.io.XarrayReader` in morecantile's ``WebMercatorQuad``; only the chunks under the
tile are read (the arrays stay lazy; there is no dask). Rendering is rio-tiler's too
(``ImageData.apply_expression`` / ``rescale`` / ``apply_colormap`` / ``render``).

Values are raw DNs (0 = no data, transparent). A request names a ``preset`` or its own ``bands``
(1 or 3) or ``expression`` (band names as variables, e.g. ``(nir-red)/(nir+red)``), a
``rescale`` range and, for one band, a ``colormap`` (any rio-tiler colormap name).

Needs the ``map`` extra (``pip install cubeless[map]``: rio-tiler, rioxarray).
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import CubelessError, UserError

if TYPE_CHECKING:
    import xarray as xr

#: The tile grid: morecantile's WebMercatorQuad (256 px tiles).
TMS_ID = "WebMercatorQuad"
TILE_SIZE = 256
#: Rescale of the reflectance presets in DN (Sentinel-2 L2A: DN 1000 = reflectance 0 since
#: baseline 04.00): 0..~0.2 reflectance, a usual true-colour stretch for vegetated land.
REFLECTANCE_RANGE = (1000.0, 3000.0)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class MapError(CubelessError):
    """A tile, point or cube request that cannot be answered (HTTP 400/404)."""

    status = 400


class NotFound(MapError):
    status = 404


class OutsideCube(NotFound):
    """A tile that does not touch the cube (served as an empty 204 response)."""


class TileQuery(BaseModel):
    """What one tile request asks for (the query string of ``/tiles/{z}/{x}/{y}.png``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    time: int = Field(0, description="time step index (negative counts from the end)")
    preset: Literal["truecolor", "falsecolor", "count", "ndvi"] | None = None
    bands: tuple[str, ...] | None = None
    expression: str | None = None
    rescale: tuple[float, float] | None = None
    colormap: str | None = None

    @field_validator("bands", mode="before")
    @classmethod
    def _split_bands(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(b.strip() for b in v.split(",") if b.strip())
        return v

    @field_validator("rescale", mode="before")
    @classmethod
    def _split_rescale(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(float(p) for p in v.split(","))
        return v


@dataclass(frozen=True)
class Render:
    """A resolved tile request: which variables, how combined, how coloured."""

    bands: tuple[str, ...]
    expression: str | None
    rescale: tuple[float, float]
    colormap: str | None


PRESETS: dict[str, dict[str, Any]] = {
    "truecolor": {"bands": ("red", "green", "blue"), "rescale": REFLECTANCE_RANGE},
    "falsecolor": {"bands": ("nir", "red", "green"), "rescale": (1000.0, 5000.0)},
    "count": {"bands": ("count",), "colormap": "viridis"},
    "ndvi": {"expression": "(nir-red)/(nir+red)", "bands": ("nir", "red"), "rescale": (-0.2, 0.9), "colormap": "rdylgn"},
}


@dataclass
class MapCube:
    """One committed cube opened for map reads (lazy arrays; safe to share between threads)."""

    store: str
    ds: "xr.Dataset"
    variables: tuple[str, ...]
    times: tuple[date, ...]
    ydim: str
    xdim: str
    max_count: int = 1
    #: the reduced levels of the pyramid: (level, its dataset), finest first (see cubeless.pyramid)
    levels: list[tuple[Any, "xr.Dataset"]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- metadata --------------------------------------------------------------------------------
    @property
    def crs(self) -> Any:
        return self.ds[self.variables[0]].rio.crs

    @property
    def transform(self) -> Any:
        return self.ds[self.variables[0]].rio.transform()

    def lonlat_bounds(self) -> tuple[float, float, float, float]:
        from rasterio.warp import transform_bounds

        b = self.ds[self.variables[0]].rio.bounds()
        return tuple(float(v) for v in transform_bounds(self.crs, "EPSG:4326", *b, densify_pts=21))  # type: ignore[return-value]

    def zoom_range(self) -> tuple[int, int]:
        with self._reader(self.variables[0], 0) as r:
            return int(r.minzoom), int(r.maxzoom)

    def time_index(self, t: int) -> int:
        n = len(self.times)
        if n == 0:
            raise NotFound(f"{self.store} has no committed time steps yet; run the cube first")
        if not -n <= t < n:
            raise NotFound(f"time {t} is outside the cube's {n} time steps (0..{n - 1})")
        return t % n

    # -- requests --------------------------------------------------------------------------------
    def resolve(self, q: TileQuery) -> Render:
        """The bands/expression/rescale/colormap a query means (preset values, overridden by the query's)."""
        base: dict[str, Any] = dict(PRESETS[q.preset]) if q.preset else {}
        if q.preset is None and q.bands is None and q.expression is None:
            base = dict(PRESETS["truecolor" if {"red", "green", "blue"} <= set(self.variables) else "count"])
        if q.expression is not None:
            names = tuple(dict.fromkeys(n for n in _NAME.findall(q.expression) if n in self.variables))
            if not names:
                raise MapError(f"expression {q.expression!r} names no variable of the cube; use some of {list(self.variables)}")
            base.update(expression=q.expression, bands=names)
        elif q.bands is not None:
            base.update(bands=q.bands, expression=None)
        bands = tuple(base["bands"])
        missing = [b for b in bands if b not in self.variables]
        if missing:
            raise MapError(f"the cube has no variable {missing[0]!r}; use one of {list(self.variables)}")
        if base.get("expression") is None and len(bands) not in (1, 3):
            raise MapError(f"bands={','.join(bands)}: give 1 band (with a colormap) or 3 (red,green,blue order)")
        rescale = q.rescale or base.get("rescale")
        if rescale is None:
            rescale = (0.0, float(max(self.max_count, 1))) if bands == ("count",) else REFLECTANCE_RANGE
        if not rescale[1] > rescale[0]:
            raise MapError(f"rescale={rescale[0]},{rescale[1]}: the maximum must exceed the minimum")
        cmap = q.colormap if q.colormap is not None else base.get("colormap")
        single = base.get("expression") is not None or len(bands) == 1
        if cmap is not None:
            from rio_tiler.colormap import cmap as cmaps

            if cmap not in cmaps.list():
                raise MapError(f"colormap {cmap!r} is unknown; use one of rio-tiler's, e.g. viridis, magma, rdylgn")
            if not single:
                raise MapError("a colormap needs one band or an expression; drop colormap or give one band")
        return Render(bands=bands, expression=base.get("expression"), rescale=(float(rescale[0]), float(rescale[1])), colormap=cmap)

    def _band(self, name: str, t: int, level: int = 0) -> "xr.DataArray":
        ds = self.ds if level == 0 else self.levels[level - 1][1]
        da = ds[name].isel(time=t)
        return da.rio.write_nodata(0)

    def _reader(self, name: str, t: int, level: int = 0) -> Any:
        from morecantile import tms
        from rio_tiler.io import XarrayReader

        return XarrayReader(self._band(name, t, level), tms=tms.get(TMS_ID))

    def level_for(self, z: int, x: int, y: int) -> int:
        """The pyramid level a tile reads: the coarsest whose pixel is no larger than the tile's
        (GDAL's choice of overview), 0 (full resolution) when the cube has no pyramid."""
        if not self.levels:
            return 0
        from morecantile import tms
        from rasterio.warp import transform_bounds

        b = tms.get(TMS_ID).xy_bounds(x, y, z)
        left, bottom, right, top = transform_bounds("EPSG:3857", self.crs, b.left, b.bottom, b.right, b.top, densify_pts=5)
        tile_px = min(right - left, top - bottom) / TILE_SIZE
        res0 = abs(float(self.transform.a))
        best = 0
        for i, (lv, _) in enumerate(self.levels, start=1):
            if res0 * lv.factor <= tile_px * (1 + 1e-9):
                best = i
        return best

    def tile_data(self, z: int, x: int, y: int, t: int, bands: Sequence[str]) -> Any:
        """The raw DNs of ``bands`` at time step ``t`` on tile z/x/y (a rio-tiler ``ImageData``,
        nearest resampling, masked where a band is 0), read from the pyramid level of
        :meth:`level_for` (``count`` of a reduced level is divided by its pixels per pixel)."""
        from rio_tiler.errors import TileOutsideBounds
        from rio_tiler.models import ImageData

        from .store import COUNT

        t = self.time_index(t)
        level = self.level_for(z, x, y)
        parts = []
        for b in bands:
            with self._reader(b, t, level) as r:
                try:
                    part = r.tile(x, y, z, tilesize=TILE_SIZE, reproject_method="nearest")
                except TileOutsideBounds:
                    raise OutsideCube(f"tile {z}/{x}/{y} is outside the cube") from None
            if b == COUNT and level:
                # a reduced level sums count over factor**2 pixels: show observations per pixel
                f2 = float(self.levels[level - 1][0].factor ** 2)
                part.array = part.array.astype("float64") / f2
            parts.append(part)
        if len({p.array.dtype for p in parts}) > 1:
            for p in parts:
                p.array = p.array.astype("float64")
        img = ImageData.create_from_list(parts)
        img.band_descriptions = list(bands)
        return img

    def render_tile(self, z: int, x: int, y: int, q: TileQuery) -> bytes:
        """The PNG of tile z/x/y for query ``q`` (RGBA: no data is transparent)."""
        from rio_tiler.colormap import cmap as cmaps

        r = self.resolve(q)
        img = self.tile_data(z, x, y, q.time, r.bands)
        if r.expression is not None:
            expr = r.expression
            for i, b in enumerate(r.bands):
                expr = re.sub(rf"\b{re.escape(b)}\b", f"b{i + 1}", expr)
            img.array = img.array.astype("float64")
            img = img.apply_expression(expr)
        img.rescale(in_range=(r.rescale,) * img.count)
        if r.colormap is not None:
            img = img.apply_colormap(cmaps.get(r.colormap))
        return img.render(img_format="PNG", add_mask=True)

    def point(self, lon: float, lat: float) -> dict[str, Any]:
        """Every variable at the pixel holding (lon, lat), across all committed time steps."""
        from pyproj import Transformer
        from rasterio.transform import rowcol

        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise MapError(f"point {lon},{lat} is not a lon,lat pair in degrees")
        x, y = Transformer.from_crs("EPSG:4326", self.crs, always_xy=True).transform(lon, lat)
        row, col = rowcol(self.transform, x, y)
        ny, nx = self.ds.sizes[self.ydim], self.ds.sizes[self.xdim]
        if not (0 <= row < ny and 0 <= col < nx) or not all(map(math.isfinite, (x, y))):
            raise NotFound(f"point {lon},{lat} is outside the cube")
        values = {v: [int(a) for a in np.asarray(self.ds[v][:, int(row), int(col)].values)] for v in self.variables}
        return {
            "lon": lon, "lat": lat, "row": int(row), "col": int(col),
            "times": [d.isoformat() for d in self.times],
            "values": values,
            "nodata": 0,
        }

    def describe(self) -> dict[str, Any]:
        minz, maxz = self.zoom_range()
        return {
            "store": self.store,
            "variables": list(self.variables),
            "times": [d.isoformat() for d in self.times],
            "bounds": list(self.lonlat_bounds()),
            "minzoom": minz,
            "maxzoom": maxz,
            "max_count": self.max_count,
            "presets": [p for p in PRESETS if set(PRESETS[p]["bands"]) <= set(self.variables)],
            "shape": {"time": len(self.times), self.ydim: int(self.ds.sizes[self.ydim]), self.xdim: int(self.ds.sizes[self.xdim])},
        }

    def tilejson(self, tiles_url: str) -> dict[str, Any]:
        """TileJSON 3.0.0 of the cube for a tile URL template (``.../{z}/{x}/{y}.png?...``)."""
        minz, maxz = self.zoom_range()
        w, s, e, n = self.lonlat_bounds()
        return {
            "tilejson": "3.0.0",
            "name": self.ds.attrs.get("title", self.store),
            "tiles": [tiles_url],
            "minzoom": minz,
            "maxzoom": maxz,
            "bounds": [w, s, e, n],
            "center": [(w + e) / 2, (s + n) / 2, minz],
            "scheme": "xyz",
        }


def _require_map_extra() -> None:
    try:
        import rio_tiler  # noqa: F401
        import rioxarray  # noqa: F401
    except ImportError:
        raise UserError("the map needs rio-tiler and rioxarray: pip install 'cubeless[map]'") from None


def open_map_cube(store: str) -> MapCube:
    """Open a committed cube for tiles and points (raises :class:`NotFound` when there is none)."""
    _require_map_extra()
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    from . import fs
    from .pyramid import levels_of
    from .store import COUNT, cube_info, open_cube

    store = fs.normalize(store)
    info = cube_info(store)
    if info is None:
        raise NotFound(f"{store} holds no cube; give the path of a cube (a *.zarr folder) or of a folder of cubes")
    ds = open_cube(store, raw=True)  # raw DNs, 0 = no data
    spatial = [d for d in ("y", "latitude", "lat") if d in ds.dims]
    ydim = spatial[0] if spatial else "y"
    xdim = {"y": "x", "latitude": "longitude", "lat": "lon"}[ydim]
    variables = tuple(v for v in ds.data_vars if ds[v].dims == ("time", ydim, xdim))
    times = tuple(b.start for b in info.committed_bins)
    levels = []
    for lv in levels_of(ds.attrs.get("cubeless") or {}):
        lds = open_cube(store, raw=True, group=lv.path)
        levels.append((lv, lds.isel(time=slice(0, len(times)))))
    cube = MapCube(store=store, ds=ds, variables=variables, times=times, ydim=ydim, xdim=xdim, levels=levels)
    if COUNT in variables and times:
        # the count colour scale: the largest count of the last step's coarse sample (cheap: strided)
        step = max(1, max(ds.sizes[ydim], ds.sizes[xdim]) // 256)
        sample = np.asarray(ds[COUNT][-1, ::step, ::step].values)
        cube.max_count = int(sample.max()) if sample.size else 1
    return cube
