"""The demo's cube specs (plain dicts, valid :class:`cubeless.spec.CubeSpec` input).

* :func:`demo_spec`: a cube over the synthetic scene set served by a local STAC API, in
  EPSG:4326 (spanning both UTM zones) or a projected CRS (``DEMO_UTM_CRS``).
* :func:`earth_search_spec`: the same kind of cube over real Sentinel-2 data on Earth Search
  (needs internet), a small area of Vermont straddling the UTM 18/19 boundary at 72 deg W.
"""

from __future__ import annotations

import calendar
from datetime import date
from typing import Any, Sequence

from .synthetic import SynthConfig, tile_lonlat_bounds, demo_config

#: The projected variant of the demo cube: UTM zone 32N (the eastern synthetic tile's zone).
DEMO_UTM_CRS = "EPSG:32632"
#: Earth Search v1, the public STAC API of Sentinel-2 on AWS.
EARTH_SEARCH = "https://earth-search.aws.element84.com/v1"


def demo_extent(config: SynthConfig) -> tuple[tuple[float, float, float, float], date, date]:
    """Lon/lat bbox covering every tile, and the first/last day of the acquisitions' months."""
    boxes = [tile_lonlat_bounds(t) for t in config.tiles]
    bbox = (
        round(min(b[0] for b in boxes), 6),
        round(min(b[1] for b in boxes), 6),
        round(max(b[2] for b in boxes), 6),
        round(max(b[3] for b in boxes), 6),
    )
    first = min(a.datetime for a in config.acquisitions).date()
    last = max(a.datetime for a in config.acquisitions).date()
    end = date(last.year, last.month, calendar.monthrange(last.year, last.month)[1])
    return bbox, first.replace(day=1), end


def demo_spec(
    stac_url: str,
    store: str,
    *,
    crs: str = "EPSG:4326",
    config: SynthConfig | None = None,
    name: str | None = None,
    resolution: float | None = None,
    chunk: int | None = None,
    bands: Sequence[str] = ("red", "green", "blue"),
    max_cloud_cover: float | None = None,
) -> dict[str, Any]:
    """A spec for a monthly cube over the synthetic set ``config`` (default :func:`demo_config`).

    Defaults: EPSG:4326 at 0.00027 deg (~30 m) with 256-pixel chunks (a 638 x 266 grid: 3 x 2
    tiles, the last row 10 pixels high), or a projected CRS at 20 m with 256-pixel chunks;
    May-July 2024 (three bins, June empty). Runs in seconds on 2 cores.
    """
    from pyproj import CRS

    config = config or demo_config()
    bbox, start, end = demo_extent(config)
    geographic = CRS.from_user_input(crs).is_geographic
    if name is None:
        code = CRS.from_user_input(crs).to_epsg()
        name = f"demo-{code}" if code else "demo"
    spec: dict[str, Any] = {
        "name": name,
        "stac_api": stac_url,
        "collection": config.collection_id,
        "bbox": list(bbox),
        "start": start.isoformat(),
        "end": end.isoformat(),
        "interval": "month",
        "crs": crs,
        "resolution": resolution if resolution is not None else (0.00027 if geographic else 20.0),
        "chunk": chunk if chunk is not None else 256,
        "bands": list(bands),
        "mask": {"scl_exclude": [0, 1, 3, 8, 9, 10], "dilate": 0, "scl_band": "scl"},
        "resampling": "bilinear",
        "store": store,
    }
    if max_cloud_cover is not None:
        spec["max_cloud_cover"] = max_cloud_cover
    return spec


def earth_search_spec(
    store: str,
    *,
    name: str = "vermont",
    bbox: tuple[float, float, float, float] = (-72.15, 44.25, -71.85, 44.45),
    start: str = "2023-07-01",
    end: str = "2023-08-31",
    crs: str = "EPSG:4326",
    resolution: float = 0.00027,
    chunk: int = 512,
    max_cloud_cover: float | None = 80.0,
) -> dict[str, Any]:
    """A two-month cube over part of Vermont from Earth Search ``sentinel-2-c1-l2a`` (needs internet).

    The default bbox (about 24 x 22 km, 1111 x 741 pixels: 3 x 2 tiles of 512) straddles the UTM
    18/19 boundary, so scenes in both zones are mosaicked, like the synthetic demo.
    """
    spec: dict[str, Any] = {
        "name": name,
        "stac_api": EARTH_SEARCH,
        "collection": "sentinel-2-c1-l2a",
        "bbox": list(bbox),
        "start": start,
        "end": end,
        "interval": "month",
        "crs": crs,
        "resolution": resolution,
        "chunk": chunk,
        "bands": ["red", "green", "blue"],
        "mask": {"scl_exclude": [0, 1, 3, 8, 9, 10], "dilate": 0, "scl_band": "scl"},
        "resampling": "bilinear",
        "store": store,
    }
    if max_cloud_cover is not None:
        spec["max_cloud_cover"] = max_cloud_cover
    return spec
