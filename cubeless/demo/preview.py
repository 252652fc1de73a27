"""True-colour PNG previews of one time step of a cube (any Zarr with red/green/blue (time, y, x)).

Independent of how the cube was made: it only needs variables ``red``, ``green``, ``blue`` with
dims ``(time, y, x)`` or ``(time, latitude, longitude)``, 0 meaning no data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import UserError


class PreviewError(UserError):
    """The preview cannot be made from this store (no cube, no such time step, a band missing)."""

    __str__ = Exception.__str__  # not KeyError's quoted repr in the subclasses below


class NoSuchTime(PreviewError, KeyError):
    """No time step has that label."""


class TimeOutOfRange(PreviewError, IndexError):
    """No time step has that index."""


class NoSuchBand(PreviewError, KeyError):
    """The cube lacks a band the preview needs."""


@dataclass(frozen=True)
class PreviewOptions:
    """How a preview is rendered."""

    bands: tuple[str, str, str] = ("red", "green", "blue")
    #: Lower/upper percentiles of the non-zero values mapped to 0 and 255.
    percentiles: tuple[float, float] = (2.0, 98.0)
    #: One stretch for all three bands (keeps colour balance) or one per band.
    per_band: bool = False
    #: Pixels where every band is 0 (no data) are transparent (RGBA) instead of black (RGB).
    transparent_nodata: bool = True
    #: Downsample (by striding) so the longest side is at most this many pixels; None keeps all.
    max_size: int | None = None


def _open(store: str | Path, storage_options: Mapping[str, Any] | None) -> Any:
    import xarray as xr
    from zarr.errors import GroupNotFoundError, NodeTypeValidationError

    from .. import icechunk_store

    if not storage_options and icechunk_store.is_repo(str(store)):
        from ..store import open_cube

        return open_cube(str(store), raw=True)
    try:
        return xr.open_zarr(str(store), chunks=None, mask_and_scale=False,
                            storage_options=dict(storage_options) if storage_options else None)
    except (FileNotFoundError, GroupNotFoundError, NodeTypeValidationError, KeyError):
        raise PreviewError(f"{store} holds no cube; check the store path (a folder or s3:// URL "
                           "written by `cubeless run`)") from None


def _select_time(ds: Any, when: int | str) -> Any:
    """One time step by position (``int`` or a string of digits) or by date label (``"2024-05"``,
    ``"2024-05-01"``: the first step whose start date begins with it)."""
    if "time" not in ds.dims:
        return ds
    n = ds.sizes["time"]
    if n == 0:
        raise TimeOutOfRange("the cube has no committed time steps yet; use `cubeless run SPEC --local` to build one")
    if isinstance(when, str) and when.strip().lstrip("-").isdigit():
        when = int(when)  # "0", "-1" from a command line are positions
    labels = [str(v)[:10] for v in ds["time"].values]
    shown = ", ".join(labels) if n <= 12 else f"{', '.join(labels[:3])}, ..., {', '.join(labels[-3:])}"
    if isinstance(when, (int, np.integer)):
        if not -n <= int(when) < n:
            raise TimeOutOfRange(f"time index {when} is outside the cube's {n} time step(s); use 0..{n - 1} "
                                 f"(-{n}..-1 from the end) or a date: {shown}")
        return ds.isel(time=int(when))
    hits = [i for i, lab in enumerate(labels) if lab.startswith(str(when))]
    if not hits:
        raise NoSuchTime(f"no time step labelled {when!r}; use one the cube has: {shown} (or an index 0..{n - 1})")
    return ds.isel(time=hits[0])


def _spatial_dims(da: Any) -> tuple[str, str]:
    for ydim, xdim in (("y", "x"), ("latitude", "longitude"), ("lat", "lon")):
        if ydim in da.dims and xdim in da.dims:
            return ydim, xdim
    if da.ndim == 2:
        return da.dims[0], da.dims[1]
    raise ValueError(f"cannot find spatial dims in {da.dims}; expected (y, x) or (latitude, longitude)")


def _stretch(values: np.ndarray, lo_hi: tuple[float, float]) -> np.ndarray:
    lo, hi = lo_hi
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip((values.astype(np.float64) - lo) * scale, 0, 255).round().astype(np.uint8)


def _limits(values: np.ndarray, pct: tuple[float, float]) -> tuple[float, float]:
    good = values[values > 0]
    if good.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(good, pct)
    return (float(lo), float(hi))


def rgb_array(bands: Sequence[np.ndarray], options: PreviewOptions = PreviewOptions()) -> np.ndarray:
    """Render three 2-D arrays (0 = no data) as uint8 RGB (or RGBA with transparent no data)."""
    r, g, b = (np.asarray(a) for a in bands)
    if options.max_size:
        step = max(1, int(np.ceil(max(r.shape) / options.max_size)))
        r, g, b = r[::step, ::step], g[::step, ::step], b[::step, ::step]
    stack = np.stack([r, g, b])
    if options.per_band:
        out = np.stack([_stretch(a, _limits(a, options.percentiles)) for a in stack], axis=-1)
    else:
        out = np.stack([_stretch(a, _limits(stack, options.percentiles)) for a in stack], axis=-1)
    nodata = np.all(stack == 0, axis=0)
    if options.transparent_nodata:
        alpha = np.where(nodata, 0, 255).astype(np.uint8)
        return np.concatenate([out, alpha[..., None]], axis=-1)
    out[nodata] = 0
    return out


def preview_array(
    store: str | Path,
    time: int | str = 0,
    *,
    options: PreviewOptions = PreviewOptions(),
    storage_options: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """The preview image of time step ``time`` (index or label) as a uint8 array (rows north first)."""
    ds = _select_time(_open(store, storage_options), time)
    arrays = []
    for name in options.bands:
        if name not in ds:
            raise NoSuchBand(f"the cube has no band {name!r} (it has {', '.join(sorted(map(str, ds.data_vars)))}); "
                             f"a preview needs {', '.join(options.bands)}: use a cube built with those bands")
        da = ds[name]
        ydim, xdim = _spatial_dims(da)
        da = da.transpose(ydim, xdim)
        if ydim in da.coords and da.sizes[ydim] > 1 and float(da[ydim][1]) > float(da[ydim][0]):
            da = da.isel({ydim: slice(None, None, -1)})  # put north on top
        arrays.append(np.asarray(da.values))
    return rgb_array(arrays, options)


def write_preview(
    store_path: str | Path,
    time_index_or_label: int | str,
    out_png: str | Path,
    *,
    options: PreviewOptions = PreviewOptions(),
    storage_options: Mapping[str, Any] | None = None,
) -> Path:
    """Write a true-colour PNG of one time step of the cube at ``store_path``; returns the path.

    The image has one pixel per cube pixel (unless ``options.max_size``), north up, a 2-98
    percentile stretch over non-zero values, and transparent no-data pixels.
    """
    from PIL import Image

    img = preview_array(store_path, time_index_or_label, options=options, storage_options=storage_options)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(out, format="PNG", optimize=True)
    return out
