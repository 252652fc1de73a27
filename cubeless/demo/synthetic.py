"""Synthetic Sentinel-2 L2A scenes whose every pixel value is known analytically.

The generator writes Cloud-Optimized GeoTIFFs (red, green, blue at 10 m as uint16, ``scl`` at 20 m
as uint8, nodata 0, internal overviews) plus STAC Items and a Collection that look like Earth
Search's ``sentinel-2-c1-l2a``. Its purpose is testing: the truth is a pure function of the
configuration, so a test can compute the expected cube without any code under test.

The truth model
---------------
* The **ground** is cut into blocks of ``block_deg`` x ``block_deg`` degrees (lon/lat, global
  anchor 0,0). Everything is constant on a block: the land cover (vegetation, bare soil, water,
  dark area, unclassified, seasonal snow), the clouds, thin cirrus and cloud shadows of each
  acquisition, and the reflectance of each band on each acquisition. Values are hashes of
  (seed, acquisition, band, block), so they are deterministic and cheap.
* An **acquisition** is one overpass (a datetime). It images some of the **tiles** (fixed UTM
  footprints like MGRS tiles, possibly in different zones). A **scene** is one tile at one
  acquisition: one STAC Item. Scenes of the same acquisition agree on the ground (as real
  Sentinel-2 tiles of one datatake do), so grouping them by solar day does not change values.
* Each scene has a **swath-edge strip** of nodata (band value 0 and SCL 0) along its west or east
  edge, a staircase of whole blocks.
* A source pixel takes the value of the block holding its **centre**. A pixel far from every
  block edge and footprint edge therefore has exactly the block's value, whatever the
  resampling (bilinear, average overviews, ...) as long as the kernel stays inside the block.

Use :func:`scene_truth` for one scene at any points (in any CRS) and :func:`expected_composite`
for the expected median/count of a time bin; both report ``edge_m``, the distance in metres to
the nearest block or footprint edge, so a test compares only pixels with ``edge_m >= margin``.
A safe margin is ``2 * max(scl_res, target pixel size in metres) + dilate * target pixel size``.

Everything is deterministic (seeded) and parameterised: :func:`demo_config` builds the small
two-zone demo set, :func:`bench_config` a single large tile with many dates.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

#: Asset keys of the reflectance bands, in the order written.
BANDS: tuple[str, ...] = ("red", "green", "blue")
#: Asset key of the scene classification layer.
SCL = "scl"
#: Earth Search ``sentinel-2-c1-l2a`` reflectance encoding: reflectance = DN * SCALE + OFFSET.
SCALE, OFFSET = 0.0001, -0.1
#: Default SCL classes treated as invalid (mirrors :class:`cubeless.spec.MaskSpec`).
DEFAULT_SCL_EXCLUDE: tuple[int, ...] = (0, 1, 3, 8, 9, 10)
#: Metres per degree of latitude (lower bound over latitudes, so distances are conservative).
M_PER_DEG_LAT = 110_574.0
#: Metres per degree of longitude at the equator.
M_PER_DEG_LON = 111_320.0

_BAND_INFO: dict[str, dict[str, Any]] = {
    "red": {"name": "B04", "common_name": "red", "center_wavelength": 0.665, "full_width_half_max": 0.038},
    "green": {"name": "B03", "common_name": "green", "center_wavelength": 0.56, "full_width_half_max": 0.045},
    "blue": {"name": "B02", "common_name": "blue", "center_wavelength": 0.49, "full_width_half_max": 0.098},
}
_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
]
_COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"

# -- land cover / classes ---------------------------------------------------------------------
NO_DATA, SATURATED, DARK, SHADOW, VEGETATION, BARE, WATER, UNCLASSIFIED = 0, 1, 2, 3, 4, 5, 6, 7
CLOUD_MEDIUM, CLOUD_HIGH, CIRRUS, SNOW = 8, 9, 10, 11

#: (base DN, spread DN) per class and band (red, green, blue). DN = reflectance * 1e4 + 1000.
_CLASS_DN: dict[int, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = {
    VEGETATION: ((1250, 350), (1550, 400), (1250, 250)),
    BARE: ((2700, 700), (2500, 600), (2200, 500)),
    WATER: ((1150, 200), (1350, 250), (1450, 250)),
    DARK: ((1060, 80), (1080, 80), (1100, 80)),
    UNCLASSIFIED: ((1900, 600), (1900, 600), (1900, 600)),
    SNOW: ((8600, 1200), (8800, 1100), (9000, 1000)),
    CLOUD_MEDIUM: ((5200, 2500), (5300, 2500), (5500, 2500)),
    CLOUD_HIGH: ((7400, 2000), (7500, 2000), (7700, 2000)),
}


# =============================================================================================
# Configuration
# =============================================================================================
@dataclass(frozen=True)
class TileDef:
    """A fixed scene footprint in one UTM zone (like an MGRS tile), imaged by several acquisitions.

    ``west``/``north`` and ``size_m`` are multiples of 60 m so the 10 m and 20 m grids share edges.
    """

    name: str  #: short tile name used in item ids, e.g. ``31TGL``
    epsg: int  #: UTM EPSG code, e.g. 32631
    west: float  #: easting of the west edge (m)
    north: float  #: northing of the north edge (m)
    size_m: float  #: side of the square footprint (m)

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in the tile's CRS."""
        return (self.west, self.north - self.size_m, self.west + self.size_m, self.north)


@dataclass(frozen=True)
class Acquisition:
    """One overpass: when, which tiles it images, and how cloudy the sky is (0-1)."""

    datetime: datetime  #: acquisition time (UTC, timezone-aware)
    tiles: tuple[str, ...]  #: names of the :class:`TileDef` s it images
    cloudiness: float = 0.3  #: probability that a 3x3-block cloud cell is cloudy
    platform: str = "sentinel-2a"
    strip_side: str = "west"  #: side of each scene carrying the swath-edge nodata strip


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines a synthetic scene set (and so its truth)."""

    tiles: tuple[TileDef, ...]
    acquisitions: tuple[Acquisition, ...]
    seed: int = 0
    collection_id: str = "sentinel-2-c1-l2a"
    #: Side of a truth block in degrees (lon and lat).
    block_deg: float = 0.004
    band_res: float = 10.0
    scl_res: float = 20.0
    #: Per-pixel Gaussian noise (DN std) on the reflectance bands; 0 keeps the truth exact.
    noise: float = 0.0
    #: Minimum width (blocks) of each scene's swath-edge nodata strip along its west or east edge
    #: (it widens by one block every 4 block rows going north); 0 disables the strip.
    strip_blocks: int = 2
    #: Lon/lat centre of the synthetic landscape (lake, mountains, persistent cloud are placed
    #: relative to it).
    center: tuple[float, float] = (6.0, 46.35)
    #: A small area covered by high-probability cloud on every acquisition (count 0 in the cube).
    persistent_cloud: bool = True
    blocksize: int = 512  #: COG internal tile size
    overview_factors: tuple[int, ...] = (2, 4, 8)

    def tile(self, name: str) -> TileDef:
        for t in self.tiles:
            if t.name == name:
                return t
        raise KeyError(f"no tile named {name!r}; tiles are {[t.name for t in self.tiles]}")

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (round-trips through :meth:`from_json`)."""
        doc = asdict(self)
        for a in doc["acquisitions"]:
            a["datetime"] = a["datetime"].isoformat()
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "SynthConfig":
        d = dict(doc)
        d["tiles"] = tuple(TileDef(**t) for t in d["tiles"])
        d["acquisitions"] = tuple(
            Acquisition(**{**a, "datetime": datetime.fromisoformat(a["datetime"]), "tiles": tuple(a["tiles"])})
            for a in d["acquisitions"]
        )
        d["center"] = tuple(d["center"])
        d["overview_factors"] = tuple(d["overview_factors"])
        return cls(**d)


@dataclass(frozen=True)
class Scene:
    """One tile imaged at one acquisition: one STAC Item."""

    id: str
    tile: TileDef
    acquisition: int  #: index into ``config.acquisitions``
    datetime: datetime
    platform: str
    cloud_cover: float | None = None  #: ``eo:cloud_cover`` (percent), known once generated
    hrefs: Mapping[str, str] = field(default_factory=dict)  #: asset key -> href


def _snap(v: float, step: float = 60.0) -> float:
    return float(round(v / step) * step)


def _utm_epsg(lon: float, lat: float) -> int:
    zone = int((lon + 180) // 6) + 1
    return (32600 if lat >= 0 else 32700) + zone


def _tile_at(name: str, epsg: int, lon: float, lat: float, size_m: float, *, anchor: str) -> TileDef:
    """A tile whose ``anchor`` ("center", "east" or "west" edge midpoint) sits at lon/lat."""
    from pyproj import Transformer

    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    west = {"center": x - size_m / 2, "east": x - size_m, "west": x}[anchor]
    return TileDef(name=name, epsg=epsg, west=_snap(west), north=_snap(y + size_m / 2), size_m=_snap(size_m))


def _month_dates(year: int, month: int, days: Sequence[int], hour: int = 10, minute: int = 27) -> list[datetime]:
    return [datetime(year, month, d, hour, minute, 31, tzinfo=timezone.utc) for d in days]


def demo_config(
    *,
    seed: int = 0,
    center: tuple[float, float] = (6.0, 46.35),
    tile_size_m: float = 7680.0,
    overlap_m: float = 2400.0,
    months: Sequence[tuple[int, int]] = ((2024, 5), (2024, 7)),
    days: Sequence[int] = (2, 7, 12, 17, 22, 27),
    noise: float = 0.0,
    block_deg: float = 0.004,
) -> SynthConfig:
    """The demo/test set: two tiles either side of a UTM zone boundary, overlapping across it.

    With the defaults: tiles ``31TZZ`` (EPSG:32631) and ``32TLS`` (EPSG:32632) of 7.68 km,
    overlapping by 2.4 km across 6 deg E at 46.35 deg N; six acquisitions in May and in July 2024
    (June has none, so a May-July cube has an empty middle bin). Acquisitions 1 and 4 of each
    month image only one tile, the others both: 5 scenes per tile per month, 20 scenes in all.
    """
    lon, lat = center
    half = overlap_m / 2 / (M_PER_DEG_LON * math.cos(math.radians(lat)))
    west_epsg, east_epsg = _utm_epsg(lon - 0.01, lat), _utm_epsg(lon + 0.01, lat)
    t_west = _tile_at(f"{west_epsg % 100}TZZ", west_epsg, lon + half, lat, tile_size_m, anchor="east")
    t_east = _tile_at(f"{east_epsg % 100}TLS", east_epsg, lon - half, lat, tile_size_m, anchor="west")
    cloudiness = (0.15, 0.55, 0.3, 0.75, 0.05, 0.4)
    acqs: list[Acquisition] = []
    for y, m in months:
        for i, when in enumerate(_month_dates(y, m, days)):
            tiles = (t_west.name,) if i == 1 else (t_east.name,) if i == 4 else (t_west.name, t_east.name)
            acqs.append(
                Acquisition(
                    datetime=when,
                    tiles=tiles,
                    cloudiness=cloudiness[i % len(cloudiness)],
                    platform="sentinel-2a" if i % 2 == 0 else "sentinel-2b",
                    strip_side="west" if i % 2 == 0 else "east",
                )
            )
    return SynthConfig(tiles=(t_west, t_east), acquisitions=tuple(acqs), seed=seed, center=center, noise=noise, block_deg=block_deg)


def bench_config(
    *,
    seed: int = 0,
    center: tuple[float, float] = (9.0, 46.35),
    tile_size_m: float = 38400.0,
    scenes: int = 25,
    start: date = date(2024, 5, 1),
    every_days: int = 2,
    noise: float = 30.0,
    block_deg: float = 0.004,
) -> SynthConfig:
    """A benchmark set: one tile (default 38.4 km, covering a 36 km cube tile) imaged ``scenes`` times.

    Acquisitions are ``every_days`` apart from ``start`` (25 x 2 days: May to mid-June 2024).
    """
    lon, lat = center
    epsg = _utm_epsg(lon, lat)
    tile = _tile_at(f"{epsg % 100}TBN", epsg, lon, lat, tile_size_m, anchor="center")
    cloudiness = (0.15, 0.55, 0.3, 0.75, 0.05, 0.4, 0.2)
    acqs = tuple(
        Acquisition(
            datetime=datetime(start.year, start.month, start.day, 10, 27, 31, tzinfo=timezone.utc)
            + timedelta(days=every_days * i),
            tiles=(tile.name,),
            cloudiness=cloudiness[i % len(cloudiness)],
            platform="sentinel-2a" if i % 2 == 0 else "sentinel-2b",
            strip_side="west" if i % 2 == 0 else "east",
        )
        for i in range(scenes)
    )
    return SynthConfig(tiles=(tile,), acquisitions=acqs, seed=seed, center=center, noise=noise, block_deg=block_deg)


def scenes_of(config: SynthConfig) -> list[Scene]:
    """Every scene of the configuration, ordered by datetime then tile (no cloud cover/hrefs yet)."""
    out: list[Scene] = []
    for a, acq in enumerate(config.acquisitions):
        for name in acq.tiles:
            tile = config.tile(name)
            plat = "A" if acq.platform.endswith("a") else "B"
            sid = f"S2{plat}_{tile.name}_{acq.datetime:%Y%m%d}_0_L2A"
            out.append(Scene(id=sid, tile=tile, acquisition=a, datetime=acq.datetime, platform=acq.platform))
    out.sort(key=lambda s: (s.datetime, s.tile.name))
    return out


# =============================================================================================
# Deterministic hashing (splitmix64) and the block model
# =============================================================================================
_G = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _tag(name: str) -> int:
    return zlib.crc32(name.encode())


def _hash(seed: int, *parts: Any) -> np.ndarray:
    """splitmix64 of a sequence of integers/integer arrays (broadcast), as uint64."""
    with np.errstate(over="ignore"):
        h = np.asarray(np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
        for p in parts:
            z = h + _G + np.asarray(p).astype(np.int64).astype(np.uint64)
            z = (z ^ (z >> np.uint64(30))) * _M1
            z = (z ^ (z >> np.uint64(27))) * _M2
            h = z ^ (z >> np.uint64(31))
    return h


def _uniform(seed: int, *parts: Any) -> np.ndarray:
    """Deterministic uniform [0, 1) from a hash."""
    return (_hash(seed, *parts) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def block_index(lon: np.ndarray, lat: np.ndarray, block_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Global block column/row of lon/lat points (floor(lon / block), floor(lat / block))."""
    return (
        np.floor(np.asarray(lon, dtype=np.float64) / block_deg).astype(np.int64),
        np.floor(np.asarray(lat, dtype=np.float64) / block_deg).astype(np.int64),
    )


def _centre_block(config: SynthConfig) -> tuple[int, int]:
    i, j = block_index(np.array(config.center[0]), np.array(config.center[1]), config.block_deg)
    return int(i), int(j)


def _land_cover(config: SynthConfig, ib: np.ndarray, jb: np.ndarray) -> np.ndarray:
    """Static land cover of blocks (without snow): vegetation, bare, water, dark, unclassified."""
    ic, jc = _centre_block(config)
    u, v = ib - ic, jb - jc
    r = _uniform(config.seed, _tag("landcover"), ib, jb)
    lc = np.full(np.broadcast(ib, jb).shape, VEGETATION, dtype=np.uint8)
    lc[r < 0.14] = BARE
    lc[r < 0.04] = UNCLASSIFIED
    lc[r < 0.02] = DARK
    # a lake straddling the zone boundary, south-west of centre
    lake = ((u + 1) / 5.5) ** 2 + ((v + 3) / 2.5) ** 2 <= 1.0
    lc[lake] = WATER
    return lc


def _mountain(config: SynthConfig, ib: np.ndarray, jb: np.ndarray) -> np.ndarray:
    """Blocks of the north-east 'mountains' that can hold seasonal snow."""
    ic, jc = _centre_block(config)
    return ((ib - ic) >= 6) & ((jb - jc) >= 2)


def _snow_probability(when: datetime) -> float:
    """Share of mountain blocks under snow: all before early April, none after the end of June."""
    doy = when.timetuple().tm_yday
    return float(min(1.0, max(0.0, (180 - doy) / 80)))


def _cloud(config: SynthConfig, a: int, ib: np.ndarray, jb: np.ndarray) -> np.ndarray:
    """Cloud class (0, 8 or 9) of blocks at acquisition ``a``: 3x3-block cells, persistent patch."""
    acq = config.acquisitions[a]
    cell = _uniform(config.seed, _tag("cloudcell"), a, np.floor_divide(ib, 3), np.floor_divide(jb, 3))
    cloudy = cell < acq.cloudiness
    high = _uniform(config.seed, _tag("cloudhigh"), a, ib, jb) < 0.55
    out = np.where(cloudy, np.where(high, CLOUD_HIGH, CLOUD_MEDIUM), 0).astype(np.uint8)
    if config.persistent_cloud:
        ic, jc = _centre_block(config)
        u, v = ib - ic, jb - jc
        patch = (u >= -12) & (u <= -11) & (v >= 1) & (v <= 2)
        out = np.where(patch, CLOUD_HIGH, out).astype(np.uint8)
    return out


def ground_class(config: SynthConfig, a: int, ib: np.ndarray, jb: np.ndarray) -> np.ndarray:
    """SCL class of blocks at acquisition ``a`` (no swath strip): cloud > cirrus > shadow > surface."""
    ib, jb = np.broadcast_arrays(np.asarray(ib, dtype=np.int64), np.asarray(jb, dtype=np.int64))
    acq = config.acquisitions[a]
    cls = _surface_class(config, a, ib, jb)
    # shadow cast to the north-west of clouds (sun in the south-east in the morning)
    shadow = (_cloud(config, a, ib + 1, jb - 1) > 0)
    cls = np.where(shadow, SHADOW, cls).astype(np.uint8)
    cirrus = _uniform(config.seed, _tag("cirrus"), a, ib, jb) < 0.12 * acq.cloudiness
    cls = np.where(cirrus, CIRRUS, cls).astype(np.uint8)
    cloud = _cloud(config, a, ib, jb)
    return np.where(cloud > 0, cloud, cls).astype(np.uint8)


def _surface_class(config: SynthConfig, a: int, ib: np.ndarray, jb: np.ndarray) -> np.ndarray:
    """The surface at acquisition ``a`` (also what lies under shadow/cirrus): land cover or snow."""
    cls = _land_cover(config, ib, jb)
    snow_p = _snow_probability(config.acquisitions[a].datetime)
    if snow_p > 0:
        melt = _uniform(config.seed, _tag("snowline"), ib, jb)
        cls = np.where(_mountain(config, ib, jb) & (melt < snow_p), SNOW, cls).astype(np.uint8)
    return cls


def ground_values(config: SynthConfig, a: int, ib: np.ndarray, jb: np.ndarray, cls: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Band DNs (uint16, never 0) of blocks at acquisition ``a`` (no swath strip, no noise)."""
    ib, jb = np.broadcast_arrays(np.asarray(ib, dtype=np.int64), np.asarray(jb, dtype=np.int64))
    if cls is None:
        cls = ground_class(config, a, ib, jb)
    surface = _surface_class(config, a, ib, jb)
    shared = _uniform(config.seed, _tag("cloudbright"), a, ib, jb)  # clouds are grey: one draw
    out: dict[str, np.ndarray] = {}
    for b, band in enumerate(BANDS):
        static = _uniform(config.seed, _tag("static"), b, ib, jb)
        dyn = _uniform(config.seed, _tag("dynamic"), a, b, ib, jb)
        mix = 0.7 * static + 0.3 * dyn
        val = np.zeros(ib.shape, dtype=np.float64)
        for k, bands_dn in _CLASS_DN.items():
            base, spread = bands_dn[b]
            frac = shared if k in (CLOUD_MEDIUM, CLOUD_HIGH) else mix
            # surface value: used for the class itself and under shadow / cirrus
            val = np.where((cls == k) | (((cls == SHADOW) | (cls == CIRRUS)) & (surface == k)), base + spread * frac, val)
        val = np.where(cls == SHADOW, 1000 + (val - 1000) * 0.35, val)
        val = np.where(cls == CIRRUS, val + 800 + 700 * dyn, val)
        out[band] = np.clip(np.floor(val), 1, 65535).astype(np.uint16)
    return out


def tile_lonlat_bounds(tile: TileDef) -> tuple[float, float, float, float]:
    """Lon/lat bounds of a tile footprint (edges densified)."""
    return _lonlat_bounds(tile.epsg, tile.bounds)


@lru_cache(maxsize=64)
def _lonlat_bounds(epsg: int, bounds: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    from pyproj import Transformer

    return Transformer.from_crs(epsg, 4326, always_xy=True).transform_bounds(*bounds, densify_pts=51)


def strip_mask(config: SynthConfig, scene: Scene, ib: np.ndarray, jb: np.ndarray) -> np.ndarray:
    """True where the scene's swath-edge nodata strip covers the block (a slanted staircase)."""
    ib, jb = np.broadcast_arrays(np.asarray(ib, dtype=np.int64), np.asarray(jb, dtype=np.int64))
    if config.strip_blocks <= 0:
        return np.zeros(ib.shape, dtype=bool)
    w, s, e, n = tile_lonlat_bounds(scene.tile)
    (iw, ie), (js, _) = block_index(np.array([w, e]), np.array([s, n]), config.block_deg)
    width = config.strip_blocks + int(_uniform(config.seed, _tag("strip"), scene.acquisition, _tag(scene.tile.name)) * 2)
    step = np.floor_divide(jb - js, 4)  # one block wider every 4 block rows going north
    if config.acquisitions[scene.acquisition].strip_side == "west":
        return (ib - iw) < width + step
    return (ie - ib) < width + step


# =============================================================================================
# Truth at points
# =============================================================================================
@dataclass(frozen=True)
class SceneTruth:
    """A scene's exact source values at points (before any resampling)."""

    values: Mapping[str, np.ndarray]  #: band -> uint16 DN, 0 where not covered or nodata
    scl: np.ndarray  #: uint8 class, 0 where not covered or nodata
    covered: np.ndarray  #: bool: the point lies inside the scene footprint
    edge_m: np.ndarray  #: metres to the nearest block edge (if covered) or footprint edge


@lru_cache(maxsize=32)
def _transformer(src: str | int, dst: str | int) -> Any:
    from pyproj import Transformer

    return Transformer.from_crs(src, dst, always_xy=True)


@lru_cache(maxsize=32)
def _is_lonlat(crs: str) -> bool:
    from pyproj import CRS

    return CRS.from_user_input(crs).equals(CRS.from_epsg(4326))


def _to_lonlat(x: np.ndarray, y: np.ndarray, crs: str) -> tuple[np.ndarray, np.ndarray]:
    if _is_lonlat(crs):
        return x, y
    lon, lat = _transformer(crs, 4326).transform(x, y)
    return np.asarray(lon), np.asarray(lat)


def _block_edge_m(lon: np.ndarray, lat: np.ndarray, block_deg: float) -> np.ndarray:
    fx = lon / block_deg - np.floor(lon / block_deg)
    fy = lat / block_deg - np.floor(lat / block_deg)
    dlon = np.minimum(fx, 1 - fx) * block_deg * M_PER_DEG_LON * np.cos(np.radians(lat))
    dlat = np.minimum(fy, 1 - fy) * block_deg * M_PER_DEG_LAT
    return np.minimum(dlon, dlat)


def scene_truth(config: SynthConfig, scene: Scene, x: Any, y: Any, crs: str = "EPSG:4326") -> SceneTruth:
    """Exact values of ``scene`` at points ``(x, y)`` given in ``crs`` (arrays of any shape).

    Noise (``config.noise``) is not included: compare against noise-free sets only.
    """
    x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    lon, lat = _to_lonlat(x, y, crs)
    sx, sy = _transformer(crs, scene.tile.epsg).transform(x, y)
    sx, sy = np.asarray(sx), np.asarray(sy)
    w, s, e, n = scene.tile.bounds
    covered = (sx >= w) & (sx < e) & (sy > s) & (sy <= n)
    foot = np.minimum(np.minimum(np.abs(sx - w), np.abs(e - sx)), np.minimum(np.abs(sy - s), np.abs(n - sy)))
    ib, jb = block_index(lon, lat, config.block_deg)
    cls = ground_class(config, scene.acquisition, ib, jb)
    vals = ground_values(config, scene.acquisition, ib, jb, cls)
    keep = covered & ~strip_mask(config, scene, ib, jb)
    edge = np.where(covered, np.minimum(foot, _block_edge_m(lon, lat, config.block_deg)), foot)
    return SceneTruth(
        values={b: np.where(keep, v, 0).astype(np.uint16) for b, v in vals.items()},
        scl=np.where(keep, cls, 0).astype(np.uint8),
        covered=covered,
        edge_m=edge,
    )


@dataclass(frozen=True)
class ExpectedComposite:
    """The expected median composite of one time bin at points."""

    values: Mapping[str, np.ndarray]  #: band -> uint16 median of valid observations, 0 if none
    count: np.ndarray  #: uint16 number of valid observations (after solar-day grouping)
    edge_m: np.ndarray  #: min distance (m) to any edge over the bin's scenes: compare where >= margin
    scenes: tuple[str, ...]  #: ids of the scenes used


def median_uint16(stack: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """numpy's median of the valid entries along axis 0 (mean of the middle two for an even count),
    rounded half to even, as uint16; 0 where nothing is valid."""
    if stack.shape[0] == 0:
        return np.zeros(stack.shape[1:], dtype=np.uint16)
    data = np.where(valid, stack.astype(np.float64), np.nan)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(data, axis=0)
    return np.where(np.isnan(med), 0, np.round(med)).astype(np.uint16)


@dataclass(frozen=True)
class Observations:
    """The valid observations of a time bin at points, one per solar-day group of scenes."""

    values: Mapping[str, np.ndarray]  #: band -> (groups, *shape) uint16 fused DN, 0 where nodata
    valid: np.ndarray  #: (groups, *shape) bool: SCL not excluded and every band has data
    data: np.ndarray  #: (groups, *shape) bool: every band has data (valid, or masked by its SCL class)
    edge_m: np.ndarray  #: min distance (m) to any edge over the bin's scenes
    scenes: tuple[str, ...]  #: ids of the scenes used


def observations(
    config: SynthConfig,
    scenes: Sequence[Scene],
    x: Any,
    y: Any,
    crs: str = "EPSG:4326",
    *,
    start: date | None = None,
    end: date | None = None,
    bands: Sequence[str] = BANDS,
    scl_exclude: Iterable[int] = DEFAULT_SCL_EXCLUDE,
    max_cloud_cover: float | None = None,
    group_by_day: bool = True,
) -> Observations:
    """The observations of the scenes with ``start <= date < end`` at points (see
    :func:`expected_composite`, which takes their median)."""
    chosen = [
        s
        for s in scenes
        if (start is None or s.datetime.date() >= start)
        and (end is None or s.datetime.date() < end)
        and (max_cloud_cover is None or s.cloud_cover is None or s.cloud_cover <= max_cloud_cover)
    ]
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    shape = np.broadcast(x, y).shape
    exclude = np.asarray(sorted(set(scl_exclude)), dtype=np.uint8)
    groups: dict[Any, list[Scene]] = {}
    for s in chosen:
        groups.setdefault(s.datetime.date() if group_by_day else s.id, []).append(s)
    edge = np.full(shape, np.inf)
    obs_vals: dict[str, list[np.ndarray]] = {b: [] for b in bands}
    obs_valid: list[np.ndarray] = []
    obs_data: list[np.ndarray] = []
    for _, members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        fused = {b: np.zeros(shape, dtype=np.uint16) for b in bands}
        scl = np.zeros(shape, dtype=np.uint8)
        for s in members:
            t = scene_truth(config, s, x, y, crs)
            edge = np.minimum(edge, t.edge_m)
            for b in bands:
                fused[b] = np.where(fused[b] == 0, t.values[b], fused[b])
            scl = np.where(scl == 0, t.scl, scl)
        good = ~np.isin(scl, exclude)
        for b in bands:
            obs_vals[b].append(fused[b])
        has = np.all([fused[b] != 0 for b in bands], axis=0)
        obs_valid.append(good & has)
        obs_data.append(has)
    n = len(obs_valid)
    return Observations(
        values={b: np.array(obs_vals[b], dtype=np.uint16).reshape((n, *shape)) for b in bands},
        valid=np.array(obs_valid, dtype=bool).reshape((n, *shape)),
        data=np.array(obs_data, dtype=bool).reshape((n, *shape)),
        edge_m=edge,
        scenes=tuple(s.id for s in chosen),
    )


def expected_composite(
    config: SynthConfig,
    scenes: Sequence[Scene],
    x: Any,
    y: Any,
    crs: str = "EPSG:4326",
    **kwargs: Any,
) -> ExpectedComposite:
    """Expected median and valid count of the scenes with ``start <= date < end`` at points
    (keywords: those of :func:`observations`).

    An observation is valid when its SCL class is not in ``scl_exclude`` and its value is not 0.
    With ``group_by_day`` (what cubeless does) scenes of one UTC day are fused first (first
    non-nodata wins; the synthetic scenes agree on the ground, so order does not matter).
    """
    obs = observations(config, scenes, x, y, crs, **kwargs)
    values = {b: median_uint16(stack, obs.valid & (stack != 0)) for b, stack in obs.values.items()}
    return ExpectedComposite(
        values=values,
        count=obs.valid.sum(axis=0).astype(np.uint16),
        edge_m=obs.edge_m,
        scenes=obs.scenes,
    )


# =============================================================================================
# Rasters
# =============================================================================================
def _grid(tile: TileDef, res: float) -> tuple[tuple[float, ...], tuple[int, int]]:
    n = int(round(tile.size_m / res))
    return (res, 0.0, tile.west, 0.0, -res, tile.north), (n, n)


@lru_cache(maxsize=4)
def _grid_blocks(epsg: int, transform: tuple[float, ...], shape: tuple[int, int], block_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Global block indices (ib, jb) of every pixel centre of a grid (cached: shared by dates)."""
    res, _, x0, _, yres, y0 = transform
    ny, nx = shape
    xs = x0 + (np.arange(nx) + 0.5) * res
    ib = np.empty(shape, dtype=np.int32)
    jb = np.empty(shape, dtype=np.int32)
    tr = _transformer(epsg, 4326)
    step = max(1, 2_000_000 // max(nx, 1))  # rows per batch: bounded memory on large tiles
    for r0 in range(0, ny, step):
        ys = y0 + (np.arange(r0, min(ny, r0 + step)) + 0.5) * yres
        xx, yy = np.meshgrid(xs, ys)
        lon, lat = tr.transform(xx, yy)
        bi, bj = block_index(lon, lat, block_deg)
        ib[r0 : r0 + len(ys)] = bi
        jb[r0 : r0 + len(ys)] = bj
    ib.setflags(write=False)
    jb.setflags(write=False)
    return ib, jb


def scene_arrays(config: SynthConfig, scene: Scene) -> dict[str, np.ndarray]:
    """The raster arrays of one scene: ``red``/``green``/``blue`` (10 m uint16), ``scl`` (20 m uint8)."""
    out: dict[str, np.ndarray] = {}
    for res, keys in ((config.band_res, BANDS), (config.scl_res, (SCL,))):
        transform, shape = _grid(scene.tile, res)
        ib, jb = _grid_blocks(scene.tile.epsg, transform, shape, config.block_deg)
        # evaluate on the (small) table of blocks the grid touches, then gather per pixel
        i0, j0 = int(ib.min()), int(jb.min())
        bi, bj = np.meshgrid(np.arange(i0, int(ib.max()) + 1), np.arange(j0, int(jb.max()) + 1))
        cls = ground_class(config, scene.acquisition, bi, bj)
        strip = strip_mask(config, scene, bi, bj)
        li, lj = ib - i0, jb - j0
        if SCL in keys:
            out[SCL] = np.where(strip, 0, cls).astype(np.uint8)[lj, li]
            continue
        vals = ground_values(config, scene.acquisition, bi, bj, cls)
        rng = np.random.default_rng([config.seed, scene.acquisition, _tag(scene.tile.name)]) if config.noise > 0 else None
        for band in BANDS:
            table = np.where(strip, 0, vals[band]).astype(np.uint16)
            arr = table[lj, li]
            if rng is not None:
                noisy = rng.standard_normal(arr.shape, dtype=np.float32)
                noisy *= np.float32(config.noise)
                noisy += arr
                np.rint(noisy, out=noisy)
                np.clip(noisy, 1, 65535, out=noisy)
                arr = np.where(arr == 0, 0, noisy.astype(np.uint16))
            out[band] = arr
    return out


def write_cog(path: Path, array: np.ndarray, *, crs: str, transform: Sequence[float], blocksize: int = 512,
              overview_factors: Sequence[int] = (2, 4, 8), resampling: str = "average") -> None:
    """Write a single-band COG (deflate, nodata 0) with internal overviews ``overview_factors``."""
    import rasterio
    import rasterio.shutil
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.io import MemoryFile

    h, w = array.shape
    factors = [f for f in overview_factors if min(h, w) // f >= 1]
    # the staging copy is uncompressed: only the final COG is compressed (once)
    profile = dict(driver="GTiff", width=w, height=h, count=1, dtype=array.dtype.name, crs=crs,
                   transform=Affine(*transform[:6]), nodata=0, tiled=True, blockxsize=blocksize,
                   blockysize=blocksize)
    path.parent.mkdir(parents=True, exist_ok=True)
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(array, 1)
            if factors:
                ds.build_overviews(factors, Resampling[resampling])
                ds.update_tags(ns="rio_overview", resampling=resampling)
        with mem.open() as src:
            rasterio.shutil.copy(src, str(path), driver="COG", blocksize=blocksize, compress="DEFLATE",
                                 predictor="YES", overviews="FORCE_USE_EXISTING" if factors else "NONE")


def cloud_cover_of(scl: np.ndarray) -> float:
    """``eo:cloud_cover``: percent of data pixels classed cloud medium/high or thin cirrus."""
    data = scl != 0
    if not data.any():
        return 0.0
    cloudy = np.isin(scl, (CLOUD_MEDIUM, CLOUD_HIGH, CIRRUS)) & data
    return round(100.0 * float(cloudy.sum()) / float(data.sum()), 2)


# =============================================================================================
# STAC
# =============================================================================================
def _footprint(tile: TileDef) -> dict[str, Any]:
    """GeoJSON polygon (lon/lat) of the tile, edges densified (UTM squares are curved in lon/lat)."""
    from pyproj import Transformer

    w, s, e, n = tile.bounds
    k = 8
    ring = [(w + (e - w) * i / k, n) for i in range(k)] + [(e, n - (n - s) * i / k) for i in range(k)]
    ring += [(e - (e - w) * i / k, s) for i in range(k)] + [(w, s + (n - s) * i / k) for i in range(k)]
    tr = Transformer.from_crs(tile.epsg, 4326, always_xy=True)
    pts = [tuple(round(c, 7) for c in tr.transform(x, y)) for x, y in ring]
    pts = pts[::-1]  # counter-clockwise (right-hand rule)
    pts.append(pts[0])
    return {"type": "Polygon", "coordinates": [[list(p) for p in pts]]}


def _asset(href: str, key: str, tile: TileDef, res: float) -> dict[str, Any]:
    transform, shape = _grid(tile, res)
    asset: dict[str, Any] = {
        "href": href,
        "type": _COG_TYPE,
        "roles": ["data"],
        "proj:code": tile.crs,
        "proj:shape": list(shape),
        "proj:transform": [float(v) for v in transform],
    }
    if key == SCL:
        asset["title"] = "Scene classification map (SCL)"
        asset["raster:bands"] = [{"nodata": 0, "data_type": "uint8", "spatial_resolution": res, "unit": "none"}]
    else:
        info = _BAND_INFO[key]
        asset["title"] = f"{key.capitalize()} ({info['name']}) - {res:g}m"
        asset["eo:bands"] = [info]
        asset["gsd"] = res
        asset["raster:bands"] = [{"nodata": 0, "data_type": "uint16", "bits_per_sample": 15, "spatial_resolution": res,
                                  "scale": SCALE, "offset": OFFSET}]
    return asset


def scene_item(config: SynthConfig, scene: Scene, *, collection_href: str | None = None) -> dict[str, Any]:
    """The STAC Item (dict) of a scene; asset hrefs from ``scene.hrefs``, a ``collection`` link
    to ``collection_href`` (required by STAC when the ``collection`` field is set)."""
    geom = _footprint(scene.tile)
    xs = [p[0] for p in geom["coordinates"][0]]
    ys = [p[1] for p in geom["coordinates"][0]]
    props: dict[str, Any] = {
        "datetime": scene.datetime.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "platform": scene.platform,
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "gsd": config.band_res,
        "eo:cloud_cover": scene.cloud_cover if scene.cloud_cover is not None else 0.0,
        "proj:code": scene.tile.crs,
        "proj:epsg": scene.tile.epsg,
        "s2:mgrs_tile": scene.tile.name,
        "created": scene.datetime.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cubeless:synthetic": {"seed": config.seed, "acquisition": scene.acquisition},
    }
    assets = {b: _asset(scene.hrefs.get(b, f"{b}.tif"), b, scene.tile, config.band_res) for b in BANDS}
    assets[SCL] = _asset(scene.hrefs.get(SCL, f"{SCL}.tif"), SCL, scene.tile, config.scl_res)
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": list(_EXTENSIONS),
        "id": scene.id,
        "geometry": geom,
        "bbox": [min(xs), min(ys), max(xs), max(ys)],
        "properties": props,
        "links": [{"rel": "collection", "href": collection_href or "../collection.json", "type": "application/json"}],
        "assets": assets,
        "collection": config.collection_id,
    }


def collection_dict(config: SynthConfig, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The STAC Collection (dict) of the set: extent from the items, item_assets like Earth Search."""
    boxes = [i["bbox"] for i in items] or [[*config.center, *config.center]]
    times = sorted(i["properties"]["datetime"] for i in items) or [None]
    item_assets: dict[str, Any] = {}
    for key in (*BANDS, SCL):
        item_assets[key] = {"type": _COG_TYPE, "roles": ["data"]}
        if key == SCL:
            item_assets[key]["raster:bands"] = [{"nodata": 0, "data_type": "uint8", "spatial_resolution": config.scl_res}]
        else:
            item_assets[key]["eo:bands"] = [_BAND_INFO[key]]
            item_assets[key]["raster:bands"] = [{"nodata": 0, "data_type": "uint16", "spatial_resolution": config.band_res,
                                                 "scale": SCALE, "offset": OFFSET}]
    return {
        "type": "Collection",
        "stac_version": "1.1.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json",
        ],
        "id": config.collection_id,
        "title": "Synthetic Sentinel-2 L2A (cubeless test data)",
        "description": "Synthetic Sentinel-2 Level-2A scenes with analytically known values, laid out like "
        "Earth Search sentinel-2-c1-l2a (red/green/blue 10 m, scl 20 m, COG).",
        "license": "other",
        "keywords": ["sentinel-2", "synthetic", "cubeless"],
        "extent": {
            "spatial": {"bbox": [[min(b[0] for b in boxes), min(b[1] for b in boxes),
                                  max(b[2] for b in boxes), max(b[3] for b in boxes)]]},
            "temporal": {"interval": [[times[0], times[-1]]]},
        },
        "links": [],
        "item_assets": item_assets,
        "summaries": {"platform": sorted({i["properties"]["platform"] for i in items}),
                      "constellation": ["sentinel-2"], "instruments": ["msi"]},
    }


# =============================================================================================
# The scene set on disk
# =============================================================================================
@dataclass(frozen=True)
class SceneSet:
    """A written synthetic set: its configuration, scenes, and STAC documents."""

    config: SynthConfig
    root: Path  #: directory holding ``collection.json``, ``items.ndjson``, ``items.json``, ``data/``
    scenes: tuple[Scene, ...]
    items: tuple[dict[str, Any], ...]
    collection: dict[str, Any]

    @property
    def collection_path(self) -> Path:
        return self.root / "collection.json"

    @property
    def items_path(self) -> Path:
        """Newline-delimited JSON, one Item per line."""
        return self.root / "items.ndjson"

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """Lon/lat bounds of all footprints."""
        b = self.collection["extent"]["spatial"]["bbox"][0]
        return (b[0], b[1], b[2], b[3])

    def scenes_in(self, start: date, end: date, *, max_cloud_cover: float | None = None) -> list[Scene]:
        """Scenes with ``start <= date < end`` (and cloud cover at most ``max_cloud_cover``)."""
        return [
            s
            for s in self.scenes
            if start <= s.datetime.date() < end
            and (max_cloud_cover is None or (s.cloud_cover or 0.0) <= max_cloud_cover)
        ]

    def expected(self, x: Any, y: Any, crs: str = "EPSG:4326", **kwargs: Any) -> ExpectedComposite:
        """:func:`expected_composite` over this set's scenes."""
        return expected_composite(self.config, self.scenes, x, y, crs, **kwargs)


def _href(path: Path, root: Path, base_href: str | None) -> str:
    if base_href is None:
        return str(path.resolve())
    if base_href == "file://":
        return path.resolve().as_uri()
    return base_href.rstrip("/") + "/" + path.relative_to(root).as_posix()


def write_scene(config: SynthConfig, scene: Scene, root: Path, *, base_href: str | None = None) -> Scene:
    """Write one scene's COGs under ``root/data/<id>/``; returns it with cloud cover and hrefs."""
    arrays = scene_arrays(config, scene)
    hrefs: dict[str, str] = {}
    for key, arr in arrays.items():
        res = config.scl_res if key == SCL else config.band_res
        transform, _ = _grid(scene.tile, res)
        path = root / "data" / scene.id / f"{key}.tif"
        write_cog(path, arr, crs=scene.tile.crs, transform=transform, blocksize=config.blocksize,
                  overview_factors=config.overview_factors,
                  resampling="nearest" if key == SCL else "average")
        hrefs[key] = _href(path, root, base_href)
    return replace(scene, cloud_cover=cloud_cover_of(arrays[SCL]), hrefs=hrefs)


def generate(config: SynthConfig, out_dir: str | Path, *, base_href: str | None = None, workers: int = 1) -> SceneSet:
    """Write every scene's COGs, the Items and the Collection under ``out_dir``.

    ``base_href``: ``None`` (default) writes absolute local paths; ``"file://"`` writes file URIs;
    any other prefix (e.g. ``"s3://bucket/synth"``) replaces ``out_dir`` in asset hrefs.
    ``workers`` > 1 writes scenes in that many processes (same bytes as 1 worker).
    Layout: ``data/<item id>/<asset>.tif``, ``items/<item id>.json``, ``items.ndjson``,
    ``items.json`` (ItemCollection), ``collection.json``, ``synthetic.json`` (the config).
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    todo = scenes_of(config)
    if workers > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
            futures = [pool.submit(write_scene, config, s, root, base_href=base_href) for s in todo]
            scenes = [f.result() for f in futures]
    else:
        scenes = [write_scene(config, s, root, base_href=base_href) for s in todo]
    collection_href = _href(root / "collection.json", root, base_href)
    items = [scene_item(config, s, collection_href=collection_href) for s in scenes]
    collection = collection_dict(config, items)
    _write_catalog(root, config, items, collection)
    return SceneSet(config=config, root=root, scenes=tuple(scenes), items=tuple(items), collection=collection)


def _write_catalog(root: Path, config: SynthConfig, items: Sequence[Mapping[str, Any]], collection: Mapping[str, Any]) -> None:
    (root / "items").mkdir(parents=True, exist_ok=True)
    for item in items:
        (root / "items" / f"{item['id']}.json").write_text(json.dumps(item, indent=1))
    (root / "items.ndjson").write_text("".join(json.dumps(i) + "\n" for i in items))
    (root / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": list(items)}))
    (root / "collection.json").write_text(json.dumps(collection, indent=1))
    (root / "synthetic.json").write_text(json.dumps(config.to_json(), indent=1))


def load_scene_set(out_dir: str | Path) -> SceneSet:
    """Reopen a set written by :func:`generate` (config, scenes with cloud cover and hrefs, STAC)."""
    root = Path(out_dir)
    config = SynthConfig.from_json(json.loads((root / "synthetic.json").read_text()))
    items = [json.loads(line) for line in (root / "items.ndjson").read_text().splitlines() if line.strip()]
    by_id = {i["id"]: i for i in items}
    scenes = []
    for s in scenes_of(config):
        item = by_id[s.id]
        scenes.append(replace(s, cloud_cover=item["properties"]["eo:cloud_cover"],
                              hrefs={k: a["href"] for k, a in item["assets"].items()}))
    collection = json.loads((root / "collection.json").read_text())
    return SceneSet(config=config, root=root, scenes=tuple(scenes), items=tuple(items), collection=collection)


def rewrite_hrefs(doc: Mapping[str, Any], old_prefix: str, new_prefix: str) -> dict[str, Any]:
    """A copy of an Item (or Collection) with asset and link hrefs starting ``old_prefix`` moved
    to ``new_prefix`` (e.g. a local directory to ``s3://bucket/synth``)."""
    out = json.loads(json.dumps(doc))
    old = old_prefix.rstrip("/")
    new = new_prefix.rstrip("/")

    def fix(href: str) -> str:
        return new + href[len(old):] if href == old or href.startswith(old + "/") else href

    for asset in (out.get("assets") or {}).values():
        asset["href"] = fix(asset["href"])
    for link in out.get("links") or []:
        link["href"] = fix(link["href"])
    return out


def rebase(scene_set: SceneSet, new_prefix: str, out_dir: str | Path | None = None) -> SceneSet:
    """The set with asset hrefs pointing under ``new_prefix`` instead of its local root.

    Writes the rewritten STAC documents (not the COGs) to ``out_dir`` when given; upload
    ``scene_set.root / "data"`` to ``new_prefix + "/data"`` for the hrefs to resolve.
    """
    old_local = str(scene_set.root.resolve())
    old_uri = scene_set.root.resolve().as_uri()
    items = []
    for item in scene_set.items:
        first = next(iter(item["assets"].values()))["href"]
        old = old_uri if first.startswith("file://") else old_local
        if not (first.startswith(old_local) or first.startswith(old_uri)):
            old = first.rsplit("/data/", 1)[0]
        items.append(rewrite_hrefs(item, old, new_prefix))
    by_id = {i["id"]: i for i in items}
    scenes = tuple(replace(s, hrefs={k: a["href"] for k, a in by_id[s.id]["assets"].items()}) for s in scene_set.scenes)
    root = scene_set.root
    if out_dir is not None:
        root = Path(out_dir)
        root.mkdir(parents=True, exist_ok=True)
        _write_catalog(root, scene_set.config, items, scene_set.collection)
    return replace(scene_set, root=root, scenes=scenes, items=tuple(items))
