"""The cube spec: what users write, what the CLI reads, and the Step Functions execution input.

Load it with :func:`load_spec` (a path) or :func:`parse_spec` (a mapping or JSON text). Either
returns a validated, frozen :class:`CubeSpec` or raises :class:`~cubeless.errors.SpecError` whose
message is one line naming the field and the fix.

Example::

    >>> spec = parse_spec({"name": "vt", "bbox": [-73.4, 42.7, -71.5, 45.0],
    ...                    "start": "2020-01-01", "end": "2020-03-31", "store": "./vt.zarr"})
    >>> spec.interval, spec.chunk
    ('month', 1200)
"""

from __future__ import annotations

import difflib
import json
import re
from datetime import date
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import SpecError

#: Largest spec document accepted (bytes). Step Functions caps an execution input at 256 KiB.
MAX_SPEC_BYTES = 256 * 1024
#: Chunk side limits (pixels). Below 64 the per-task overhead dominates; above 4096 a task's
#: stack of ~30 scenes x bands no longer fits a 10 GB Lambda.
MIN_CHUNK, MAX_CHUNK = 64, 4096

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SCL_CLASSES = range(0, 12)

Resampling = Literal["nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode"]
Interval = Literal["week", "month", "quarter", "year"]
StoreFormat = Literal["zarr", "icechunk"]


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class MaskSpec(Frozen):
    """How a pixel observation is judged valid."""

    #: SCL classes treated as invalid. Default: no data, saturated, cloud shadow, cloud medium and
    #: high probability, thin cirrus. Water (6) and snow (11) are valid observations.
    scl_exclude: tuple[int, ...] = (0, 1, 3, 8, 9, 10)
    #: Grow the excluded area by this many target pixels (square structuring element).
    dilate: int = Field(0, ge=0, le=16)
    #: Asset key of the scene classification layer.
    scl_band: str = "scl"

    @field_validator("scl_exclude")
    @classmethod
    def _classes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        bad = [c for c in v if c not in SCL_CLASSES]
        if bad:
            raise ValueError(f"SCL classes are 0-11, got {bad}; remove them")
        return tuple(sorted(set(v)))


class CubeSpec(Frozen):
    """A datacube: grid, time bins, bands, masking, catalog and where it is stored."""

    name: str = Field(description="Identifier [a-z0-9-_], used in keys and execution names.")
    stac_api: str = "https://earth-search.aws.element84.com/v1"
    collection: str = "sentinel-2-c1-l2a"
    bbox: tuple[float, float, float, float] | None = None
    aoi: str | None = None
    start: date
    end: date
    interval: Interval = "month"
    crs: str = "EPSG:4326"
    resolution: float = Field(0.00027, gt=0)
    chunk: int = Field(1200, ge=MIN_CHUNK, le=MAX_CHUNK)
    bands: tuple[str, ...] = ("red", "green", "blue")
    mask: MaskSpec = MaskSpec()
    resampling: Resampling = "bilinear"
    max_cloud_cover: float | None = Field(None, ge=0, le=100)
    settle_days: int = Field(
        3, ge=0, le=366, description="Days after a bin's end before it is complete and committed (late scenes)."
    )
    store: str
    format: StoreFormat = Field(
        "zarr",
        description="Storage format: `zarr` (plain Zarr v3, every reader incl. GDAL) or `icechunk` "
        "(an Icechunk repository: one transaction per run, history, rollback).",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(
                f"{v!r} is not a safe name; use 1-63 of a-z, 0-9, '-' or '_', starting with a letter or digit"
            )
        return v

    @field_validator("stac_api")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/]+(/\S*)?$", v):
            raise ValueError(f"{v!r} is not an http(s) URL; give the STAC API root, e.g. https://host/v1")
        return v.rstrip("/")

    @field_validator("bbox")
    @classmethod
    def _bbox(cls, v: tuple[float, float, float, float] | None) -> tuple[float, float, float, float] | None:
        if v is None:
            return v
        w, s, e, n = v
        if not (-180 <= w <= 180 and -180 <= e <= 180):
            raise ValueError("longitudes must be within -180..180; bbox is [west, south, east, north] in degrees")
        if not (-90 <= s <= 90 and -90 <= n <= 90):
            raise ValueError("latitudes must be within -90..90; bbox is [west, south, east, north] in degrees")
        if s >= n:
            raise ValueError(f"south ({s}) must be less than north ({n}); bbox is [west, south, east, north]")
        if w >= e:
            raise ValueError(
                f"west ({w}) must be less than east ({e}); a bbox crossing the antimeridian is not "
                "supported, split it into two cubes"
            )
        return v

    @field_validator("bands")
    @classmethod
    def _bands(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("list at least one band asset key, e.g. [red, green, blue]")
        dupes = sorted({b for b in v if v.count(b) > 1})
        if dupes:
            raise ValueError(f"bands listed twice: {dupes}; list each once")
        reserved = {"count", "time", "x", "y", "latitude", "longitude", "spatial_ref"}
        clash = sorted(reserved.intersection(v))
        if clash:
            raise ValueError(f"{clash} are reserved variable names; use the collection's asset keys")
        return v

    @field_validator("crs")
    @classmethod
    def _crs(cls, v: str) -> str:
        from pyproj import CRS
        from pyproj.exceptions import CRSError

        try:
            crs = CRS.from_user_input(v)
        except CRSError:
            raise ValueError(f"{v!r} is not a CRS pyproj knows; use e.g. EPSG:4326 or EPSG:32633") from None
        if crs.is_vertical or not (crs.is_geographic or crs.is_projected):
            raise ValueError(f"{v!r} is not a 2-D geographic or projected CRS; use e.g. EPSG:4326 or EPSG:32633")
        return v

    @model_validator(mode="after")
    def _whole(self) -> "CubeSpec":
        if (self.bbox is None) == (self.aoi is None):
            raise ValueError("give exactly one of `bbox` or `aoi`")
        if self.start > self.end:
            raise ValueError(f"start ({self.start}) is after end ({self.end}); swap them")
        if self.mask.scl_band in self.bands:
            raise ValueError(f"`{self.mask.scl_band}` is the mask band; remove it from `bands`")
        from pyproj import CRS

        crs = CRS.from_user_input(self.crs)
        if crs.is_geographic and self.resolution > 1:
            raise ValueError(
                f"resolution {self.resolution} is in degrees for {self.crs}; use e.g. 0.00027 (about 30 m)"
            )
        if crs.is_projected and self.resolution < 0.5:
            raise ValueError(f"resolution {self.resolution} is in metres for {self.crs}; use e.g. 10 or 30")
        return self

    # -- derived --------------------------------------------------------------------------------
    @property
    def is_geographic(self) -> bool:
        from pyproj import CRS

        return CRS.from_user_input(self.crs).is_geographic

    @property
    def dims(self) -> tuple[str, str, str]:
        """Dimension names of every variable: (time, y, x) or (time, latitude, longitude)."""
        return ("time", "latitude", "longitude") if self.is_geographic else ("time", "y", "x")

    def canonical_json(self) -> str:
        """Stable JSON of the spec (sorted keys), the input of run ids and fingerprints.

        The default ``format: zarr`` is left out, so run ids of specs written before the field existed
        do not change.
        """
        doc = self.model_dump(mode="json")
        if doc.get("format") == "zarr":
            del doc["format"]
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))


#: Appended to pydantic's own message so every line names the fix, not just the problem.
FIX_HINTS = {
    "name": "use 1-63 of a-z, 0-9, '-' or '_'",
    "bbox": "give [west, south, east, north] in degrees",
    "start": "use a date like 2020-01-01",
    "end": "use a date like 2020-12-31",
    "interval": "use week, month, quarter or year",
    "resolution": "give the pixel size in CRS units (degrees for EPSG:4326, metres for UTM)",
    "chunk": f"use {MIN_CHUNK}..{MAX_CHUNK} pixels per side (default 1200; larger chunks need more worker memory)",
    "bands": "list asset keys, e.g. [red, green, blue]",
    "resampling": "use nearest, bilinear, cubic, cubic_spline, lanczos, average or mode",
    "max_cloud_cover": "use a percentage 0..100, or leave it out",
    "mask.dilate": "use 0..16 pixels",
    "format": "use zarr (default) or icechunk",
}


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not isinstance(p, int)]
    return ".".join(parts) if parts else "spec"


def _unknown_field_fix(loc: tuple[Any, ...]) -> str:
    """The fix for an unknown field: the closest known name when it looks misspelt, and the
    fields of the model it was found in (the spec's, or a nested one's such as ``mask``)."""
    model: type[BaseModel] = CubeSpec
    for part in loc[:-1]:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    known = list(model.model_fields)
    listing = f"(fields: {', '.join(known)})"
    return f"{did_you_mean(str(loc[-1]), known) or 'remove it or fix its spelling '}{listing}"


def did_you_mean(name: str, known: list[str]) -> str:
    """``"did you mean `x`? "`` when ``name`` looks like a misspelling of one of ``known``, else ``""``."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    return f"did you mean `{close[0]}`? " if close else ""


def _one_line(err: ValidationError) -> str:
    """Condense pydantic's report into one line: the first problem, its field, and the fix."""
    first = err.errors()[0]
    field = _field_name(first["loc"])
    kind = first["type"]
    msg = first["msg"].removeprefix("Value error, ")
    indexed = any(isinstance(p, int) for p in first["loc"])
    if kind == "extra_forbidden":
        line = f"spec field `{field}` is not known; {_unknown_field_fix(first['loc'])}"
    elif kind == "missing" and indexed:
        line = f"spec field `{field}` has too few items; {FIX_HINTS.get(field, 'check the list')}"
    elif kind == "too_long":
        line = f"spec field `{field}` has too many items; {FIX_HINTS.get(field, 'check the list')}"
    elif kind == "missing":
        line = f"spec field `{field}` is required; add it"
    elif field == "spec" or not first["loc"]:
        line = f"spec: {msg}"
    else:
        got = first.get("input")
        shown = json.dumps(got, default=str) if not isinstance(got, Mapping) else "{...}"
        if len(shown) > 60:
            shown = shown[:57] + "..."
        line = f"spec field `{field}`: {msg} (got {shown})"
        if kind != "value_error" and field in FIX_HINTS:
            line += f"; {FIX_HINTS[field]}"
    more = len(err.errors()) - 1
    return line + (f" [+{more} more problem{'s' if more > 1 else ''}]" if more else "")


def parse_spec(doc: Mapping[str, Any] | str | bytes) -> CubeSpec:
    """Validate a spec given as a mapping, or as JSON/YAML text."""
    if isinstance(doc, (str, bytes)):
        if len(doc) > MAX_SPEC_BYTES:
            raise SpecError(f"spec is {len(doc)} bytes, over the {MAX_SPEC_BYTES} byte limit; put the AOI in a file and reference it with `aoi:`")
        try:
            doc = yaml.safe_load(doc)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise SpecError(f"spec is not valid YAML or JSON{where}; fix the syntax") from None
        except ValueError as exc:  # YAML dates are parsed by the loader: `end: 2024-13-01`
            raise SpecError(f"spec holds an invalid date ({exc}); give dates as YYYY-MM-DD") from None
    if doc is None:
        raise SpecError("spec is empty; write a YAML or JSON object with name, bbox, start, end and store")
    if not isinstance(doc, Mapping):
        raise SpecError(f"spec must be a YAML/JSON object (mapping), got {type(doc).__name__}; write `key: value` lines")
    try:
        return CubeSpec.model_validate(dict(doc))
    except ValidationError as err:
        raise SpecError(_one_line(err)) from None


def load_spec(path: str | Path) -> CubeSpec:
    """Read and validate a YAML or JSON spec file."""
    p = Path(path)
    if not p.exists():
        raise SpecError(f"spec file {str(p)!r} does not exist; check the path")
    if p.is_dir():
        raise SpecError(f"spec path {str(p)!r} is a directory; give a .yaml or .json file")
    data = p.read_bytes()
    if not data.strip():
        raise SpecError(f"spec file {str(p)!r} is empty; write a YAML or JSON object with name, bbox, start, end and store")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"spec file {str(p)!r} is not UTF-8 text; save it as YAML or JSON") from None
    return parse_spec(text)
