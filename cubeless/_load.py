"""Reading scenes for :func:`cubeless.compose.compose`: GDAL setup, item parsing, odc-stac loads.

How reads stay cheap:

* one ``odc.stac.load`` per phase, eager (no dask), its ``pool=`` threads doing the I/O; each
  (band, observation) is one read of exactly the tile's window;
* odc-loader reads from a COG overview when the target grid is coarser than the source: it
  computes the integer shrink factor (e.g. 3 for 10 m -> 30 m) and opens the largest overview
  whose factor does not exceed it (here the 2x one), then warps from there. Overviews hold
  whatever the producer computed (usually averages), so the SCL class layer is read without
  overviews (classes must not be averaged);
* GDAL is configured once per process for cloud reads (:data:`GDAL_OPTIONS`): no directory
  listings or side-car probes, HTTP/2 multiplexing, merged range requests, retries;
* bytes fetched over the network are measured with GDAL's own network statistics
  (``VSINetworkStats*``), reached through ctypes in the libgdal rasterio already loaded. They are
  process-wide counters: exact when a process composes one task at a time (the local runner's
  worker processes, a Lambda), else the sum of concurrent tasks. Local file reads are not counted.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import threading
from datetime import date
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

#: GDAL configuration for reading COGs from object stores / https (applied in odc-stac's reader
#: threads through ``odc.stac.configure_rio``).
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

PROJ_EXT = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER_EXT = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"

_config_lock = threading.Lock()
_configured = False


def configure_gdal(*, aws: Mapping[str, Any] | None = None, **overrides: str) -> None:
    """Set the process-wide GDAL options odc-stac uses in its reader threads.

    Called by :func:`ensure_gdal` on first use with no arguments; call it earlier to pass
    ``aws=`` (``rasterio.session.AWSSession`` arguments, e.g. ``{"aws_unsigned": True}``) or
    extra/overriding GDAL options. Calling again replaces the previous configuration.
    """
    global _configured
    import odc.stac

    with _config_lock:
        odc.stac.configure_rio(cloud_defaults=True, aws=dict(aws) if aws else None, **{**GDAL_OPTIONS, **overrides})
        _configured = True


def _odc_configured() -> bool:
    """Whether someone already called ``odc.stac.configure_rio``/``configure_s3_access``."""
    try:
        from odc.loader._rio import _CFG  # private, hence the guard

        return bool(_CFG.configured)
    except (ImportError, AttributeError):  # pragma: no cover - odc-loader internals moved
        return False


def ensure_gdal() -> None:
    """Configure GDAL once (unless :func:`configure_gdal` or odc-stac's own configuration already
    ran: a caller's settings win), and enable network statistics."""
    if not _configured and not _odc_configured():
        configure_gdal()
    _NetStats.enable()


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


# -- loading ------------------------------------------------------------------------------------
class SolarDayKey:
    """odc-stac ``groupby`` key: the item's solar date at the tile's centre longitude (what
    ``groupby="solar_day"`` computes), remembering each item's key by its position."""

    def __init__(self, lon: float) -> None:
        self.lon = lon
        self.keys: dict[int, date] = {}

    def __call__(self, item: Any, parsed: Any, idx: int) -> date:
        key = parsed.solar_date_at(self.lon).date()
        self.keys[idx] = key
        return key


def load_stack(
    items: Sequence[Any],
    bands: Sequence[str],
    geobox: Any,
    *,
    groupby: Callable[[Any, Any, int], Any],
    resampling: Mapping[str, str],
    dtype: Mapping[str, str],
    threads: int,
    use_overviews: bool = True,
    guard: Callable[[str], str] | None = None,
) -> dict[str, np.ndarray]:
    """Load ``bands`` of ``items`` onto ``geobox`` eagerly: band -> (t, y, x) array.

    Observations are the groups of ``groupby`` in sorted key order; within a group odc-stac copies
    pixels from the items in (time, id) order where nothing valid (non-nodata) was copied yet.
    Nodata is 0 for every band. ``guard`` sees (and may refuse) every URL before it is opened.
    """
    import odc.stac

    ds = odc.stac.load(
        items,
        bands=list(bands),
        geobox=geobox,
        groupby=groupby,
        resampling=dict(resampling),
        dtype=dict(dtype),
        nodata=0,
        pool=threads,
        use_overviews=use_overviews,
        patch_url=guard,
        fail_on_error=True,
    )
    return {b: ds[b].data for b in bands}


def default_io_threads(*, remote: bool = True) -> int:
    """Reader threads: network reads wait on latency, so 4 per CPU (8..32); local reads are CPU
    bound (decompression, warping), so one per CPU."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(8, min(32, 4 * cpus)) if remote else max(1, cpus)


def is_remote(href: str) -> bool:
    """Whether GDAL reads ``href`` over the network (anything with a scheme other than file)."""
    scheme, sep, _ = href.partition("://")
    return bool(sep) and scheme.lower() != "file"


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
